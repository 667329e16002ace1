"""The trackers: interference detection, blocked and paired timing, memory, energy, fingerprint.

Behaviour only: timing logic is driven by fake clocks and fake CPU meters; the detector is checked against
real busy-loop processes (asserting the flag, never a time)."""
import itertools
import time
import types

import numpy as np
import pytest
import torch

from engine.core.errors import UserError
from engine.core.recipe import Prune, Recipe
from engine.measure import energy, interference, latency, memory
from engine.measure.fingerprint import fingerprint

QUIET = interference.Window(0.1, 0.0, 0.0, 0.1, 0.0)
BUSY = interference.Window(0.1, 1.5, 0.0, 0.1, 0.5)
TINY = latency.Profile("t", warmup_calls=1, warmup_s=0.0, min_calls=10, min_s=0.0, block_s=0.0, min_pairs=4,
                       retry_s=0.0, limit_s=5.0)


class FakeMeter:
    """Interference snapshots whose windows follow a script: True = disturbed."""

    def __init__(self, script):
        self.script = itertools.chain(script, itertools.repeat(False))
        self.t = 0.0

    def __call__(self):
        self.t += 1.0
        busy = next(self.script)
        # A window's foreign CPU is the difference of consecutive snapshots: alternate 0 / busy steps.
        return interference.Snapshot(self.t, self.t * (3.0 if busy else 0.0), 0.0, 0.0, None)


def fake_clock(step_ns: int):
    t = itertools.count(0, step_ns)
    return lambda: next(t)


def test_summary_flags_noise():
    quiet = latency.summarize([1_000_000] * 50, 1.0, "test")
    noisy = latency.summarize(list(np.linspace(0.5e6, 2e6, 50)), 1.0, "test")
    assert not quiet["noisy"] and quiet["iqr_ratio"] == 0
    assert noisy["noisy"] and noisy["iqr_ratio"] > 0.1


def test_window_overlap_and_disturbance():
    w = interference.Window(0.1, 1.0, 0.0, 0.1)
    assert w.overlap(threads=1, cores=2) == 0.0 and not w.disturbed(threads=1, cores=2)  # it has its own core
    assert w.disturbed(threads=2, cores=2)  # it shares ours
    assert interference.Window(0.1, 0.0, 0.0, 0.1, pressure=0.5).disturbed(threads=1, cores=2)  # tasks waited
    assert interference.choose_threads(2, interference.Window(0.1, 0.02, 0, 0), cores=2) == 2
    assert interference.choose_threads(2, interference.Window(0.1, 1.0, 0, 0), cores=2) == 1
    assert interference.choose_threads(4, interference.Window(0.1, 3.0, 0, 0), cores=2) == 1


def test_min_calls_always_reached_and_quiet_not_flagged():
    t = latency.time_paired(lambda: None, lambda: None, TINY, threads=1, threads_requested=1,
                            clock=fake_clock(1000), meter=lambda: interference.Snapshot(time.perf_counter(), 0, 0, 0, 0))
    lat = t.latency
    assert lat["calls"] >= TINY.min_calls and lat["blocks_used"] >= TINY.min_pairs
    assert not lat["contended"] and not lat["insufficient"]


def test_disturbed_pairs_are_dropped_and_replaced():
    # Each pair takes 4 snapshots (2 blocks); disturb the first two pairs only.
    meter = FakeMeter([True] * 8)
    t = latency.time_paired(lambda: None, lambda: None, TINY, threads=2, threads_requested=2, cores=2,
                            clock=fake_clock(1000), meter=meter)
    lat = t.latency
    assert lat["blocks_disturbed"] >= 1 and lat["blocks_used"] < lat["blocks"]
    assert not lat["contended"] and lat["foreign_cpu"] == 0.0


def test_always_disturbed_is_flagged_contended_not_dropped():
    meter = FakeMeter(itertools.repeat(True))
    t = latency.time_paired(lambda: None, lambda: None, TINY, threads=2, threads_requested=2, cores=2,
                            clock=fake_clock(1000), meter=meter)
    assert t.latency["contended"] and t.latency["calls"] >= TINY.min_calls and t.latency["foreign_cpu"] > 1


def test_settle_runs_wherever_a_baseline_block_follows_the_configuration():
    # A runtime's spinning pool threads go idle before every baseline block that follows one of its blocks,
    # never inside a timed block; alone (no baseline) nothing needs settling.
    order = []
    quiet = lambda: interference.Snapshot(time.perf_counter(), 0, 0, 0, 0)  # noqa: E731
    t = latency.time_paired(lambda: order.append("C"), lambda: order.append("B"), TINY, threads=1,
                            threads_requested=1, clock=fake_clock(1000), meter=quiet,
                            settle=lambda: order.append("S"))
    runs = "".join(order)
    assert "CB" not in runs and "CSB" in runs and "S" not in runs.replace("CSB", "")
    assert "idle threads let go to sleep" in t.latency["method"]
    order.clear()
    latency.time_paired(lambda: order.append("C"), None, TINY, threads=1, threads_requested=1,
                        clock=fake_clock(1000), meter=quiet, settle=lambda: order.append("S"))
    assert "S" not in order


def test_until_idle_returns_once_the_process_is_idle_and_is_bounded():
    from engine.runtimes.base import until_idle

    assert until_idle(window_s=0.01) < 0.2
    import threading

    stop = threading.Event()
    spinner = threading.Thread(target=lambda: [None for _ in iter(stop.is_set, True)])
    spinner.start()
    try:
        assert until_idle(window_s=0.01, limit_s=0.1) >= 0.1  # a thread still spinning: the bound ends the wait
    finally:
        stop.set()
        spinner.join()


