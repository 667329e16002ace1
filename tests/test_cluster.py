"""Sweeps on a Ray cluster (a private local one, as `ray.init(num_cpus=2)` would make): the same rows as in-process,
a raising configuration and a dying worker become failed rows, a killed driver resumes without duplicates."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from engine import api
from engine.jobs import cluster
from tests import user_models as u
from tests.conftest import ROOT
from tests.test_cli import run_cli

GRID = ["--model", "digits-mlp", "--prune", "0,0.5", "--bits", "none,8", "--profile", "quick"]

DIES_AT_BATCH_8 = """
import os

import torch
from torch import nn


class Dies(nn.Module):  # a model whose process dies (as on a segfault or an OOM kill) when it sees 8 inputs
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        if x.shape[0] == 8:
            os._exit(3)
        return self.fc(x)

"""


@pytest.fixture(scope="module")
def ray():
    ray = cluster.import_ray()
    yield ray
    ray.shutdown()


def _keys(db):
    with sqlite3.connect(db) as c:
        return sorted(c.execute("SELECT model, recipe_key, device_id, error IS NULL FROM results").fetchall())


def _keys_so_far(db):
    """The rows a running sweep stored yet (none while it is still creating the file's tables)."""
    try:
        return _keys(db)
    except sqlite3.OperationalError:
        return []


def test_the_same_grid_on_ray_and_in_process_gives_the_same_rows(ray, tmp_path):
    local, remote = tmp_path / "local.db", tmp_path / "ray.db"
    code, out, err = run_cli(["sweep", *GRID, "--db", str(local), "--json"])
    assert code == 0, err
    code, out, err = run_cli(["sweep", *GRID, "--db", str(remote), "--executor", "ray", "--json"])
    assert code == 0, err
    summary = json.loads(out)
    assert summary["measured"] == 4 and summary["failed"] == 0
    assert _keys(local) == _keys(remote) and len(_keys(remote)) == 4  # same recipes, same machine id
    code, out, err = run_cli(["sweep", *GRID, "--db", str(remote), "--executor", "ray", "--json"])
    assert json.loads(out)["measured"] == 0 and len(_keys(remote)) == 4  # nothing left to measure: no duplicates


def test_a_raising_configuration_and_a_dying_worker_become_failed_rows_and_the_sweep_goes_on(ray, tmp_path):
    from tests.test_user_models import RESHAPES

    u.contract_file(tmp_path / "reshapes.py", RESHAPES, "Fixed")
    u.contract_file(tmp_path / "dies.py", DIES_AT_BATCH_8, "Dies")
    db = tmp_path / "r.db"
    opts = api.ClusterOptions.parse(None, None, None)
    raises, _ = api.sweep_grid(api.model_name(f"py:{tmp_path / 'reshapes.py'}"), here=False, prune=[0, 0.5],
                               methods=["structured"])
    dies, _ = api.sweep_grid(api.model_name(f"py:{tmp_path / 'dies.py'}"), here=False, batch_size=[1, 8])
    summary = api.cluster_sweep(raises + dies, db, opts, profile="quick")
    assert summary.measured == 4 and summary.failed == 2
    rows = api.results(db)["rows"]
    errors = {(r["model"].split("|")[0].rsplit("/", 1)[-1], r["batch_size"]): r["error"] for r in rows}
    assert "shapes consistent" in errors[("reshapes.py", 1)] and errors[("dies.py", 1)] is None
    assert "died twice on this configuration" in errors[("dies.py", 8)] and "retried once" in errors[("dies.py", 8)]
    again = api.cluster_sweep(raises + dies, db, opts, profile="quick")
    assert again.measured == 0  # failed rows count as done unless --retry-failed


def test_a_killed_driver_resumes_with_only_what_is_missing(tmp_path):
    db = tmp_path / "r.db"
    argv = [sys.executable, "-m", "engine", "sweep", "--model", "digits-mlp", "--prune", "0,0.3,0.5,0.7",
            "--bits", "none,8,4", "--profile", "quick", "--executor", "ray", "--db", str(db), "--json"]
    driver = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and driver.poll() is None:
        if db.exists() and len(_keys_so_far(db)) >= 2:
            break
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and whatever it started, as a closed laptop would
    driver.wait()
    before = len(_keys(db))
    assert 2 <= before < 12, driver.stderr.read().decode()[-2000:]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    keys = _keys(db)
    assert len(keys) == 12 == len(set(keys)) and summary["measured"] == 12 - before


def test_bad_cluster_options_are_one_line_errors(tmp_path):
    for argv, needle in [
            (["--executor", "ray", "--resources", "{GPU: 1}"], "not valid JSON"),
            (["--executor", "ray", "--resources", '{"GPU": 0}'], "positive amounts"),
            (["--executor", "ray", "--node-label", "arm"], "KEY=VALUE"),
            (["--address", "auto"], "go with --executor ray"),
            (["--executor", "ray", "--address", "auto"], "cannot reach the Ray cluster at auto")]:
        code, out, err = run_cli(["sweep", "--model", "digits-mlp", "--db", str(tmp_path / "r.db"), *argv])
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_the_sweep_page_sends_the_grid_to_a_cluster_and_follows_each_machine(tmp_path, monkeypatch):
    from tests.test_dashboard import open_app

    db = str(tmp_path / "r.db")
    app = open_app(db, monkeypatch)
    app.switch_page("app_pages/sweep.py").run()
    app.multiselect(key="sw_amounts").set_value([0.0, 0.5])
    app.multiselect(key="sw_methods").set_value(["magnitude"])
    app.multiselect(key="sw_bits").set_value(["none"])
    app.multiselect(key="sw_prec").set_value(["fp32"])
    app.radio(key="sw_where").set_value("a Ray cluster").run()
    app.text_input(key="sw_ray_address").input("auto").run()  # no cluster runs here: one clear error
    app.button(key="sw_ray_run").click().run()
    job = app.session_state["_cluster_job_digits-cnn"]
    job.proc.wait(timeout=120)
    app.run()
    assert not app.exception and "cannot reach the Ray cluster at auto" in app.error[0].value

    app.text_input(key="sw_ray_address").input("").run()  # a private Ray instance on this machine
    app.button(key="sw_ray_run").click().run()
    job = app.session_state["_cluster_job_digits-cnn"]
    assert job.proc.wait(timeout=240) == 0, job.log.read_text()[-2000:]
    app.run()
    assert not app.exception and not app.error
    bars = [p.proto.text for p in app.get("progress")]
    assert len(bars) == 1 and bars[0].endswith(": 2/2"), bars  # one machine, both configurations
    assert any("Cluster sweep finished" in s.value for s in app.success)
