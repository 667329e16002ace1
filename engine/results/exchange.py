"""Results files: one person's measurements, to merge into another's store (a class pooling its laptops).

A results file is JSON: every stored measurement with the fingerprint of the machine it ran on, so an
import never mixes machines (rows stay keyed by model, recipe and machine) and never duplicates a row
(the store keeps the better of two measurements of one configuration on one machine). An imported file is
untrusted input: size-capped, parsed as plain JSON, every row type-checked; rows that are not valid
measurements of a registered model are skipped and counted, never written.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from engine import __version__
from engine.core.errors import RecipeError, UserError
from engine.core.recipe import Recipe, parse_json
from engine.core.result import Result
from engine.measure.fingerprint import fingerprint
from engine.models import get_spec
from engine.results.store import Store, clean, flatten

FORMAT = "compression-dash-results"
FORMAT_VERSION = 1
MAX_FILE_BYTES = 64 * 1024 * 1024  # a class's worth of rows is a few MB


def export_results(db: str | Path, model: str | None = None) -> bytes:
    """Every readable row of the store (of one model, if given) as a results file."""
    with Store(db, write=False) as store:
        rows, _ = store.rows(model=model)
        results = [store.get_id(int(r["id"])).to_dict() for r in rows]
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "engine_version": __version__,
           "exported_at": time.time(), "exported_on": fingerprint(), "results": results}
    return (json.dumps(doc, default=str) + "\n").encode()


def _result(data: Any) -> tuple[Result, Recipe]:
    """One row of an imported file as a Result and its Recipe, or ValueError saying why it is not one."""
    try:
        result = Result.from_dict(data)
        recipe = Recipe.from_dict(result.recipe)
    except (TypeError, ValueError, UserError) as exc:
        raise ValueError(f"not a valid measurement ({str(exc)[:80]})") from None
    if not result.machine.id:
        raise ValueError("no machine fingerprint")
    try:
        get_spec(result.model)
    except UserError:
        raise ValueError(f"model {result.model[:60]!r} is not registered here") from None
    if clean({"id": 0, **flatten(result)}) is None:
        raise ValueError("holds values that are not finite numbers or text")
    return result, recipe


def import_results(db: str | Path, data: bytes) -> dict[str, Any]:
    """Merge a results file into the store; what was added, what was already as good, what was skipped."""
    if len(data) > MAX_FILE_BYTES:
        raise UserError(f"the results file is {len(data):,} bytes: larger than the {MAX_FILE_BYTES:,}-byte limit")
    try:
        doc = parse_json(data, "it", limit=None)  # its size is bounded above
    except RecipeError as exc:
        raise UserError(f"this is not a results file: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("results"), list):
        raise UserError(f"this is not a results file (it has no \"format\": \"{FORMAT}\" and \"results\" list)")
    if doc.get("format_version") != FORMAT_VERSION:
        raise UserError(f"results file format_version {str(doc.get('format_version'))[:20]} is not supported: this "
                        f"engine reads version {FORMAT_VERSION}")
    added = kept = 0
    skipped: dict[str, int] = {}
    machines: set[str] = set()
    with Store(db) as store:
        before = store.count()
        for data in doc["results"]:
            try:
                result, recipe = _result(data)
            except ValueError as exc:
                skipped[str(exc)] = skipped.get(str(exc), 0) + 1
                continue
            stored = store.get(recipe, result.machine.id)
            store.put(result)
            now = store.get(recipe, result.machine.id)  # put keeps the better of the two: which one is it?
            changed = stored is None or (now is not None and now[1].measured_at != stored[1].measured_at)
            added += changed
            kept += not changed
            machines.add(result.machine.cpu or result.machine.id)
        new_rows = store.count() - before
    return {"rows_in_file": len(doc["results"]), "new_rows": new_rows, "updated_rows": added - new_rows,
            "already_as_good": kept, "skipped": sum(skipped.values()), "skipped_why": skipped,
            "machines": sorted(machines)}
