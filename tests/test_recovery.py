"""Per-layer overrides and recovery (fine-tuning, distillation, gradual pruning, QAT, codebook centroids), through
the real pipeline on the digits sample models (and a few steps of MiniLM distillation)."""
import json

import pytest
import torch

from engine import api
from engine.compress import pipeline
from engine.compress.pipeline import apply
from engine.compress.quantize import distinct_levels
from engine.core.errors import RecipeError, UserError
from engine.core.recipe import Recipe
from engine.measure.run import evaluate
from engine.models import base_model
from tests.test_cli import one_line_exit_2


def applied(model: str, **fields):
    recipe = Recipe.from_fields(model, **fields)
    base, spec = base_model(model)
    out = apply(base, recipe, spec, kernels=False)
    return out, evaluate(out, recipe, spec)["accuracy"], recipe


def zeros(t: torch.Tensor) -> float:
    return float((t == 0).float().mean())


# --- the recipe ----------------------------------------------------------------------------------------
def test_old_recipes_keep_their_keys_and_new_parts_round_trip():
    # keys computed by the engine before recipe_version 4: stores and bundles written then still match
    assert Recipe.from_fields("digits-cnn").key == "117b50749ea6bb0e"
    assert Recipe.from_fields("digits-cnn", prune=0.5, prune_method="structured", bits=8).key == "28b2512ff9042529"
    v3 = {"recipe_version": 3, "model": "digits-cnn", "threads": 1}
    assert Recipe.from_dict(v3) == Recipe(model="digits-cnn", threads=1)
    r = Recipe.from_fields("digits-mlp", prune=0.5, layers={"fc*": {"prune": 0.3}, "fc1": {"bits": "none"}}, bits=4,
                           recover={"method": "finetune", "steps": 10, "schedule": "gradual", "initial_sparsity": 0.2})
    again = Recipe.from_json(r.to_json())
    assert again == r and again.key == r.key and r.to_dict()["recipe_version"] == 4
    assert [o.pattern for o in r.layers] == ["fc*", "fc1"]  # canonical order
    assert "2 layer overrides" in r.label() and "finetune 10 steps gradual" in r.label()


def test_only_some_layers_pruned_keeps_the_method():
    r = Recipe.from_fields("digits-mlp", prune=0.0, layers={"fc2": {"prune": 0.6}})
    assert r.prune.method == "magnitude" and not r.is_baseline
    assert Recipe.from_fields("digits-mlp", prune=0.0).prune.method == "none"


