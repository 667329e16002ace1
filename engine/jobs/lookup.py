"""A recipe's stored result on this machine, or a new measurement stored: what every interactive request does."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine import __version__
from engine.core.recipe import Recipe
from engine.core.result import Result
from engine.measure.fingerprint import fingerprint
from engine.results.store import PROFILE_RANK, Store


@dataclass
class Measured:
    result: Result
    row_id: int
    from_store: bool
    kept_better: bool = False  # a new measurement was made, but the store kept its better earlier one


def usable(result: Result, profile: str) -> bool:
    """A stored result good enough to answer a request at `profile` (older engines' rows are re-measured)."""
    return result.engine_version == __version__ and (
        result.error is not None or PROFILE_RANK.get(result.profile, -1) >= PROFILE_RANK[profile])


def measure_or_load(recipe: Recipe, db: str | Path, profile: str, via=None, fresh: bool = False) -> Measured:
    """The stored result of this recipe on this machine (good enough for `profile`), else a new one, stored.
    `via`: a measuring worker (engine.jobs.worker.Worker) to measure in instead of this process."""
    dev = fingerprint()["id"]
    if not fresh:
        with Store(db) as store:
            hit = store.get(recipe, dev)
        if hit is not None and usable(hit[1], profile):
            return Measured(hit[1], hit[0], True)
    if via is not None:
        new, row_id = via.measure(recipe, str(db), profile)
    else:
        from engine.measure.run import run_recipe

        new = run_recipe(recipe, profile=profile)
        with Store(db) as store:
            row_id = store.put(new)
    with Store(db) as store:
        stored = store.get_id(row_id)
    return Measured(stored, row_id, False, kept_better=stored.measured_at != new.measured_at)
