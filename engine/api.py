"""The front door: every verb the command line and the dashboard call, with every input checked here, once.

Front ends parse and print; they hold no compression, measurement or store logic. Verbs return value types
(engine.core.summaries, the Result) that render themselves: `to_dict()` for JSON, `to_text()` for people. Long
tasks (search, sensitivity) start from a job file (engine.jobs.command), never from command-line flags. Bad
input raises UserError (the CLI prints one line and exits 2); a bundle that fails verification raises or reports
a VerificationError (exit 1); a configuration that fails while running is a Result with `error` (a row).
Stores are opened per call: SQLite connections are cheap and must not cross threads.
"""
from __future__ import annotations

import io
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

from engine.core.errors import NO_CUDA, UserError
from engine.core.recipe import Recipe
from engine.core.result import Result
from engine.core.summaries import (
    BundleCheck,
    BundleSummary,
    Frontier,
    Frontiers,
    ImportSummary,
    ModelList,
    ResultsTable,
    SearchSummary,
    Sensitivity,
)
from engine.jobs import lookup
from engine.jobs.cluster import ClusterJob, ClusterOptions
from engine.jobs.command import Job
from engine.jobs.lookup import Measured
from engine.jobs.sweep import Step, SweepSummary, expand_grid, run_sweep, todo
from engine.jobs.worker import Worker, WorkerSweep, shared
from engine.measure import latency
from engine.measure.fingerprint import fingerprint, machine_id
from engine.results import pareto
from engine.results.store import Store

# The small grid that seeds an empty store so the first screen already shows a frontier.
SEED_GRID = dict(prune=[0.0, 0.5], methods=["magnitude", "structured"], bits=[None, 8, 4], precisions=["fp32", "bf16"])
LARGE_MODEL_PARAMS = 1_000_000
BASELINE_RETRY_S = 30.0


def worker() -> Worker:
    """The shared measuring process of this front end (see engine.jobs.worker)."""
    return shared()


# --- checks ---------------------------------------------------------------------------------------------
def check_profile(profile: str) -> str:
    return latency.check_profile(profile)


def check_settings() -> None:
    """Environment settings that change measurements (a bad value is refused, never silently replaced)."""
    from engine.measure.energy import watts_per_core

    watts_per_core()


def check_model(name: str):
    """The model's spec, or a UserError naming the registered models (or why this one cannot load)."""
    from engine.models import get_spec

    return get_spec(name)


def model_name(model: str, task: str | None = None, eval_data: str | None = None) -> str:
    """The name recipes and the store use: registered names as given; `hf:<folder or hub id>` (with `task` and
    `eval_data`) and `py:<file.py>` checked and named with a hash of their weights and evaluation data."""
    from engine.models.user import canonical

    if not isinstance(model, str) or not model:
        raise UserError("give a model: a registered name, hf:<folder> or py:<file.py>")
    if (task or eval_data) and not model.startswith("hf:"):
        raise UserError("--task and --eval-data are for hf: models only")
    return canonical(model, task, eval_data)


def model_choices(db: str | Path) -> list[str]:
    """The registered models and every user model the store holds rows of (nothing is loaded)."""
    from engine.models import model_names
    from engine.models.user import is_user_model

    names = model_names()
    if Path(db).exists():
        with Store(db, write=False) as store:
            names += [m for m in store.models() if is_user_model(m) and m not in names]
    return names


def add_uploaded_model(model_zip: bytes, eval_name: str, eval_data: bytes, task: str, db: str | Path) -> str:
    """A zipped Hugging Face folder and its evaluation data, unpacked (checked, weights and configs only) into a
    folder beside the store; the model's canonical name."""
    from engine.models.upload import store_upload

    model, data = store_upload(model_zip, eval_name, eval_data, task, Path(f"{Path(db).resolve()}.models"))
    return model_name(f"hf:{model}", task, data)


def describe_model(name: str, via: Worker | None = None):
    """What a front end shows about a model (ModelInfo). With `via`, the measuring process reads it, so the
    front end's own process never loads torch or a tokenizer. Raises UserError for an unknown model."""
    if via is not None:
        return via.describe(name)
    return check_model(name).info()


def load_model(name: str) -> None:
    """Load the model now (cached for the process): a folder that cannot load is a UserError before any work."""
    from engine.models import base_model

    check_model(name)
    base_model(name)