@pytest.mark.parametrize("fields, needle", [
    (dict(layers={"fc1": {"prune": 1.5}}), "layers['fc1'].prune"),
    (dict(layers={"fc1": {"bits": 12}}, bits=4), "layers['fc1'].bits"),
    (dict(layers={"fc1": {}}), "overrides nothing"),
    (dict(layers={"fc1": {"prune": 0.2, "speed": 1}}), "unknown field"),
    (dict(layers={"fc1": {"bits": 4}}), "quantize.bits is none"),
    (dict(recover={"method": "finetune", "steps": 0}), "recover.steps"),
    (dict(recover={"method": "magic", "steps": 5}), "recover.method"),
    (dict(recover={"method": "finetune", "steps": 5, "lr": -1}), "recover.lr"),
    (dict(prune=0.5, prune_method="structured", recover={"method": "finetune", "steps": 5, "schedule": "gradual"}),
     "needs prune.method magnitude"),
    (dict(prune=0.5, recover={"method": "finetune", "steps": 5, "schedule": "gradual", "initial_sparsity": 0.6}),
     "below the final sparsity"),
    (dict(recover={"method": "finetune", "steps": 5, "qat": True}), "recover.qat"),
    (dict(bits=4, scheme="codebook", recover={"method": "finetune", "steps": 5, "qat": True}), "recover.qat"),
    (dict(prune=0.5, finetune_epochs=1, recover={"method": "finetune", "steps": 5}), "use recover alone"),
])
def test_bad_parts_name_the_field(fields, needle):
    with pytest.raises(RecipeError, match=needle.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        Recipe.from_fields("digits-mlp", **fields)


def test_unknown_layer_and_never_pruned_layer_are_one_line_errors():
    one_line_exit_2(["run", "--model", "digits-mlp", "--prune", "0.5", "--layers", '{"fc9": {"prune": 0.1}}'],
                    "'fc9' names no compressible layer of digits-mlp: its layers are fc1, fc2, classifier")
    one_line_exit_2(["run", "--model", "digits-mlp", "--prune", "0.5", "--layers", '{"classifier": {"prune": 0.1}}'],
                    "never prunes")
    one_line_exit_2(["run", "--model", "digits-mlp", "--prune", "0.5", "--layers", "[1]"], "JSON object")
    one_line_exit_2(["run", "--model", "digits-mlp", "--bits", "4", "--layers", '{"f*": {"bits": 8}, "*1": {"bits": 6}}'],
                    "matches overrides")
    one_line_exit_2(["run", "--model", "minilm", "--prune", "0.5", "--recover", "finetune", "--recover-steps", "5"],
                    "use distill")


# --- overrides honoured ----------------------------------------------------------------------------------
def test_magnitude_overrides_prune_each_layer_at_its_own_amount():
    out, _, _ = applied("digits-mlp", prune=0.5, prune_scope="layer", layers={"fc1": {"prune": 0.0},
                                                                               "fc2": {"prune": 0.8}})
    s = out.storage_state
    assert zeros(s["fc1.weight"]) == 0 and abs(zeros(s["fc2.weight"]) - 0.8) < 0.01 and zeros(s["classifier.weight"]) == 0


def test_quantize_overrides_keep_a_layer_in_float_and_give_another_its_bits():
    base, _ = base_model("digits-mlp")
    out, _, _ = applied("digits-mlp", bits=4, scheme="weight-only", layers={"fc1": {"bits": "none"},
                                                                           "classifier": {"bits": 2}})
    s = out.storage_state
    assert torch.equal(s["fc1.weight"], base.fc1.weight)
    assert distinct_levels(s["fc2.weight"]) <= 16 and distinct_levels(s["classifier.weight"]) <= 4
    assert set(out.quant) == {"fc2.weight", "classifier.weight"}


def test_dynamic_int8_leaves_a_float_override_on_the_float_kernel():
    recipe = Recipe.from_fields("digits-mlp", bits=8, layers={"fc1": {"bits": "none"}})
    base, spec = base_model("digits-mlp")
    model = apply(base, recipe, spec).model
    assert type(model.fc1) is torch.nn.Linear and type(model.fc2) is not torch.nn.Linear


def test_structured_override_keeps_a_layer_whole():
    out, _, _ = applied("digits-cnn", prune=0.5, prune_method="structured", prune_scope="layer",
                        layers={"conv1": {"prune": 0.0}})
    s = out.storage_state
    assert s["conv1.weight"].shape[0] == 32 and s["conv2.weight"].shape[0] < 64


# --- recovery ---------------------------------------------------------------------------------------------
def test_finetune_recovers_structured_pruning_and_is_deterministic():
    _, plain, _ = applied("digits-cnn", prune=0.7, prune_method="structured")
    first, tuned, recipe = applied("digits-cnn", prune=0.7, prune_method="structured",
                                   recover={"method": "finetune", "steps": 60})
    assert tuned > plain + 0.2
    pipeline._RECOVERED.clear()  # re-created from nothing, as `apply` in another process would
    again, _, _ = applied("digits-cnn", prune=0.7, prune_method="structured", recover={"method": "finetune", "steps": 60})
    assert all(torch.equal(first.storage_state[k], again.storage_state[k]) for k in first.storage_state)
    assert any(k.step == "recover" and "60 Adam steps" in k.kernel for k in first.kernels)


def test_distillation_of_a_classifier_recovers():
    _, plain, _ = applied("digits-cnn", prune=0.7, prune_method="structured")
    _, distilled, _ = applied("digits-cnn", prune=0.7, prune_method="structured",
                              recover={"method": "distill", "steps": 60})
    assert distilled > plain + 0.2


def test_gradual_schedule_ends_at_the_final_sparsity_and_zeros_stay_zero():
    out, acc, _ = applied("digits-mlp", prune=0.9, recover={"method": "finetune", "steps": 80, "schedule": "gradual",
                                                            "initial_sparsity": 0.5})
    s = out.storage_state
    total = s["fc1.weight"].numel() + s["fc2.weight"].numel()
    z = float((s["fc1.weight"] == 0).sum() + (s["fc2.weight"] == 0).sum()) / total
    assert abs(z - 0.9) < 0.002 and acc > 0.9
    prune_kernel = next(k for k in out.kernels if k.step == "prune")
    assert abs(prune_kernel.detail["zero_fraction"] - 0.9) < 0.01  # the final sparsity, not the schedule's start


def test_qat_learns_the_grid():
    _, plain, _ = applied("digits-mlp", bits=2, scheme="weight-only")
    out, qat, _ = applied("digits-mlp", bits=2, scheme="weight-only",
                          recover={"method": "finetune", "steps": 80, "qat": True})
    assert qat > plain and distinct_levels(out.storage_state["fc2.weight"]) <= 4


def test_codebook_centroids_are_fine_tuned_and_weights_stay_shared():
    out, acc, _ = applied("digits-mlp", prune=0.8, prune_scope="layer", bits=3, scheme="codebook",
                          recover={"method": "finetune", "steps": 60})
    w = out.storage_state["fc2.weight"]
    assert len(torch.unique(w[w != 0])) <= 8 and abs(zeros(w) - 0.8) < 0.02 and acc > 0.9
    assert [k.kernel.split(" (")[0] for k in out.kernels if k.step == "recover"] == [
        "fine-tuned on labelled training data", "codebook centroids fine-tuned"]


def test_minilm_distils_on_its_corpus():
    from sample_models import minilm

    corpus = minilm.corpus()
    assert len(corpus) >= 2000 and not set(corpus) & set(minilm.sentences())
    out, _, _ = applied("minilm", prune=0.5, prune_method="structured", recover={"method": "distill", "steps": 2})
    kernel = next(k for k in out.kernels if k.step == "recover")
    assert kernel.detail["steps"] == 2 and kernel.detail["lr"] == base_model("minilm")[1].recover_lr < 1e-3


def test_a_recovered_override_recipe_exports_and_verifies(tmp_path):
    recipe = Recipe.from_fields("digits-mlp", prune=0.8, bits=4, scheme="codebook", layers={"fc1": {"prune": 0.6}},
                                recover={"method": "finetune", "steps": 30, "schedule": "gradual",
                                         "initial_sparsity": 0.4})
    summary = api.export(tmp_path / "b", recipe=recipe, db=tmp_path / "r.db", profile="quick")
    pipeline._RECOVERED.clear()
    check = api.apply_bundle(tmp_path / "b")
    assert check["error"] is None, check
    record = json.loads((tmp_path / "b" / "recipe.json").read_text())
    assert record["recipe"]["recover"]["schedule"] == "gradual" and summary["size_bytes"] > 0


def test_recovery_without_training_data_is_refused():
    from engine.compress import recover
    from engine.models.registry import ModelSpec

    spec = ModelSpec(name="x", task="t", description="d", source="s", metric="m", build=lambda: None,
                     example_inputs=lambda b: None, eval_inputs=lambda: [], score=lambda o, r: {})
    with pytest.raises(UserError, match="ships no training data"):
        recover.check(Recipe.from_fields("x", prune=0.5, recover={"method": "distill", "steps": 3}), spec)