def test_fewer_threads_than_asked_is_flagged():
    t = latency.time_paired(lambda: None, None, TINY, threads=1, threads_requested=2,
                            clock=fake_clock(1000), meter=lambda: interference.Snapshot(time.perf_counter(), 0, 0, 0, 0))
    assert t.latency["contended"] and t.latency["threads"] == 1 and t.speedup is None


def test_paired_speedup_is_the_ratio_of_the_blocks():
    calls = {"fast": 0, "slow": 0}

    def run(name):
        def f():
            calls[name] += 1
        return f

    # A clock that advances 1 us per read, plus 3 us per call of the slow model: slow costs 4x... per call.
    state = {"t": 0, "extra": 0}

    def clock():
        state["t"] += 1000 + state.pop("extra", 0)
        state["extra"] = 0
        return state["t"]

    def slow():
        calls["slow"] += 1
        state["extra"] = 3000

    t = latency.time_paired(run("fast"), slow, TINY, threads=1, threads_requested=1, clock=clock,
                            meter=lambda: interference.Snapshot(time.perf_counter(), 0, 0, 0, 0))
    assert t.speedup == pytest.approx(4.0) and t.speedup_spread == pytest.approx(0.0)
    assert calls["fast"] >= TINY.min_calls and calls["slow"] >= TINY.min_pairs  # blocks are equal in time


def test_real_busy_processes_are_detected(busy):
    """Two busy loops per core: any run here must be flagged, and the foreign load seen."""
    from engine.measure.run import run_recipe

    quiet = interference.probe(0.3)
    busy(2 * interference.logical_cores())
    r = run_recipe(Recipe(model="digits-mlp", prune=Prune("magnitude", 0.5)), profile="quick")
    assert r.error is None and r.contended and r.latency.foreign_cpu > 0.5
    assert any("busy" in w for w in r.warnings)
    if quiet.foreign_cpu < interference.OVERLAP_THRESHOLD / 2:  # the check below needs a quiet machine
        assert quiet.overlap(threads=interference.logical_cores()) <= interference.OVERLAP_THRESHOLD


def test_quiet_machine_is_not_flagged():
    from engine.measure.run import run_recipe

    if interference.probe(0.3).foreign_cpu > interference.OVERLAP_THRESHOLD / 2:
        pytest.skip("other work is running on this machine now: the quiet case cannot be checked")
    r = run_recipe(Recipe(model="digits-mlp", prune=Prune("magnitude", 0.5)), profile="quick")
    assert not r.contended or interference.probe(0.3).foreign_cpu > interference.OVERLAP_THRESHOLD / 2


def test_memory_tracker_sees_a_known_allocation():
    size = 64 * 1024 * 1024
    keep = []

    def run():
        t = torch.ones(size // 4, dtype=torch.float32)  # touched pages: really resident
        keep.append(float(t[-1]))

    mem = memory.measure_run(torch.nn.Linear(4, 4), run, "cpu", calls=1)
    assert mem.model_bytes == (16 + 4) * 4
    assert mem.run_peak_bytes >= 0.9 * size
    assert mem.source.kind == "measured" and ("VmHWM" in mem.source.how or "RSS" in mem.source.how)


def test_energy_estimate_comes_from_the_used_blocks(monkeypatch):
    monkeypatch.setenv(energy.WATTS_ENV, "10")
    x = torch.randn(128, 128)
    t = latency.time_paired(lambda: x @ x, None, TINY, threads=1, threads_requested=1)
    e = energy.energy_of(t, energy.CounterMeter("cpu") if energy._rapl_readable() else _NoCounter())
    assert str(e.source) == "estimated:cpu-time" and "10 W per busy core" in e.source.note
    assert e.joules_per_call >= 0


class _NoCounter(energy.CounterMeter):
    def __init__(self):
        self.device, self._monitor, self._gpu = "cpu", None, False


@pytest.mark.parametrize("gpu, how, where", [(True, "nvml", "GPU only"), (False, "rapl", "whole CPU package")])
def test_a_readable_counter_is_a_measured_source(gpu, how, where):
    """The counter path (an NVIDIA GPU or readable RAPL) without the hardware: a meter that read 0.5 J."""
    class Read(energy.CounterMeter):
        def __init__(self):
            self.device, self._monitor, self._gpu = "cuda" if gpu else "cpu", object(), gpu

    timing = types.SimpleNamespace(calls=100, joules=0.5, used=[None] * 4, own_cpu_s=1.0)
    e = energy.energy_of(timing, Read())
    assert e.joules_per_call == pytest.approx(0.005) and str(e.source) == f"measured:{how}"
    assert e.source.kind == "measured" and where in e.source.note and "4 timed blocks" in e.source.note


@pytest.mark.parametrize("value", ["-5", "0", "1e308", "nan", "inf", "abc"])
def test_bad_watts_override_is_a_user_error(monkeypatch, value):
    monkeypatch.setenv(energy.WATTS_ENV, value)
    with pytest.raises(UserError, match=energy.WATTS_ENV):
        energy.watts_per_core()


def test_fingerprint_is_stable_and_describes_the_machine():
    from engine.measure.fingerprint import _own

    first = dict(fingerprint())
    _own.cache_clear()
    again = fingerprint()
    assert first is not again and first["id"] == again["id"] and again["torch"] == torch.__version__
    assert again["logical_cores"] >= 1