def recipe_from_fields(model: str, via: Worker | None = None, **fields: Any) -> Recipe:
    """The one way flat controls (CLI flags, dashboard widgets) become a Recipe: values, model and device checked
    (with `via`, by the measuring process that will run it, so this process never loads torch)."""
    recipe = Recipe.from_fields(model, **fields)
    _check_runnable(recipe.model, recipe.device, via)
    if via is None:
        check_recipe_fits(recipe)
    return recipe


def check_recipe_fits(recipe: Recipe) -> None:
    """What needs the model itself: layer overrides name its layers, recovery has training data (UserError)."""
    if not recipe.layers and recipe.recover.method == "none":
        return
    from engine.compress import layers, prune, recover
    from engine.models import base_model

    model, spec = base_model(recipe.model)
    prune.plan(model, recipe.prune, spec, layers.resolve(recipe, model))
    recover.check(recipe, spec)


def _check_runnable(model: str, device: str, via: Worker | None) -> None:
    if via is not None:
        via.describe(model)
        if device == "cuda" and not via.hardware.gpu_name:
            raise UserError(NO_CUDA)
        return
    from engine.compress.pipeline import check_device

    check_model(model)
    check_device(device)


def models() -> ModelList:
    """Every registered model with its facts; one that cannot load here says why instead of failing the list."""
    from engine.models import base_model, get_spec, model_names

    out = []
    for name in model_names():
        try:
            spec = get_spec(name)  # counted from the weights where the spec can (no torch), else built
            parameters = (spec.parameters() if spec.parameters is not None
                          else sum(p.numel() for p in base_model(name)[0].parameters()))
        except Exception as exc:  # noqa: BLE001  (one model that cannot load here must not hide the others)
            out.append({"name": name, "available": False, "error": str(exc) if isinstance(exc, UserError)
                        else f"{type(exc).__name__}: {str(exc)[:200]}"})
            continue
        out.append({"name": name, "available": True, "task": spec.task, "description": spec.description,
                    "parameters": parameters, "metric": spec.metric,
                    "metric_kind": spec.metric_kind, "source": spec.source,
                    "can_finetune": spec.finetune is not None})
    return ModelList(out)
# --- measuring ------------------------------------------------------------------------------------------
def measure(recipe: Recipe, profile: str = "quick") -> Result:
    """Measure in this process, without storing."""
    from engine.measure.run import run_recipe

    check_model(recipe.model)
    return run_recipe(recipe, profile=check_profile(profile))


def measure_or_load(recipe: Recipe, db: str | Path, profile: str = "quick", via: Worker | None = None,
                    fresh: bool = False) -> Measured:
    """The stored result of this recipe on this machine, or a new measurement (then stored).

    `via`: measure in that worker process instead of this one. `fresh`: measure even if stored (the
    store still keeps the better of the two: a busy re-measure does not replace a quiet row)."""
    describe_model(recipe.model, via)
    return lookup.measure_or_load(recipe, db, check_profile(profile), via, fresh)


def baseline_of(recipe: Recipe, db: str | Path, via: Worker | None = None) -> Measured:
    """The uncompressed model at this recipe's batch size and device, fit to be the reference for deltas.

    A stored baseline measured on a busy machine is measured again first (at most once per
    BASELINE_RETRY_S, so a machine that stays busy is not asked on every click); a noisy one is measured
    again with the `thorough` profile (whose longer windows settle it, or show the noise is the model's own)."""
    base = measure_or_load(recipe.baseline(), db, via=via)
    r = base.result
    if not base.from_store or r.error is not None:
        return base
    if r.contended and time.time() - (r.measured_at or 0) > BASELINE_RETRY_S:
        return measure_or_load(recipe.baseline(), db, via=via, fresh=True)
    if r.latency is not None and r.latency.noisy and r.profile == "quick":
        return measure_or_load(recipe.baseline(), db, "thorough", via=via)
    return base


# --- sweeps ---------------------------------------------------------------------------------------------
def sweep_grid(model: str, via: Worker | None = None, here: bool = True, **axes: Any
               ) -> tuple[list[Recipe], list[str]]:
    """The recipes of a grid (see results.sweep.expand_grid) after checking the model, and the device where
    the grid runs `here` (a cluster's nodes check their own)."""
    recipes, skipped = expand_grid(model, **axes)
    if here:
        _check_runnable(model, recipes[0].device, via)
    elif via is None:
        check_model(model)
    return recipes, skipped


