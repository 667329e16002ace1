"""Bring your own model: Hugging Face folders and Python files through run, sweep, export and apply, named by a
hash of their weights and evaluation data, and every hostile folder or file refused with one line (exit 2)."""
import json
import shutil

import pytest

from tests import user_models as u
from tests.conftest import ROOT
from tests.test_cli import run_cli


@pytest.fixture(scope="module")
def cls(tmp_path_factory):
    d = tmp_path_factory.mktemp("user")
    return u.bert(d / "classifier"), u.texts(d / "eval.csv")


def hf_args(folder, data, task="text-classification"):
    return ["--model", f"hf:{folder}", "--task", task, "--eval-data", str(data)]


def test_a_text_classifier_runs_sweeps_exports_and_applies(cls, tmp_path):
    folder, data = cls
    code, out, err = run_cli(["run", *hf_args(folder, data), "--prune", "0.5", "--prune-method", "structured",
                              "--json"])
    assert code == 0, err
    r = json.loads(out)
    assert r["error"] is None and r["metric_kind"] == "accuracy" and "structured" in r["kernels"][0]["kernel"]
    assert r["model"].startswith(f"hf:{folder}|text-classification|") and "24 labelled rows" in r["metric"]
    db = tmp_path / "r.db"
    code, out, err = run_cli(["sweep", *hf_args(folder, data), "--bits", "none,8", "--db", str(db), "--profile",
                              "quick", "--json"])
    assert code == 0 and json.loads(out)["measured"] == 2, err
    code, _, _ = run_cli(["sweep", *hf_args(folder, data), "--bits", "none,8", "--db", str(db), "--profile", "quick"])
    assert code == 0
    code, out, _ = run_cli(["results", "--db", str(db), "--format", "json"])
    assert len(json.loads(out)) == 2  # the same name again: nothing measured twice
    code, out, err = run_cli(["export", *hf_args(folder, data), "--bits", "8", "--out", str(tmp_path / "b"),
                              "--profile", "quick", "--json"])
    assert code == 0, err
    code, out, err = run_cli(["apply", "--recipe", str(tmp_path / "b"), "--json"])
    assert code == 0 and json.loads(out)["error"] is None, err


def test_an_encoder_is_scored_by_fidelity_and_an_image_classifier_by_accuracy(tmp_path):
    enc = u.bert(tmp_path / "encoder", classes=None)
    code, out, err = run_cli(["run", *hf_args(enc, u.texts(tmp_path / "s.csv", labels=False), "feature-extraction"),
                              "--bits", "8", "--json"])
    assert code == 0 and json.loads(out)["metric_kind"] == "fidelity", err
    folder, images = u.vit(tmp_path / "vit", tmp_path / "images")
    code, out, err = run_cli(["run", *hf_args(folder, images, "image-classification"), "--prune", "0.5",
                              "--prune-method", "structured", "--json"])
    r = json.loads(out)
    assert code == 0 and r["error"] is None and "8 images" in r["metric"], err
    pruned = r["kernels"][0]  # ViT's q/k/v/o_proj attention: whole heads go, the hidden size stays
    assert pruned["params_after"] < 0.7 * pruned["params_before"]
    code, _, err = run_cli(["export", *hf_args(folder, images, "image-classification"), "--bits", "8", "--out",
                            str(tmp_path / "b"), "--profile", "quick"])
    assert code == 0, err
    code, out, err = run_cli(["apply", "--recipe", str(tmp_path / "b"), "--json"])
    assert code == 0 and json.loads(out)["error"] is None, err



