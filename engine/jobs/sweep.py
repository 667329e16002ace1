"""Sweeps: expand a grid into Recipes, measure those the store does not hold yet, one row at a time.

A failing configuration becomes a row with its error and the sweep goes on; a sweep killed at any
moment resumes from the store (each row is committed on its own), so the grid completes without
duplicated or lost rows. `iter_sweep` yields after every configuration, so a caller (the dashboard's
worker) can interleave other requests and stop between configurations.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from engine.core.errors import RecipeError, UserError
from engine.core.recipe import DEVICES, PRECISIONS, PRUNE_METHODS, RUNTIMES, SCHEMES, Prune, Quantize, Recipe
from engine.core.result import Result
from engine.core.summaries import Value
from engine.measure.fingerprint import fingerprint
from engine.results.store import Store


def _axis(name: str, values: Iterable, check: Callable[[object], object]) -> list:
    values = list(values)
    if not values:
        raise RecipeError(f"{name}: give at least one value")
    for v in values:
        check(v)
    return values


def _one_of(name: str, allowed: tuple) -> Callable[[object], None]:
    def check(v: object) -> None:
        if v not in allowed:
            raise RecipeError(f"{name}={v!r} is not allowed: choose from {', '.join(map(str, allowed))}")
    return check


def expand_grid(model: str, prune: Iterable[float] = (0.0,), methods: Iterable[str] = ("magnitude",),
                bits: Iterable[int | None] = (None,), precisions: Iterable[str] = ("fp32",),
                schemes: Iterable[str] | None = None, granularity: str = "per-channel", group_size: int = 32,
                device: str = "cpu", batch_size: int | Iterable[int] = 1, finetune_epochs: int = 0,
                runtimes: Iterable[str] = ("eager",), threads: Iterable[int | None] = (None,)
                ) -> tuple[list[Recipe], list[str]]:
    """All distinct valid recipes of the grid (the uncompressed baseline first), and why combinations were skipped.

    Every value of every axis is checked on its own first: a bad value (`--prune 1.5`) is a RecipeError,
    never a silently smaller grid; only combinations that cannot run together are skipped, with the reason."""
    prune = _axis("prune", prune, lambda a: Prune("magnitude", a))
    methods = _axis("prune method", methods, _one_of("prune.method", tuple(m for m in PRUNE_METHODS if m != "none")))
    bits = _axis("bits", bits, lambda b: Quantize(bits=b))
    precisions = _axis("precision", precisions, _one_of("precision", PRECISIONS))
    runtimes = _axis("runtime", runtimes, _one_of("runtime", RUNTIMES))
    if schemes is not None:
        schemes = _axis("scheme", schemes, _one_of("quantize.scheme", SCHEMES))
    Quantize(8, "weight-only", granularity, group_size)
    _one_of("device", DEVICES)(device)
    batches = _axis("batch size", [batch_size] if isinstance(batch_size, int) else batch_size,
                    lambda n: Recipe(model=model, batch_size=n))
    threads = _axis("threads", threads, lambda n: Recipe(model=model, threads=n))
    Recipe(model=model, device=device, prune=Prune("magnitude", 0.5, finetune_epochs=finetune_epochs))
    recipes: dict[str, Recipe] = {}
    skipped: list[str] = []
    for n, t in itertools.product(batches, threads):  # each baseline first: the reference of its speed-ups
        base = Recipe(model=model, device=device, batch_size=n, threads=t)
        recipes[base.key] = base
    for batch, t, runtime, amount, method, b, prec, scheme in itertools.product(
            batches, threads, runtimes, prune, methods, bits, precisions, schemes or [None]):
        try:
            r = Recipe.from_fields(model, prune=amount, prune_method=method, finetune_epochs=finetune_epochs,
                                   bits=b, scheme=scheme, granularity=granularity, group_size=group_size,
                                   precision=prec, device=device, batch_size=batch, runtime=runtime, threads=t)
        except RecipeError as exc:
            skipped.append(str(exc))
            continue
        recipes.setdefault(r.key, r)
    return list(recipes.values()), sorted(set(skipped))


@dataclass
class SweepSummary(Value):
    """What a sweep did: configurations measured (failed, contended), already stored, and how long it took."""

    total: int
    skipped_existing: int = 0
    measured: int = 0
    failed: int = 0
    contended: int = 0
    stopped: bool = False
    row_ids: list[int] = field(default_factory=list)
    wall_s: float = 0.0
    db: str | None = None  # the store the rows went to
    skipped_combinations: list[str] = field(default_factory=list)  # why grid points could not be recipes

    def to_text(self) -> str:
        lines = [f"{self.measured} measured ({self.failed} failed, {self.contended} contended), "
                 f"{self.skipped_existing} already in {self.db}, {self.total} in the grid, {self.wall_s:.1f} s"
                 + ("; stopped early" if self.stopped else "")]
        if self.contended:
            lines.append("contended rows were measured while other work used the CPU: run again with "
                         "--remeasure-contended when the machine is quiet")
        return "\n".join(lines)


@dataclass(frozen=True)
class Step:
    """One configuration measured and stored."""

    recipe: Recipe
    result: Result
    row_id: int
    done: int
    total: int
    eta_s: float


def todo(recipes: list[Recipe], store: Store, profile: str, retry_failed: bool = False,
         remeasure_contended: bool = False, device_id: str | None = None) -> list[Recipe]:
    """The recipes the store does not hold yet (at this profile, on this machine or `device_id`, from this engine)."""
    dev = device_id or fingerprint()["id"]
    done: dict[str, set[str]] = {}
    for m in {r.model for r in recipes}:
        done[m] = store.done_keys(m, dev, profile, retry_failed, remeasure_contended)
    return [r for r in recipes if r.key not in done[r.model]]


def measure_one(recipe: Recipe, profile: str) -> Result:
    """Measure one configuration; one the machine cannot run becomes a failed result (the sweep goes on)."""
    from engine.measure.run import run_recipe  # here: importing it loads torch, which a front end never needs

    try:
        return run_recipe(recipe, profile=profile)
    except UserError as exc:  # e.g. a cuda recipe on a machine without a GPU: recorded, the sweep goes on
        return Result(model=recipe.model, recipe=recipe.to_dict(), machine=fingerprint(), profile=profile,
                      error=str(exc))


def measure_and_store(recipe: Recipe, store: Store, profile: str) -> tuple[Result, int]:
    result = measure_one(recipe, profile)
    return result, store.put(result)


def iter_sweep(recipes: list[Recipe], store: Store, profile: str = "thorough",
               retry_failed: bool = False, remeasure_contended: bool = False) -> Iterator[Step]:
    """Measure every recipe the store still needs, yielding after each one."""
    pending = todo(recipes, store, profile, retry_failed, remeasure_contended)
    skipped = len(recipes) - len(pending)
    spent = 0.0
    for i, recipe in enumerate(pending):
        t0 = time.perf_counter()
        result, row_id = measure_and_store(recipe, store, profile)
        spent += time.perf_counter() - t0
        yield Step(recipe, result, row_id, skipped + i + 1, len(recipes), spent / (i + 1) * (len(pending) - i - 1))


def run_sweep(recipes: list[Recipe], store: Store, profile: str = "thorough",
              on_progress: Callable[[Step], None] | None = None, should_stop: Callable[[], bool] = lambda: False,
              retry_failed: bool = False, remeasure_contended: bool = False) -> SweepSummary:
    """Measure every recipe not yet in `store`; `should_stop()` is checked between configurations."""
    start = time.perf_counter()
    summary = SweepSummary(total=len(recipes))
    pending = todo(recipes, store, profile, retry_failed, remeasure_contended)
    summary.skipped_existing = len(recipes) - len(pending)
    steps = iter_sweep(pending, store, profile, retry_failed=retry_failed, remeasure_contended=remeasure_contended)
    while True:
        if should_stop() and summary.measured < len(pending):
            summary.stopped = True
            break
        step = next(steps, None)
        if step is None:
            break
        summary.row_ids.append(step.row_id)
        summary.measured += 1
        summary.failed += step.result.error is not None
        summary.contended += step.result.contended
        if on_progress:
            on_progress(Step(step.recipe, step.result, step.row_id, summary.skipped_existing + step.done,
                             summary.total, step.eta_s))
    summary.wall_s = time.perf_counter() - start
    return summary
