import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.core.errors import RecipeError
from engine.core.recipe import Prune, Quantize, Recipe


def test_defaults_round_trip():
    r = Recipe(model="digits-mlp")
    assert Recipe.from_json(r.to_json()) == r
    assert r.key == Recipe.from_dict(json.loads(r.to_json())).key
    assert r.is_baseline and r.baseline() == r


recipes = st.builds(
    Recipe,
    model=st.sampled_from(["digits-mlp", "digits-cnn", "minilm"]),
    prune=st.one_of(st.just(Prune()), st.builds(Prune, method=st.sampled_from(["magnitude", "structured"]),
                                                amount=st.floats(0.01, 0.99), scope=st.sampled_from(["global", "layer"]))),
    quantize=st.one_of(st.just(Quantize()), st.builds(Quantize, bits=st.integers(2, 8), scheme=st.just("weight-only"),
                                                      granularity=st.sampled_from(["per-channel", "per-group"]),
                                                      group_size=st.sampled_from([16, 32, 64]))),
    precision=st.sampled_from(["fp32", "fp16", "bf16"]),
    batch_size=st.integers(1, 64),
)


@given(recipes)
def test_json_round_trip_and_stable_key(r):
    again = Recipe.from_json(r.to_json())
    assert again == r and again.key == r.key and again.to_json() == r.to_json()


def test_canonicalisation_makes_equal_recipes_equal():
    a = Recipe(model="m", prune=Prune("magnitude", 0.0), quantize=Quantize(None, "dynamic", "per-group", 64))
    b = Recipe(model="m")
    assert a == b and a.key == b.key


def test_from_fields_is_the_one_builder():
    r = Recipe.from_fields("digits-cnn", prune=0.5, prune_method="structured", bits=8)
    assert r.prune == Prune("structured", 0.5) and r.quantize.scheme == "dynamic"  # the real int8 kernel at fp32/cpu
    assert Recipe.from_fields("digits-cnn", bits=8, precision="bf16").quantize.scheme == "weight-only"
    assert Recipe.from_fields("digits-cnn", prune=0.0, prune_method="structured").prune == Prune()
    assert r.baseline() == Recipe(model="digits-cnn") and not r.is_baseline


@pytest.mark.parametrize("build, field", [
    (lambda: Prune("magnitude", 1.5), "prune.amount"),
    (lambda: Prune("magnitude", -0.1), "prune.amount"),
    (lambda: Prune("magnitude", float("nan")), "prune.amount"),
    (lambda: Prune("random", 0.5), "prune.method"),
    (lambda: Prune("none", 0.5), "prune.amount"),
    (lambda: Quantize(bits=0), "quantize.bits"),
    (lambda: Quantize(bits=12), "quantize.bits"),
    (lambda: Quantize(bits=4, granularity="per-row"), "quantize.granularity"),
    (lambda: Recipe(model="m", precision="fp64"), "precision"),
    (lambda: Recipe(model="m", device="tpu"), "device"),
    (lambda: Recipe(model="m", batch_size=0), "batch_size"),
    (lambda: Recipe(model="m", quantize=Quantize(8, "dynamic"), precision="bf16"), "quantize.scheme"),
    (lambda: Recipe(model="m", prune=None), "prune"),
    (lambda: Recipe(model="m", quantize=None), "quantize"),
    (lambda: Recipe(model="m", quantize=[8]), "quantize"),
    (lambda: Recipe(model=""), "model"),
    (lambda: Recipe(model="x" * 1000), "model"),
])
def test_invalid_values_name_the_field_and_allowed(build, field):
    with pytest.raises(RecipeError) as exc:
        build()
    assert field in str(exc.value)


def test_from_dict_rejects_unknown_fields_versions_and_hostile_json():
    with pytest.raises(RecipeError, match="unknown field"):
        Recipe.from_dict({"model": "m", "evil": 1})
    with pytest.raises(RecipeError, match="recipe_version"):
        Recipe.from_dict({"model": "m", "recipe_version": 99})
    with pytest.raises(RecipeError, match="not valid JSON"):
        Recipe.from_json("{nope")
    with pytest.raises(RecipeError, match="nested too deeply"):
        Recipe.from_json("[" * 100_000 + "]" * 100_000)
    with pytest.raises(RecipeError, match="too large"):
        Recipe.from_json(" " * 2_000_000)
    with pytest.raises(RecipeError, match="prune"):
        Recipe.from_json('{"model": "m", "prune": null}')