def seed_grid(model: str, via: Worker | None = None) -> list[Recipe]:
    """The starter grid; smaller for large models, whose every point takes seconds on a laptop CPU."""
    grid = dict(SEED_GRID)
    if via is not None:
        parameters = via.describe(model).parameters
    else:
        from engine.models import base_model

        parameters = sum(p.numel() for p in base_model(model)[0].parameters())
    if parameters > LARGE_MODEL_PARAMS:
        grid.update(methods=["structured"], bits=[None, 8])
    return sweep_grid(model, via, **grid)[0]


def missing(recipes: list[Recipe], db: str | Path, profile: str = "quick", remeasure_contended: bool = False
            ) -> list[Recipe]:
    """The recipes the store does not hold yet for this machine (at this profile)."""
    if not Path(db).exists():
        return list(recipes)
    with Store(db, write=False) as store:
        return todo(recipes, store, check_profile(profile), remeasure_contended=remeasure_contended)


def sweep(recipes: list[Recipe], db: str | Path, profile: str = "thorough",
          on_progress: Callable[[Step], None] | None = None, should_stop: Callable[[], bool] = lambda: False,
          retry_failed: bool = False, remeasure_contended: bool = False) -> SweepSummary:
    """Measure in this process every recipe the store still needs (resumable, one row at a time)."""
    check_profile(profile)
    with Store(db) as store:
        summary = run_sweep(recipes, store, profile=profile, on_progress=on_progress, should_stop=should_stop,
                            retry_failed=retry_failed, remeasure_contended=remeasure_contended)
    summary.db = str(db)
    return summary
def cluster_sweep(recipes: list[Recipe], db: str | Path, cluster: ClusterOptions, profile: str = "thorough",
                  on_progress: Callable[[Step], None] | None = None, should_stop: Callable[[], bool] = lambda: False,
                  retry_failed: bool = False, remeasure_contended: bool = False) -> SweepSummary:
    """Measure the grid on every machine type of a Ray cluster (resumable per machine; rows land in `db`)."""
    from engine.jobs import cluster as ray_cluster  # Ray is optional: imported only for a cluster sweep

    check_profile(profile)
    with Store(db) as store:
        summary = ray_cluster.run(recipes, store, cluster, profile, on_progress, should_stop, retry_failed,
                                  remeasure_contended)
    summary.db = str(db)
    return summary
def start_cluster_sweep(recipes: list[Recipe], db: str | Path, cluster: ClusterOptions, profile: str = "quick"
                        ) -> ClusterJob:
    """A cluster sweep in a process of its own (the front end stays free); watch it with `.progress()`."""
    return ClusterJob(recipes, str(db), cluster, check_profile(profile))


def start_sweep(recipes: list[Recipe], db: str | Path, via: Worker, profile: str = "quick",
                remeasure_contended: bool = False) -> WorkerSweep | None:
    """Run a sweep in the background in `via`; the running job, or None when nothing needs measuring."""
    if not missing(recipes, db, profile, remeasure_contended):
        return None
    return WorkerSweep(via, via.sweep(recipes, str(db), check_profile(profile), remeasure=remeasure_contended))


def untrusted_recipes(model: str, db: str | Path) -> list[Recipe]:
    """Recipes of the model's rows on this machine that were measured contended or by an older engine."""
    with Store(db, write=False) as store:
        rows, _ = store.rows(model=model, device_id=machine_id())
    return [Recipe.from_json(r["recipe_json"]) for r in rows if r["error"] is None and not pareto.trusted(r)]


