"""Sweeps: expand a grid into Recipes, measure those the store does not hold yet, one row at a time.

A failing configuration becomes a row with its error and the sweep goes on; a sweep killed at any
moment resumes from the store (each row is committed on its own), so the grid completes without
duplicated or lost rows.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from engine import __version__
from engine.errors import RecipeError, UserError
from engine.measure.fingerprint import fingerprint
from engine.recipe import Prune, Quantize, Recipe
from engine.runner import Result, measure
from engine.store import Store


def default_scheme(precision: str, device: str) -> str:
    """The fastest real path: int8 activations where the int8 kernel can run, weight-only elsewhere."""
    return "dynamic" if precision == "fp32" and device == "cpu" else "weight-only"


def expand_grid(model: str, prune: Iterable[float] = (0.0,), methods: Iterable[str] = ("magnitude",),
                bits: Iterable[int | None] = (None,), precisions: Iterable[str] = ("fp32",),
                schemes: Iterable[str] | None = None, granularity: str = "per-channel", group_size: int = 32,
                device: str = "cpu", batch_size: int = 1, finetune_epochs: int = 0) -> tuple[list[Recipe], list[str]]:
    """All distinct valid recipes of the grid (the uncompressed baseline first), and why others were skipped."""
    recipes: dict[str, Recipe] = {}
    skipped: list[str] = []
    base = Recipe(model=model, device=device, batch_size=batch_size)
    recipes[base.key] = base
    for amount, method, b, prec in itertools.product(prune, methods, bits, precisions):
        for scheme in (schemes or [default_scheme(prec, device)]):
            try:
                r = Recipe(model=model,
                           prune=Prune(method if amount else "none", amount,
                                       finetune_epochs=finetune_epochs if amount else 0),
                           quantize=Quantize(bits=b, scheme=scheme, granularity=granularity, group_size=group_size),
                           precision=prec, device=device, batch_size=batch_size)
            except RecipeError as exc:
                skipped.append(str(exc))
                continue
            recipes.setdefault(r.key, r)
    return list(recipes.values()), sorted(set(skipped))


@dataclass
class SweepSummary:
    total: int
    skipped_existing: int = 0
    measured: int = 0
    failed: int = 0
    stopped: bool = False
    row_ids: list[int] = field(default_factory=list)
    wall_s: float = 0.0


Progress = Callable[[int, int, Recipe, Result | None, float], None]


def run_sweep(recipes: list[Recipe], store: Store, profile: str = "thorough", threads: int | None = None,
              on_progress: Progress | None = None, should_stop: Callable[[], bool] = lambda: False,
              retry_failed: bool = False) -> SweepSummary:
    """Measure every recipe not yet in `store` for this device and engine version.

    `on_progress(done, total, recipe, result_or_None_if_skipped, eta_s)` after each configuration;
    `should_stop()` is checked between configurations (a stopped sweep resumes later).
    """
    start = time.perf_counter()
    dev = fingerprint()["id"]
    done_by_model: dict[str, set[str]] = {}
    summary = SweepSummary(total=len(recipes))
    todo = []
    for r in recipes:
        if r.model not in done_by_model:
            done_by_model[r.model] = store.done_keys(r.model, dev, __version__, profile, retry_failed)
        if r.key in done_by_model[r.model]:
            summary.skipped_existing += 1
        else:
            todo.append(r)
    done = summary.skipped_existing
    measured_s = 0.0
    for i, recipe in enumerate(todo):
        if should_stop():
            summary.stopped = True
            break
        t0 = time.perf_counter()
        try:
            result = measure(recipe, profile=profile, threads=threads)
        except UserError as exc:  # e.g. a cuda recipe on a machine without a GPU: recorded, sweep goes on
            result = Result(model=recipe.model, recipe=recipe.to_dict(), device=fingerprint(), profile=profile,
                            error=str(exc))
        summary.row_ids.append(store.put(result))
        summary.measured += 1
        summary.failed += result.error is not None
        done += 1
        measured_s += time.perf_counter() - t0
        eta = measured_s / (i + 1) * (len(todo) - i - 1)
        if on_progress:
            on_progress(done, summary.total, recipe, result, eta)
    summary.wall_s = time.perf_counter() - start
    return summary
