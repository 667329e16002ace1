"""Machine fingerprint: the environment travels with every result (results from two machines never mix)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
from functools import lru_cache
from pathlib import Path

from engine.core.hardware import _cpu_info, detect
from engine.core.recipe import parse_json


def _driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001  (no NVIDIA driver here, or one pynvml cannot talk to: no driver version)
        return None


_ADOPTED: dict | None = None


def adopt(fp: dict) -> None:
    """Take the measuring process's fingerprint as this process's own. A front end that measures in a worker
    process looks its rows up under the id that worker writes, and never has to import torch to compute it."""
    global _ADOPTED
    _ADOPTED = fp


def fingerprint() -> dict:
    return _ADOPTED or _own()


@lru_cache(maxsize=1)
def _own() -> dict:
    """This machine's fingerprint, kept between processes: computing it imports torch (over a second), and a
    command that only reads the store (`frontier`, `results --device`) needs just its id."""
    cache = _cache_file()
    try:
        kept = parse_json(cache.read_text(), "the fingerprint cache", limit=None) if cache is not None else None
        if isinstance(kept, dict) and isinstance(kept.get("id"), str):
            return kept
    except (OSError, ValueError):
        pass
    fp = _compute()
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(fp))
            os.replace(tmp, cache)  # a reader never sees half of it
        except OSError:
            pass  # a read-only home: computed again next time
    return fp


def _cache_file() -> Path | None:
    """Keyed by everything that could change the fingerprint: this boot, the CPU, the torch installation, the
    GPUs made visible to it, the engine's version. None where a boot cannot be told apart (then no cache)."""
    spec = importlib.util.find_spec("torch")  # finds, does not import
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        torch_version = Path(spec.origin).with_name("version.py").read_text() if spec and spec.origin else ""
    except OSError:
        return None
    from engine import __version__

    visible = [os.environ.get(v) for v in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")]
    key = json.dumps([boot, _cpu_info(), os.cpu_count(), spec.origin if spec else None, torch_version, __version__,
                      visible])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "compression-dash" / f"machine-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _compute() -> dict:
    import torch  # here, not at the top: the dashboard's server process never needs torch (seconds at start)

    from engine import __version__

    hw = detect()
    fp = {
        "cpu": hw.cpu_model,
        "cpu_flags": list(hw.cpu_flags),
        "logical_cores": hw.logical_cores,
        "physical_cores": hw.physical_cores,
        "gpu": hw.gpu_name,
        "gpu_capability": list(hw.gpu_capability) if hw.gpu_capability else None,
        "gpu_driver": _driver() if hw.gpu_name else None,
        "torch": str(torch.__version__),  # a plain str: TorchVersion would load torch wherever it is unpickled
        "quantized_engine": torch.backends.quantized.engine,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "engine": __version__,
    }
    stable = {k: fp[k] for k in ("cpu", "cpu_flags", "logical_cores", "gpu", "torch")}
    fp["id"] = hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:12]
    return fp
