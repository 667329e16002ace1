import json
import subprocess
import sys

import pytest

from engine.cli import main
from tests.conftest import ROOT


@pytest.mark.parametrize("argv, needle", [
    (["run", "--model", "digits-cnn", "--prune", "1.5"], "prune.amount"),
    (["run", "--model", "digits-cnn", "--bits", "0"], "quantize.bits"),
    (["run", "--model", "digits-cnn", "--bits", "12"], "quantize.bits"),
    (["run", "--model", "digits-cnn", "--precision", "fp64"], "precision"),
    (["run", "--model", "nope"], "unknown model 'nope'"),
    (["run", "--model", "digits-cnn", "--bits", "8", "--scheme", "dynamic", "--precision", "bf16"], "cannot run"),
    (["run", "--model", "digits-cnn", "--device", "cuda"], "device=cuda"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_exit_2(argv, needle, capsys):
    import torch

    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err


def test_models_lists_every_registered_model(capsys):
    assert main(["models", "--json"]) == 0
    names = [m["name"] for m in json.loads(capsys.readouterr().out)["models"]]
    assert {"digits-mlp", "digits-cnn", "minilm"} <= set(names)


def test_run_json_stdout_is_exactly_one_object():
    proc = subprocess.run([sys.executable, "-m", "engine", "run", "--model", "digits-cnn", "--prune", "0.5",
                           "--prune-method", "structured", "--bits", "8", "--precision", "fp32", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for key in ("model", "recipe", "accuracy", "baseline_accuracy", "metric", "params_total", "params_nonzero",
                "size_bytes", "latency_ms", "peak_memory_bytes", "energy_j", "energy_source", "kernels",
                "warnings", "device", "error"):
        assert key in out
    assert out["recipe"]["quantize"]["scheme"] == "dynamic" and out["error"] is None
    assert set(out["latency_ms"]) >= {"p50", "p90", "p99", "mean", "iqr_ratio"}
