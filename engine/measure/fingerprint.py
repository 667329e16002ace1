"""Machine fingerprint: the environment travels with every result (results from two machines never mix)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import re
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


def machine_id() -> str:
    """This machine's id alone, for commands that only read the store (`frontier`, `results`): the kept or
    adopted fingerprint's, else computed without torch where the installed torch is a CPU-only build (it can
    then see no GPU, so every input of the id is readable from /proc and its version file), else the full
    fingerprint's."""
    if _ADOPTED is not None:
        return _ADOPTED["id"]
    if _own.cache_info().currsize:
        return _own()["id"]
    cache = _cache_file()
    if (cache is None or not cache.exists()) and (torch_free := _torch_free_id()) is not None:
        return torch_free
    return _own()["id"]


@lru_cache(maxsize=1)
def _torch_free_id() -> str | None:
    """The id where torch is a CPU-only build (it can see no GPU), from /proc and torch's version file; else None."""
    version = _torch_version()
    if version is None or not version.endswith("+cpu"):
        return None
    cpu, flags = _cpu_info()
    return _id(cpu, list(flags), os.cpu_count() or 1, None, version)


def _torch_version() -> str | None:
    """torch.__version__ as its installed version file states it, without importing torch."""
    spec = importlib.util.find_spec("torch")
    try:
        text = Path(spec.origin).with_name("version.py").read_text() if spec and spec.origin else ""
    except OSError:
        return None
    found = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.M)
    return found.group(1) if found else None


def _id(cpu: str, cpu_flags: list[str], logical_cores: int, gpu: str | None, torch_version: str) -> str:
    """The id: what decides whether two rows were measured on the same kind of machine."""
    stable = {"cpu": cpu, "cpu_flags": cpu_flags, "logical_cores": logical_cores, "gpu": gpu, "torch": torch_version}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:12]


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
    fp["id"] = _id(fp["cpu"], fp["cpu_flags"], fp["logical_cores"], fp["gpu"], fp["torch"])
    return fp
