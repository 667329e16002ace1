import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from engine import __version__
from engine.cli import main
from engine.core.errors import RecipeError, UserError
from engine.core.recipe import Prune, Recipe
from engine.jobs.sweep import expand_grid, run_sweep
from engine.measure.run import run_recipe
from engine.results.store import SCHEMA_VERSION, Store
from tests.conftest import ROOT


def test_store_round_trip_on_a_real_file(tmp_path):
    db = tmp_path / "r.db"
    r = run_recipe(Recipe(model="digits-mlp", prune=Prune("magnitude", 0.5)))
    with Store(db) as s:
        rid = s.put(r)
        assert s.put(r) == rid  # same configuration on the same device: one row
        back = s.get_id(rid)
        assert back.to_dict() == json.loads(json.dumps(r.to_dict(), default=str))
        assert s.get(Recipe.from_dict(r.recipe), r.machine.id)[1].accuracy == r.accuracy
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
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


@pytest.mark.parametrize("axes, field", [
    (dict(prune=[0, 1.5]), "prune.amount"), (dict(precisions=["fp32", "fp64"]), "precision"),
    (dict(schemes=["bogus"]), "quantize.scheme"), (dict(bits=[None, 12]), "quantize.bits"),
    (dict(methods=["random"]), "prune.method"), (dict(prune=[]), "prune"),
])
def test_a_bad_axis_value_is_an_error_not_a_smaller_grid(axes, field):
    with pytest.raises(RecipeError, match=field):
        expand_grid("digits-cnn", **axes)


def _result(profile, contended, accuracy, version=__version__):
    r = run_recipe(Recipe(model="digits-mlp", prune=Prune("magnitude", 0.3)), profile="quick")
    r.profile, r.accuracy, r.engine_version = profile, accuracy, version
    r.latency = replace(r.latency, contended=contended)
    return r


def test_the_store_keeps_the_better_measurement(tmp_path):
    with Store(tmp_path / "q.db") as s:
        rid = s.put(_result("thorough", False, 0.5))
        assert s.put(_result("quick", False, 0.6)) == rid and s.get_id(rid).accuracy == 0.5  # quick never replaces
        s.put(_result("thorough", False, 0.7))
        assert s.get_id(rid).accuracy == 0.7  # a re-measure at the same quality does
        s.put(_result("thorough", True, 0.8))
        assert s.get_id(rid).accuracy == 0.7  # a contended one does not replace a quiet one
        s2 = tmp_path / "c.db"
    with Store(s2) as s:
        rid = s.put(_result("thorough", True, 0.5))
        s.put(_result("quick", False, 0.6))
        assert s.get_id(rid).accuracy == 0.6  # a quiet one replaces a contended one
        s.put(_result("thorough", False, 0.9, version="0.0.1"))
        assert s.get_id(rid).accuracy == 0.6 and s.count() == 1  # an older engine never replaces


def test_damaged_rows_are_skipped_and_counted(tmp_path):
    db = tmp_path / "d.db"
    with Store(db) as s:
        s.put(run_recipe(Recipe(model="digits-mlp"), profile="quick"))
        rid = s.put(run_recipe(Recipe(model="digits-mlp", prune=Prune("magnitude", 0.5)), profile="quick"))
    con = sqlite3.connect(db)
    con.execute("UPDATE results SET accuracy='abc' WHERE id=?", (rid,))
    con.commit()
    with Store(db) as s:
        rows, damaged = s.rows()
        assert len(rows) == 1 and damaged == 1
    con.execute("UPDATE results SET accuracy=0.5, result_json='{broken' WHERE id=?", (rid,))
    con.commit()
    with Store(db) as s:
        with pytest.raises(UserError, match="damaged"):
            s.get_id(rid)
        assert s.get(Recipe(model="digits-mlp", prune=Prune("magnitude", 0.5)), rows[0]["device_id"]) is None
        s.put(run_recipe(Recipe(model="digits-mlp", prune=Prune("magnitude", 0.5)), profile="quick"))
        assert s.get_id(rid).accuracy is not None  # a damaged row is replaced by the next measurement


def version_1_store(db) -> None:
    """A store as the first engine wrote it: schema version 1, two rows of one recipe by two engine versions."""
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    con.execute("CREATE TABLE results (id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, recipe_key TEXT "
                "NOT NULL, device_id TEXT NOT NULL, engine_version TEXT NOT NULL, label TEXT, accuracy REAL, "
                "latency_p50_ms REAL, error TEXT, recipe_json TEXT NOT NULL, result_json TEXT NOT NULL, "
                "UNIQUE (model, recipe_key, device_id, engine_version))")
    recipe = Recipe(model="digits-mlp")
    for version, acc in (("0.0.9", 0.9), ("0.1.0", 0.95)):
        con.execute("INSERT INTO results (model, recipe_key, device_id, engine_version, label, accuracy, "
                    "recipe_json, result_json) VALUES (?, ?, 'dev', ?, 'fp32', ?, ?, '{}')",
                    ("digits-mlp", recipe.key, version, acc, recipe.to_json()))
    con.commit()
    con.close()


