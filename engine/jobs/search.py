"""Accuracy-constrained search: the cheapest recipes whose accuracy stays above a threshold.

Optuna's multi-objective TPE sampler proposes recipes (pruning method and amount, per-layer amounts for the
layers sensitivity ranks most sensitive, bits, precision, recovery); each trial is measured and stored as an
ordinary row, so it joins the frontier like any other point. The constraint (accuracy >= threshold) is
Optuna's constraints_func, so infeasible trials still teach the sampler. The study lives in the results
database file itself (Optuna's own tables beside the store's), so an interrupted search resumes where it was.
The `relative_latency` objective is the configuration's latency relative to the uncompressed model's, read
from the paired speed-up (1 / speed-up; the baseline is 1): trials measured minutes apart on a shared machine
still compare like with like. (The frontier's `latency` is the p50 in ms; before the two were told apart the
search called this one `latency` too, a spelling it still accepts.)
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from engine.core.errors import UserError
from engine.core.recipe import Recipe
from engine.core.summaries import SearchSummary
from engine.jobs.command import run_file, write_progress
from engine.measure.latency import check_profile
from engine.results import pareto
from engine.results.store import Store

DEFAULT_OBJECTIVES = "relative_latency:min,size:min"
SENSITIVE_LAYERS = 4  # layers given an amount of their own in the search space (the most sensitive ones)
LAYER_SCALES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)
MAX_TRIALS = 10_000
MAX_BUDGET_S = 7 * 24 * 3600.0
SEED = 0
# Objective -> the value the search minimises, read from a result.
VALUES: dict[str, Callable[[Any], float | None]] = {
    "relative_latency": lambda r: 1.0 / r.speedup if r.speedup else None,
    "size": lambda r: float(r.size_bytes) if r.size_bytes is not None else None,
    "memory": lambda r: float(r.peak_memory_bytes) if r.peak_memory_bytes is not None else None,
    "energy": lambda r: r.energy_j,
    "params": lambda r: float(r.params_nonzero) if r.params_nonzero is not None else None,
    "speedup": lambda r: 1.0 / r.speedup if r.speedup else None,
    "accuracy": lambda r: -r.accuracy if r.accuracy is not None else None,
}
SENSES = {name: ("max" if name in ("speedup", "accuracy") else "min") for name in VALUES}  # as a person names them
OLD_NAMES = {"latency": "relative_latency"}  # still accepted: on the command line, the Search page, in studies


def check(objectives: str, trials: int | None, budget_s: float | None) -> list[pareto.Objective]:
    """The objectives and the stopping rule (exactly one of trials / budget), or a one-line UserError."""
    objs = pareto.parse_objectives(objectives, {n: (n, sense) for n, sense in SENSES.items()}, OLD_NAMES)
    if (trials is None) == (budget_s is None):
        raise UserError("give one stopping rule: --trials N (the study's total) or --budget-s SECONDS (this run)")
    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int) or not 1 <= trials <= MAX_TRIALS):
        raise UserError(f"--trials {trials!r:.40} is not allowed: an integer 1 to {MAX_TRIALS}")
    if budget_s is not None and (isinstance(budget_s, bool) or not isinstance(budget_s, (int, float))
                                 or not math.isfinite(budget_s) or not 0 < budget_s <= MAX_BUDGET_S):
        raise UserError(f"--budget-s {budget_s!r:.40} is not allowed: a number of seconds above 0 (at most a week)")
    return objs


def study_name(model: str, objectives: list[pareto.Objective], threshold: float, device_id: str) -> str:
    """One study per (model, objectives, threshold, machine): the same command resumes it (a study begun
    under an objective's old spelling too)."""
    spelled = {new: old for old, new in OLD_NAMES.items()}
    key = json.dumps([model, [spelled.get(o.name, o.name) for o in objectives], round(threshold, 6), device_id])
    return "search-" + hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SearchTask:
    """A search as a job file holds it (see engine.jobs.command): run in this process or in one of its own."""

    module: ClassVar[str] = "engine.jobs.search"
    model: str
    db: str
    min_accuracy: str
    objectives: str = DEFAULT_OBJECTIVES
    trials: int | None = None
    budget_s: float | None = None
    profile: str = "quick"

    def check(self) -> None:
        """What can be refused before any model loads (a front end checks this before it starts a process)."""
        check(self.objectives, self.trials, self.budget_s)
        check_profile(self.profile)
        pareto.parse_min_accuracy(self.min_accuracy, 1.0)

    def run(self, progress_file: str | Path | None = None,
            on_trial: Callable[[dict[str, Any]], None] | None = None,
            should_stop: Callable[[], bool] = lambda: False) -> SearchSummary:
        from engine.models import get_spec

        check(self.objectives, self.trials, self.budget_s)
        check_profile(self.profile)
        get_spec(self.model)
        return SearchSummary.from_dict(run(self.model, self.db, self.min_accuracy, self.objectives, self.trials,
                                           self.budget_s, self.profile, on_trial, should_stop, progress_file))

    def read(self, data: dict[str, Any]) -> SearchSummary:
        return SearchSummary.from_dict(data)


class Space:
    """What a trial may choose for one model, and how a choice becomes a Recipe."""

    def __init__(self, model: str, spec: Any, prunable: list[str], ranking: list[str], can_train: bool,
                 labelled: bool, native_bf16: bool) -> None:
        self.model, self.spec = model, spec
        self.sensitive = [n for n in ranking if n in prunable][:SENSITIVE_LAYERS]
        self.recover_method = ("finetune" if labelled else "distill") if can_train else None
        self.precisions = ["fp32", "bf16"] if native_bf16 else ["fp32"]

    def suggest(self, trial: Any) -> Recipe:
        method = trial.suggest_categorical("prune_method", ["none", "magnitude", "structured"])
        fields: dict[str, Any] = {}
        layers: dict[str, dict[str, float]] = {}
        if method != "none":
            amount = trial.suggest_float("prune_amount", 0.1, 0.9, step=0.05)
            fields.update(prune=amount, prune_method=method, prune_scope="layer" if method == "structured" else "global")
            for i, name in enumerate(self.sensitive):
                scale = trial.suggest_categorical(f"scale_{i}", list(LAYER_SCALES))
                if scale != 1.0:
                    layers[name] = {"prune": round(min(0.95, amount * scale), 4)}
        bits = trial.suggest_categorical("bits", ["none", 8, 6, 4])
        precision = trial.suggest_categorical("precision", self.precisions)
        fields.update(bits=None if bits == "none" else int(bits), precision=precision)
        recover = None
        if self.recover_method:
            steps = trial.suggest_categorical("recover_steps", [0, 100, 300])
            if steps and (method != "none" or bits != "none"):
                recover = {"method": self.recover_method, "steps": int(steps),
                           "qat": bits not in ("none", 8, 6) and bits is not None}
        return Recipe.from_fields(self.model, layers=layers or None, recover=recover, **fields)

    def warm_starts(self) -> list[dict[str, Any]]:
        """First trials from sensitivity: prune the insensitive layers hard and the sensitive ones lightly."""
        keep = {f"scale_{i}": 0.5 if i < 2 else 0.75 for i in range(len(self.sensitive))}

        def steps(n: int) -> dict[str, int]:
            return {"recover_steps": n} if self.recover_method else {}

        # Cheapest first: a first point in seconds, then the recovered ones.
        return [
            {"prune_method": "structured", "prune_amount": 0.3, "bits": "none", "precision": "fp32", **keep, **steps(0)},
            {"prune_method": "structured", "prune_amount": 0.6, "bits": "none", "precision": "fp32", **keep,
             **steps(100)},
            {"prune_method": "structured", "prune_amount": 0.8, "bits": 8, "precision": "fp32", **keep, **steps(300)},
        ]


def _storage(db: str | Path) -> Any:
    import optuna

    logging.getLogger("optuna").setLevel(logging.WARNING)
    return optuna.storages.RDBStorage(f"sqlite:///{Path(db).resolve()}",
                                      engine_kwargs={"connect_args": {"timeout": 60}})


def run(model: str, db: str | Path, min_accuracy: str, objectives: str = DEFAULT_OBJECTIVES,
        trials: int | None = None, budget_s: float | None = None, profile: str = "quick",
        on_trial: Callable[[dict[str, Any]], None] | None = None, should_stop: Callable[[], bool] = lambda: False,
        progress_file: str | Path | None = None) -> dict[str, Any]:
    """Run (or resume) the search; the recipes found, best first (feasible and non-dominated)."""
    import optuna
    from optuna.trial import TrialState

    from engine.compress.prune import prunable_layers
    from engine.core.hardware import detect
    from engine.jobs import lookup, sensitivity
    from engine.measure.fingerprint import fingerprint
    from engine.measure.run import reference
    from engine.models import base_model

    objs = check(objectives, trials, budget_s)
    check_profile(profile)
    write_progress(progress_file, {"phase": "loading the model and measuring per-layer sensitivity", "trials_done": 0,
                                   "trials_target": trials, "budget_s": budget_s, "found": []})
    base, spec = base_model(model)
    baseline = reference(model)[1]["accuracy"]
    threshold = pareto.parse_min_accuracy(min_accuracy, baseline)
    if threshold is None:
        raise UserError("--min-accuracy is required: an absolute value (0.95) or relative to the baseline (0.99x)")
    if threshold > baseline:
        raise UserError(f"--min-accuracy {min_accuracy} asks for {threshold:.4f}, above the uncompressed model's "
                        f"{baseline:.4f}: no compressed recipe is expected to reach it; give at most 1x")
    device = fingerprint()["id"]
    with Store(db):  # created (or upgraded) before the first trial
        pass
    sens = sensitivity.load(db, model, "prune", device, method="magnitude")
    if sens is None:
        sens = sensitivity.measure(model, "prune", sensitivity.check_levels("prune", None), "magnitude")
        sensitivity.save(db, sens)
    space = Space(model, spec, [n for n, _ in prunable_layers(base, spec)], sens["ranking"],
                  spec.train_batches is not None, spec.train_labelled, detect().cpu_bf16_native)
    name = study_name(model, objs, threshold, device)

    sampler = optuna.samplers.TPESampler(seed=SEED, multivariate=True, n_startup_trials=8)
    study = optuna.create_study(storage=_storage(db), study_name=name, sampler=sampler, load_if_exists=True,
                                directions=["minimize"] * len(objs))
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # a killed run's last trial
        study.tell(t.number, state=TrialState.FAIL)
    if not study.user_attrs:
        study.set_user_attr("definition", {"model": model, "objectives": [o.name for o in objs],
                                           "min_accuracy": min_accuracy, "threshold": threshold, "device_id": device})
        for params in space.warm_starts():
            study.enqueue_trial(params, skip_if_exists=True)
    start = time.perf_counter()

    def counted() -> int:
        return sum(1 for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE
                   or (t.state == TrialState.FAIL and "row_id" in t.user_attrs))

    done = counted()
    while not should_stop():
        if trials is not None and done >= trials:
            break
        if budget_s is not None and time.perf_counter() - start >= budget_s:
            break
        trial = study.ask()
        try:
            recipe = space.suggest(trial)
        except UserError as exc:  # a combination the recipe rules refuse: not a measurement
            study.tell(trial, state=TrialState.PRUNED)
            logging.getLogger(__name__).debug("skipped: %s", exc)
            continue
        trial.set_user_attr("recipe", recipe.to_dict())
        write_progress(progress_file, {**_summary(study, objs, threshold, baseline, trials, budget_s,
                                                  time.perf_counter() - start, name),
                                       "phase": f"trial {done + 1}: {recipe.label()}"})
        measured = lookup.measure_or_load(recipe, db, profile)
        r = measured.result
        trial.set_user_attr("row_id", measured.row_id)
        trial.set_user_attr("label", recipe.label())
        values = [VALUES[o.name](r) for o in objs] if r.error is None else None
        if values is None or any(v is None or not math.isfinite(v) for v in values):
            trial.set_user_attr("error", r.error or "an objective was not measured")
            study.tell(trial, state=TrialState.FAIL)
        else:
            trial.set_user_attr("accuracy", r.accuracy)
            trial.set_constraint("accuracy", threshold - r.accuracy)  # feasible at <= 0
            study.tell(trial, values)
        done += 1
        summary = _summary(study, objs, threshold, baseline, trials, budget_s, time.perf_counter() - start, name)
        write_progress(progress_file, summary)
        if on_trial:
            on_trial(summary)
    summary = _summary(study, objs, threshold, baseline, trials, budget_s, time.perf_counter() - start, name)
    summary["stopped"] = should_stop()
    write_progress(progress_file, {**summary, "finished": True, "phase": "stopped" if summary["stopped"] else "done"})
    return summary


def _summary(study: Any, objs: list[pareto.Objective], threshold: float, baseline: float, trials: int | None,
             budget_s: float | None, elapsed: float, name: str) -> dict[str, Any]:
    """The study so far: counts and the feasible non-dominated trials, best first (by the first objective)."""
    import numpy as np
    from optuna.trial import TrialState

    all_trials = study.get_trials(deepcopy=False)
    complete = [t for t in all_trials if t.state == TrialState.COMPLETE]
    feasible = [t for t in complete if t.user_attrs.get("accuracy", -1) >= threshold]
    found = []
    if feasible:
        mask = pareto.non_dominated(np.array([t.values for t in feasible]), ["min"] * len(objs))
        rows: set[int] = set()
        for t in sorted((t for t, keep in zip(feasible, mask) if keep), key=lambda t: tuple(t.values)):
            if t.user_attrs["row_id"] in rows:  # the sampler proposed a recipe again (read from the store)
                continue
            rows.add(t.user_attrs["row_id"])
            found.append({"trial": t.number, "row_id": t.user_attrs["row_id"], "label": t.user_attrs["label"],
                          "accuracy": t.user_attrs["accuracy"], "recipe": t.user_attrs["recipe"],
                          **{o.name: _shown(o.name, v) for o, v in zip(objs, t.values)}})
    return {"study": name, "objectives": [o.name for o in objs], "threshold": threshold,
            "baseline_accuracy": baseline, "trials_done": len(complete) + sum(
                1 for t in all_trials if t.state == TrialState.FAIL and "row_id" in t.user_attrs),
            "trials_target": trials, "budget_s": budget_s, "elapsed_s": round(elapsed, 1),
            "feasible": len(feasible), "failed": sum(1 for t in all_trials if t.state == TrialState.FAIL
                                                     and "error" in t.user_attrs),
            "found": found,
            "latency_means": "relative_latency = 1 / paired speed-up against the uncompressed model (baseline = 1)"}


def _shown(name: str, value: float) -> float:
    """An objective as a person reads it (the search minimises; speed-ups and accuracy are shown as such)."""
    if name == "speedup":
        return 1.0 / value
    if name == "accuracy":
        return -value
    return value


if __name__ == "__main__":
    sys.exit(run_file(SearchTask, sys.argv[1:]))
