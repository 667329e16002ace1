"""How much CPU other work takes while we time: the signal that tells a true number from a disturbed one.

Foreign CPU = machine-wide busy CPU time (user, nice, system, irq, softirq and VM steal, from psutil, i.e.
/proc/stat on Linux) minus this process's own CPU time, per second of wall time: the average number of
cores busy with other work. Machine-wide counters tick at 100 Hz, so a reading over 0.1 s has about
±0.1 cores of noise (measured on the development VM: quiet max 0.10 at 0.1 s, 0.05 at 0.2 s); decisions
are taken on windows of at least that length.

Usage alone cannot see demand: two busy processes beside a 1-thread run on 2 cores *use* only ~1.2 cores
(the scheduler time-slices all three), yet every block is stretched. Where Linux exposes CPU pressure
(/proc/pressure/cpu, PSI: the share of time some runnable task waited for a CPU, in microseconds),
that is read too. A window is *disturbed* when other work occupies more than OVERLAP_THRESHOLD of the
cores our threads need (`overlap`), or when tasks waited for a CPU more than PRESSURE_THRESHOLD of the time.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psutil

# A window is disturbed when other work occupies more than this many of the cores our threads need.
# 0.3 cores is three times the counter noise of a 0.1 s window, and far below the 1.0 of one busy process.
OVERLAP_THRESHOLD = 0.3
# ... or when some runnable task waited for a CPU during more than this share of the window (PSI "some").
# Quiet development VM: <= 0.002 over 0.1 s; one 1-thread run beside two busy processes on 2 cores: 0.5.
PRESSURE_THRESHOLD = 0.1
PSI_FILE = "/proc/pressure/cpu"
PROBE_S = 0.1  # idle look at the machine before choosing threads


@dataclass(frozen=True)
class Snapshot:
    wall: float  # perf_counter seconds
    machine_busy: float  # seconds of busy CPU, all cores
    steal: float  # seconds of VM steal, all cores
    own: float  # seconds of this process's CPU (all threads), precise
    pressure: float | None  # seconds during which some runnable task waited for a CPU (None: no PSI here)


def logical_cores() -> int:
    return os.cpu_count() or 1


def _pressure() -> float | None:
    try:
        with open(PSI_FILE, encoding="ascii") as fh:
            return int(fh.readline().rsplit("total=", 1)[1]) / 1e6
    except (OSError, IndexError, ValueError):
        return None


def snapshot() -> Snapshot:
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    busy = sum(t) - idle - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)  # guest is inside user
    return Snapshot(time.perf_counter(), busy, getattr(t, "steal", 0.0), time.process_time(), _pressure())


@dataclass(frozen=True)
class Window:
    """CPU use between two snapshots."""

    wall_s: float
    foreign_cpu: float  # average cores busy with other work (steal included)
    steal_cpu: float
    own_cpu_s: float
    pressure: float | None = None  # share of the window during which some runnable task waited for a CPU

    @classmethod
    def between(cls, a: Snapshot, b: Snapshot) -> "Window":
        wall = max(b.wall - a.wall, 1e-9)
        own = max(b.own - a.own, 0.0)
        foreign = max((b.machine_busy - a.machine_busy) - own, 0.0) / wall
        pressure = None if a.pressure is None or b.pressure is None else max(b.pressure - a.pressure, 0.0) / wall
        return cls(wall, foreign, max(b.steal - a.steal, 0.0) / wall, own, pressure)

    @classmethod
    def combine(cls, windows: list["Window"]) -> "Window":
        """Wall-weighted average of consecutive windows."""
        wall = sum(w.wall_s for w in windows)
        avg = lambda f: sum(f(w) * w.wall_s for w in windows) / wall  # noqa: E731
        pressure = None if any(w.pressure is None for w in windows) else avg(lambda w: w.pressure)
        return cls(wall, avg(lambda w: w.foreign_cpu), avg(lambda w: w.steal_cpu), sum(w.own_cpu_s for w in windows),
                   pressure)

    def overlap(self, threads: int, cores: int | None = None) -> float:
        """Foreign cores beyond those our `threads` leave free."""
        free = (cores or logical_cores()) - threads
        return max(0.0, self.foreign_cpu - free)

    def disturbed(self, threads: int, cores: int | None = None) -> bool:
        return (self.overlap(threads, cores) > OVERLAP_THRESHOLD
                or (self.pressure is not None and self.pressure > PRESSURE_THRESHOLD))


def probe(seconds: float = PROBE_S) -> Window:
    """Foreign load while this process idles: what other work demands right now."""
    a = snapshot()
    time.sleep(seconds)
    return Window.between(a, snapshot())


def choose_threads(requested: int, load: Window, cores: int | None = None) -> int:
    """Threads to run with: the requested count, or the cores other work leaves free (at least 1).

    An OpenMP thread that shares a core with another busy process stalls every barrier of every
    operator: on the 2-core development VM, a 2-thread run beside one busy process read 2x slower and
    bimodal, while a 1-thread run beside it was as steady as a quiet one. So a run never asks for more
    threads than there are free cores; the count used is recorded and the result flagged contended."""
    free = (cores or logical_cores()) - load.foreign_cpu
    return max(1, min(requested, int(free + OVERLAP_THRESHOLD)))
