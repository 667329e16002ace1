"""Bundles: verified where they will run, written only where it is safe, and never trusted when read back."""
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from engine import api
from engine.bundle.bundle import ACCURACY_TOLERANCE, FILES, load_torch, sha256
from engine.cli import main
from engine.compress import codec
from engine.compress.layers import resolve
from engine.compress.pipeline import apply
from engine.compress.quantize import recorded_choice, select_kernels
from engine.core.recipe import Prune, Quantize, Recipe
from engine.models import base_model, get_spec
from engine.runtimes.onnx import onnx_feed, onnx_session
from tests.registry_cases import techniques

FAMILIES = techniques()  # every registered prune method and scheme, every reduced precision
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
    out = api.export(tmp_path / "bundle", recipe=Recipe(model=model, **kw), profile="quick")
    assert set(out["files"]) == set(FILES) | {"recipe.json"}
    assert out["gap"] <= ACCURACY_TOLERANCE, out
    card = json.loads((tmp_path / "bundle" / "model_card.json").read_text())
    assert card["onnx"]["opset"] >= 18 and card["onnx"]["inputs"]
    assert out["compression_ratio"] > 1.0 or "prune" in kw  # pruning alone may store no smaller


RECIPE = Recipe(model="digits-cnn", prune=Prune("structured", 0.5), quantize=Quantize(4))


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good") / "b"
    api.export(folder, recipe=RECIPE, profile="quick")
    return folder


@pytest.fixture
def bundle(good_bundle, tmp_path):
    """A fresh copy of a good bundle to damage."""
    return Path(shutil.copytree(good_bundle, tmp_path / "b"))


def test_bundle_contents_round_trip(good_bundle):
    stored = load_file(str(good_bundle / "model.safetensors"))
    decoded = codec.decode((good_bundle / "compressed.bin").read_bytes())
    assert stored.keys() == decoded.keys() and all(torch.equal(stored[k], decoded[k]) for k in stored)
    model = load_torch(good_bundle)
    spec = get_spec("digits-cnn")
    x = spec.example_inputs(8)
    base, _ = base_model("digits-cnn")
    # the kernels as measured: the per-layer packed/float choice the record holds, not a fresh timing
    chosen = recorded_choice(json.loads((good_bundle / "recipe.json").read_text())["metrics"]["kernels"])
    assert chosen is None or all(re.fullmatch(r"int4/\d+|int8|float", c) for c in chosen.values())
    reference = apply(base, RECIPE, spec, kernels=False).model
    select_kernels(reference, RECIPE.quantize, "cpu", resolve(RECIPE, reference), chosen=chosen)
    with torch.no_grad():
        expected = reference(x)
        assert torch.equal(model(x), expected)
        session = onnx_session(good_bundle / "model.onnx")
        onnx_out = session.run(None, onnx_feed(session, x))[0]
    # int4 weight-only runs on ONNX Runtime's MatMulNBits, at accuracy level 4 (int8 activations) where that
    # agrees with fp32 compute within 1 %
    assert np.linalg.norm(onnx_out - expected.numpy()) <= 0.01 * np.linalg.norm(expected.numpy())
    html = (good_bundle / "report.html").read_text()
    assert "plotly" in html and "energy" in html and RECIPE.key in html and "speed-up" in html
    record = json.loads((good_bundle / "recipe.json").read_text())
    assert set(record["bundle"]["files"]) == set(FILES)


