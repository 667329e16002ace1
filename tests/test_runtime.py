"""Runtimes: a recipe measured in ONNX Runtime is measured on the artifact that ships, with the same keys as eager."""
import hashlib
import json
import sqlite3

import pytest

from engine import api
from engine.cli import main
from engine.core.errors import RecipeError
from engine.core.recipe import Prune, Quantize, Recipe
from engine.jobs.sweep import expand_grid
from engine.measure.run import run_recipe
from engine.results.store import Store


def test_runtime_defaults_to_eager_and_old_recipes_keep_their_key():
    v1 = {"recipe_version": 1, "model": "digits-cnn", "prune": {"method": "none", "amount": 0.0, "scope": "global",
          "finetune_epochs": 0}, "quantize": {"bits": None, "scheme": "weight-only", "granularity": "per-channel",
                                              "group_size": 32}, "precision": "fp32", "device": "cpu", "batch_size": 1}
    text = json.dumps(v1, sort_keys=True, separators=(",", ":"))
    recipe = Recipe.from_dict(v1)
    assert recipe.runtime == "eager"
    assert recipe.key == hashlib.sha256(text.encode()).hexdigest()[:16]  # stores written before runtimes still match
    ort = recipe.with_(runtime="onnxruntime")
    assert ort.key != recipe.key and Recipe.from_json(ort.to_json()) == ort
    assert "onnxruntime" in ort.label() and not ort.is_baseline and ort.baseline() == recipe


@pytest.mark.parametrize("data, match", [
    ({"model": "m", "runtime": "tensorrt"}, "runtime"),
    ({"model": "m", "runtime": "onnxruntime", "device": "cuda"}, "CPU provider"),
    ({"model": "m", "recipe_version": 1, "runtime": "eager"}, "recipe_version 1, which has none"),
    ({"model": "m", "recipe_version": 2, "threads": 2}, "recipe_version 2, which has none"),
    ({"model": "m", "threads": 0}, "threads"),
])
def test_bad_runtimes_are_refused(data, match):
    with pytest.raises(RecipeError, match=match):
        Recipe.from_dict(data)


