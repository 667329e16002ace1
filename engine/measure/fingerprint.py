"""Device fingerprint: the environment travels with every result (results from two machines never mix)."""
from __future__ import annotations

import hashlib
import json
import platform
from typing import Any
from functools import lru_cache

from engine.core.hardware import detect


def _driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVIDIA driver here
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


def machine_name(device: dict[str, Any]) -> str:
    """How a machine is named to a person: its CPU, cores and GPU, as its rows recorded them."""
    return f"{device.get('cpu') or 'unknown CPU'}, {device.get('logical_cores')} cores" + (
        f", {device['gpu']}" if device.get("gpu") else "")
