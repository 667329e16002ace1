"""Reliability: several processes on one store, duplicate keys in every JSON input, tampered bundles, stopping
a verb with SIGINT or SIGTERM. Real child processes wherever the failure is between processes."""
import multiprocessing as mp
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from engine.results.store import SCHEMA_VERSION
from tests.test_results import version_1_store

OPENERS = 6


def _open_store(path: str, barrier) -> None:
    """Child process: open (create or upgrade) the store at the same moment as the others; a failure is its
    traceback on stderr (shown by pytest) and a non-zero exit code."""
    from engine.results.store import Store

    barrier.wait()
    Store(path).close()


def _open_all_at_once(path: Path) -> list[int]:
    """The exit codes of the processes that opened `path` together."""
    ctx = mp.get_context("spawn")  # the test process may hold torch's threads: no fork
    barrier = ctx.Barrier(OPENERS)
    procs = [ctx.Process(target=_open_store, args=(str(path), barrier)) for _ in range(OPENERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    return [p.exitcode for p in procs]


def _check_current(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    return con


def test_processes_creating_one_new_store_at_once_all_succeed(tmp_path):
    for round_ in range(8):  # the race lost about one round in fifteen before opening waited
        db = tmp_path / f"new{round_}.db"
        assert _open_all_at_once(db) == [0] * OPENERS
        _check_current(db).close()


def test_processes_upgrading_one_old_store_at_once_all_succeed_and_upgrade_it_once(tmp_path):
    for round_ in range(4):
        db = tmp_path / f"v1-{round_}.db"
        version_1_store(db)
        assert _open_all_at_once(db) == [0] * OPENERS
        con = _check_current(db)
        assert con.execute("SELECT accuracy FROM results").fetchall() == [(0.95,)]
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "results_v1" not in tables
        con.close()


# --- stopping a verb ------------------------------------------------------------------------------------------
GRID = ["--model", "digits-mlp", "--prune", "0,0.2,0.4,0.6,0.8", "--bits", "none,8", "--profile", "quick"]


def _stop_after_two_rows(db: Path, sig: int) -> tuple[int, str]:
    """Start a sweep, wait for two progress lines, send `sig`; (exit code, stderr)."""
    import os
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    proc = subprocess.Popen([sys.executable, "-m", "engine", "sweep", *GRID, "--db", str(db)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 240
    while len([ln for ln in lines if ln.startswith("[")]) < 2:  # progress lines, one per row stored
        line = proc.stderr.readline()
        assert line and time.monotonic() < deadline, "".join(lines) + proc.stderr.read()
        lines.append(line)
    os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, "".join(lines) + err


def _rows(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = con.execute("SELECT recipe_key, result_json FROM results").fetchall()
    con.close()
    return rows


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_sweep_stopped_by_a_signal_says_so_keeps_whole_rows_and_resumes(tmp_path, sig, code):
    import json

    from engine.cli import main

    db = tmp_path / "stopped.db"
    returncode, err = _stop_after_two_rows(db, sig)
    assert returncode == code, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    rows = _rows(db)
    assert 2 <= len(rows) < 10 and all(json.loads(r[1])["recipe"] for r in rows)  # whole rows, and not all of them
    last = err.strip().splitlines()[-1]
    assert last == f"stopped: {len(rows)} rows saved in {db}; run the same command to resume", err
    assert main(["sweep", *GRID, "--db", str(db)]) == 0  # the same command resumes
    keys = [r[0] for r in _rows(db)]
    assert len(keys) == len(set(keys)) == 10


# --- duplicate keys in every JSON input -----------------------------------------------------------------------
TWICE = "names the key 'model' twice"


@pytest.mark.parametrize("text", [
    '{"model": "nope", "model": "digits-mlp"}',  # a bare recipe
    '{"recipe": {"model": "nope", "model": "digits-mlp"}}',  # a bundle record
    '{"recipe": {"model": "digits-mlp", "prune": {"method": "magnitude", "amount": 0.5, "amount": 0.9}}}',
], ids=["recipe", "record", "nested"])
def test_a_recipe_file_with_a_duplicated_key_is_one_line_error(tmp_path, capsys, text):
    from engine.cli import main

    path = tmp_path / "recipe.json"
    path.write_text(text)
    assert main(["apply", "--recipe", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "twice" in err and err.count("\n") == 0 and "Traceback" not in err, err


def test_a_layers_flag_with_a_duplicated_key_is_refused(capsys):
    from engine.cli import main

    layers = '{"fc1": {"bits": 8}, "fc1": {"bits": 4}}'
    assert main(["run", "--model", "digits-mlp", "--layers", layers, "--json"]) == 2
    assert "names the key 'fc1' twice" in capsys.readouterr().err


def test_a_results_file_with_a_duplicated_key_is_refused(tmp_path):
    from engine import api
    from engine.core.errors import UserError

    doc = b'{"format": "compression-dash-results", "format_version": 1, "results": [], "results": [{}]}'
    with pytest.raises(UserError, match="not a results file: it names the key 'results' twice"):
        api.import_results(str(tmp_path / "r.db"), doc)


def test_a_job_file_with_a_duplicated_key_is_refused(tmp_path, capsys):
    from engine.jobs import cluster

    job = tmp_path / "job.json"
    job.write_text('{"db": "a.db", "db": "b.db", "recipes": [], "profile": "quick"}')
    assert cluster.main([str(job)]) == 2
    assert "names the key 'db' twice" in capsys.readouterr().err


def test_a_background_task_file_with_a_duplicated_key_is_refused(tmp_path, capsys):
    from engine.jobs.command import run_file

    job = tmp_path / "job.json"
    job.write_text('{"task": {}, "progress": null, "out": "a.json", "out": "b.json"}')
    assert run_file(lambda **fields: None, [str(job)]) == 2
    err = capsys.readouterr().err
    assert "names the key 'out' twice" in err and "Traceback" not in err


def test_a_cluster_resources_flag_with_a_duplicated_key_is_refused():
    from engine.core.errors import UserError
    from engine.jobs.cluster import ClusterOptions

    with pytest.raises(UserError, match="names the key 'GPU' twice"):
        ClusterOptions.parse(None, '{"GPU": 1, "GPU": 2}', None)


def test_uploaded_evaluation_rows_and_model_configs_with_a_duplicated_key_are_refused(tmp_path):
    from engine.core.errors import UserError
    from engine.models import hf, user

    rows = tmp_path / "eval.jsonl"
    rows.write_text('{"text": "good", "label": 1}\n{"text": "bad", "label": 0, "label": 1}\n')
    with pytest.raises(UserError, match=r"line 2 names the key 'label' twice"):
        user.read_rows(rows, ("text", "label"), "give text and label")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert", "model_type": "vit"}')
    with pytest.raises(UserError, match="names the key 'model_type' twice"):
        hf.resolve(str(folder))


def test_a_compressed_model_header_with_a_duplicated_key_is_refused():
    import struct

    from engine.compress import codec

    header = b'{"format": 1, "tensors": [], "tensors": []}'
    with pytest.raises(codec.CodecError, match="names the key 'tensors' twice"):
        codec.read_header(codec.MAGIC + struct.pack("<I", len(header)) + header)


def test_a_safetensors_header_with_a_duplicated_key_is_refused(tmp_path):
    import struct

    from engine.core.errors import UserError
    from engine.models import weights

    header = b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "w": {"dtype": "F32", "shape": [9]}}'
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(UserError, match="names the key 'w' twice"):
        weights.header(path)


def test_a_stored_row_with_a_duplicated_key_is_a_damaged_row(tmp_path):
    from engine.core.errors import UserError
    from engine.core.recipe import Recipe
    from engine.measure.run import run_recipe
    from engine.results.store import Store

    db = tmp_path / "r.db"
    with Store(db) as s:
        rid = s.put(run_recipe(Recipe(model="digits-mlp"), profile="quick"))
    con = sqlite3.connect(db)
    text = con.execute("SELECT result_json FROM results WHERE id=?", (rid,)).fetchone()[0]
    con.execute("UPDATE results SET result_json=? WHERE id=?", ('{"accuracy": 0.1, ' + text[1:], rid))
    con.commit()
    con.close()
    with Store(db) as s:
        with pytest.raises(UserError, match="damaged"):
            s.get_id(rid)


# --- a tampered bundle ----------------------------------------------------------------------------------------
def test_a_bundle_whose_record_is_replaced_by_a_bare_recipe_is_refused(tmp_path):
    import json
    import subprocess
    import sys

    from engine import api
    from engine.core.recipe import Recipe
    from tests.conftest import ROOT

    folder = tmp_path / "bundle"
    api.export(folder, recipe=Recipe(model="digits-mlp"), profile="quick")
    record = json.loads((folder / "recipe.json").read_text())
    (folder / "recipe.json").write_text(json.dumps(record["recipe"]))  # a bare recipe in the bundle's place
    for target in (folder, folder / "recipe.json"):
        done = subprocess.run([sys.executable, "-m", "engine", "apply", "--recipe", str(target)], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 1, done.stderr
        assert "recipe.json" in done.stderr and "bare recipe" in done.stderr and "Traceback" not in done.stderr
    alone = tmp_path / "elsewhere" / "recipe.json"  # the same bare recipe beside no bundle files still applies
    alone.parent.mkdir()
    alone.write_text(json.dumps(record["recipe"]))
    (alone.parent / "README.md").write_text("notes")
    done = subprocess.run([sys.executable, "-m", "engine", "apply", "--recipe", str(alone)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_a_reader_that_closes_the_pipe_early_gets_no_traceback():
    """`compression-dash models | head -1`: the reader stops early; the verb ends quietly (exit 141, as Unix tools)."""
    proc = subprocess.Popen([sys.executable, "-m", "engine", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before the verb prints
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err, err
