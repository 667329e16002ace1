"""Energy per inference, always labelled with its source.

Measured: Zeus reads NVIDIA's NVML total-energy counter on GPUs and RAPL on CPUs where it is readable,
once per timed block of the configuration. Estimated: where no counter can be read (VMs, no root),
this process's CPU time in those same blocks x a per-core power figure. Both come from the blocks the
latency used, so a stall that other work caused (and that was dropped from the latency) is not billed.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from engine.core.errors import UserError
from engine.core.measurement import Source
from engine.measure.latency import EnergyMeter, Timing

# Typical package power per busy core of a current server/laptop CPU under a vector-heavy load
# (e.g. 360 W / 96 cores ~ 3.75 W; 45 W / 8 cores ~ 5.6 W). Override with the environment variable.
DEFAULT_WATTS_PER_CORE = 5.0
WATTS_ENV = "COMPRESSION_DASH_CPU_WATTS_PER_CORE"
WATTS_RANGE = (0.1, 1000.0)


@dataclass(frozen=True)
class Energy:
    joules_per_call: float | None
    source: Source  # its note says over which blocks, or which power figure the estimate used


def watts_per_core() -> float:
    """The per-core power figure of the estimate; a bad override is a UserError, never a silent default."""
    text = os.environ.get(WATTS_ENV)
    if text is None or text.strip() == "":
        return DEFAULT_WATTS_PER_CORE
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    lo, hi = WATTS_RANGE
    if not (math.isfinite(value) and lo <= value <= hi):
        raise UserError(f"{WATTS_ENV}={text[:40]!r} is not allowed: watts per busy core, a number from {lo:g} "
                        f"to {hi:g} (default {DEFAULT_WATTS_PER_CORE:g})")
    return value


def _rapl_readable() -> bool:
    base = "/sys/class/powercap/intel-rapl:0/energy_uj"
    return os.path.exists(base) and os.access(base, os.R_OK)


class CounterMeter(EnergyMeter):
    """Zeus windows around each block, where a counter is readable (NVML on GPU, RAPL on CPU)."""

    def __init__(self, device: str) -> None:
        self.device, self._monitor, self._gpu = device, None, device == "cuda"
        if self._gpu or _rapl_readable():
            try:
                from zeus.monitor import ZeusMonitor

                self._monitor = ZeusMonitor(gpu_indices=[0] if self._gpu else [],
                                            cpu_indices=None if _rapl_readable() else [])
            except Exception:  # noqa: BLE001  (no counter after all: the labelled estimate is used)
                self._monitor = None

    @property
    def counter(self) -> str | None:
        """The counter read: nvml or rapl (None: no counter is readable here)."""
        if self._monitor is None:
            return None
        return "nvml" if self._gpu else "rapl"

    def begin(self) -> None:
        if self._monitor is not None:
            self._monitor.begin_window("block", sync_execution=self._gpu)

    def end(self) -> float | None:
        if self._monitor is None:
            return None
        m = self._monitor.end_window("block", sync_execution=self._gpu)
        parts = m.gpu_energy if self._gpu else m.cpu_energy
        return float(sum(parts.values())) if parts else None


def energy_of(timing: Timing, meter: CounterMeter) -> Energy:
    """J per inference over the configuration's blocks that the latency used."""
    calls = max(timing.calls, 1)
    joules = timing.joules
    if meter.counter is not None and joules is not None:
        where = "GPU only" if meter.counter == "nvml" else "whole CPU package"
        return Energy(max(joules, 0.0) / calls, Source(
            "measured", meter.counter, f"counter read around {len(timing.used)} timed blocks, {calls} calls ({where})"))
    w = watts_per_core()
    cpu_s = timing.own_cpu_s
    return Energy(cpu_s * w / calls, Source(
        "estimated", "cpu-time", f"this process's CPU time in the {len(timing.used)} timed blocks ({cpu_s:.3f} s over "
        f"{calls} calls) x {w:g} W per busy core ({WATTS_ENV} overrides); no energy counter readable here"))