def test_version_2_recipes_keep_their_key_and_threads_are_part_of_the_configuration():
    v2 = {"recipe_version": 2, "model": "digits-cnn", "prune": {"method": "none", "amount": 0.0, "scope": "global",
          "finetune_epochs": 0}, "quantize": {"bits": 8, "scheme": "dynamic", "granularity": "per-channel",
                                              "group_size": 32}, "precision": "fp32", "device": "cpu", "batch_size": 1,
          "runtime": "onnxruntime"}
    recipe = Recipe.from_dict(v2)
    assert recipe.threads is None
    assert recipe.key == hashlib.sha256(json.dumps(v2, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    one = recipe.with_(threads=1)
    assert one.key != recipe.key and Recipe.from_json(one.to_json()) == one and "1 thread" in one.label()
    assert one.baseline().threads == 1  # its speed-up is paired with the baseline at the same threads
    recipes, _ = expand_grid("digits-mlp", bits=[None, 8], threads=[1, 2])
    assert {(r.threads, r.quantize.bits) for r in recipes} == {(1, None), (1, 8), (2, None), (2, 8)}


def test_runtime_is_a_sweep_axis():
    recipes, _ = expand_grid("digits-mlp", bits=[None, 8], runtimes=["eager", "onnxruntime"])
    assert {(r.runtime, r.quantize.bits) for r in recipes} == {("eager", None), ("eager", 8), ("onnxruntime", None),
                                                              ("onnxruntime", 8)}
    with pytest.raises(RecipeError, match="runtime"):
        expand_grid("digits-mlp", runtimes=["eager", "bogus"])


def test_sweep_refuses_a_bad_runtime(tmp_path, capsys):
    assert main(["sweep", "--model", "digits-mlp", "--runtime", "eager,bogus", "--db", str(tmp_path / "r.db")]) == 2
    assert "runtime" in capsys.readouterr().err


@pytest.fixture(scope="module")
def cnn_int8():
    return run_recipe(Recipe(model="digits-cnn", batch_size=8, quantize=Quantize(8, "dynamic"), runtime="onnxruntime"))


def test_onnxruntime_int8_runs_real_integer_convolutions(cnn_int8):
    r = cnn_int8
    assert r.error is None
    ran = [k for k in r.kernels if k.step == "onnxruntime"]
    assert ran and "QLinearConv" in ran[0].kernel and not r.simulated  # read from the optimized graph
    assert r.accuracy >= r.baseline_accuracy - 0.02
    assert r.prepare_s is not None and r.prepare_s > 0  # export time is recorded beside, not inside, the latency
    assert r.size_bytes < r.baseline_size_bytes / 2  # the int8 ONNX file is what ships


def test_onnxruntime_is_measured_as_deployed_and_says_how(cnn_int8):
    # ONNX Runtime's default session (idle threads spin), recorded with the result; the paired timer lets the
    # spinning threads go idle before the baseline's blocks instead of turning spinning off.
    sessions = {k.detail.get("session") for k in cnn_int8.kernels if k.step == "onnxruntime"}
    assert len(sessions) == 1 and "intra-op spinning on (ONNX Runtime's default)" in sessions.pop()
    assert "idle threads let go to sleep before each baseline block" in cnn_int8.latency.method


def test_onnxruntime_rows_carry_the_same_keys_as_eager(cnn_int8, tmp_path):
    eager = run_recipe(Recipe(model="digits-cnn", batch_size=8, quantize=Quantize(8, "dynamic")))
    assert cnn_int8.to_dict().keys() == eager.to_dict().keys()
    assert cnn_int8.to_dict()["latency_ms"].keys() == eager.to_dict()["latency_ms"].keys()
    assert cnn_int8.speedup is not None and cnn_int8.speedup > 0
    with Store(tmp_path / "r.db") as store:
        store.put(eager)
        store.put(cnn_int8)
        rows, damaged = store.rows("digits-cnn")
    assert damaged == 0 and {r["runtime"] for r in rows} == {"eager", "onnxruntime"}


def test_weight_only_bits_without_a_low_bit_kernel_are_flagged_simulated_in_onnxruntime():
    # 4-bit runs ONNX Runtime's MatMulNBits (tests/test_onnx_nbits.py); 3-bit has no kernel there
    r = run_recipe(Recipe(model="digits-mlp", quantize=Quantize(3, "weight-only"), runtime="onnxruntime"))
    assert r.error is None and r.simulated
    assert any("grid values" in w for w in r.warnings)


def test_a_version_2_store_is_upgraded_in_place(tmp_path):
    path = tmp_path / "r.db"
    with Store(path) as store:
        store.put(run_recipe(Recipe(model="digits-mlp")))
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE results DROP COLUMN runtime")
    conn.execute("ALTER TABLE results DROP COLUMN prepare_s")
    conn.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with Store(path) as store:
        rows, damaged = store.rows()
    assert damaged == 0 and [r["runtime"] for r in rows] == ["eager"]


def test_an_onnxruntime_bundle_ships_and_verifies_the_measured_model(tmp_path):
    recipe = Recipe(model="digits-mlp", quantize=Quantize(8, "dynamic"), runtime="onnxruntime")
    out = api.export(tmp_path / "b", recipe=recipe, profile="quick")
    assert abs(out["onnx_accuracy"] - out["accuracy"]) <= 0.005
    record = json.loads((tmp_path / "b" / "recipe.json").read_text())
    assert record["verification"]["primary"] == "model.onnx"
    assert record["metrics"]["size_bytes"] == (tmp_path / "b" / "model.onnx").stat().st_size
    assert "Measured and verified in onnxruntime" in (tmp_path / "b" / "README.md").read_text()
    checked = api.apply_bundle(tmp_path / "b")
    assert checked["error"] is None and all(c["ok"] for c in checked["checks"])


def test_structured_pruning_shrinks_the_onnx_model():
    r = run_recipe(Recipe(model="digits-mlp", prune=Prune("structured", 0.5), runtime="onnxruntime"))
    assert r.error is None and r.size_bytes < r.baseline_size_bytes * 0.7


def test_batch_sizes_are_a_sweep_axis_and_never_compete(tmp_path):
    recipes, _ = expand_grid("digits-mlp", bits=[None, 8], batch_size=[1, 4])
    assert {(r.batch_size, r.quantize.bits) for r in recipes} == {(1, None), (1, 8), (4, None), (4, 8)}
    db = tmp_path / "r.db"
    assert main(["sweep", "--model", "digits-mlp", "--bits", "none,8", "--batch-size", "1,4", "--profile", "quick",
                 "--db", str(db)]) == 0
    out = api.frontier("digits-mlp", db, "accuracy:max,latency:min", include_untrusted=True, batch_size=4)
    assert out["batch_sizes"] == [1, 4] and {r["batch_size"] for r in out["frontier"]} == {4}
    from engine.results.figures import batch_figure
    fig = batch_figure(api.model_rows("digits-mlp", db, ["accuracy", "latency"])["all_rows"])
    assert any(len(t.x) == 2 for t in fig.data)  # the int8 configuration, at both batch sizes


def test_a_re_measurement_reuses_the_artifact_and_reports_the_same_kernels(cnn_int8):
    again = run_recipe(Recipe(model="digits-cnn", batch_size=8, quantize=Quantize(8, "dynamic"), runtime="onnxruntime"))
    assert again.error is None and again.kernels == cnn_int8.kernels and again.prepare_s == cnn_int8.prepare_s


def test_compile_measures_the_compiled_model_with_the_same_keys(tmp_path):
    eager = run_recipe(Recipe(model="digits-mlp", quantize=Quantize(8, "dynamic")))
    r = run_recipe(Recipe(model="digits-mlp", runtime="compile"))
    assert r.error is None and r.to_dict().keys() == eager.to_dict().keys()
    assert r.to_dict()["latency_ms"].keys() == eager.to_dict()["latency_ms"].keys()
    ran = [k for k in r.kernels if k.step == "compile"]
    assert ran and "linear" in ran[0].kernel and ran[0].detail["graph breaks"] == 0
    assert r.prepare_s > 0 and abs(r.accuracy - r.baseline_accuracy) < 0.005
    again = run_recipe(Recipe(model="digits-mlp", runtime="compile"))  # the compiled model is kept: not compiled again
    assert again.prepare_s == r.prepare_s and again.kernels == r.kernels
    out = api.export(tmp_path / "b", recipe=Recipe(model="digits-mlp", runtime="compile"), profile="quick")
    record = json.loads((tmp_path / "b" / "recipe.json").read_text())
    assert record["verification"]["runtime"] == "compile" and record["verification"]["primary"] == "model.safetensors"
    assert "torch.compile(model)" in (tmp_path / "b" / "README.md").read_text()
    checked = api.apply_bundle(tmp_path / "b")  # re-evaluated through torch.compile
    assert out["accuracy"] == r.accuracy and checked["error"] is None


def test_a_model_that_fails_to_compile_is_a_failed_row(monkeypatch, tmp_path):
    import torch

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken)
    r = run_recipe(Recipe(model="digits-mlp", runtime="compile", precision="bf16"))  # not compiled before
    assert r.error == "RuntimeError: no C++ compiler found"
    with Store(tmp_path / "r.db") as store:
        store.put(r)
        rows, _ = store.rows("digits-mlp")
    assert rows[0]["error"] and rows[0]["runtime"] == "compile"
