"""Latency in short blocks, each judged for interference, paired with the baseline (the measurement protocol).

A configuration is timed in blocks that alternate with blocks of its model's uncompressed baseline
(B C C B B C ...: the order flips every pair so slow drifts cancel). Each pair of blocks is one sample of
the speed-up, and one window in which other work's CPU use is read (`interference`). The speed-up is the
median over pairs of baseline/configuration 10th-percentile call times: a call stretched by time-slicing
is never faster than its true cost (the argument Python's `timeit` makes for the minimum), so a low
percentile keeps those stretches out, while on a quiet machine it reads within a few % of a median ratio
(development VM: 2.77 vs 2.70, 2.06 vs 1.98). The headline latency stays the p50 of the used blocks.

Single-threaded runs on the CPU also read the calling thread's CPU clock around each call (all of a
1-thread operator runs in that thread). That clock does not advance while the thread waits for a core,
so time-slicing beside busy processes cannot stretch it; on a free core it agrees with the wall clock.
There the speed-up uses it: beside two busy processes on 2 cores, a 1 ms call fits inside a time slice
while a 4 ms one is cut in two, so wall-clock ratios of calls near the slice length read up to 40 % high. Pairs disturbed by other work are dropped and replaced by new ones within a retry
budget; if too few quiet pairs come, every pair is used and the result is flagged `contended`. The call
minimum of the profile is always reached, or the result says `insufficient`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from engine.core.errors import UserError
from engine.measure import interference

NOISY_IQR_RATIO = 0.10
RELIABLE_P99_CALLS = 100


@dataclass(frozen=True)
class Profile:
    """How long to warm up and time. `quick` serves interaction; `thorough` serves sweeps and export."""

    name: str
    warmup_calls: int
    warmup_s: float
    min_calls: int  # timed calls of the configuration, always reached (else the result says insufficient)
    min_s: float  # timed seconds of the configuration
    block_s: float  # one block of calls; a pair of blocks (baseline + configuration) is judged for interference
    min_pairs: int
    retry_s: float  # extra time allowed to replace disturbed pairs with quiet ones
    limit_s: float  # hard stop


PROFILES = {
    "quick": Profile("quick", warmup_calls=3, warmup_s=0.05, min_calls=20, min_s=0.2, block_s=0.05, min_pairs=4,
                     retry_s=1.5, limit_s=60.0),
    "thorough": Profile("thorough", warmup_calls=5, warmup_s=0.15, min_calls=100, min_s=0.5, block_s=0.1,
                        min_pairs=8, retry_s=4.0, limit_s=300.0),
}


def check_profile(profile: str) -> str:
    """A profile name, refused by name if unknown."""
    if profile not in PROFILES:
        raise UserError(f"profile={str(profile)[:40]!r} is not allowed: choose one of {', '.join(PROFILES)}")
    return profile


class Block:
    """One run of consecutive calls of one model, with the CPU use of the machine around it."""

    def __init__(self, samples_ns: list[int], window: interference.Window, joules: float | None,
                 cpu_ns: list[int] | None = None) -> None:
        self.samples_ns, self.window, self.joules, self.cpu_ns = samples_ns, window, joules, cpu_ns

    @property
    def median_ns(self) -> float:
        return float(np.median(self.samples_ns))

    @property
    def low_ns(self) -> float:
        """10th-percentile call time (thread CPU time where read): the block's cost without time-slicing."""
        return float(np.percentile(self.cpu_ns if self.cpu_ns else self.samples_ns, 10))

    @property
    def busy_s(self) -> float:
        return sum(self.samples_ns) / 1e9


@dataclass
class Pair:
    config: Block
    baseline: Block | None

    @property
    def window(self) -> interference.Window:
        """Wall-weighted CPU use over both blocks."""
        return interference.Window.combine([b.window for b in (self.config, self.baseline) if b is not None])

    @property
    def ratio(self) -> float | None:
        return None if self.baseline is None else self.baseline.low_ns / max(self.config.low_ns, 1.0)


