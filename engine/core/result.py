"""What one measured configuration produced, and how each step ran (typed provenance).

`Result.to_dict()` is the stable JSON contract of `run --json` and of the stored rows (README: key table).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from engine import __version__


@dataclass(frozen=True)
class Kernel:
    """What executed for one step. `simulated` marks a path whose latency is not that of a real low-bit
    kernel (weights dequantized to float before use), so the dashboard can flag the point."""

    step: str
    kernel: str
    simulated: bool = False
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "kernel": self.kernel, "simulated": self.simulated, **self.detail}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Kernel":
        rest = {k: v for k, v in data.items() if k not in ("step", "kernel", "simulated")}
        return cls(str(data.get("step", "")), str(data.get("kernel", "")), bool(data.get("simulated", False)), rest)


@dataclass
class Result:
    """One measured configuration. Keys are the stable JSON contract documented in the README."""

    model: str
    recipe: dict
    accuracy: float | None = None
    baseline_accuracy: float | None = None
    metric: str = ""
    metric_kind: str = "accuracy"  # "accuracy" (a task score) or "fidelity" (agreement with the fp32 model)
    extra_metrics: dict = field(default_factory=dict)
    params_total: int | None = None
    params_nonzero: int | None = None
    param_bytes: int | None = None
    size_bytes: int | None = None
    baseline_size_bytes: int | None = None
    latency_ms: dict | None = None
    speedup: float | None = None
    speedup_spread: float | None = None
    peak_memory_bytes: int | None = None
    memory_source: str | None = None
    energy_j: float | None = None
    energy_source: str | None = None
    energy_note: str | None = None
    kernels: list[Kernel] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    device: dict = field(default_factory=dict)
    profile: str = "quick"
    threads: int | None = None
    engine_version: str = __version__
    measured_at: float | None = None  # seconds since the epoch
    wall_s: float | None = None
    prepare_s: float | None = None  # building the runtime's artifact (ONNX export, compiling); never in latency
    error: str | None = None

    @property
    def simulated(self) -> bool:
        return any(k.simulated for k in self.kernels)

    @property
    def contended(self) -> bool:
        return bool((self.latency_ms or {}).get("contended"))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["kernels"] = [k.to_dict() for k in self.kernels]
        out["simulated"] = self.simulated
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Result":
        """Rebuild from stored JSON. Every field's type is checked (a damaged or hand-edited record raises
        ValueError/TypeError here rather than deep inside a page or an export)."""
        if not isinstance(data, dict):
            raise TypeError(f"a result must be an object, not {type(data).__name__}")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        _check(known)
        known["kernels"] = [Kernel.from_dict(k) for k in known.get("kernels", [])]
        return cls(**known)


_NUMBERS = ("accuracy", "baseline_accuracy", "speedup", "speedup_spread", "energy_j", "wall_s", "measured_at",
            "prepare_s")
_INTEGERS = ("params_total", "params_nonzero", "param_bytes", "size_bytes", "baseline_size_bytes",
             "peak_memory_bytes", "threads")
_TEXTS = ("model", "metric", "metric_kind", "memory_source", "energy_source", "energy_note", "profile",
          "engine_version", "error")


def _number(value: Any, name: str, integer: bool = False) -> None:
    if value is None:
        return
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise TypeError(f"result field {name} must be a finite {'integer' if integer else 'number'}")


def _check(r: dict[str, Any]) -> None:
    from engine.core.recipe import Recipe

    for name in _NUMBERS:
        _number(r.get(name), name)
    for name in _INTEGERS:
        _number(r.get(name), name, integer=True)
    for name in _TEXTS:
        if r.get(name) is not None and not isinstance(r[name], str):
            raise TypeError(f"result field {name} must be text")
    if not isinstance(r.get("model"), str):
        raise TypeError("result has no model")
    Recipe.from_dict(r.get("recipe"))  # RecipeError is a ValueError
    if r["recipe"].get("model") != r["model"]:
        raise ValueError("result's recipe is for another model")
    for name in ("extra_metrics", "device"):
        if not isinstance(r.get(name, {}), dict):
            raise TypeError(f"result field {name} must be an object")
    for k, v in r.get("extra_metrics", {}).items():
        _number(v, f"extra_metrics.{k}")
    flags = r.get("device", {}).get("cpu_flags", [])
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise TypeError("result field device.cpu_flags must be a list of text")
    lat = r.get("latency_ms")
    if lat is not None:
        if not isinstance(lat, dict):
            raise TypeError("result field latency_ms must be an object")
        for k, v in lat.items():
            if not isinstance(v, (bool, str)) and v is not None:
                _number(v, f"latency_ms.{k}")
        if r.get("error") is None and not isinstance(lat.get("p50"), (int, float)):
            raise TypeError("result field latency_ms.p50 must be a number")
    if not isinstance(r.get("warnings", []), list) or not all(isinstance(w, str) for w in r.get("warnings", [])):
        raise TypeError("result field warnings must be a list of text")
    kernels = r.get("kernels", [])
    if not isinstance(kernels, list) or not all(isinstance(k, dict) and isinstance(k.get("step"), str)
                                                and isinstance(k.get("kernel"), str) for k in kernels):
        raise TypeError("result field kernels must be a list of {step, kernel} objects")
    if r.get("error") is None and (not isinstance(r.get("accuracy"), (int, float)) or lat is None):
        raise TypeError("a result that ran must have an accuracy and a latency")


def strict(value: Any) -> Any:
    """A JSON-safe copy: NaN and infinities become None, so `json.dumps(allow_nan=False)` always succeeds."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)
