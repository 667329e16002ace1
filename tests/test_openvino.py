"""The openvino runtime: the model converted to OpenVINO IR, quantized by NNCF, compiled with OpenVINO's deployment
settings; what ran is read from the compiled model's runtime graph, telemetry never leaves the machine, and the
bundle ships and verifies the IR."""
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from engine import api
from engine.core.errors import UserError
from engine.core.recipe import Quantize, Recipe
from engine.jobs.sweep import measure_one
from engine.measure.run import run_recipe
from engine.results.store import Store
from tests.conftest import ROOT

pytest.importorskip("openvino")
pytest.importorskip("nncf")


def _measure(**fields):
    r = run_recipe(Recipe(model=fields.pop("model", "digits-mlp"), runtime="openvino", threads=1, **fields),
                   profile="quick")
    assert r.error is None, r.error
    return r


def _openvino_kernels(r):
    return [k for k in r.kernels if k.step == "openvino"]


def _cpu_has(capability: str) -> bool:
    import openvino

    return capability in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def test_fp32_and_bf16_run_and_name_the_kernels_the_runtime_graph_holds():
    fp32 = _measure()
    (kernel,) = _openvino_kernels(fp32)
    assert kernel.kernel == "f32: FullyConnected x3" and not kernel.simulated
    settings = kernel.detail["settings"]  # read back from the compiled model
    assert "LATENCY hint" in settings and "1 inference thread(s)" in settings and "precision f32" in settings
    assert "runtime graph" in kernel.detail["read from"] and kernel.detail["primitives"]
    assert abs(fp32.accuracy - fp32.baseline_accuracy) < 1e-6 and fp32.prepare_s > 0 and fp32.latency.p50 > 0
    bf16 = _measure(precision="bf16")
    (kernel,) = _openvino_kernels(bf16)
    if _cpu_has("BF16"):
        assert kernel.kernel == "bf16: FullyConnected x3" and not kernel.simulated
        assert "precision bf16" in kernel.detail["settings"] and "bf16" in kernel.detail["primitives"]
    else:  # no bf16 kernels: it runs f32, and says so
        assert kernel.kernel.startswith("f32") and kernel.simulated and "no bf16 kernels" in kernel.detail["why"]
    assert abs(bf16.accuracy - fp32.accuracy) <= 0.01


def test_fp16_without_fp16_kernels_is_flagged():
    r = _measure(precision="fp16")
    (kernel,) = _openvino_kernels(r)
    assert kernel.simulated != _cpu_has("FP16")


@pytest.mark.parametrize("model, layers", [("digits-mlp", "FullyConnected x3"),
                                           ("digits-cnn", "Convolution x2, FullyConnected x2")])
def test_nncf_int8_runs_real_int8_kernels_near_the_float_accuracy(model, layers):
    r = _measure(model=model, quantize=Quantize(8, "dynamic"))
    (kernel,) = _openvino_kernels(r)
    assert kernel.kernel == f"u8 activations x i8 weights: {layers}" and not kernel.simulated
    assert "NNCF post-training int8" in kernel.detail["quantization"] and "calibration split" in \
        kernel.detail["quantization"]
    assert abs(r.accuracy - r.baseline_accuracy) <= 0.01


def test_weight_only_int8_and_int4_run_compressed_weights():
    fp32 = _measure()
    int8 = _measure(quantize=Quantize(8, "weight-only"))
    (kernel,) = _openvino_kernels(int8)
    assert kernel.kernel == "f32 activations x u8 weights: FullyConnected x3" and not kernel.simulated
    assert kernel.detail["weights"] == "u8 per-channel x3"
    int4 = _measure(quantize=Quantize(4, "weight-only", "per-group", 32))
    by_text = {k.kernel: k for k in _openvino_kernels(int4)}
    # fc1 (64 inputs) takes groups of 32; 300 and 100 inputs have no group of at least 8, so NNCF keeps them 8-bit
    assert set(by_text) == {"f32 activations x u4 weights: FullyConnected x1",
                            "f32 activations x u8 weights: FullyConnected x2"}
    assert not any(k.simulated for k in by_text.values())
    assert next(iter(by_text.values())).detail["weights"] == "u4 group 32 x1, u8 per-channel x2"
    assert any("NNCF stored 2 weight(s) as u8 per-channel" in w for w in int4.warnings)
    assert int4.size_bytes < int8.size_bytes < fp32.size_bytes / 3
    assert abs(int4.accuracy - fp32.accuracy) <= 0.02