# --- results --------------------------------------------------------------------------------------------
def model_rows(model: str, db: str | Path, objectives: str | list[str], min_accuracy: str | None = None,
               all_devices: bool = False, include_untrusted: bool = False, batch_size: int | None = None,
               device_id: str | None = None) -> dict[str, Any]:
    """Every stored row of `model` on one machine (default: this one) at one batch size (default: the smallest
    stored; latencies of different batch sizes never compete) with `shown` / `trusted` / `eligible` /
    `on_frontier` marks, the hypervolume, the batch sizes stored, and how many damaged rows were skipped."""
    objs = pareto.parse_objectives(objectives)
    if batch_size is not None:
        Recipe(model=model, batch_size=batch_size)  # the same rule as a recipe's
    with Store(db, write=False) as store:
        rows, damaged = store.rows(model=model, device_id=None if all_devices else device_id or machine_id())
    sizes = sorted({r["batch_size"] for r in rows if r["batch_size"] is not None})
    if batch_size is None and sizes:
        batch_size = sizes[0]
    at = [r for r in rows if r["batch_size"] == batch_size]
    baseline = next((r["baseline_accuracy"] for r in at if r["baseline_accuracy"] is not None), None)
    out = pareto.frontier(at, objs, pareto.parse_min_accuracy(min_accuracy, baseline), include_untrusted)
    out.update(damaged=damaged, batch_size=batch_size, batch_sizes=sizes, all_rows=rows)
    return out


def frontier(model: str, db: str | Path, objectives: str | list[str] = ",".join(pareto.DEFAULT_OBJECTIVES),
             min_accuracy: str | None = None, all_devices: bool = False, include_untrusted: bool = False,
             batch_size: int | None = None, device: str | None = None) -> Frontier | Frontiers:
    """The non-dominated configurations of a model at one batch size, best accuracy first (the CLI's `frontier`),
    on one machine (`device`: an id or its first characters; default this one), or, with `all_devices`, one
    frontier per machine: latencies of different machines never compete."""
    _must_exist(db)
    known = machines(model, db)  # read once: every frontier below is one of these machines
    if all_devices:
        return Frontiers(model, [_machine_frontier(model, db, m, objectives, min_accuracy, include_untrusted,
                                                   batch_size) for m in known])
    if device is None:
        device = machine_id()
    matches = [m for m in known if m["device_id"].startswith(device)] if device else []
    if len(matches) != 1:
        listed = "; ".join(f"{m['device_id'][:12]} {m['name']}" for m in known) or "none"
        raise UserError(f"no results for model {str(model)[:80]!r} on machine {device[:20]!r} in {db}: run a sweep "
                        f"first (machines with rows: {listed})" if not matches else
                        f"machine {device!r} is ambiguous: give more of its id ({listed})")
    return _machine_frontier(model, db, matches[0], objectives, min_accuracy, include_untrusted, batch_size)
def _machine_frontier(model: str, db: str | Path, machine: dict[str, Any], objectives: str | list[str],
                      min_accuracy: str | None, include_untrusted: bool, batch_size: int | None) -> Frontier:
    out = model_rows(model, db, objectives, min_accuracy, False, include_untrusted, batch_size, machine["device_id"])
    rows = out["rows"]
    if not rows:
        raise UserError(f"no results for model {str(model)[:80]!r} at batch size {batch_size} on {machine['name']} "
                        f"in {db}: choose one of {', '.join(map(str, out['batch_sizes']))}")
    front = sorted((r for r in rows if r["on_frontier"]), key=lambda r: -(r["accuracy"] or 0))
    return Frontier(model=model, machine=machine, objectives=out["objectives"], min_accuracy=out["min_accuracy"],
                    hypervolume=out["hypervolume"],
                    hypervolume_reference="costs / uncompressed cost; accuracy 0 and 1.1 x the largest normalised cost",
                    frontier=[_public(r) for r in front], considered=sum(r["eligible"] for r in rows),
                    untrusted=sum(r["shown"] and not r["trusted"] for r in rows), include_untrusted=include_untrusted,
                    batch_size=out["batch_size"], batch_sizes=out["batch_sizes"], damaged_rows=out["damaged"],
                    failed=[{"id": r["id"], "label": r["label"], "error": r["error"]} for r in rows if r["error"]])
def results(db: str | Path, model: str | None = None, device: str | None = None) -> ResultsTable:
    """Every stored row (of `model`; of the machines whose id starts with `device`), grouped by machine."""
    _must_exist(db)
    with Store(db, write=False) as store:
        rows, damaged = store.rows(model=model)
    rows = sorted((r for r in rows if not device or r["device_id"].startswith(device)),
                  key=lambda r: (r["device_id"], r["id"]))
    return ResultsTable([_public(r) for r in rows], damaged)
