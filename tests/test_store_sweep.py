import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from engine.cli import main
from engine.errors import UserError
from engine.recipe import Prune, Recipe
from engine.runner import measure
from engine.store import Store
from engine.sweep import expand_grid, run_sweep
from tests.conftest import ROOT


def test_store_round_trip_on_a_real_file(tmp_path):
    db = tmp_path / "r.db"
    r = measure(Recipe(model="digits-mlp", prune=Prune("magnitude", 0.5)))
    with Store(db) as s:
        rid = s.put(r)
        assert s.put(r) == rid  # same configuration on the same device: one row
        back = s.get_id(rid)
        assert back.to_dict() == json.loads(json.dumps(r.to_dict(), default=str))
        assert s.get(Recipe.from_dict(r.recipe), r.device["id"], r.engine_version)[1].accuracy == r.accuracy
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "1"
    assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 1


def test_corrupt_database_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UserError, match="not a usable results database"):
        Store(bad)


def test_grid_expansion_dedupes_and_explains_skips():
    recipes, skipped = expand_grid("digits-cnn", [0, 0.5], ["magnitude", "structured"], [None, 8], ["fp32", "bf16"],
                                   schemes=["dynamic"])
    keys = [r.key for r in recipes]
    assert len(keys) == len(set(keys))
    assert recipes[0] == Recipe(model="digits-cnn")
    assert any("cannot run" in s for s in skipped)


def test_failed_configuration_is_a_row_and_sweep_goes_on(tmp_path, monkeypatch):
    import engine.runner as runner

    real_apply = runner.apply

    def flaky(model, recipe, spec):
        if recipe.prune.method == "structured":
            raise RuntimeError("dependency graph broke")
        return real_apply(model, recipe, spec)

    monkeypatch.setattr(runner, "apply", flaky)
    recipes, _ = expand_grid("digits-mlp", [0, 0.5], ["magnitude", "structured"])
    with Store(tmp_path / "r.db") as s:
        summary = run_sweep(recipes, s, profile="quick")
        rows = s.rows()
    assert summary.measured == 3 and summary.failed == 1
    assert [r["error"] for r in rows if r["prune_method"] == "structured"] == ["RuntimeError: dependency graph broke"]
    assert all(r["accuracy"] is not None for r in rows if r["error"] is None)


SWEEP = ["-m", "engine", "sweep", "--model", "digits-mlp", "--prune", "0,0.2,0.4,0.6,0.8",
         "--prune-method", "magnitude,structured", "--bits", "none,8", "--profile", "quick", "--json"]


def test_sigkill_mid_sweep_then_resume_completes_without_duplicates(tmp_path):
    db = str(tmp_path / "kill.db")
    proc = subprocess.Popen([sys.executable, *SWEEP, "--db", db], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 90
    while time.time() < deadline:  # kill once a few rows are in, i.e. mid-sweep
        time.sleep(0.2)
        try:
            n = sqlite3.connect(db, timeout=5).execute("SELECT COUNT(*) FROM results").fetchone()[0]
        except sqlite3.Error:
            n = 0
        if n >= 3:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with Store(db) as s:
        before = s.count()
    assert 3 <= before < 18
    assert main([*SWEEP[2:], "--db", db]) == 0
    with Store(db) as s:
        rows = s.rows()
    keys = [r["recipe_key"] for r in rows]
    assert len(rows) == 18 and len(set(keys)) == 18  # 1 baseline + 4 amounts x 2 methods x 2 bit widths


def test_two_sweeps_on_one_file_at_once(tmp_path):
    db = str(tmp_path / "both.db")
    cmd = [sys.executable, "-m", "engine", "sweep", "--model", "digits-mlp", "--prune", "0,0.3,0.6",
           "--bits", "none,8", "--profile", "quick", "--db", db]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=180) == 0, p.stderr.read()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    n, distinct = con.execute("SELECT COUNT(*), COUNT(DISTINCT recipe_key) FROM results").fetchone()
    assert n == distinct == 6


def test_frontier_and_results_verbs(tmp_path, capsys):
    db = str(tmp_path / "f.db")
    assert main(["sweep", "--model", "digits-mlp", "--prune", "0,0.5", "--prune-method", "magnitude,structured",
                 "--bits", "none,8", "--profile", "quick", "--db", db, "--json"]) == 0
    capsys.readouterr()
    assert main(["frontier", "--model", "digits-mlp", "--db", db, "--min-accuracy", "0.9x", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["frontier"] and out["hypervolume"] > 0
    assert all(r["accuracy"] >= 0.9 * r["baseline_accuracy"] for r in out["frontier"])
    assert main(["results", "--db", db, "--format", "csv"]) == 0
    import io

    import pandas as pd

    df = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert len(df) == 6 and {"accuracy", "latency_p50_ms", "error", "energy_source"} <= set(df.columns)
    assert main(["frontier", "--model", "digits-mlp", "--db", str(tmp_path / "none.db")]) == 2