def test_a_version_1_store_is_upgraded_in_place(tmp_path):
    db = tmp_path / "v1.db"
    version_1_store(db)
    with Store(db) as s:
        rows, damaged = s.rows()
    assert [r["accuracy"] for r in rows] == [0.95] and damaged == 0
    assert sqlite3.connect(db).execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)


def test_failed_configuration_is_a_row_and_sweep_goes_on(tmp_path, monkeypatch):
    import engine.measure.run as run

    real_apply = run.apply

    def flaky(model, recipe, spec, **kw):
        if recipe.prune.method == "structured":
            raise RuntimeError("dependency graph broke")
        return real_apply(model, recipe, spec, **kw)

    monkeypatch.setattr(run, "apply", flaky)
    recipes, _ = expand_grid("digits-mlp", [0, 0.5], ["magnitude", "structured"])
    with Store(tmp_path / "r.db") as s:
        summary = run_sweep(recipes, s, profile="quick")
        rows, _ = s.rows()
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
        rows, _ = s.rows()
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
    # --include-contended: the assertions below must hold whatever else this machine is doing.
    assert main(["frontier", "--model", "digits-mlp", "--db", db, "--min-accuracy", "0.9x", "--include-contended",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["frontier"] and out["hypervolume"] > 0
    assert all(r["accuracy"] >= 0.9 * r["baseline_accuracy"] for r in out["frontier"])
    assert main(["results", "--db", db, "--format", "csv"]) == 0
    import io

    import pandas as pd

    df = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert len(df) == 6 and {"accuracy", "latency_p50_ms", "error", "energy_source"} <= set(df.columns)
    assert main(["frontier", "--model", "digits-mlp", "--db", str(tmp_path / "none.db")]) == 2


def test_a_database_of_another_application_is_refused_untouched(tmp_path):
    other = tmp_path / "app.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE users (name TEXT)")
    con.commit()
    con.close()
    before = other.read_bytes()
    for write in (True, False):
        with pytest.raises(UserError, match="another application"):
            Store(other, write=write)
    assert other.read_bytes() == before  # no tables added, not even switched to WAL


def test_a_garbled_schema_version_is_one_clear_error(tmp_path):
    db = tmp_path / "g.db"
    with Store(db):
        pass
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value='²' WHERE key='schema_version'")
    con.commit()
    with pytest.raises(UserError, match="schema version"):
        Store(db)


def test_a_write_protected_store_can_still_be_read(tmp_path):
    db = tmp_path / "ro.db"
    with Store(db) as s:
        s.put(run_recipe(Recipe(model="digits-mlp"), profile="quick"))
    db.chmod(0o444)
    try:
        with Store(db, write=False) as s:
            rows, _ = s.rows()
        assert len(rows) == 1
    finally:
        db.chmod(0o644)


def test_a_result_that_does_not_match_its_row_is_damaged(tmp_path):
    db = tmp_path / "m.db"
    with Store(db) as s:
        a = s.put(run_recipe(Recipe(model="digits-mlp"), profile="quick"))
        b = s.put(run_recipe(Recipe(model="digits-cnn"), profile="quick"))
    con = sqlite3.connect(db)
    other = con.execute("SELECT result_json FROM results WHERE id=?", (b,)).fetchone()[0]
    con.execute("UPDATE results SET result_json=? WHERE id=?", (other, a))
    con.commit()
    with Store(db) as s:
        with pytest.raises(UserError, match="damaged"):
            s.get_id(a)
        with pytest.raises(UserError, match="positive integer"):
            s.get_id(10 ** 30)


@pytest.mark.parametrize("field, value", [
    ("latency_ms", {"p50": "abc"}), ("latency_ms", None), ("accuracy", None), ("extra_metrics", {"x": "y"}),
    ("machine", {"cpu_flags": [1, 2]}), ("machine", {"id": 7}), ("energy_source", "guessed:nvml"),
    ("memory_source", 5), ("size_bytes", "big"), ("error", 12345), ("accuracy", float("nan")),
    ("kernels", [{"step": 1}]), ("recipe", {"model": "digits-mlp", "prune": None}),
])
def test_every_field_of_a_stored_result_is_checked(field, value):
    from engine.core.result import Result

    data = run_recipe(Recipe(model="digits-mlp"), profile="quick").to_dict()
    data[field] = value
    with pytest.raises((TypeError, ValueError)):
        Result.from_dict(data)
