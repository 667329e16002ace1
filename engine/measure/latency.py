"""Per-call latency after warm-up, with spread statistics and a noise flag (the measurement protocol)."""
from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

NOISY_IQR_RATIO = 0.10
RELIABLE_P99_CALLS = 100


@dataclass(frozen=True)
class Profile:
    """How long to warm up and time. `quick` serves interaction; `thorough` serves sweeps and export."""

    name: str
    warmup_calls: int
    warmup_s: float
    min_calls: int
    min_s: float
    max_s: float


PROFILES = {
    "quick": Profile("quick", warmup_calls=5, warmup_s=0.05, min_calls=30, min_s=0.25, max_s=0.6),
    "thorough": Profile("thorough", warmup_calls=5, warmup_s=0.15, min_calls=100, min_s=0.35, max_s=4.0),
}


@dataclass(frozen=True)
class Latency:
    p50: float
    p90: float
    p99: float
    mean: float
    iqr_ratio: float
    calls: int
    window_s: float
    noisy: bool
    p99_reliable: bool
    method: str

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(samples_ns: list[int] | np.ndarray, window_s: float, method: str) -> Latency:
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    q25, p50, q75, p90, p99 = np.percentile(ms, [25, 50, 75, 90, 99])
    iqr_ratio = float((q75 - q25) / p50) if p50 > 0 else 0.0
    return Latency(p50=float(p50), p90=float(p90), p99=float(p99), mean=float(ms.mean()), iqr_ratio=iqr_ratio,
                   calls=len(ms), window_s=window_s, noisy=iqr_ratio > NOISY_IQR_RATIO,
                   p99_reliable=len(ms) >= RELIABLE_P99_CALLS, method=method)


def time_calls(fn: Callable[[], object], profile: Profile, sync: Callable[[], None] | None = None,
               window: AbstractContextManager | None = None) -> Latency:
    """Warm up, then time each call until both the call count and the time floor are met (capped by max_s).

    `window` (e.g. an energy window) is entered after warm-up and spans exactly the timed calls.
    """
    sync = sync or (lambda: None)
    start = time.perf_counter()
    n = 0
    while n < profile.warmup_calls or time.perf_counter() - start < profile.warmup_s:
        fn()
        n += 1
    sync()
    samples: list[int] = []
    with window or nullcontext():
        t0 = time.perf_counter()
        while True:
            a = time.perf_counter_ns()
            fn()
            sync()
            samples.append(time.perf_counter_ns() - a)
            elapsed = time.perf_counter() - t0
            if (len(samples) >= profile.min_calls and elapsed >= profile.min_s) or elapsed >= profile.max_s:
                break
    method = "perf_counter_ns per call" + (", CUDA-synchronised" if sync.__name__ != "<lambda>" else "")
    return summarize(samples, time.perf_counter() - t0, method)
