"""The thin CLI: recipe flags generated from the Recipe's field table, api verbs that return value types, and
long jobs started from a job file (never from command-line flags spelled out by the api)."""
import argparse
import dataclasses
import inspect
import json
import time

import pytest

from engine import api, cli
from engine.core import axes
from engine.core.recipe import FIELDS, FLAT_DEFAULTS, Recipe, Recover
from engine.core.summaries import BundleCheck, BundleSummary, SearchSummary, Sensitivity, Value
from engine.jobs.command import CommandJob, Job, run_file
from engine.jobs.search import SearchTask
from engine.jobs.sensitivity import SensitivityTask
from engine.jobs.sweep import expand_grid
from tests.conftest import ROOT


def _options(verb: str) -> dict[str, argparse.Action]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[verb]
    return {opt: action for action in sub._actions for opt in action.option_strings}


def test_the_field_table_is_from_fields_and_recover():
    assert set(FLAT_DEFAULTS) == {"prune", "prune_method", "prune_scope", "finetune_epochs", "bits", "scheme",
                                  "granularity", "group_size", "precision", "device", "batch_size", "runtime",
                                  "threads", "layers"}
    recover = {f.name: f.default for f in FIELDS if f.part == "recover"}
    assert recover == dataclasses.asdict(Recover())  # every recovery field has a flag, with the dataclass's default
    assert Recipe.from_fields("digits-mlp") == Recipe.from_fields("digits-mlp", **FLAT_DEFAULTS)
    with pytest.raises(ValueError, match="unknown recipe field"):
        Recipe.from_fields("digits-mlp", prune_amount=0.5)


@pytest.mark.parametrize("verb", ["run", "export"])
def test_every_field_is_a_flag_with_the_table_default(verb):
    options = _options(verb)
    for f in FIELDS:
        action = options[f.option]
        assert action.dest == f.dest and action.default == f.default, f.name


def test_the_sweep_axes_are_the_table_grid_fields():
    options = _options("sweep")
    grid = [f for f in FIELDS if f.grid]
    assert {f.grid for f in grid} <= set(inspect.signature(expand_grid).parameters)
    for f in grid:
        assert options[f.option].default == (None if f.many else f.default), f.name
    assert not [f.option for f in FIELDS if not f.grid and f.option in options]


def test_choices_are_read_from_the_registries():
    by_name = {f.name: f for f in FIELDS}
    assert by_name["runtime"].choices() == axes.RUNTIMES.names()
    assert by_name["scheme"].choices() == axes.SCHEMES.names()
    assert set(by_name["prune_method"].choices()) == set(axes.PRUNE_METHODS.names()) - {"none"}
    for name in axes.RUNTIMES.names():
        assert name in by_name["runtime"].describe()


def test_flags_make_the_recipe_from_fields_makes():
    argv = ["run", "--model", "digits-mlp", "--prune", "0.5", "--prune-method", "magnitude", "--bits", "4",
            "--scheme", "weight-only", "--recover", "finetune", "--recover-steps", "10", "--qat", "--layers",
            '{"fc1": {"prune": 0.2}}']
    a = cli.build_parser().parse_args(argv)
    assert cli.recipe_from_args(a) == Recipe.from_fields(
        "digits-mlp", prune=0.5, bits=4, scheme="weight-only", layers={"fc1": {"prune": 0.2}},
        recover={**dataclasses.asdict(Recover()), "method": "finetune", "steps": 10, "qat": True})
    plain = cli.build_parser().parse_args(["run", "--model", "digits-mlp"])
    assert cli.recipe_from_args(plain) == Recipe(model="digits-mlp")


def test_value_types_keep_unnamed_keys_and_read_like_their_json():
    data = {"study": "s", "objectives": ["relative_latency", "size"], "threshold": 0.9, "baseline_accuracy": 0.95,
            "trials_done": 3, "feasible": 1, "failed": 0, "latency_means": "1 / speed-up", "stopped": False,
            "found": [{"row_id": 1, "label": "fp32", "accuracy": 0.95, "relative_latency": 1.0, "size": 10.0}]}
    s = SearchSummary.from_dict(data)
    assert s.to_dict() == data and s["stopped"] is False and s.get("nope", 7) == 7 and "found" in s
    assert "found (non-dominated" in s.to_text() and "fp32" in s.to_text()
    check = BundleCheck.from_dict({"recipe": Recipe(model="digits-mlp").to_dict(), "recipe_key": "k", "checks": [],
                                   "bundle": None, "accuracy": 0.9, "onnx_accuracy": None, "weights_sha256": "x",
                                   "error": None})
    assert "new_bundle" not in check.to_dict() and "re-created digits-mlp" in check.to_text()
    for cls in (SearchSummary, Sensitivity, BundleSummary, BundleCheck):
        assert issubclass(cls, Value) and cls.to_text is not Value.to_text


def test_a_job_file_round_trips_its_task_and_an_error_is_one_line(tmp_path, capsys):
    task = SensitivityTask("nope", str(tmp_path / "r.db"), "prune", [0.5], "magnitude", fresh=True)
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"task": dataclasses.asdict(task), "progress": str(tmp_path / "p.json"),
                               "out": str(tmp_path / "out.json")}))
    assert SensitivityTask(**json.loads(job.read_text())["task"]) == task
    assert run_file(SensitivityTask, [str(job)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "unknown model" in err and "\n" not in err
    assert not (tmp_path / "out.json").exists()
    search = SearchTask("digits-mlp", "r.db", "0.99x", trials=3)
    assert SearchTask(**json.loads(json.dumps(dataclasses.asdict(search)))) == search


def test_api_starts_jobs_from_a_task_not_from_flags():
    source = (ROOT / "engine" / "api.py").read_text()
    assert '"--model"' not in source and '"--db"' not in source


def test_a_sensitivity_job_runs_in_its_own_process_and_returns_its_value(tmp_path):
    job = api.start_sensitivity("digits-mlp", tmp_path / "r.db", "quantize", [4])
    assert isinstance(job, Job) and isinstance(job, CommandJob)
    deadline = time.time() + 240
    while job.running:
        assert time.time() < deadline, job.progress()
        time.sleep(0.2)
    assert job.error() is None, job.log_path.read_text()[-2000:]
    value = job.result()
    assert isinstance(value, Sensitivity) and value.technique == "quantize" and value.levels == [4]
    assert value.from_store is False and "most sensitive first" in value.to_text()
    stored = api.stored_sensitivity("digits-mlp", tmp_path / "r.db", "quantize")
    assert stored is not None and stored.ranking == value.ranking
