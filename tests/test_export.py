"""Export bundles are verified where they will run, and `apply` re-creates them exactly."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine import storage
from engine.cli import main
from engine.export import ACCURACY_TOLERANCE, export, load_torch, onnx_feed, onnx_session
from engine.recipe import Prune, Quantize, Recipe
from engine.registry import get_spec
from engine.runner import base_model
from engine.transforms import apply

FAMILIES = {
    "magnitude": dict(prune=Prune("magnitude", 0.5)),
    "structured": dict(prune=Prune("structured", 0.3)),
    "int8": dict(quantize=Quantize(8, "dynamic")),
    "int4-group": dict(quantize=Quantize(4, "weight-only", "per-group", 16)),
    "bf16": dict(precision="bf16"),
    "fp16": dict(precision="fp16"),
}
# The transformer's export is slower: its families are covered in three combined recipes.
MINILM = {
    "int8": dict(quantize=Quantize(8, "dynamic")),
    "magnitude+int4+bf16": dict(prune=Prune("magnitude", 0.5), quantize=Quantize(4, "weight-only", "per-group", 32),
                                precision="bf16"),
    "structured+fp16": dict(prune=Prune("structured", 0.3), precision="fp16"),
}
CASES = [(m, f, kw) for m in ("digits-mlp", "digits-cnn") for f, kw in FAMILIES.items()] + \
        [("minilm", f, kw) for f, kw in MINILM.items()]


@pytest.mark.parametrize("model, family, kw", CASES, ids=[f"{m}-{f}" for m, f, _ in CASES])
def test_bundle_runs_in_onnx_runtime_with_small_gap(model, family, kw, tmp_path):
    out = export(Recipe(model=model, **kw), tmp_path / "bundle", profile="quick")
    assert set(out["files"]) >= {"recipe.json", "model.onnx", "model.safetensors", "compressed.bin",
                                 "model_card.json", "report.html", "README.md"}
    assert out["gap"] <= ACCURACY_TOLERANCE, out
    card = json.loads((tmp_path / "bundle" / "model_card.json").read_text())
    assert card["onnx"]["opset"] >= 18 and card["onnx"]["inputs"]
    assert out["compression_ratio"] > 1.0 or family in ("magnitude", "structured")


def test_bundle_contents_round_trip(tmp_path):
    recipe = Recipe(model="digits-cnn", prune=Prune("structured", 0.5), quantize=Quantize(4))
    export(recipe, tmp_path / "b", profile="quick")
    stored = load_file(str(tmp_path / "b" / "model.safetensors"))
    decoded = storage.decode((tmp_path / "b" / "compressed.bin").read_bytes())
    assert stored.keys() == decoded.keys() and all(torch.equal(stored[k], decoded[k]) for k in stored)
    model = load_torch(tmp_path / "b")
    spec = get_spec("digits-cnn")
    x = spec.example_inputs(8)
    base, _ = base_model("digits-cnn")
    with torch.no_grad():
        expected = apply(base, recipe, spec).model(x)
        assert torch.equal(model(x), expected)
        session = onnx_session(tmp_path / "b" / "model.onnx")
        onnx_out = session.run(None, onnx_feed(session, x))[0]
    np.testing.assert_allclose(onnx_out, expected.numpy(), atol=1e-4)
    html = (tmp_path / "b" / "report.html").read_text()
    assert "plotly" in html and "energy" in html and recipe.key in html


def test_cli_export_then_apply_recreates_identical_weights(tmp_path, capsys):
    b1, b2 = str(tmp_path / "b1"), str(tmp_path / "b2")
    assert main(["export", "--model", "digits-mlp", "--prune", "0.9", "--bits", "4", "--precision", "fp32",
                 "--out", b1, "--profile", "quick", "--json"]) == 0
    capsys.readouterr()
    assert main(["apply", "--recipe", f"{b1}/recipe.json", "--out", b2, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["identical_weights"] and out["same_accuracy"] and out["error"] is None
    assert (tmp_path / "b1" / "compressed.bin").read_bytes() == (tmp_path / "b2" / "compressed.bin").read_bytes()


def test_export_a_stored_row(tmp_path, capsys):
    db = str(tmp_path / "r.db")
    assert main(["sweep", "--model", "digits-mlp", "--prune", "0,0.5", "--profile", "quick", "--db", db]) == 0
    capsys.readouterr()
    assert main(["export", "--db", db, "--id", "2", "--out", str(tmp_path / "b"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    record = json.loads((tmp_path / "b" / "recipe.json").read_text())
    assert record["recipe"]["prune"]["amount"] == 0.5 and record["metrics"]["accuracy"] == out["accuracy"]


@pytest.mark.parametrize("content, needle", [
    (None, "no recipe file"),
    ("{not json", "not a valid recipe file"),
    ('{"model": "nope"}', "unknown model"),
    ('{"model": "digits-mlp", "prune": {"method": "magnitude", "amount": 1.5}}', "prune.amount"),
    ('[1, 2]', "JSON object"),
])
def test_apply_bad_recipe_files(tmp_path, capsys, content, needle):
    path = tmp_path / "recipe.json"
    if content is not None:
        path.write_text(content)
    assert main(["apply", "--recipe", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


def test_existing_output_is_refused_and_nothing_half_written(tmp_path, capsys, monkeypatch):
    out = tmp_path / "b"
    out.mkdir()
    assert main(["export", "--model", "digits-mlp", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    import engine.export as ex

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ex, "_export_onnx", broken)
    with pytest.raises(RuntimeError):
        export(Recipe(model="digits-mlp"), tmp_path / "c", profile="quick")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no partial bundle, no temp folder


def test_corrupt_weights_file_is_a_clear_error(tmp_path):
    export(Recipe(model="digits-mlp"), tmp_path / "b", profile="quick")
    (tmp_path / "b" / "model.safetensors").write_bytes(b"\x80\x04malicious pickle? no: not loaded")
    from engine.errors import UserError

    with pytest.raises(UserError, match="not a valid safetensors"):
        load_torch(tmp_path / "b")
