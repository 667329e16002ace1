"""ONNX Runtime's low-bit weight kernel (MatMulNBits) runs weight-only recipes where it has one for the bits and group."""
import json

import onnx
import pytest

from engine import api
from engine.core.recipe import LayerOverride, Quantize, Recipe
from engine.measure.run import run_recipe
from engine.runtimes.onnx import _block_for, nbits_widths


def _nbits_kernel(result):
    return next((k for k in result.kernels if k.step == "onnxruntime" and "MatMulNBits" in k.kernel), None)


@pytest.fixture(scope="module")
def mlp_int4():
    recipe = Recipe(model="digits-mlp", quantize=Quantize(4, "weight-only", "per-group", 32), runtime="onnxruntime")
    return recipe, run_recipe(recipe)


def test_4bit_weight_only_runs_on_matmulnbits_and_is_not_simulated(mlp_int4):
    recipe, r = mlp_int4
    k = _nbits_kernel(r)
    assert r.error is None and k is not None and not k.simulated and not r.simulated
    assert k.detail["bits"] == [4] and k.detail["block_size"] == [32] and k.detail["packed"] == 3
    assert k.detail["accuracy_level"] in (0, 4) and "level" in k.detail["accuracy_level_why"]
    assert k.detail["max_abs_diff_vs_grid"] < 1e-6  # one block per group: ONNX Runtime re-derives the grid exactly
    assert not any("grid values" in w for w in r.warnings)
    eager = run_recipe(recipe.with_(runtime="eager"))
    assert abs(r.accuracy - eager.accuracy) <= 0.005


def test_the_installed_onnxruntime_has_4bit_kernels_and_says_which_blocks_carry_a_grid():
    assert 4 in nbits_widths() and 3 not in nbits_widths()
    assert _block_for(4, 32, 384) == (32, None)
    assert _block_for(4, None, 64) == (64, None) and _block_for(4, None, 100) == (128, None)  # one block per row
    assert _block_for(4, None, 1536) == (128, None)  # longer rows: the channel's scale repeated in every block
    block, why = _block_for(4, 8, 64)
    assert block is None and "powers of two from 16" in why
    block, why = _block_for(3, 32, 64)
    assert block is None and "3-bit" in why


@pytest.mark.parametrize("bits", [4, 8])
def test_per_channel_grids_run_exactly_even_on_rows_longer_than_a_block(bits):
    # digits-mlp's fc2 has 300 inputs: no MatMulNBits block spans it, so each block repeats the channel's scale
    r = run_recipe(Recipe(model="digits-mlp", quantize=Quantize(bits, "weight-only", "per-channel"),
                          runtime="onnxruntime"))
    k = _nbits_kernel(r)
    assert r.error is None
    if k is None:  # no packed kernel for this width on this CPU: the float grid runs, and says why
        assert bits == 8 and r.simulated and any("packs none" in w for w in r.warnings)
        return
    assert k.detail["max_abs_diff_vs_grid"] < 1e-6 and 128 in k.detail["block_size"]


def test_per_layer_bit_widths_hold_in_the_onnx_model():
    # fc2 at 8 bits, the classifier kept in float: the layers are found by their weights, not by name
    r = run_recipe(Recipe(model="digits-mlp", quantize=Quantize(4, "weight-only", "per-group", 32),
                          layers=(LayerOverride("fc2", bits=8), LayerOverride("classifier", bits="none")),
                          runtime="onnxruntime"))
    k = _nbits_kernel(r)
    assert r.error is None and k.detail["bits"] == [4, 8] and "MatMulNBits x2" in k.kernel
    assert k.detail["max_abs_diff_vs_grid"] < 1e-6
    assert any("Gemm" in x.kernel and not x.simulated for x in r.kernels if x is not k and x.step == "onnxruntime")


@pytest.mark.parametrize("quantize, reason", [
    (Quantize(3, "weight-only", "per-group", 32), "3-bit: the installed ONNX Runtime's MatMulNBits takes"),
    (Quantize(4, "weight-only", "per-group", 8), "group 8: MatMulNBits blocks are powers of two"),
])
def test_a_grid_without_a_kernel_stays_float_and_flagged_with_the_reason(quantize, reason):
    r = run_recipe(Recipe(model="digits-mlp", quantize=quantize, runtime="onnxruntime"))
    assert r.error is None and r.simulated and _nbits_kernel(r) is None
    assert any(reason in w for w in r.warnings) and any("grid values" in w for w in r.warnings)


def test_an_fp16_recipe_runs_matmulnbits_and_says_it_computes_in_fp32():
    r = run_recipe(Recipe(model="digits-mlp", quantize=Quantize(4, "weight-only", "per-group", 32), precision="fp16",
                          runtime="onnxruntime"))
    k = _nbits_kernel(r)
    assert r.error is None and k is not None and not k.simulated
    assert any("computes in fp32" in w for w in r.warnings)


def test_a_4bit_onnxruntime_bundle_ships_matmulnbits_and_verifies(tmp_path):
    recipe = Recipe(model="digits-mlp", quantize=Quantize(4, "weight-only", "per-group", 32), runtime="onnxruntime")
    out = api.export(tmp_path / "b", recipe=recipe, profile="quick")
    ops = {n.op_type for n in onnx.load(str(tmp_path / "b" / "model.onnx")).graph.node}
    assert "MatMulNBits" in ops and "Gemm" not in ops
    card = json.loads((tmp_path / "b" / "model_card.json").read_text())
    assert card["onnx"]["nbits"]["bits"] == [4] and card["onnx"]["float_grid_bits"] is None
    assert abs(out["onnx_accuracy"] - out["accuracy"]) <= 0.005
    checked = api.apply_bundle(tmp_path / "b")
    assert checked["error"] is None and all(c["ok"] for c in checked["checks"])
