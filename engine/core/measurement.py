"""The typed parts of a result: its latency, where a memory or energy figure came from, and the machine it ran on.

Each renders itself (`to_text`) so the command line, the dashboard, the bundle report and the lessons say the same
thing the same way, and each writes (`to_dict`) and reads back (`from_dict`) the JSON spelling stored rows have
always had, so stores written by earlier versions load unchanged.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from engine.core.units import fmt_ms, fmt_speedup

SOURCE_KINDS = ("measured", "estimated", "simulated")


@dataclass(frozen=True)
class Source:
    """How a memory or energy figure was obtained: `kind` says whether to trust it as a reading, `how` names the
    counter or the formula (`nvml`, `rapl`, `cpu-time`, `VmHWM growth during inference + model tensor bytes`)."""

    kind: str
    how: str
    note: str = ""  # the longer account (which blocks, which power figure), shown where there is room

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"source kind {self.kind[:40]!r} is not one of {', '.join(SOURCE_KINDS)}")

    @classmethod
    def parse(cls, text: str, note: str | None = None) -> "Source":
        """'measured:nvml' -> Source('measured', 'nvml'): the spelling stored rows and `run --json` carry."""
        if not isinstance(text, str):
            raise TypeError("a source must be text such as measured:nvml")
        kind, _, how = text.partition(":")
        return cls(kind, how, note or "")

    @classmethod
    def kind_of(cls, text: Any) -> str | None:
        """The kind of a stored source text; None where there is none or it is not one (a flat row's column)."""
        try:
            return cls.parse(text).kind
        except (TypeError, ValueError):
            return None

    def __str__(self) -> str:
        return f"{self.kind}:{self.how}"

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "how": self.how, "note": self.note}

    def to_text(self) -> str:
        return f"{self.kind}: {self.how}" + (f" ({self.note})" if self.note else "")


@dataclass(frozen=True)
class Latency:
    """The configuration's call times (ms) and its speed-up paired with the uncompressed model, with everything
    needed to judge them: how many calls and blocks, how busy the machine was, whether to trust the p99."""

    p50: float | None = None  # the headline
    p90: float | None = None
    p99: float | None = None
    mean: float | None = None
    iqr_ratio: float | None = None  # (q75 - q25) / median of the calls
    calls: int | None = None
    window_s: float | None = None
    noisy: bool = False
    p99_reliable: bool = False
    method: str = ""
    threads: int | None = None
    threads_requested: int | None = None
    foreign_cpu: float | None = None  # cores other work used while timing
    steal_cpu: float | None = None
    cpu_pressure: float | None = None
    contended: bool = False
    insufficient: bool = False
    blocks: int | None = None
    blocks_used: int | None = None
    blocks_disturbed: int | None = None
    block_p50_q25: float | None = None
    block_p50_q75: float | None = None
    contention_threshold_cores: float | None = None
    baseline_p50: float | None = None  # None for the baseline itself: nothing was paired with it
    batch_size: int | None = None
    speedup: float | None = None  # the pair's; a top-level key of the result's JSON, not one of `latency_ms`
    speedup_spread: float | None = None
    extra: dict = field(default_factory=dict)  # keys a newer engine wrote, kept so a round trip loses nothing

    @classmethod
    def from_dict(cls, data: dict[str, Any], speedup: float | None = None,
                  speedup_spread: float | None = None) -> "Latency":
        """From a result's `latency_ms` object (and its top-level speed-up); keys an older engine did not write
        take their defaults."""
        names = {f.name for f in fields(cls)} - {"extra", "speedup", "speedup_spread"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**known, speedup=speedup, speedup_spread=speedup_spread, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The `latency_ms` object (the speed-up is written beside it, as `speedup` and `speedup_spread`)."""
        out = asdict(self)
        for name in ("extra", "speedup", "speedup_spread"):
            out.pop(name)
        return {**out, **self.extra}

    @property
    def why_contended(self) -> str:
        """What made the machine busy, in a clause."""
        if self.threads is not None and self.threads_requested is not None and self.threads < self.threads_requested:
            return f"only {self.threads} of {self.threads_requested} threads had a free core"
        return f"other work used {self.foreign_cpu or 0:.1f} cores during the timed blocks"

    def calls_text(self) -> str:
        """The timing's conditions in a phrase: spread, calls, batch and threads."""
        return (f"IQR/median {pct(self.iqr_ratio)}, {self.calls} calls, batch {self.batch_size}, "
                f"{self.threads} of {self.threads_requested} threads")

    def percentiles_text(self) -> str:
        return (f"p50 {fmt_ms(self.p50)}, p90 {fmt_ms(self.p90)}, p99 {fmt_ms(self.p99)}"
                + ("" if self.p99_reliable else " (p99 from < 100 calls)"))

    def speedup_text(self) -> str:
        return (f"{fmt_speedup(self.speedup)} than the uncompressed eager fp32 model (paired, spread "
                f"{pct(self.speedup_spread)})")

    def machine_text(self) -> str:
        return (f"other work used {self.foreign_cpu or 0:.2f} cores while timing"
                + ("  CONTENDED: re-measure when the machine is quiet" if self.contended else ""))

    def to_text(self) -> str:
        return "\n".join([f"latency    {self.percentiles_text()} ({self.calls_text()})",
                          f"speed-up   {self.speedup_text()}", f"machine    {self.machine_text()}"])


def pct(x: float | None) -> str:
    """0.123 -> '12%'; None -> 'n/a'."""
    return f"{x:.0%}" if x is not None and math.isfinite(x) else "n/a"


@dataclass(frozen=True)
class Fingerprint:
    """The machine a result was measured on. Results of two machines never compete; `id` keys them in the store.
    (The recipe's `device` is cpu or cuda: where on this machine the model runs.)"""

    id: str = ""
    cpu: str | None = None
    cpu_flags: tuple[str, ...] = ()
    logical_cores: int | None = None
    physical_cores: int | None = None
    gpu: str | None = None
    gpu_capability: tuple[int, ...] | None = None
    gpu_driver: str | None = None
    torch: str | None = None
    quantized_engine: str | None = None
    python: str | None = None
    os: str | None = None
    engine: str | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Fingerprint":
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        known["cpu_flags"] = tuple(known.get("cpu_flags") or ())
        if known.get("gpu_capability") is not None:
            known["gpu_capability"] = tuple(known["gpu_capability"])
        known["id"] = known.get("id") or ""
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("extra")
        out["cpu_flags"] = list(self.cpu_flags)
        out["gpu_capability"] = list(self.gpu_capability) if self.gpu_capability is not None else None
        return {**out, **self.extra}

    @property
    def name(self) -> str:
        """How a person tells machines apart: its CPU, cores and GPU."""
        return f"{self.cpu or 'unknown CPU'}, {self.logical_cores} cores" + (f", {self.gpu}" if self.gpu else "")

    def to_text(self) -> str:
        return (f"{self.cpu} · {self.logical_cores} cores · flags {', '.join(self.cpu_flags)} · "
                f"GPU {self.gpu or 'none'} · torch {self.torch}")
