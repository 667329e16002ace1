"""What this machine can run fast: CPU ISA flags and CUDA capability, read once.

The engine uses these facts to pick kernels and to explain results ("bf16 is native here",
"fp16 has no fast CPU kernel"), so a user sees why a smaller model is or is not faster.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache

INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
                     "amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "asimd", "sve", "bf16", "i8mm")


@dataclass(frozen=True)
class Hardware:
    cpu_model: str
    cpu_flags: tuple[str, ...]
    logical_cores: int
    physical_cores: int
    gpu_name: str | None
    gpu_capability: tuple[int, int] | None

    def has(self, *flags: str) -> bool:
        return any(f in self.cpu_flags for f in flags)

    @property
    def cpu_bf16_native(self) -> bool:
        return self.has("avx512_bf16", "amx_bf16", "bf16")

    @property
    def cpu_fp16_native(self) -> bool:
        return self.has("avx512_fp16", "amx_fp16")

    @property
    def cpu_int8_vnni(self) -> bool:
        return self.has("avx512_vnni", "avx_vnni", "amx_int8", "i8mm")


def _cpu_info() -> tuple[str, tuple[str, ...]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Hardware") and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, tuple(f for f in INTERESTING_FLAGS if f in flags)


@lru_cache(maxsize=1)
def detect() -> Hardware:
    import psutil
    import torch  # here, not at the top: the dashboard's server asks its measuring process instead (no torch)

    model, flags = _cpu_info()
    gpu_name = gpu_cap = None
    if torch.cuda.is_available():
        gpu_name = torch.cuda.get_device_name(0)
        gpu_cap = torch.cuda.get_device_capability(0)
    return Hardware(
        cpu_model=model,
        cpu_flags=flags,
        logical_cores=os.cpu_count() or 1,
        physical_cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        gpu_name=gpu_name,
        gpu_capability=gpu_cap,
    )


def precision_note(precision: str, device: str, hw: Hardware | None = None) -> tuple[str, str | None]:
    """(kernel description, warning or None) for running a model in `precision` on `device`."""
    hw = hw or detect()
    if precision == "fp32":
        return ("fp32 dense", None)
    if device == "cuda":
        cap = hw.gpu_capability or (0, 0)
        if precision == "bf16" and cap < (8, 0):
            return ("bf16 on CUDA (emulated before Ampere)", "bf16 has no tensor-core kernel on this GPU")
        return (f"{precision} on CUDA tensor cores" if cap >= (7, 0) else f"{precision} on CUDA", None)
    if precision == "bf16":
        if hw.cpu_bf16_native:
            flag = "AMX" if hw.has("amx_bf16") else "AVX512-BF16" if hw.has("avx512_bf16") else "BF16"
            return (f"bf16 oneDNN ({flag}, native)", None)
        return ("bf16 (no native CPU support: converted to fp32 inside kernels)",
                "bf16 has no native kernel on this CPU (no AVX512-BF16/AMX): expect no speed-up")
    if hw.cpu_fp16_native:
        return ("fp16 (AVX512-FP16/AMX-FP16)", None)
    return ("fp16 (no fast CPU kernel)", "fp16 matmul has no fast kernel on this CPU: expect it to be slower than fp32")
