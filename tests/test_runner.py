"""Every registered model x every technique family runs end to end through the real runner."""
import pytest

from engine.recipe import Prune, Quantize, Recipe
from engine.registry import model_names
from engine.runner import measure

TECHNIQUES = {
    "magnitude": dict(prune=Prune("magnitude", 0.5)),
    "structured": dict(prune=Prune("structured", 0.3)),
    "int8-dynamic": dict(quantize=Quantize(8, "dynamic")),
    "int4-group": dict(quantize=Quantize(4, "weight-only", "per-group", 32)),
    "bf16": dict(precision="bf16"),
    "fp16": dict(precision="fp16"),
}


@pytest.mark.parametrize("technique", TECHNIQUES)
@pytest.mark.parametrize("model", model_names())
def test_every_model_and_technique_runs(model, technique):
    r = measure(Recipe(model=model, **TECHNIQUES[technique]))
    assert r.error is None, r.error
    assert 0.0 <= r.accuracy <= 1.0 + 1e-6 and r.baseline_accuracy is not None
    assert r.size_bytes and r.params_total and r.kernels
    assert r.latency_ms["p50"] > 0 and r.latency_ms["calls"] >= 5
    assert r.energy_source.startswith(("measured:", "estimated:"))
    assert r.device["id"]


def test_baselines_meet_the_cards():
    for name in ("digits-mlp", "digits-cnn"):
        assert measure(Recipe(model=name)).accuracy >= 0.95


def test_compression_is_visible_in_the_numbers():
    base = measure(Recipe(model="digits-cnn"))
    pruned = measure(Recipe(model="digits-cnn", prune=Prune("structured", 0.5)))
    assert pruned.params_total < 0.6 * base.params_total
    assert pruned.size_bytes < 0.6 * base.size_bytes
    sparse = measure(Recipe(model="digits-cnn", prune=Prune("magnitude", 0.9)))
    assert sparse.params_nonzero < 0.2 * base.params_total and sparse.params_total == base.params_total


def test_failure_while_running_becomes_an_error_result(monkeypatch):
    import engine.runner as runner

    def boom(*a, **k):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(runner, "apply", boom)
    r = measure(Recipe(model="digits-mlp", prune=Prune("magnitude", 0.2)))
    assert r.error == "RuntimeError: kernel exploded" and r.accuracy is None
