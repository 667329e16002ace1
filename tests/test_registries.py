"""One registry per axis: the recipe, the CLI, the dashboard's pickers and the tests read their names from it,
a name cannot be registered twice, and every registered entry works (parametrised over the registries)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from engine.core.axes import PRUNE_METHODS, RUNTIMES, SCHEMES, TASKS
from engine.core.errors import RecipeError
from engine.core.recipe import Prune, Quantize, Recipe
from engine.core.registry import Registry
from tests.registry_cases import prune_case, quantize_case

AXES = {"runtime": RUNTIMES, "prune_method": PRUNE_METHODS, "scheme": SCHEMES, "task": TASKS}


def test_the_built_ins_are_registered_in_order():
    assert RUNTIMES.names() == ("eager", "compile", "onnxruntime", "openvino")
    assert PRUNE_METHODS.names() == ("none", "magnitude", "structured")
    assert SCHEMES.names() == ("weight-only", "dynamic", "codebook")
    assert TASKS.names() == ("feature-extraction", "text-classification", "image-classification")
    for registry in AXES.values():
        assert all(entry.name == name for name, entry in registry.items())


@pytest.mark.parametrize("axis", ["runtime", "prune_method", "scheme"])
def test_the_recipe_allows_exactly_the_registered_names(axis):
    build = {"runtime": lambda n: Recipe(model="digits-mlp", runtime=n),
             "prune_method": lambda n: Recipe(model="digits-mlp", prune=Prune(n, 0.5 if n != "none" else 0.0)),
             "scheme": lambda n: Recipe(model="digits-mlp", quantize=Quantize(4, n))}[axis]
    for name in AXES[axis].names():
        build(name)
    with pytest.raises(RecipeError) as err:
        build("no-such-name")
    assert err.value.args[0].endswith("choose one of " + ", ".join(AXES[axis].names()))


def _cli_options() -> list[tuple[str, argparse.Action]]:
    from engine.cli import build_parser

    out = []
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                out += [(command, a) for a in sub._actions if a.dest in AXES]
    return out


def test_the_cli_offers_exactly_the_registered_names():
    options = _cli_options()
    assert {a.dest for _, a in options} == set(AXES)  # every axis is a flag somewhere
    for command, action in options:
        names = AXES[action.dest].names()
        if action.choices is not None:  # a prune method flag may leave out "none" (amount 0 means no pruning)
            assert tuple(action.choices) in (names, tuple(n for n in names if n != "none")), (command, action.dest)
        else:  # a list-valued flag (sweep axes) names them in its help
            missing = [n for n in names if n != "none" and n not in (action.help or "")]
            assert not missing, f"{command} {action.option_strings}: help does not name {missing}"


def test_the_dashboard_pickers_offer_exactly_the_registered_names():
    from dashboard import state

    assert state.RUNTIME_OPTIONS == list(RUNTIMES.names())
    assert state.SCHEME_OPTIONS == ["auto", *SCHEMES.names()]
    assert state.PRUNE_METHOD_OPTIONS == [n for n, m in PRUNE_METHODS.items() if m.prunes] == ["magnitude",
                                                                                               "structured"]


def test_registering_a_name_twice_is_an_error():
    for registry in AXES.values():
        name, entry = registry.items()[0]
        with pytest.raises(ValueError, match="registered twice"):
            registry.register(name, entry)
        assert registry.names().count(name) == 1
    fresh: Registry[int] = Registry("thing", "thing")
    fresh.register("a", 1)
    with pytest.raises(ValueError, match="registered twice"):
        fresh.register("a")(2)
    assert fresh.get("a") == 1


def test_an_unknown_name_is_a_recipe_error_naming_the_choices():
    with pytest.raises(RecipeError, match="runtime='tensorrt' is not allowed: choose one of eager, compile"):
        RUNTIMES.get("tensorrt")
    with pytest.raises(RecipeError, match="task="):
        TASKS.get(["not", "hashable"])


def test_filling_the_registries_loads_no_torch():
    code = ("import sys; from engine.core.axes import PRUNE_METHODS, RUNTIMES, SCHEMES, TASKS; "
            "[r.names() for r in (PRUNE_METHODS, RUNTIMES, SCHEMES, TASKS)]; "
            "from engine.core.recipe import Recipe; Recipe(model='digits-mlp', runtime='onnxruntime'); "
            "import engine.runtimes, engine.results.figures; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


# --- every registered entry works -----------------------------------------------------------------------------
@pytest.mark.parametrize("runtime", RUNTIMES.names())
def test_every_runtime_measures_a_pruned_quantized_model(runtime):
    from engine.measure.run import run_recipe

    r = run_recipe(Recipe(model="digits-cnn", runtime=runtime, prune=Prune("structured", 0.3),
                          quantize=Quantize(8, "weight-only")))
    assert r.error is None, r.error
    assert r.accuracy > 0.8 and r.latency.p50 > 0 and r.size_bytes > 0 and r.kernels
    rt = RUNTIMES.get(runtime)
    assert (r.prepare_s is not None) == (rt.prepares is not None)


@pytest.mark.parametrize("method", [m for m, e in PRUNE_METHODS.items() if e.prunes])
def test_every_prune_method_removes_weights(method):
    from engine.compress.pipeline import apply
    from engine.models import base_model

    model, spec = base_model("digits-mlp")
    applied = apply(model, Recipe(model="digits-mlp", prune=prune_case(method)), spec, kernels=False)
    assert applied.params_nonzero < 0.7 * applied.params_total or applied.params_total < 0.7 * sum(
        p.numel() for p in model.parameters())
    assert applied.kernels[0].step == "prune"


@pytest.mark.parametrize("scheme", SCHEMES.names())
def test_every_scheme_puts_weights_on_a_grid_and_names_its_kernel(scheme):
    from engine.compress.pipeline import apply
    from engine.compress.quantize import distinct_levels
    from engine.models import base_model

    model, spec = base_model("digits-mlp")
    step = quantize_case(scheme)
    stored = apply(model, Recipe(model="digits-mlp", quantize=step), spec, kernels=False)
    weights = [v for k, v in stored.storage_state.items() if k.endswith("weight") and v.dim() == 2]
    group = step.group_size if step.granularity == "per-group" else None
    assert weights and all(distinct_levels(w, group) <= 2 ** step.bits for w in weights)
    run = apply(model, Recipe(model="digits-mlp", quantize=step), spec)
    assert any(k.step == "quantize" for k in run.kernels)
    assert run.size_bytes < 0.5 * stored.params_total * 4


@pytest.mark.parametrize("task", TASKS.names())
def test_every_task_describes_its_evaluation_data(task):
    entry = TASKS.get(task)
    assert entry.eval_help and entry.upload_kinds
    assert entry.eval_folder == (entry.upload_kinds == ("zip",))


@pytest.mark.parametrize("runtime", RUNTIMES.names())
def test_every_runtime_ships_a_bundle_that_verifies_its_primary_model(runtime, tmp_path):
    from engine import api

    rt = RUNTIMES.get(runtime)
    out = api.export(tmp_path / "b", recipe=Recipe(model="digits-mlp", runtime=runtime,
                                                   quantize=Quantize(8, "weight-only")), profile="quick")
    record = json.loads((tmp_path / "b" / "recipe.json").read_text())
    assert record["verification"]["runtime"] == runtime and record["verification"]["primary"] == rt.primary
    assert record["metrics"]["size_bytes"] == (tmp_path / "b" / rt.sized).stat().st_size
    assert abs(record["verification"][rt.accuracy_key] - out["accuracy"]) <= 0.005
    checked = api.apply_bundle(tmp_path / "b")
    assert checked["error"] is None, checked


def test_a_new_runtime_is_one_class_and_its_registration(monkeypatch):
    """What the next runtime (OpenVINO) needs: a Runtime subclass; the recipe, measurement and pickers follow."""
    from engine.measure.run import run_recipe
    from engine.runtimes.base import Artifact
    from engine.runtimes.eager import Eager

    class Traced(Eager):
        name, label, prepares = "traced", "TorchScript", "torch.jit.trace"

        def prepare(self, applied, recipe, spec, threads) -> Artifact:
            import torch

            example = spec.example_inputs(recipe.batch_size)
            traced = torch.jit.trace(applied.model, example)
            return Artifact(outputs=traced, call=lambda: traced(example), held=applied.model,
                            held_as="model tensor bytes", kernels=list(applied.kernels), prepare_s=0.0)

    monkeypatch.setitem(RUNTIMES._filled(), "traced", Traced())  # undone after the test
    r = run_recipe(Recipe(model="digits-mlp", runtime="traced"))
    assert r.error is None and abs(r.accuracy - r.baseline_accuracy) < 1e-6 and r.prepare_s == 0.0
    assert "traced" in RUNTIMES.names()