def test_weight_only_bits_nncf_cannot_store_run_as_floats_flagged_simulated():
    r = _measure(quantize=Quantize(3, "weight-only"))
    (kernel,) = _openvino_kernels(r)
    assert kernel.kernel.startswith("f32") and kernel.simulated and "3-bit grid values" in kernel.detail["why"]
    assert any("dequantized grid values" in w for w in r.warnings)


def test_a_model_without_calibration_data_is_calibrated_on_its_training_data_or_refused():
    from engine.models import get_spec
    from engine.runtimes.openvino import _calibration

    spec = get_spec("digits-mlp")
    items, source = _calibration(replace(spec, calibration_inputs=None))
    assert len(items) == 300 and "training corpus" in source and items[0]["input"].shape == (1, 1, 8, 8)
    with pytest.raises(UserError, match="no calibration or training data.*weight-only"):
        _calibration(replace(spec, calibration_inputs=None, train_batches=None))


def test_without_openvino_a_sweep_row_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now fails
    recipe = Recipe(model="digits-mlp", runtime="openvino")
    with pytest.raises(UserError, match="OpenVINO is not installed here: pip install openvino"):
        run_recipe(recipe)
    row = measure_one(recipe, "quick")
    assert row.error.startswith("OpenVINO is not installed here") and "pip install -e ." in row.error


def test_a_sweep_stores_openvino_rows(tmp_path):
    summary = api.sweep([Recipe(model="digits-mlp", runtime="openvino", threads=1)], tmp_path / "r.db",
                        profile="quick")
    assert summary.measured == 1 and summary.failed == 0
    with Store(tmp_path / "r.db") as store:
        rows, damaged = store.rows("digits-mlp")
    assert damaged == 0 and [r["runtime"] for r in rows] == ["openvino"] and rows[0]["prepare_s"] > 0


PROBE = '''
import ipaddress, socket, sys, time

def record(what):  # to a file: OpenVINO's telemetry sends from forked processes, which inherit these patches
    with open(sys.argv[2], "a") as fh:
        fh.write(what + "\\n")

def outside(host):
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host not in ("localhost", "")

real_connect, real_resolve = socket.socket.connect, socket.getaddrinfo

def connect(self, address):
    if isinstance(address, tuple) and outside(str(address[0])):
        record(f"connect {address[0]}")
        raise OSError("outside connections are blocked here")
    return real_connect(self, address)

def getaddrinfo(host, *args, **kwargs):
    if host is not None and outside(str(host)):
        record(f"resolve {host}")
        raise socket.gaierror("outside names are blocked here")
    return real_resolve(host, *args, **kwargs)

socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
if sys.argv[1] == "bare":  # OpenVINO and NNCF as they come, without the engine
    import nncf, openvino, torch
    nncf.compress_weights(openvino.convert_model(torch.nn.Linear(8, 8), example_input=torch.ones(1, 8)))
else:  # convert, quantize (both NNCF paths), compile and infer through the engine
    from engine.compress.pipeline import apply
    from engine.core.recipe import Quantize, Recipe
    from engine.core.axes import RUNTIMES
    from engine.models import base_model
    model, spec = base_model("digits-mlp")
    for q in (Quantize(8, "dynamic"), Quantize(4, "weight-only")):
        recipe = Recipe(model="digits-mlp", runtime="openvino", quantize=q)
        artifact = RUNTIMES.get("openvino").prepare(apply(model, recipe, spec, kernels=False), recipe, spec, 1)
        artifact.outputs(spec.eval_inputs()[0])
        artifact.call()
time.sleep(1.0)  # telemetry sends from a thread of its own
'''


