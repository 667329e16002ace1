"""Every registered model x every technique family runs end to end through the real measuring path."""
import pytest

from engine.core.recipe import Prune, Quantize, Recipe
from engine.measure.run import run_recipe
from engine.models import model_names
from tests.registry_cases import techniques

TECHNIQUES = techniques()  # every registered prune method and scheme, every reduced precision
RESULT_KEYS = {"model", "recipe", "accuracy", "baseline_accuracy", "metric", "metric_kind", "params_total",
               "params_nonzero", "size_bytes", "latency_ms", "speedup", "speedup_spread", "peak_memory_bytes",
               "energy_j", "energy_source", "kernels", "warnings", "machine", "threads", "error", "simulated"}


@pytest.mark.parametrize("technique", TECHNIQUES)
@pytest.mark.parametrize("model", model_names())
def test_every_model_and_technique_runs(model, technique):
    r = run_recipe(Recipe(model=model, **TECHNIQUES[technique]))
    assert r.error is None, r.error
    assert 0.0 <= r.accuracy <= 1.0 + 1e-6 and r.baseline_accuracy is not None
    assert r.size_bytes and r.params_total and r.kernels
    lat = r.latency
    assert lat.p50 > 0 and not lat.insufficient and lat.calls >= 1
    assert lat.threads <= lat.threads_requested and lat.foreign_cpu >= 0
    assert r.speedup > 0 and r.speedup_spread >= 0 and lat.baseline_p50 is not None  # paired with the baseline
    assert r.energy_source.kind in ("measured", "estimated") and r.energy_j >= 0
    assert r.machine.id and RESULT_KEYS <= set(r.to_dict())


def test_baseline_is_its_own_reference():
    r = run_recipe(Recipe(model="digits-mlp"))
    assert r.speedup == 1.0 and r.to_dict()["latency_ms"]["baseline_p50"] is None  # nothing paired; the key stays


def test_baselines_meet_the_cards():
    for name in ("digits-mlp", "digits-cnn"):
        assert run_recipe(Recipe(model=name)).accuracy >= 0.95


def test_compression_is_visible_in_the_numbers():
    base = run_recipe(Recipe(model="digits-cnn"))
    pruned = run_recipe(Recipe(model="digits-cnn", prune=Prune("structured", 0.5)))
    assert pruned.params_total < 0.6 * base.params_total
    assert pruned.size_bytes < 0.6 * base.size_bytes
    sparse = run_recipe(Recipe(model="digits-cnn", prune=Prune("magnitude", 0.9)))
    assert sparse.params_nonzero < 0.2 * base.params_total and sparse.params_total == base.params_total


def test_simulated_kernels_are_typed_not_guessed():
    r = run_recipe(Recipe(model="digits-cnn", quantize=Quantize(4, "weight-only")))
    assert r.simulated and any(k.simulated for k in r.kernels)
    assert not run_recipe(Recipe(model="digits-mlp", quantize=Quantize(8, "dynamic"))).simulated


def test_failure_while_running_becomes_an_error_result(monkeypatch):
    import engine.measure.run as run

    def boom(*a, **k):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(run, "apply", boom)
    r = run_recipe(Recipe(model="digits-mlp", prune=Prune("magnitude", 0.2)))
    assert r.error == "RuntimeError: kernel exploded" and r.accuracy is None


def test_bad_threads_are_refused():
    from engine.core.errors import UserError

    for bad in (0, -1, 10**6, True, 1.5, "2"):
        with pytest.raises(UserError, match="threads"):
            Recipe(model="digits-mlp", threads=bad)


def test_the_committed_digits_split_is_scikit_learns():
    """The samples read the split from a file (no scikit-learn import before a first number): it must be the
    split they were trained and carded on."""
    from sample_models.digits import split_indices
    from sample_models.train import sklearn_split

    assert split_indices() == tuple(sklearn_split().values())
