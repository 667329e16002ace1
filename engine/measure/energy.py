"""Energy per inference over a window of repeated calls, always labelled with its source.

Measured: Zeus reads NVIDIA's NVML total-energy counter on GPUs and RAPL on CPUs where it is readable.
Estimated: where no counter can be read (VMs, no root), process CPU time x a per-core power figure.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import psutil

# Typical package power per busy core of a current server/laptop CPU under a vector-heavy load
# (e.g. 360 W / 96 cores ~ 3.75 W; 45 W / 8 cores ~ 5.6 W). Override with the environment variable.
DEFAULT_WATTS_PER_CORE = 5.0
WATTS_ENV = "COMPRESSION_DASH_CPU_WATTS_PER_CORE"


@dataclass(frozen=True)
class Energy:
    joules_per_call: float | None
    source: str
    note: str


def watts_per_core() -> float:
    try:
        return float(os.environ.get(WATTS_ENV, DEFAULT_WATTS_PER_CORE))
    except ValueError:
        return DEFAULT_WATTS_PER_CORE


def _rapl_readable() -> bool:
    base = "/sys/class/powercap/intel-rapl:0/energy_uj"
    return os.path.exists(base) and os.access(base, os.R_OK)


class EnergyWindow:
    """Context manager around a window of `calls` inferences; `.result(calls)` gives J per call."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._monitor = None
        if device == "cuda" or _rapl_readable():
            try:
                from zeus.monitor import ZeusMonitor

                gpus = [0] if device == "cuda" else []
                self._monitor = ZeusMonitor(gpu_indices=gpus, cpu_indices=None if _rapl_readable() else [])
            except Exception:  # no counter after all: fall back to the labelled estimate
                self._monitor = None
        self._proc = psutil.Process()
        self._measurement = None

    def __enter__(self) -> "EnergyWindow":
        self._cpu0 = sum(self._proc.cpu_times()[:2])
        if self._monitor is not None:
            self._monitor.begin_window("inference", sync_execution=self.device == "cuda")
        return self

    def __exit__(self, *exc) -> None:
        if self._monitor is not None:
            self._measurement = self._monitor.end_window("inference", sync_execution=self.device == "cuda")
        self._cpu_s = sum(self._proc.cpu_times()[:2]) - self._cpu0

    def result(self, calls: int) -> Energy:
        m = self._measurement
        if m is not None:
            if self.device == "cuda" and m.gpu_energy:
                return Energy(sum(m.gpu_energy.values()) / calls, "measured:nvml",
                              f"NVML total-energy counter over {m.time:.2f} s (GPU only)")
            if m.cpu_energy:
                return Energy(sum(m.cpu_energy.values()) / calls, "measured:rapl",
                              f"RAPL package energy over {m.time:.2f} s (whole package)")
        w = watts_per_core()
        return Energy(self._cpu_s * w / calls, "estimated:cpu-time",
                      f"process CPU time {self._cpu_s:.3f} s x {w:g} W per busy core ({WATTS_ENV} overrides); "
                      "no energy counter readable here")
