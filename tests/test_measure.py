import time

import numpy as np
import torch

from engine.measure import energy, latency, memory
from engine.measure.fingerprint import fingerprint


def test_latency_tracks_sleep_ground_truth():
    prof = latency.Profile("t", warmup_calls=2, warmup_s=0.0, min_calls=20, min_s=0.0, max_s=5.0)
    lat = latency.time_calls(lambda: time.sleep(0.005), prof)
    assert lat.calls == 20
    assert 5.0 <= lat.p50 < 9.0  # sleep never returns early; scheduler overshoot is small
    assert lat.p90 >= lat.p50 and lat.p99 >= lat.p90
    assert not lat.p99_reliable  # fewer than 100 calls


def test_summary_flags_noise():
    quiet = latency.summarize([1_000_000] * 50, 1.0, "test")
    noisy = latency.summarize(list(np.linspace(0.5e6, 2e6, 50)), 1.0, "test")
    assert not quiet.noisy and quiet.iqr_ratio == 0
    assert noisy.noisy and noisy.iqr_ratio > 0.1


def test_memory_tracker_sees_a_known_allocation():
    size = 64 * 1024 * 1024
    keep = []

    def run():
        t = torch.ones(size // 4, dtype=torch.float32)  # touched pages: really resident
        keep.append(float(t[-1]))

    mem = memory.measure_run(torch.nn.Linear(4, 4), run, "cpu", calls=1)
    assert mem.model_bytes == (16 + 4) * 4
    assert mem.run_peak_bytes >= 0.9 * size
    assert mem.source.startswith("measured:")


def test_energy_is_labelled_estimated_without_counters(monkeypatch):
    monkeypatch.setenv(energy.WATTS_ENV, "10")
    monkeypatch.setattr(energy, "_rapl_readable", lambda: False)
    with energy.EnergyWindow("cpu") as win:
        x = torch.randn(256, 256)
        for _ in range(50):
            x @ x
    e = win.result(50)
    assert e.source == "estimated:cpu-time" and "10 W per busy core" in e.note
    assert e.joules_per_call > 0


def test_fingerprint_is_stable_and_describes_the_machine():
    fp = fingerprint()
    assert fp["id"] == fingerprint()["id"] and fp["torch"] == torch.__version__
    assert fp["logical_cores"] >= 1