def test_the_python_contract_example_runs_with_fine_tuning_and_exports(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    model = ["--model", "py:sample_models/contract_example.py"]
    code, out, err = run_cli(["run", *model, "--prune", "0.5", "--prune-method", "structured", "--finetune-epochs", "1",
                              "--json"])
    r = json.loads(out)
    assert code == 0 and r["error"] is None and r["accuracy"] > 0.9, r["error"]
    assert r["model"].startswith(f"py:{ROOT / 'sample_models' / 'contract_example.py'}|")
    code, _, err = run_cli(["export", *model, "--bits", "8", "--out", str(tmp_path / "b"), "--profile", "quick"])
    assert code == 0, err
    code, out, err = run_cli(["apply", "--recipe", str(tmp_path / "b"), "--json"])
    assert code == 0 and json.loads(out)["error"] is None, err


def test_changed_weights_or_data_get_another_name_and_old_names_are_refused(cls, tmp_path):
    from engine import api

    folder, data = cls
    copy = shutil.copytree(folder, tmp_path / "copy")
    first = api.model_name(f"hf:{copy}", "text-classification", str(data))
    assert api.model_name(f"hf:{copy}", "text-classification", str(data)) == first  # stable
    other = tmp_path / "other.csv"
    other.write_text(data.read_text().replace("negative\n", "positive\n", 1))
    assert api.model_name(f"hf:{copy}", "text-classification", str(other)) != first
    u.bert(copy, classes=("negative", "positive", "neutral"))  # new weights in the same folder
    assert api.model_name(f"hf:{copy}", "text-classification", str(data)) != first
    code, _, err = run_cli(["run", "--model", first])
    assert code == 2 and "changed since it was named" in err


@pytest.mark.parametrize("damage, message", [
    ("not_a_model", "no config.json"),
    ("auto_map", "auto_map"),
    ("pickle_only", "convert them once"),
    ("missing_column", "has no column text"),
    ("unknown_label", "not one the model's head knows"),
    ("no_task", "needs --task"),
    ("empty_source", "give the folder or hub id"),
    ("not_utf8", "not UTF-8"),
])
def test_hostile_folders_and_files_are_one_line_and_nothing_runs(cls, tmp_path, damage, message):
    folder, data = cls
    bad_folder, bad_data, task = shutil.copytree(folder, tmp_path / "m"), tmp_path / "d.csv", "text-classification"
    shutil.copy(data, bad_data)
    if damage == "not_a_model":
        (bad_folder / "config.json").unlink()
    elif damage == "auto_map":
        config = json.loads((bad_folder / "config.json").read_text())
        config["auto_map"] = {"AutoModel": "evil.Model"}
        (bad_folder / "config.json").write_text(json.dumps(config))
        (bad_folder / "evil.py").write_text("raise SystemExit('executed')\n")
    elif damage == "pickle_only":
        (bad_folder / "model.safetensors").rename(bad_folder / "pytorch_model.bin")
    elif damage == "missing_column":
        bad_data.write_text("sentence,label\nhello,positive\n")
    elif damage == "unknown_label":
        bad_data.write_text("text,label\ngood movie,sarcastic\n")
    elif damage == "no_task":
        task = None
    elif damage == "empty_source":
        bad_folder = ""
    elif damage == "not_utf8":
        bad_data.write_bytes(b"text,label\n\xff\xfe,positive\n")
    args = ["run", "--model", f"hf:{bad_folder}", "--eval-data", str(bad_data)] + (["--task", task] if task else [])
    code, out, err = run_cli(args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_image_folder_without_images_and_python_file_without_the_contract(tmp_path):
    folder, _ = u.vit(tmp_path / "vit", tmp_path / "images")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    code, _, err = run_cli(["run", *hf_args(folder, tmp_path / "empty", "image-classification")])
    assert code == 2 and "holds no images" in err
    bad = tmp_path / "model.py"
    bad.write_text("def build():\n    pass\n")
    code, _, err = run_cli(["run", "--model", f"py:{bad}"])
    assert code == 2 and "does not implement the model contract" in err and "eval_batches" in err


def _zip(folder, skip=()):
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file() and f.name not in skip:
                z.write(f, f"{folder.name}/{f.relative_to(folder)}")
    return buf.getvalue()


def test_the_dashboard_adds_an_uploaded_model_and_lists_it(cls, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from engine import api

    folder, data = cls
    db = tmp_path / "r.db"
    monkeypatch.setenv("COMPRESSION_DASH_DB", str(db))
    name = api.add_uploaded_model(_zip(folder), "eval.csv", data.read_bytes(), "text-classification", db)
    assert name.startswith(f"hf:{db}.models/") and "|text-classification|" in name
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=240)
    at.session_state["_next_model"] = name
    at.session_state["added_models"] = [name]
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="model").value == name and at.metric  # measured, shown
    assert name in api.model_choices(db)  # its rows are in the store: listed on the next start too


@pytest.mark.parametrize("entry, message", [("../evil.json", "outside its folder"), ("/abs.json", "outside its folder"),
                                            ("m/run.py", "Python code"), ("m/readme.md", "no .safetensors")])
def test_hostile_uploads_are_refused_and_nothing_is_written_outside(tmp_path, entry, message):
    import io
    import zipfile

    from engine import api
    from engine.core.errors import UserError

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(entry, "{}")
    with pytest.raises(UserError, match=message):
        api.add_uploaded_model(buf.getvalue(), "e.csv", b"text,label\nx,0\n", "text-classification",
                               tmp_path / "db" / "r.db")
    assert not (tmp_path / "evil.json").exists() and not (tmp_path / "db" / "evil.json").exists()


def test_an_upload_over_the_cap_or_not_a_zip_is_refused(tmp_path, monkeypatch):
    from engine import api
    from engine.core.errors import UserError
    from engine.models import upload

    with pytest.raises(UserError, match="not a zip"):
        api.add_uploaded_model(b"garbage", "e.csv", b"", "text-classification", tmp_path / "r.db")
    monkeypatch.setattr(upload, "MAX_UPLOAD_BYTES", 10)
    with pytest.raises(UserError, match="larger than"):
        api.add_uploaded_model(b"x" * 11, "e.csv", b"", "text-classification", tmp_path / "r.db")


def test_fine_tuning_works_after_the_data_was_first_read_in_inference_mode():
    """The digits split is cached: read first inside inference mode (an evaluation), it must still train."""
    import torch

    from sample_models.digits import digits_split

    digits_split.cache_clear()
    with torch.inference_mode():
        digits_split()
    assert not digits_split()[0].is_inference()


RESHAPES = """
import torch
from torch import nn


class Fixed(nn.Module):  # reshapes to a size written in the code: no pruner can keep it consistent
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 2)

    def forward(self, x):
        return self.b(self.a(x).view(-1, 4, 4).flatten(1))

"""


def test_an_architecture_structured_pruning_cannot_keep_is_a_failed_row_and_the_sweep_goes_on(tmp_path):
    model = u.contract_file(tmp_path / "fixed.py", RESHAPES, "Fixed")
    db = tmp_path / "r.db"
    code, out, err = run_cli(["sweep", "--model", f"py:{model}", "--prune", "0,0.5", "--prune-method", "structured",
                              "--bits", "none", "--db", str(db), "--profile", "quick", "--json"])
    assert code == 0 and json.loads(out)["failed"] == 1, err
    code, out, err = run_cli(["results", "--db", str(db), "--format", "json"])
    rows = json.loads(out)
    failed = [r for r in rows if r["error"]]
    assert len(rows) == 2 and len(failed) == 1, err
    assert "structured pruning cannot keep this architecture's shapes consistent" in failed[0]["error"]
    assert "magnitude pruning" in failed[0]["error"]


def test_a_hub_id_downloads_only_with_the_network_allowed_and_only_safe_files(cls, tmp_path, monkeypatch):
    import fnmatch

    import huggingface_hub

    folder, data = cls
    calls = []

    def snapshot_download(repo_id, allow_patterns):  # the hub, as far as this machine can reach it
        calls.append(repo_id)
        offered = ["config.json", "model.safetensors", "vocab.txt", "pytorch_model.bin", "modeling_evil.py",
                   "tf_model.h5"]
        kept = {f for f in offered if any(fnmatch.fnmatch(f, p) for p in allow_patterns)}
        assert kept == {"config.json", "model.safetensors", "vocab.txt"}
        snapshot = tmp_path / "hub" / repo_id.replace("/", "--")
        shutil.copytree(folder, snapshot)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    args = ["run", "--model", "hf:someone/tiny-bert", "--task", "text-classification", "--eval-data", str(data),
            "--json"]
    code, _, err = run_cli(args)
    assert code == 2 and "HF_HUB_OFFLINE" in err and not calls  # offline by default: nothing is fetched
    code, out, err = run_cli([*args, "--allow-network"])
    assert code == 0 and calls == ["someone/tiny-bert"], err
    assert json.loads(out)["model"].startswith(f"hf:{tmp_path / 'hub' / 'someone--tiny-bert'}|")