def precision_speedups(model: str, db: str | Path) -> dict[str, dict[int, float]]:
    """{precision: {batch size: speed-up over fp32}} of the model's trusted rows on this machine that change only
    the precision (eager, nothing pruned or quantized): what the Learn page says about bf16/fp16 here, measured,
    rather than inferred from the CPU's flags."""
    with Store(db, write=False) as store:
        rows, _ = store.rows(model=model, device_id=machine_id())
    out: dict[str, dict[int, float]] = {}
    for r in rows:
        recipe = Recipe.from_json(r["recipe_json"])
        if (pareto.trusted(r) and r["speedup"] and recipe.precision != "fp32" and recipe.device == "cpu"
                and recipe.with_(precision="fp32").is_baseline):
            out.setdefault(recipe.precision, {})[recipe.batch_size] = float(r["speedup"])
    return {p: dict(sorted(b.items())) for p, b in sorted(out.items())}


def machines(model: str, db: str | Path) -> list[dict[str, Any]]:
    """The machines the store holds rows of for `model` (this one first): id, name, row count."""
    here = machine_id()
    with Store(db, write=False) as store:
        rows, _ = store.rows(model=model)
        ids: dict[str, list[int]] = {}
        for r in rows:
            ids.setdefault(r["device_id"], []).append(int(r["id"]))
        out = [{"device_id": dev, "name": store.machine_name(row_ids), "rows": len(row_ids),
                "this_machine": dev == here} for dev, row_ids in ids.items()]
    names = [m["name"] for m in out]
    for m in out:
        if names.count(m["name"]) > 1:  # same processor, other software: told apart by fingerprint
            m["name"] += f" ({m['device_id'][:6]})"
    return sorted(out, key=lambda m: (not m["this_machine"], m["name"]))


def export_results(db: str | Path, model: str | None = None) -> bytes:
    """A results file of the store's rows, each with its machine (to share with a class)."""
    from engine.results.exchange import export_results as export

    _must_exist(db)
    return export(db, model)


def import_results(db: str | Path, data: bytes) -> ImportSummary:
    """Merge a results file into the store: each row keeps its machine; no duplicates."""
    from engine.results.exchange import import_results as merge

    return ImportSummary.from_dict(merge(db, data))
def open_store(db: str | Path) -> list[str]:
    """Create (or upgrade) the store if needed and check it is usable; the models it holds rows of."""
    with Store(db) as store:
        return store.models()


def recipe_of_row(row_id: int, db: str | Path) -> Recipe:
    with Store(db, write=False) as store:
        return Recipe.from_dict(store.get_id(row_id).recipe)


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("recipe_json", "eligible", "on_frontier", "shown")}


def _must_exist(db: str | Path) -> None:
    if not Path(db).exists():
        raise UserError(f"no results database at {db}: run `python -m engine sweep --db {db} ...` first")


# --- sensitivity and search ---------------------------------------------------------------------------
def sensitivity(model: str, db: str | Path, technique: str = "prune", levels: list | None = None,
                method: str = "magnitude", fresh: bool = False,
                on_progress: Callable[[int, int, str], None] | None = None,
                progress_file: str | Path | None = None) -> Sensitivity:
    """Each layer's accuracy drop when compressed alone (stored in `db`; read from it unless `fresh`)."""
    from engine.jobs.sensitivity import SensitivityTask

    task = SensitivityTask(model, str(db), technique, None if levels is None else list(levels), method, fresh)
    return task.run(progress_file, on_progress)
def stored_sensitivity(model: str, db: str | Path, technique: str = "prune", method: str = "magnitude"
                       ) -> Sensitivity | None:
    """The newest stored sensitivity of `model` on this machine (read without loading any model)."""
    from engine.jobs import sensitivity as sens

    if technique not in sens.TECHNIQUES:
        raise UserError(f"technique={str(technique)[:40]!r} is not allowed: choose prune or quantize")
    hit = sens.load(db, model, technique, fingerprint()["id"], method=method if technique == "prune" else "weight-only")
    return None if hit is None else Sensitivity.from_dict(hit)
def start_sensitivity(model: str, db: str | Path, technique: str = "prune", levels: list | None = None,
                      method: str = "magnitude") -> Job:
    """A sensitivity scan in a process of its own (measured afresh); its `result()` is a Sensitivity."""
    from engine.jobs import sensitivity as sens
    from engine.jobs.command import CommandJob

    levels = sens.check_levels(technique, levels, method)
    return CommandJob(sens.SensitivityTask(model, str(Path(db).resolve()), technique, list(levels), method,
                                           fresh=True))
