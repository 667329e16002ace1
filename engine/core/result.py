"""What one measured configuration produced, and how each step ran (typed provenance).

`Result.to_dict()` is the stable JSON contract of `run --json` and of the stored rows (docs/cli.md: key table).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields
from typing import Any

from engine import __version__
from engine.core.measurement import Fingerprint, Latency, Source
from engine.core.recipe import Recipe
from engine.core.units import fmt_bytes, fmt_energy


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

    def to_text(self) -> str:
        return f"{self.step}: {self.kernel}{' (simulated)' if self.simulated else ''}"


@dataclass
class Result:
    """One measured configuration. `to_dict()` keys are the stable JSON contract documented in docs/cli.md."""

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
    latency: Latency | None = None
    peak_memory_bytes: int | None = None
    memory_source: Source | None = None
    energy_j: float | None = None
    energy_source: Source | None = None  # its `note` is the JSON's energy_note
    kernels: list[Kernel] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    machine: Fingerprint = field(default_factory=Fingerprint)
    profile: str = "quick"
    threads: int | None = None
    engine_version: str = __version__
    measured_at: float | None = None  # seconds since the epoch
    wall_s: float | None = None
    prepare_s: float | None = None  # building the runtime's artifact (ONNX export, compiling); never in latency
    prepare_how: str | None = None  # what that building was, in words
    error: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.machine, dict):  # a measuring process's fingerprint, as `fingerprint()` gives it
            self.machine = Fingerprint.from_dict(self.machine)

    @property
    def simulated(self) -> bool:
        return any(k.simulated for k in self.kernels)

    @property
    def contended(self) -> bool:
        return self.latency is not None and self.latency.contended

    @property
    def speedup(self) -> float | None:
        """Paired with the uncompressed eager fp32 model (1.0 for that model itself)."""
        return None if self.latency is None else self.latency.speedup

    @property
    def speedup_spread(self) -> float | None:
        return None if self.latency is None else self.latency.speedup_spread

    @property
    def metric_name(self) -> str:
        return "fidelity" if self.metric_kind == "fidelity" else "accuracy"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "latency":
                out["latency_ms"] = None if value is None else value.to_dict()
                out["speedup"], out["speedup_spread"] = self.speedup, self.speedup_spread
            elif f.name in ("memory_source", "energy_source"):
                out[f.name] = None if value is None else str(value)
                if f.name == "energy_source":
                    out["energy_note"] = None if value is None else value.note
            elif f.name == "kernels":
                out["kernels"] = [k.to_dict() for k in value]
            elif f.name == "machine":
                out["machine"] = value.to_dict()
            else:
                out[f.name] = copy.deepcopy(value)
        out["simulated"] = self.simulated
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Result":
        """Rebuild from stored JSON, of this version or an earlier one (`device` is the old spelling of
        `machine`). Every field's type is checked (a damaged or hand-edited record raises ValueError/TypeError
        here rather than deep inside a page or an export)."""
        if not isinstance(data, dict):
            raise TypeError(f"a result must be an object, not {type(data).__name__}")
        data = {**data}
        if "machine" not in data and "device" in data:
            data["machine"] = data["device"]
        _check(data)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["kernels"] = [Kernel.from_dict(k) for k in known.get("kernels", [])]
        known["machine"] = Fingerprint.from_dict(known.get("machine", {}))
        lat = data.get("latency_ms")
        known["latency"] = None if lat is None else Latency.from_dict(lat, data.get("speedup"),
                                                                      data.get("speedup_spread"))
        for name, note in (("memory_source", None), ("energy_source", data.get("energy_note"))):
            known[name] = None if data.get(name) is None else Source.parse(data[name], note)
        return cls(**known)

    def to_text(self) -> str:
        """The result as the command line prints it: every number with how it was obtained."""
        rec = Recipe.from_dict(self.recipe)
        lines = [f"{self.model}  {rec.label()}  (key {rec.key})"]
        if self.error:
            return "\n".join(lines + [f"  FAILED: {self.error}"])
        rows = [(self.metric_name, f"{self.accuracy:.4f}  (baseline {_num(self.baseline_accuracy)}; {self.metric})")]
        rows += [(k, f"{v:.4f}") for k, v in self.extra_metrics.items()]
        rows.append(("params", f"{self.params_nonzero:,} non-zero of {self.params_total:,}"))
        rows.append(("size", f"{fmt_bytes(self.size_bytes)} stored (fp32 baseline "
                             f"{fmt_bytes(self.baseline_size_bytes)})"))
        body = ["\n".join(f"  {k:<10} {v}" for k, v in rows)]
        if self.latency is not None:
            body.append("\n".join("  " + line for line in self.latency.to_text().splitlines()))
        rows = []
        if self.peak_memory_bytes is not None:
            rows.append(("memory", f"{fmt_bytes(self.peak_memory_bytes)} peak ({self.memory_source})"))
        if self.energy_j is not None:
            rows.append(("energy", f"{fmt_energy(self.energy_j)}/inference [{self.energy_source}]"))
        rows += [("kernel", k.to_text()) for k in self.kernels]
        if self.prepare_s is not None:
            rows.append(("prepared", f"in {self.prepare_s:.1f} s ({self.prepare_text}; not in the latency)"))
        rows += [("warning", w) for w in self.warnings]
        if rows:
            body.append("\n".join(f"  {k:<10} {v}" for k, v in rows))
        return "\n".join(lines + body)

    @property
    def prepare_text(self) -> str:
        """What building the runtime's artifact was (rows written before it was recorded name the runtime)."""
        return self.prepare_how or f"preparing the {self.recipe.get('runtime', 'eager')} runtime"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


_NUMBERS = ("accuracy", "baseline_accuracy", "speedup", "speedup_spread", "energy_j", "wall_s", "measured_at",
            "prepare_s")
_INTEGERS = ("params_total", "params_nonzero", "param_bytes", "size_bytes", "baseline_size_bytes",
             "peak_memory_bytes", "threads")
_TEXTS = ("model", "metric", "metric_kind", "memory_source", "energy_source", "energy_note", "profile",
          "engine_version", "prepare_how", "error")


def _number(value: Any, name: str, integer: bool = False) -> None:
    if value is None:
        return
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise TypeError(f"result field {name} must be a finite {'integer' if integer else 'number'}")


def _check(r: dict[str, Any]) -> None:
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
    for name in ("extra_metrics", "machine"):
        if not isinstance(r.get(name, {}), dict):
            raise TypeError(f"result field {name} must be an object")
    for k, v in r.get("extra_metrics", {}).items():
        _number(v, f"extra_metrics.{k}")
    flags = r.get("machine", {}).get("cpu_flags", [])
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise TypeError("result field machine.cpu_flags must be a list of text")
    if not isinstance(r.get("machine", {}).get("id", ""), (str, type(None))):
        raise TypeError("result field machine.id must be text")
    for name in ("memory_source", "energy_source"):
        if r.get(name) is not None:
            Source.parse(r[name])  # ValueError names the kinds allowed
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