@dataclass
class Timing:
    """What `time_paired` returns: the configuration's latency, its paired speed-up, and the blocks behind them."""

    latency: dict[str, Any]
    speedup: float | None
    speedup_spread: float | None
    used: list[Pair] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return sum(len(p.config.samples_ns) for p in self.used)

    @property
    def own_cpu_s(self) -> float:
        return sum(p.config.window.own_cpu_s for p in self.used)

    @property
    def joules(self) -> float | None:
        js = [p.config.joules for p in self.used]
        return None if any(j is None for j in js) else float(sum(js))


def summarize(samples_ns: list[int] | np.ndarray, window_s: float, method: str) -> dict[str, Any]:
    """Percentiles, spread and the noise flag of per-call times (milliseconds)."""
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    q25, p50, q75, p90, p99 = np.percentile(ms, [25, 50, 75, 90, 99])
    iqr_ratio = float((q75 - q25) / p50) if p50 > 0 else 0.0
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(ms.mean()),
            "iqr_ratio": iqr_ratio, "calls": int(len(ms)), "window_s": window_s, "noisy": iqr_ratio > NOISY_IQR_RATIO,
            "p99_reliable": len(ms) >= RELIABLE_P99_CALLS, "method": method}


def _warm(fn: Callable[[], object], sync: Callable[[], None], profile: Profile) -> float:
    """Warm up; return the mean seconds of one call (sizes the blocks)."""
    start, n = time.perf_counter(), 0
    while n < profile.warmup_calls or time.perf_counter() - start < profile.warmup_s:
        fn()
        sync()
        n += 1
    return (time.perf_counter() - start) / n


class EnergyMeter:
    """Per-block energy counter readings (None where no counter is readable)."""

    def begin(self) -> None: ...

    def end(self) -> float | None:
        return None


def _block(fn: Callable[[], object], sync: Callable[[], None], target_s: float, energy: EnergyMeter,
           clock: Callable[[], int], meter: Callable[[], interference.Snapshot],
           cpu_clock: Callable[[], int] | None) -> Block:
    snap = meter()
    energy.begin()
    samples: list[int] = []
    cpu: list[int] = []
    t0 = clock()
    target_ns = target_s * 1e9
    while True:
        c = cpu_clock() if cpu_clock else 0
        a = clock()
        fn()
        sync()
        b = clock()
        if cpu_clock:
            cpu.append(cpu_clock() - c)
        samples.append(b - a)
        if b - t0 >= target_ns:
            break
    joules = energy.end()
    return Block(samples, interference.Window.between(snap, meter()), joules, cpu or None)


def thread_clock(threads: int, on_cpu: bool) -> Callable[[], int] | None:
    """The calling thread's CPU clock where one thread does all the work and the clock is fine-grained."""
    if threads != 1 or not on_cpu or time.get_clock_info("thread_time").resolution > 1e-6:
        return None
    return time.thread_time_ns


def _enough(pairs: list[Pair], p: Profile) -> bool:
    calls = sum(len(x.config.samples_ns) for x in pairs)
    busy = sum(x.config.busy_s for x in pairs)
    return len(pairs) >= p.min_pairs and calls >= p.min_calls and busy >= p.min_s