def start_search(model: str, db: str | Path, min_accuracy: str, objectives: str = "relative_latency:min,size:min",
                 trials: int | None = None, budget_s: float | None = None, profile: str = "quick") -> Job:
    """A search in a process of its own; stopping it loses nothing and the same call resumes. Its `result()`
    is a SearchSummary."""
    from engine.jobs.command import CommandJob
    from engine.jobs.search import SearchTask

    task = SearchTask(model, str(Path(db).resolve()), str(min_accuracy), objectives, trials, budget_s, profile)
    task.check()
    return CommandJob(task)
def search(model: str, db: str | Path, min_accuracy: str, objectives: str = "relative_latency:min,size:min",
           trials: int | None = None, budget_s: float | None = None, profile: str = "quick",
           on_trial: Callable[[dict[str, Any]], None] | None = None, should_stop: Callable[[], bool] = lambda: False,
           progress_file: str | Path | None = None) -> SearchSummary:
    """Search recipes above an accuracy threshold, minimising the objectives (resumes a stored study)."""
    from engine.jobs.search import SearchTask

    task = SearchTask(model, str(db), min_accuracy, objectives, trials, budget_s, profile)
    return task.run(progress_file, on_trial, should_stop)
# --- export and apply -----------------------------------------------------------------------------------
def export(out: str | Path, *, recipe: Recipe | None = None, row_id: int | None = None, db: str | Path | None = None,
           force: bool = False, profile: str = "thorough", via: Worker | None = None) -> BundleSummary:
    """Write the verified bundle of a stored row (`row_id` in `db`) or of a recipe (measured, or read from `db`)."""
    from engine.bundle.bundle import check_out, write_bundle

    check_out(out, force)  # before any measuring: a bad --out costs nothing
    rows: list[dict] = []
    if row_id is not None:
        if db is None:
            raise UserError("a row id needs the results database it is in (--db)")
        _must_exist(db)
        with Store(db, write=False) as store:
            result = store.get_id(row_id)
            recipe = Recipe.from_dict(result.recipe)
            rows, _ = store.rows(model=recipe.model, device_id=result.machine.id)
        check_model(recipe.model)
        if result.error:
            raise UserError(f"row {row_id} is a failed configuration ({result.error}): nothing to export")
    elif recipe is not None:
        check_model(recipe.model)
        if db is not None:
            result = measure_or_load(recipe, db, profile, via=via).result
            with Store(db) as store:
                rows, _ = store.rows(model=recipe.model, device_id=fingerprint()["id"])
        else:
            result = measure(recipe, profile)
    else:
        raise UserError("export needs a stored row (--db with --id) or a recipe (--model with the recipe flags)")
    return BundleSummary.from_dict(write_bundle(recipe, out, result, rows, force=force))


def bundle_zip(recipe: Recipe, db: str | Path, via: Worker | None = None) -> tuple[bytes, BundleSummary]:
    """The export bundle of `recipe` as zip bytes (the files `python -m engine export` writes)."""
    measured = measure_or_load(recipe, db, via=via)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / f"{recipe.model}-{recipe.key}"
        from engine.bundle.bundle import write_bundle

        with Store(db) as store:
            rows, _ = store.rows(model=recipe.model, device_id=fingerprint()["id"])
        summary = BundleSummary.from_dict(write_bundle(recipe, folder, measured.result, rows))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(folder.iterdir()):
                zf.write(f, f"{folder.name}/{f.name}")
    return buf.getvalue(), summary


def apply_bundle(path: str | Path, out: str | Path | None = None, force: bool = False) -> BundleCheck:
    """Verify a bundle (every file against its record) or re-create a bare recipe; optionally write a new bundle.

    The result's `error` names the first file that failed (the CLI exits 1)."""
    from engine.bundle.bundle import check_out, read_record, reapply, verify

    recipe, record, folder = read_record(path)
    if out is not None:
        check_out(out, force)
    res = BundleCheck.from_dict(reapply(recipe) if record is None else verify(folder, recipe, record))
    if out is not None and not res.error:
        res.new_bundle = export(out, recipe=recipe, force=force)
    return res
