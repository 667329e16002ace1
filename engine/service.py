"""The verbs a front end calls (the dashboard holds no compression or measurement logic).

Each opens the store it needs per call: SQLite connections are cheap and must not cross threads.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine import __version__
from engine.errors import UserError
from engine.measure.fingerprint import fingerprint
from engine.pareto import frontier, parse_min_accuracy, parse_objectives
from engine.recipe import Recipe
from engine.runner import Result, measure
from engine.store import Store
from engine.sweep import Progress, expand_grid, run_sweep

# The small grid that seeds an empty store so the first screen already shows a frontier.
SEED_GRID = dict(prune=[0.0, 0.5], methods=["magnitude", "structured"], bits=[None, 8, 4],
                 precisions=["fp32", "bf16"])


@dataclass
class Measured:
    result: Result
    row_id: int
    from_store: bool


def measure_or_load(recipe: Recipe, db: str | Path, profile: str = "quick") -> Measured:
    """The stored result of this recipe on this machine, or a fresh measurement (then stored)."""
    dev = fingerprint()["id"]
    with Store(db) as store:
        hit = store.get(recipe, dev, __version__)
    if hit is not None:
        return Measured(hit[1], hit[0], True)
    result = measure(recipe, profile=profile)
    with Store(db) as store:
        return Measured(result, store.put(result), False)


def seed_grid(model: str) -> list[Recipe]:
    """The starter grid; halved for large models, whose every point takes seconds on a laptop CPU."""
    from engine.runner import base_model

    grid = dict(SEED_GRID)
    if sum(p.numel() for p in base_model(model)[0].parameters()) > 1_000_000:
        grid.update(methods=["structured"], bits=[None, 8])
    return expand_grid(model, **grid)[0]


def missing(recipes: list[Recipe], db: str | Path, profile: str = "quick") -> list[Recipe]:
    """The recipes the store does not hold yet for this machine."""
    dev = fingerprint()["id"]
    with Store(db) as store:
        done = {m: store.done_keys(m, dev, __version__, profile) for m in {r.model for r in recipes}}
    return [r for r in recipes if r.key not in done[r.model]]


def sweep(recipes: list[Recipe], db: str | Path, profile: str = "quick", on_progress: Progress | None = None,
          should_stop: Callable[[], bool] = lambda: False):
    with Store(db) as store:
        return run_sweep(recipes, store, profile=profile, on_progress=on_progress, should_stop=should_stop)


def model_rows(model: str, db: str | Path, objectives: str | list[str], min_accuracy: str | None = None,
               this_machine: bool = True) -> dict:
    """Every stored row of `model` with `eligible` / `on_frontier` marks and the hypervolume."""
    with Store(db) as store:
        rows = store.rows(model=model, device_id=fingerprint()["id"] if this_machine else None)
    baseline = next((r["baseline_accuracy"] for r in rows if r["baseline_accuracy"] is not None), None)
    return frontier(rows, parse_objectives(objectives), parse_min_accuracy(min_accuracy, baseline))


def recipe_of_row(row_id: int, db: str | Path) -> Recipe:
    with Store(db) as store:
        return Recipe.from_dict(store.get_id(row_id).recipe)


def check_db(db: str | Path) -> None:
    """Raise a UserError if `db` cannot be used as a results store."""
    if Path(db).is_dir():
        raise UserError(f"{db} is a folder, not a results database file")
    Store(db).close()


def bundle_zip(recipe: Recipe, db: str | Path) -> tuple[bytes, dict]:
    """The export bundle of `recipe` as zip bytes (the same files `python -m engine export` writes),
    using the stored measurement and the model's stored rows for the report."""
    import io
    import tempfile
    import zipfile

    from engine.export import export

    measured = measure_or_load(recipe, db)
    with Store(db) as store:
        rows = store.rows(model=recipe.model, device_id=fingerprint()["id"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / f"{recipe.model}-{recipe.key}"
        summary = export(recipe, folder, result=measured.result, rows=rows)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(folder.iterdir()):
                zf.write(f, f"{folder.name}/{f.name}")
    return buf.getvalue(), summary