def test_a_good_bundle_verifies(good_bundle, capsys):
    assert main(["apply", "--recipe", str(good_bundle), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["error"] is None and out["identical_weights"] and all(c["ok"] for c in out["checks"])
    assert abs(out["onnx_accuracy"] - out["accuracy"]) <= ACCURACY_TOLERANCE


def _rehash(folder: Path) -> None:
    """Make recipe.json agree with the files again: the attacker who also edits the record."""
    record = json.loads((folder / "recipe.json").read_text())
    record["bundle"]["files"] = {f: sha256(folder / f) for f in FILES}
    (folder / "recipe.json").write_text(json.dumps(record))


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _negate_classifier(path: Path) -> None:
    state = load_file(str(path))
    state["classifier.weight"] = -state["classifier.weight"]
    save_file(state, str(path))


def _wrong_shape(path: Path) -> None:
    state = load_file(str(path))
    state["classifier.weight"] = torch.zeros(3, 3)
    save_file(state, str(path))


def _huge_header(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes((2 ** 62).to_bytes(8, "little") + data[8:])


def _symlink_system_file(path: Path) -> None:
    path.unlink()
    path.symlink_to("/etc/passwd")


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


TAMPER = {
    "safetensors-flipped": ("model.safetensors", _flip),
    "safetensors-truncated": ("model.safetensors", lambda p: p.write_bytes(p.read_bytes()[:100])),
    "safetensors-wrong-shape": ("model.safetensors", _wrong_shape),
    "safetensors-huge-header": ("model.safetensors", _huge_header),
    "safetensors-symlink": ("model.safetensors", _symlink_system_file),
    "classifier-negated": ("model.safetensors", _negate_classifier),
    "onnx-random": ("model.onnx", _random_bytes),
    "compressed-random": ("compressed.bin", _random_bytes),
    "report-edited": ("report.html", lambda p: p.write_text("<script>alert(1)</script>")),
    "card-edited": ("model_card.json", lambda p: p.write_text("{}")),
}


@pytest.mark.parametrize("rehash", [False, True], ids=["record-untouched", "record-rehashed"])
@pytest.mark.parametrize("case", TAMPER)
def test_a_tampered_bundle_exits_1_and_names_the_file(bundle, case, rehash, capsys):
    name, damage = TAMPER[case]
    damage(bundle / name)
    if rehash:
        if case == "report-edited":
            pytest.skip("a consistently re-hashed report is a different, valid report")
        if (bundle / name).is_symlink():
            record = json.loads((bundle / "recipe.json").read_text())
            record["bundle"]["files"][name] = "0" * 64
            (bundle / "recipe.json").write_text(json.dumps(record))
        else:
            _rehash(bundle)
    assert main(["apply", "--recipe", str(bundle / "recipe.json"), "--json"]) == 1
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    result = json.loads(out.out)
    assert result["error"] and name in result["error"]


def test_a_symlinked_record_is_refused(bundle, tmp_path, capsys):
    outside = tmp_path / "elsewhere.json"
    shutil.move(bundle / "recipe.json", outside)
    (bundle / "recipe.json").symlink_to(outside)
    assert main(["apply", "--recipe", str(bundle)]) == 1
    assert "symbolic link" in capsys.readouterr().err


def test_an_onnx_model_pointing_outside_the_bundle_is_refused(bundle, capsys):
    import onnx
    from onnx.external_data_helper import set_external_data

    proto = onnx.load(str(bundle / "model.onnx"))
    set_external_data(proto.graph.initializer[0], location="../../../../etc/passwd")
    proto.graph.initializer[0].ClearField("raw_data")
    onnx.save(proto, str(bundle / "model.onnx"))
    _rehash(bundle)
    assert main(["apply", "--recipe", str(bundle), "--json"]) == 1
    assert "other files" in json.loads(capsys.readouterr().out)["error"]


def test_an_old_bundle_without_file_hashes_does_not_verify(bundle, capsys):
    record = json.loads((bundle / "recipe.json").read_text())
    del record["bundle"]
    (bundle / "recipe.json").write_text(json.dumps(record))
    assert main(["apply", "--recipe", str(bundle)]) == 1
    assert "no file hashes" in capsys.readouterr().err


def test_export_then_apply_writes_an_identical_bundle(good_bundle, tmp_path, capsys):
    assert main(["apply", "--recipe", str(good_bundle / "recipe.json"), "--out", str(tmp_path / "b2"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["new_bundle"]
    assert (good_bundle / "compressed.bin").read_bytes() == (tmp_path / "b2" / "compressed.bin").read_bytes()


def test_a_bare_recipe_is_re_created(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(Recipe(model="digits-mlp", prune=Prune("magnitude", 0.5)).to_json())
    assert main(["apply", "--recipe", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bundle"] is None and out["accuracy"] > 0.9


def test_export_a_stored_row(tmp_path, capsys):
    db = str(tmp_path / "r.db")
    assert main(["sweep", "--model", "digits-mlp", "--prune", "0,0.5", "--profile", "quick", "--db", db]) == 0
    capsys.readouterr()
    assert main(["export", "--db", db, "--id", "2", "--out", str(tmp_path / "b"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    record = json.loads((tmp_path / "b" / "recipe.json").read_text())
    assert record["recipe"]["prune"]["amount"] == 0.5 and record["metrics"]["accuracy"] == out["accuracy"]
    assert record["metrics"]["baseline_size_bytes"] == out["fp32_bytes"]  # one fp32 size everywhere


@pytest.mark.parametrize("content, needle", [
    (None, "no recipe file"),
    ("{not json", "not valid JSON"),
    ('{"model": "nope"}', "unknown model"),
    ('{"model": "digits-mlp", "prune": {"method": "magnitude", "amount": 1.5}}', "prune.amount"),
    ('{"model": "digits-mlp", "prune": null}', "prune"),
    ('{"model": "digits-mlp", "quantize": [8]}', "quantize"),
    ('{"recipe": {"model": "digits-mlp"}, "metrics": 3}', "metrics"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('[1, 2]', "JSON object"),
])
def test_apply_bad_recipe_files(tmp_path, capsys, content, needle):
    path = tmp_path / "recipe.json"
    if content is not None:
        path.write_text(content)
    assert main(["apply", "--recipe", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err


def test_force_never_deletes_what_is_not_a_bundle(tmp_path, good_bundle, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "precious.txt").write_text("keep me")
    monkeypatch.chdir(work)
    args = ["export", "--model", "digits-mlp", "--profile", "quick", "--force", "--out"]
    for out, needle in ((".", "current folder"), ("..", "current folder"), (str(Path.home()), "home"), ("/", "root")):
        assert main(args + [out]) == 2, out
        assert needle in capsys.readouterr().err
    (work / "mine").mkdir()
    (work / "mine" / "notes.txt").write_text("mine")
    assert main(args + ["mine"]) == 2 and "not a bundle" in capsys.readouterr().err
    assert main(args + ["precious.txt"]) == 2 and "is a file" in capsys.readouterr().err
    mixed = Path(shutil.copytree(good_bundle, work / "mixed"))
    (mixed / "notes.txt").write_text("mine too")
    assert main(args + ["mixed"]) == 2 and "not part of the bundle" in capsys.readouterr().err
    assert (work / "precious.txt").read_text() == "keep me" and (work / "mine" / "notes.txt").exists()
    assert (mixed / "notes.txt").exists()
    shutil.copytree(good_bundle, work / "old")
    assert main(args + ["old"]) == 0  # a bundle is replaced
    assert "digits-mlp" in (work / "old" / "recipe.json").read_text()


@pytest.mark.parametrize("out, needle", [
    ("precious.txt/b", "is a file"), ("/proc/b", "/proc"), ("x" * 300, "folder name"),
])
def test_unusable_out_paths_are_one_line(tmp_path, capsys, monkeypatch, out, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["export", "--model", "digits-mlp", "--profile", "quick", "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_existing_output_is_refused_and_nothing_half_written(tmp_path, capsys, monkeypatch):
    out = tmp_path / "b"
    out.mkdir()
    assert main(["export", "--model", "digits-mlp", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    import engine.bundle.bundle as bundle_mod

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(bundle_mod, "export_onnx", broken)
    with pytest.raises(RuntimeError):
        api.export(tmp_path / "c", recipe=Recipe(model="digits-mlp"), profile="quick")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no partial bundle, no temp folder


def _edit_record(folder: Path, edit) -> None:
    record = json.loads((folder / "recipe.json").read_text())
    edit(record)
    (folder / "recipe.json").write_text(json.dumps(record))


@pytest.mark.parametrize("edit, needle", [
    (lambda r: r["metrics"].update(accuracy=float("nan")), "recipe.json"),
    (lambda r: r["verification"].update(onnx_accuracy=10 ** 400), "model.onnx"),
    (lambda r: r["recipe"].update(device="cuda"), "recipe.json"),
    (lambda r: r.update(recipe_key="0" * 16), "recipe.json"),
    (lambda r: r["recipe"].update(batch_size=4096), "recipe.json"),
    (lambda r: r["metrics"].update(size_bytes=1), "recipe.json"),
], ids=["nan-accuracy", "huge-onnx-accuracy", "device-cuda", "recipe-key", "batch-size", "size"])
def test_an_edited_record_does_not_verify(bundle, capsys, edit, needle):
    _edit_record(bundle, edit)
    assert main(["apply", "--recipe", str(bundle), "--json"]) == 1
    out = capsys.readouterr()
    assert "internal error" not in out.err and needle in json.loads(out.out)["error"]


def test_a_swapped_onnx_model_does_not_verify_even_with_its_record_updated(bundle, tmp_path, capsys):
    other = tmp_path / "other"
    api.export(other, recipe=Recipe(model="digits-cnn", prune=Prune("magnitude", 0.9), quantize=Quantize(4)),
               profile="quick")
    shutil.copy(other / "model.onnx", bundle / "model.onnx")
    onnx_acc = json.loads((other / "recipe.json").read_text())["verification"]["onnx_accuracy"]
    _edit_record(bundle, lambda r: r["verification"].update(onnx_accuracy=onnx_acc))
    _edit_record(bundle, lambda r: r["bundle"]["files"].update({"model.onnx": sha256(bundle / "model.onnx")}))
    assert main(["apply", "--recipe", str(bundle), "--json"]) == 1
    assert "model.onnx" in json.loads(capsys.readouterr().out)["error"]


@pytest.mark.parametrize("name", ["README.md", "model_card.json"])
def test_edited_documents_do_not_verify_even_with_their_hash_updated(bundle, capsys, name):
    path = bundle / name
    path.write_text(path.read_text().replace("0.", "9.", 1))
    _rehash(bundle)
    assert main(["apply", "--recipe", str(bundle), "--json"]) == 1
    assert "record" in json.loads(capsys.readouterr().out)["error"]


def test_an_extra_file_in_a_bundle_does_not_verify(bundle, capsys):
    (bundle / "model_v2.onnx").write_bytes((bundle / "model.onnx").read_bytes())
    assert main(["apply", "--recipe", str(bundle), "--json"]) == 1
    assert "model_v2.onnx" in json.loads(capsys.readouterr().out)["error"]


def test_a_zip_is_named_as_one(tmp_path, good_bundle, capsys):
    archive = shutil.make_archive(str(tmp_path / "b"), "zip", good_bundle)
    assert main(["apply", "--recipe", archive]) == 2
    assert "unzip" in capsys.readouterr().err


def test_refused_exports_create_no_folders(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COMPRESSION_DASH_CPU_WATTS_PER_CORE", "-1")
    assert main(["export", "--model", "digits-mlp", "--profile", "quick", "--out", "new/a/b"]) == 2
    monkeypatch.delenv("COMPRESSION_DASH_CPU_WATTS_PER_CORE")
    assert main(["export", "--db", "none.db", "--id", "3", "--out", "new/x/y"]) == 2
    assert main(["export", "--model", "digits-mlp", "--out", "~", "--force"]) == 2
    assert list(tmp_path.iterdir()) == []
    capsys.readouterr()


def test_force_refuses_a_bundle_folder_with_a_folder_inside(tmp_path, good_bundle, capsys):
    target = Path(shutil.copytree(good_bundle, tmp_path / "b"))
    (target / "model.onnx").unlink()
    (target / "model.onnx").mkdir()
    (target / "model.onnx" / "data.txt").write_text("mine")
    assert main(["export", "--model", "digits-mlp", "--profile", "quick", "--force", "--out", str(target)]) == 2
    assert (target / "model.onnx" / "data.txt").exists() and "not part of the bundle" in capsys.readouterr().err
