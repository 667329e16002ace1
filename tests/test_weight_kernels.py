"""Weight-only grids on PyTorch's packed int8/int4 kernels: the same numbers as the dequantized layer, used only
where the kernel takes the grid and the shape, and said so in the kernels record."""
import pytest
import torch
from torch import nn

from engine.compress import packed, quantize
from engine.compress.packed import PackedLinear
from engine.core.recipe import Quantize, Recipe
from engine.measure.run import run_recipe


def _layer(n: int = 48, k: int = 128, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.add_(0.05)  # asymmetric, so the zero points are not the middle code
    return lin


@pytest.mark.parametrize("bits,group,kind", [(8, None, "int8"), (6, None, "int8"), (4, None, "int8"),
                                             (4, None, "int4"), (4, 32, "int4"), (4, 128, "int4"), (2, 64, "int4")])
def test_a_packed_layer_computes_its_grid(bits, group, kind):
    lin = _layer()
    meta = quantize.quantize_tensor(lin.weight, bits, group)
    lin.weight.data = quantize.dequantize(meta)  # the float layer on the same grid
    p = packed.plan(meta, lin.in_features, lin.out_features)
    kernel_group = p.int4_group if kind == "int4" else None
    assert (kernel_group is not None) if kind == "int4" else p.int8
    layer = PackedLinear(lin, meta, kind, kernel_group)
    x = torch.randn(2, 5, lin.in_features)
    with torch.inference_mode():
        want, got = lin(x), layer(x)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert float((got - want).norm() / want.norm()) < 0.02  # bf16 activations and scales


def test_grids_and_shapes_the_kernels_do_not_take_are_left_in_float():
    meta4 = quantize.quantize_tensor(torch.randn(48, 128), 4, 16)
    assert packed.plan(meta4, 128, 48) == packed.Plan(None, False)  # groups of 16: neither kernel
    meta6 = quantize.quantize_tensor(torch.randn(48, 128), 6, 32)
    assert packed.plan(meta6, 128, 48) == packed.Plan(None, False)  # 6-bit groups: neither
    channel = quantize.quantize_tensor(torch.randn(300, 100), 4, None)
    assert packed.plan(channel, 100, 300) == packed.Plan(None, False)  # int8 needs inputs, int4 outputs, % 16


def _timed_as(monkeypatch, packed_faster: bool) -> None:
    """Timing is the machine's; the choice it drives is tested with the outcome fixed either way."""
    monkeypatch.setattr(packed, "_time", lambda layer, x: 1.0 if isinstance(layer, PackedLinear) == packed_faster
                        else 2.0)


def test_a_weight_only_model_runs_packed_kernels_and_says_which(monkeypatch):
    _timed_as(monkeypatch, packed_faster=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))
    step = Quantize(4, "weight-only", "per-group", 32)
    quant = quantize.to_grid(model, step)
    x = torch.randn(8, 64)
    with torch.inference_mode():
        want = model(x)
    kernels, warnings = quantize.select_kernels(model, step, "cpu", quant=quant, run=lambda: model(x))
    assert isinstance(model[0], PackedLinear) and model[0].kind == "int4"
    assert isinstance(model[4], nn.Linear)  # 10 outputs: no int4 kernel, and no int8 for a 4-bit group grid
    real = [k for k in kernels if not k.simulated]
    assert real and "int4 (group 32) x2" in real[0].kernel and real[0].detail["activations"].startswith("bf16")
    assert "speedup_vs_float_layer" in real[0].detail  # chosen by timing on the real input
    assert [k.detail["layers"] for k in kernels if k.simulated] == [1]
    assert any("run dequantized" in w for w in warnings)
    with torch.inference_mode():
        assert float((model(x) - want).norm() / want.norm()) < 0.02


def test_a_packed_kernel_measured_slower_than_the_float_layer_is_not_used(monkeypatch):
    _timed_as(monkeypatch, packed_faster=False)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32))
    step = Quantize(4, "weight-only", "per-group", 32)
    quant = quantize.to_grid(model, step)
    x = torch.randn(8, 64)
    kernels, warnings = quantize.select_kernels(model, step, "cpu", quant=quant, run=lambda: model(x))
    assert isinstance(model[0], nn.Linear)
    (kernel,) = [k for k in kernels if k.step == "quantize"]
    # a real kernel was measured and lost: the float layer's latency is real, not a stand-in
    assert not kernel.simulated and "measured slower than the float layer" in kernel.detail["why"]
    assert any("measured slower" in w for w in warnings)


def test_codes_are_re_derived_from_weights_when_no_grid_is_given():
    """A bundle's loaded weights carry no codes: the grid they lie on is recovered from them."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(64, 32))
    step = Quantize(8, "weight-only")
    quantize.to_grid(model, step)
    x = torch.randn(4, 64)
    with torch.inference_mode():
        want = model(x)
    quantize.select_kernels(model, step, "cpu")
    assert isinstance(model[0], PackedLinear) and model[0].kind == "int8" and model[0].correction is not None
    with torch.inference_mode():
        assert float((model(x) - want).norm() / want.norm()) < 0.02


def test_a_measured_weight_only_row_names_the_packed_kernel_and_is_not_simulated(monkeypatch):
    _timed_as(monkeypatch, packed_faster=True)  # which kernel wins is the machine's; the wiring is tested here
    r = run_recipe(Recipe(model="minilm", precision="bf16", quantize=Quantize(4, "weight-only", "per-group", 32)))
    assert r.error is None and not r.simulated, r.kernels
    assert any("_weight_int4pack_mm_for_cpu" in k.kernel and "int4 (group 32) x37" in k.kernel for k in r.kernels)
    assert r.accuracy > 0.95


def test_a_recorded_choice_is_re_created_without_timing(monkeypatch):
    """A bundle's model runs the kernels that were measured: the per-layer choice travels in the kernels record."""
    monkeypatch.setattr(packed, "_time", lambda layer, x: pytest.fail("a recorded choice is not timed again"))
    step = Quantize(8, "weight-only")
    for choice, kind in (("int8", PackedLinear), ("float", nn.Linear)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
        quant = quantize.to_grid(model, step)
        chosen = {"0": choice, "2": "int8"}
        x = torch.randn(4, 64)
        kernels, _ = quantize.select_kernels(model, step, "cpu", quant=quant, run=lambda: model(x), chosen=chosen)
        assert isinstance(model[0], kind) and isinstance(model[2], PackedLinear)
        stored = [k.to_dict() for k in kernels]  # as a result row or a bundle record holds them
        assert quantize.recorded_choice(stored) == chosen == quantize.recorded_choice(kernels)
