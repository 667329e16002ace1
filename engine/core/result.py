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
    wall_s: float | None = None
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
        """Rebuild from stored JSON; raises ValueError/TypeError on a damaged record."""
        if not isinstance(data, dict):
            raise TypeError(f"a result must be an object, not {type(data).__name__}")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for name in ("recipe", "extra_metrics", "device"):
            if name in known and not isinstance(known[name], dict):
                raise TypeError(f"result field {name} must be an object")
        if not isinstance(known.get("kernels", []), list) or not isinstance(known.get("warnings", []), list):
            raise TypeError("result fields kernels and warnings must be lists")
        if known.get("latency_ms") is not None and not isinstance(known["latency_ms"], dict):
            raise TypeError("result field latency_ms must be an object")
        for name in ("accuracy", "baseline_accuracy", "speedup", "energy_j"):
            v = known.get(name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise TypeError(f"result field {name} must be a number")
        known["kernels"] = [Kernel.from_dict(k) for k in known.get("kernels", []) if isinstance(k, dict)]
        return cls(**known)


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