def time_paired(fn: Callable[[], object], baseline: Callable[[], object] | None, profile: Profile, threads: int,
                threads_requested: int, sync: Callable[[], None] | None = None, energy: EnergyMeter | None = None,
                clock: Callable[[], int] = time.perf_counter_ns,
                meter: Callable[[], interference.Snapshot] = interference.snapshot,
                cores: int | None = None, cpu_clock: Callable[[], int] | None = None,
                settle: Callable[[], object] | None = None) -> Timing:
    """Time `fn` in blocks alternating with blocks of `baseline` (None: time `fn` alone).

    `settle` runs wherever a baseline block follows one of `fn` (the runtime's threads spinning down,
    see `Artifact.settle`), outside every timed block, so neither arm runs beside the other's idle threads.

    `threads` is what the caller set for this run; fewer than `threads_requested` flags the result
    contended (its absolute times are not those of a quiet machine), while the paired speed-up, taken
    at one thread count for both, stays comparable."""
    sync = sync or (lambda: None)
    energy = energy or EnergyMeter()
    settle = settle if baseline is not None else None
    per_call = _warm(fn, sync, profile)
    if baseline is not None:
        if settle:
            settle()
        _warm(baseline, sync, profile)
    # Blocks long enough for a steady median and a readable CPU counter (a judged window is >= 2 blocks'
    # worth of time, paired or not), short enough to interleave often.
    block_s = max(profile.block_s * (1 if baseline is not None else 2), per_call)
    pairs: list[Pair] = []
    start = time.perf_counter()
    need_s = None
    while True:
        first_baseline = len(pairs) % 2 == 0
        if baseline is not None and first_baseline:
            b = _block(baseline, sync, block_s, EnergyMeter(), clock, meter, cpu_clock)
        c = _block(fn, sync, block_s, energy, clock, meter, cpu_clock)
        if baseline is not None and not first_baseline:
            if settle:
                settle()
            b = _block(baseline, sync, block_s, EnergyMeter(), clock, meter, cpu_clock)
        pairs.append(Pair(c, b if baseline is not None else None))
        elapsed = time.perf_counter() - start
        if need_s is None:  # time the minimum would take on a quiet machine, from the first pair
            per_pair = elapsed
            c_calls, c_busy = len(c.samples_ns), max(c.busy_s, 1e-9)
            need_s = per_pair * max(profile.min_pairs, math.ceil(profile.min_calls / c_calls),
                                    math.ceil(profile.min_s / c_busy))
        quiet = [x for x in pairs if not x.window.disturbed(threads, cores)]
        if _enough(quiet, profile):
            used, contended, insufficient = quiet, False, False
            break
        if elapsed >= 2 * need_s + profile.retry_s and _enough(pairs, profile):
            used, contended, insufficient = pairs, True, False
            break
        if elapsed >= profile.limit_s:
            used, contended, insufficient = pairs, True, not _enough(pairs, profile)
            break
    return _timing(used, pairs, profile, threads, threads_requested, contended, insufficient, sync, settle)


def _timing(used: list[Pair], pairs: list[Pair], profile: Profile, threads: int, threads_requested: int,
            contended: bool, insufficient: bool, sync: Callable[[], None],
            settle: Callable[[], object] | None = None) -> Timing:
    samples = [s for p in used for s in p.config.samples_ns]
    window_s = sum(p.config.window.wall_s for p in used)
    paired = any(p.baseline is not None for p in used)
    method = (f"perf_counter_ns per call in {len(used)} blocks"
              + (" alternating with the baseline" if paired else "") + f", {profile.name} profile"
              + ("" if sync.__name__ == "<lambda>" else ", CUDA-synchronised")
              + (", its idle threads let go to sleep before each baseline block" if settle else "")
              + ("; speed-up from the thread's CPU clock (one thread)" if used[0].config.cpu_ns else ""))
    lat = summarize(samples, window_s, method)
    wall = sum(p.window.wall_s for p in used)
    block_medians = np.array([p.config.median_ns for p in used]) / 1e6
    lat.update(
        threads=threads, threads_requested=threads_requested,
        foreign_cpu=round(sum(p.window.foreign_cpu * p.window.wall_s for p in used) / wall, 3),
        steal_cpu=round(sum(p.window.steal_cpu * p.window.wall_s for p in used) / wall, 3),
        cpu_pressure=None if any(p.window.pressure is None for p in used)
        else round(sum(p.window.pressure * p.window.wall_s for p in used) / wall, 3),
        contended=bool(contended or threads < threads_requested), insufficient=insufficient,
        blocks=len(pairs), blocks_used=len(used),
        blocks_disturbed=sum(p.window.disturbed(threads) for p in pairs),
        block_p50_q25=float(np.percentile(block_medians, 25)), block_p50_q75=float(np.percentile(block_medians, 75)),
        contention_threshold_cores=interference.OVERLAP_THRESHOLD)
    ratios = [p.ratio for p in used if p.ratio is not None]
    if not ratios:  # the baseline itself: no pair to compare with (the key stays, so every row has the same keys)
        lat["baseline_p50"] = None
        return Timing(lat, None, None, used)
    lat["baseline_p50"] = float(np.median([s for p in used for s in p.baseline.samples_ns]) / 1e6)
    q25, med, q75 = np.percentile(ratios, [25, 50, 75])
    return Timing(lat, float(med), float((q75 - q25) / med) if med > 0 else None, used)
