"""The dashboard's measuring process: measurements leave the server's interpreter, background sweeps stop and
resume, and a worker that dies mid-configuration leaves a failed row, not a hole."""
import os
import signal
import sqlite3
import time

import pytest

from engine import api
from engine.core.errors import UserError
from engine.core.recipe import Prune, Recipe
from engine.jobs.worker import Worker
from engine.results.store import Store


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


def wait(worker, job, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = worker.status(job)
        if st is not None and st.finished:
            return st
        time.sleep(0.2)
    raise AssertionError(f"job {job} did not finish: {worker.status(job)}")


def test_measure_runs_in_another_process_and_stores_the_row(worker, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative store path means the caller's folder, not the worker's
    recipe = Recipe(model="digits-mlp", prune=Prune("magnitude", 0.5))
    m = api.measure_or_load(recipe, "rel.db", via=worker)
    assert worker.pid not in (None, os.getpid()) and not m.from_store and m.result.error is None
    assert (tmp_path / "rel.db").exists()
    again = api.measure_or_load(recipe, "rel.db", via=worker)
    assert again.from_store and again.row_id == m.row_id


def test_bad_input_comes_back_as_a_user_error(worker, tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSION_DASH_CPU_WATTS_PER_CORE", "-1")  # checked in this process first
    with pytest.raises(UserError):
        api.check_settings()
    with pytest.raises(UserError, match="not a usable results database"):
        (tmp_path / "bad.db").write_bytes(b"junk" * 100)
        worker.measure(Recipe(model="digits-mlp"), str(tmp_path / "bad.db"))


def test_a_background_sweep_stops_and_resumes(worker, tmp_path):
    db = str(tmp_path / "s.db")
    recipes, _ = api.sweep_grid("digits-mlp", prune=[0.0, 0.2, 0.4, 0.6, 0.8], methods=["magnitude", "structured"])
    job = worker.sweep(recipes, db)
    while (worker.status(job).done or 0) < 1:
        time.sleep(0.05)
    worker.stop(job)
    st = wait(worker, job)
    assert st.stopped and 1 <= st.done < st.total
    job = api.start_sweep(recipes, db, worker)
    assert job.running or job.progress().finished
    st = wait(worker, job.job)
    assert st.finished and not st.stopped and st.done == st.total >= len(recipes)  # + a second pass if busy
    assert job.result() == st and job.error() is None and not job.running
    with Store(db) as s:
        assert s.count() == len(recipes)
    assert api.start_sweep(recipes, db, worker) is None  # nothing left to measure


def test_a_worker_killed_mid_configuration_leaves_a_failed_row(tmp_path):
    db = str(tmp_path / "k.db")
    w = Worker()
    try:
        recipes, _ = api.sweep_grid("digits-cnn", prune=[0.1, 0.2, 0.3, 0.4], methods=["structured"])
        job = w.sweep(recipes, db)
        while w.status(job).current is None:
            time.sleep(0.01)
        os.kill(w.pid, signal.SIGKILL)
        st = wait(w, job)
        assert st.finished and st.failed >= 1
        con = sqlite3.connect(db)
        n, distinct = con.execute("SELECT COUNT(*), COUNT(DISTINCT recipe_key) FROM results").fetchone()
        errors = [e for (e,) in con.execute("SELECT error FROM results WHERE error IS NOT NULL")]
        assert n == distinct == len(recipes) and any("stopped while running" in e for e in errors)
    finally:
        w.close()


def test_the_worker_describes_models_and_its_machine(worker):
    """A front end reads what it shows from the measuring process (so it never loads torch itself)."""
    info = worker.describe("digits-mlp")
    assert info.metric_kind == "accuracy" and info.can_finetune and info.parameters == 50_610
    assert worker.hardware.logical_cores >= 1
    with pytest.raises(UserError, match="unknown model"):
        worker.describe("no-such-model")
    with pytest.raises(UserError, match="unknown model"):
        api.recipe_from_fields("no-such-model", via=worker)


def test_the_dashboard_server_never_loads_torch(tmp_path):
    """The first screen waits on one torch import (in the measuring process), not two: the server's own
    process shows Explore, measured, without importing torch or transformers."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = f"""
import sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({str(ROOT / 'dashboard' / 'app.py')!r}, default_timeout=180).run()
assert not at.exception, [e.value for e in at.exception]
assert at.metric, "no metric shown"
heavy = [m for m in ("torch", "transformers", "sklearn") if m in sys.modules]
print("HEAVY", heavy)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**os.environ, "COMPRESSION_DASH_DB": str(tmp_path / "r.db")})
    assert "HEAVY []" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