def test_no_outside_connection_is_attempted(tmp_path):
    """OpenVINO's and NNCF's telemetry is on by default where no consent file exists (a fresh HOME, not CI, not
    pytest: NNCF turns itself off under pytest); through the engine nothing tries to leave the machine."""
    (tmp_path / "probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL", "NNCF_CI", "NNCF_DEV")}
    env |= {"HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    procs = {mode: subprocess.Popen([sys.executable, str(tmp_path / "probe.py"), mode, str(tmp_path / mode)],
                                    env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for mode in ("bare", "engine")}
    errors = {mode: p.communicate(timeout=240)[1] for mode, p in procs.items()}
    assert all(p.returncode == 0 for p in procs.values()), errors
    log = {mode: (tmp_path / mode).read_text() if (tmp_path / mode).exists() else "" for mode in procs}
    assert "google-analytics" in log["bare"]  # the probe sees telemetry where it is on
    assert log["engine"] == ""


def test_an_openvino_bundle_ships_the_ir_and_refuses_a_changed_one(tmp_path):
    recipe = Recipe(model="digits-cnn", runtime="openvino", quantize=Quantize(8, "dynamic"))
    out = api.export(tmp_path / "b", recipe=recipe, profile="quick")
    folder = Path(out["out"])
    assert {"model.xml", "model.bin", "model.onnx", "recipe.json"} <= set(out["files"])
    record = json.loads((folder / "recipe.json").read_text())
    assert {"model.xml", "model.bin"} <= set(record["bundle"]["files"])
    ver = record["verification"]
    assert ver["primary"] == "model.xml" and abs(ver["openvino_accuracy"] - record["metrics"]["accuracy"]) <= 0.005
    assert record["metrics"]["size_bytes"] == (folder / "model.bin").stat().st_size
    card = json.loads((folder / "model_card.json").read_text())
    assert card["openvino"]["quantization"].startswith("NNCF post-training int8")
    assert "`model.xml` + `model.bin`" in (folder / "README.md").read_text()
    checked = api.apply_bundle(folder)
    assert checked.error is None, checked.error
    assert {c["check"] for c in checked.checks if c["file"] == "model.xml"} >= {
        "runs in openvino", "re-evaluated accuracy matches the record", "computes what the recipe's model computes"}
    weights = folder / "model.bin"
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert api.apply_bundle(folder).error == \
        "model.bin: its SHA-256 does not match the one recorded in recipe.json (changed)"


def test_under_weight_compression_only_float_layers_holding_weights_are_flagged(monkeypatch):
    """Attention's activation x activation products hold no weights: they run as in any recipe, never a stand-in
    for a grid; a convolution the plugin decompressed to float is one."""
    from collections import Counter

    from engine.runtimes import openvino as runtime

    monkeypatch.setattr(runtime, "runtime_layers", lambda compiled: Counter({
        ("FullyConnected", "f32", "u4", "brgemm_avx512"): 3, ("attention (fused subgraph)", "f32", "", "snippet"): 2,
        ("Convolution", "f32", "f32", "jit_avx512"): 1}))
    monkeypatch.setattr(runtime, "settings", lambda compiled: "LATENCY hint")

    class Compiled:
        @staticmethod
        def get_property(name):
            return replace_type("f32")

    def replace_type(name):
        return type("Type", (), {"get_type_name": staticmethod(lambda: name)})

    recipe = Recipe(model="digits-cnn", runtime="openvino", quantize=Quantize(4, "weight-only", "per-group", 32))
    info = {"quantization": "NNCF weight compression int4_asym group 32", "weights": {"u4 group 32": 3}}
    kernels = runtime.graph_kernels(Compiled, info, recipe, [])
    assert {k.kernel: k.simulated for k in kernels} == {
        "f32 activations x u4 weights: FullyConnected x3": False, "f32: attention (fused subgraph) x2": False,
        "f32: Convolution x1": True}
