"""Sensitivity and the accuracy-constrained search, through the real CLI and a real SQLite file."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from engine import api
from engine.jobs import search as searcher
from engine.jobs import sensitivity
from tests.conftest import ROOT
from tests.test_cli import one_line_exit_2, run_cli


def test_sensitivity_is_stored_ranked_and_repeats(tmp_path):
    db = tmp_path / "r.db"
    code, out, err = run_cli(["sensitivity", "--model", "digits-cnn", "--db", str(db), "--levels", "0.5,0.9", "--json"])
    assert code == 0, err
    first = json.loads(out)
    assert first["from_store"] is False and set(first["ranking"]) == {"conv1", "conv2", "fc"}
    row = next(r for r in first["layers"] if r["layer"] == "fc")
    assert set(row["drops"]) == {"0.5", "0.9"} and 0 < row["size_share"] < 1 and row["latency_share"] >= 0
    again = api.sensitivity("digits-cnn", db, "prune", [0.5, 0.9])
    assert again["from_store"] is True and again["ranking"] == first["ranking"]
    fresh = api.sensitivity("digits-cnn", db, "prune", [0.5, 0.9], fresh=True)
    assert fresh["ranking"][:3] == first["ranking"][:3]  # evaluated on the fixed split: the same order
    assert api.stored_sensitivity("digits-cnn", db)["levels"] == [0.5, 0.9]
    quant = api.sensitivity("digits-mlp", db, "quantize", [4, 2])
    assert quant["method"] == "weight-only" and "classifier" in quant["ranking"]
    code, out, _ = run_cli(["sensitivity", "--model", "digits-cnn", "--db", str(db), "--levels", "0.5,0.9"])
    assert code == 0 and "most sensitive first" in out


@pytest.mark.parametrize("argv, needle", [
    (["sensitivity", "--model", "digits-cnn", "--technique", "distill"], "technique='distill'"),
    (["sensitivity", "--model", "digits-cnn", "--levels", "0.5,1.5"], "level 1.5"),
    (["sensitivity", "--model", "digits-cnn", "--technique", "quantize", "--levels", "4,12"], "level 12"),
    (["sensitivity", "--model", "nope"], "unknown model"),
    (["search", "--model", "digits-cnn", "--min-accuracy", "0.99x", "--budget-s", "0"], "--budget-s 0.0"),
    (["search", "--model", "digits-cnn", "--min-accuracy", "0.99x", "--budget-s", "-5"], "--budget-s -5.0"),
    (["search", "--model", "digits-cnn", "--min-accuracy", "0.99x", "--trials", "0"], "--trials 0"),
    (["search", "--model", "digits-cnn", "--min-accuracy", "0.99x"], "one of the arguments --trials --budget-s"),
    (["search", "--model", "digits-cnn", "--min-accuracy", "0.99x", "--trials", "3", "--budget-s", "4"],
     "not allowed with argument"),
    (["search", "--model", "digits-cnn", "--min-accuracy", "0.999", "--trials", "3"], "above the uncompressed"),
    (["search", "--model", "digits-cnn", "--min-accuracy", "1.5x", "--trials", "3"], "min accuracy"),
    (["search", "--model", "digits-cnn", "--min-accuracy", "0.99x", "--trials", "3", "--objectives", "latency:max,size"],
     "always minimised"),
])
def test_bad_input_is_one_line(tmp_path, argv, needle):
    one_line_exit_2(argv + ["--db", str(tmp_path / "r.db")], needle)


def test_search_stores_trials_as_rows_and_resumes(tmp_path):
    db = tmp_path / "r.db"
    stop = {"now": False}  # a front end's Stop, pressed after the second trial
    out = api.search("digits-mlp", db, "0.98x", "latency:min,size:min", trials=6,
                     on_trial=lambda s: stop.update(now=s["trials_done"] >= 2), should_stop=lambda: stop["now"])
    assert out["trials_done"] == 2 and out["stopped"]
    rows = api.results(db, "digits-mlp")["rows"]
    n_rows = len(rows)
    assert n_rows == 2  # each measured trial: an ordinary row, on the frontier like any point
    out = api.search("digits-mlp", db, "0.98x", "latency:min,size:min", trials=6)
    assert out["trials_done"] == 6 and not out["stopped"]
    rows = api.results(db, "digits-mlp")["rows"]
    assert len({(r["recipe_key"], r["device_id"]) for r in rows}) == len(rows)  # no duplicate rows
    for found in out["found"]:
        assert found["accuracy"] >= out["threshold"]
        assert any(r["id"] == found["row_id"] for r in rows)
    if len(out["found"]) > 1:
        assert [f["relative_latency"] for f in out["found"]] == sorted(f["relative_latency"] for f in out["found"])
    front = api.frontier("digits-mlp", db, "accuracy,speedup", include_untrusted=True)  # a busy CI machine
    assert front["considered"] >= 2


def test_a_killed_search_resumes_without_losing_trials(tmp_path):
    db, progress = tmp_path / "r.db", tmp_path / "p.json"
    cmd = [sys.executable, "-m", "engine", "search", "--model", "digits-mlp", "--db", str(db), "--min-accuracy",
           "0.95", "--trials", "40", "--progress", str(progress)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if json.loads(progress.read_text())["trials_done"] >= 2:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads(progress.read_text())["trials_done"]
    assert done >= 2
    code, out, err = run_cli(["search", "--model", "digits-mlp", "--db", str(db), "--min-accuracy", "0.95",
                              "--trials", str(done + 2), "--json"])
    assert code == 0, err
    again = json.loads(out)
    assert again["trials_done"] == done + 2 and again["study"] == json.loads(progress.read_text())["study"]
    rows = api.results(db, "digits-mlp")["rows"]
    assert len({(r["recipe_key"], r["device_id"]) for r in rows}) == len(rows)


def test_the_search_space_and_warm_start_come_from_sensitivity():
    from engine.models import base_model

    _, spec = base_model("digits-cnn")
    space = searcher.Space("digits-cnn", spec, ["conv1", "conv2", "fc"], ["conv1", "fc", "conv2", "classifier"],
                           can_train=True, labelled=True, native_bf16=False)
    assert space.sensitive == ["conv1", "fc", "conv2"] and space.recover_method == "finetune"
    starts = space.warm_starts()
    assert starts[0]["scale_0"] < 1.0 and [s["recover_steps"] for s in starts] == [0, 100, 300]  # cheapest first
    assert sensitivity.probe_recipe("digits-cnn", "quantize", "", "fc", 4).layers[1].pattern == "fc"
