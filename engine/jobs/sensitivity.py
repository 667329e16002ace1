"""Per-layer sensitivity: compress one layer at a time and read the accuracy it costs.

Each probe is an ordinary recipe with one layer override (prune that layer at a level, or quantize only that
layer at a bit width), applied by the normal pipeline and evaluated on the fixed held-out split, so the
figures are deterministic and a re-run ranks layers the same way. Beside each drop stand the layer's share
of the stored size (its parameters over all parameters) and of the forward time (forward hooks over repeated
calls of the uncompressed model: the time spent inside each layer over the time inside all of them).
Results are kept in the results database (table `sensitivity`), one per (model, technique, levels, machine).
"""
from __future__ import annotations

import json
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from engine.core.axes import PRUNE_METHODS
from engine.core.errors import UserError
from engine.core.recipe import BITS, MAX_PRUNE, Prune, Quantize, Recipe, parse_json
from engine.core.summaries import Sensitivity
from engine.jobs.command import run_file

TECHNIQUES = ("prune", "quantize")
DEFAULT_LEVELS = {"prune": (0.3, 0.5, 0.7, 0.9), "quantize": (8, 4, 3, 2)}
TIMING_CALLS = 30
TABLE = ("CREATE TABLE IF NOT EXISTS sensitivity (id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, "
         "technique TEXT NOT NULL, method TEXT NOT NULL, levels TEXT NOT NULL, device_id TEXT NOT NULL, "
         "result_json TEXT NOT NULL, created_at REAL NOT NULL, UNIQUE (model, technique, method, levels, device_id))")


def check_levels(technique: str, levels: list | tuple | None, method: str = "magnitude") -> tuple:
    """The levels to probe (defaults per technique), each checked as a recipe value would be."""
    if technique not in TECHNIQUES:
        raise UserError(f"technique={str(technique)[:40]!r} is not allowed: choose prune or quantize")
    methods = [m for m, e in PRUNE_METHODS.items() if e.prunes]
    if technique == "prune" and (not isinstance(method, str) or method not in methods):
        raise UserError(f"prune method {str(method)[:40]!r} is not allowed: choose {' or '.join(methods)}")
    levels = tuple(levels) if levels else DEFAULT_LEVELS[technique]
    for v in levels:
        if technique == "prune" and (isinstance(v, bool) or not isinstance(v, (int, float))
                                     or not 0 < v <= MAX_PRUNE):
            raise UserError(f"level {v!r:.40} is not a pruning amount: allowed above 0 to {MAX_PRUNE}")
        if technique == "quantize" and (isinstance(v, bool) or v not in BITS):
            raise UserError(f"level {v!r:.40} is not a bit width: allowed {BITS[0]} to {BITS[-1]}")
    if len(set(levels)) != len(levels):
        raise UserError("levels repeat a value")
    return tuple(sorted(levels, reverse=technique == "quantize"))


def probe_recipe(model: str, technique: str, method: str, layer: str, level: float | int) -> Recipe:
    """The recipe that compresses `layer` alone at `level`."""
    if technique == "prune":
        return Recipe(model=model, prune=Prune(method, 0.0, "layer"), layers={layer: {"prune": level}})
    return Recipe(model=model, quantize=Quantize(bits=int(level), scheme="weight-only"),
                  layers={"*": {"bits": "none"}, layer: {"bits": int(level)}})


def layer_times(model: Any, spec: Any, calls: int = TIMING_CALLS) -> dict[str, float]:
    """Seconds per call spent inside each compressible layer (forward hooks, batch 1, uncompressed model)."""
    import torch

    from engine.compress.layers import COMPRESSIBLE

    spent: dict[str, float] = {}
    started: dict[str, float] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, COMPRESSIBLE):
            hooks.append(mod.register_forward_pre_hook(lambda m, a, n=name: started.__setitem__(n, time.perf_counter())))
            hooks.append(mod.register_forward_hook(
                lambda m, a, o, n=name: spent.__setitem__(n, spent.get(n, 0.0) + time.perf_counter() - started[n])))
    inputs = spec.example_inputs(1)
    try:
        with torch.inference_mode():
            for _ in range(3):
                spec.forward(model, inputs)
            spent.clear()
            for _ in range(calls):
                spec.forward(model, inputs)
    finally:
        for h in hooks:
            h.remove()
    return {n: s / calls for n, s in spent.items()}


def measure(model_name: str, technique: str, levels: tuple, method: str = "magnitude",
            on_progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Probe every layer at every level; the result with layers ranked most sensitive first."""
    from engine.compress.layers import compressible
    from engine.compress.pipeline import apply
    from engine.compress.prune import prunable_layers
    from engine.compress.quantize import layer_bits
    from engine.measure.fingerprint import fingerprint
    from engine.measure.run import evaluate, reference
    from engine.models import base_model

    base, spec = base_model(model_name)
    _, base_score, _ = reference(model_name)
    if technique == "prune":
        names = [n for n, _ in prunable_layers(base, spec)]
    else:
        names = [n for n in layer_bits(base, Quantize(bits=8, scheme="weight-only")) if n in compressible(base)]
    params = {n: sum(p.numel() for p in base.get_submodule(n).parameters()) for n in names}
    total_params = sum(p.numel() for p in base.parameters())
    times = layer_times(base, spec)
    total_time = sum(times.values()) or 1.0
    start, rows = time.perf_counter(), []
    for i, name in enumerate(names):
        if on_progress:
            on_progress(i, len(names), name)
        drops: dict[str, float | None] = {}
        errors: dict[str, str] = {}
        for level in levels:
            recipe = probe_recipe(model_name, technique, method, name, level)
            try:
                applied = apply(base, recipe, spec, kernels=False)
                drops[str(level)] = round(base_score["accuracy"] - evaluate(applied, recipe, spec)["accuracy"], 6)
            except UserError:
                raise
            except Exception as exc:  # noqa: BLE001  (a layer the technique cannot touch: said, not fatal)
                drops[str(level)] = None
                errors[str(level)] = f"{type(exc).__name__}: {str(exc)[:160]}"
        known = [d for d in drops.values() if d is not None]
        rows.append({"layer": name, "params": params[name], "size_share": round(params[name] / total_params, 6),
                     "latency_share": round(times.get(name, 0.0) / total_time, 6), "drops": drops,
                     "mean_drop": round(sum(known) / len(known), 6) if known else None, "errors": errors})
    order = sorted(rows, key=lambda r: (-(r["mean_drop"] if r["mean_drop"] is not None else float("inf")),
                                        r["layer"]))
    return {"model": model_name, "technique": technique, "method": method if technique == "prune" else "weight-only",
            "levels": list(levels), "baseline_accuracy": base_score["accuracy"], "metric_kind": spec.metric_kind,
            "layers": rows, "ranking": [r["layer"] for r in order], "device": fingerprint(),
            "latency_share_source": f"forward hooks, {TIMING_CALLS} calls at batch 1 of the uncompressed model "
                                    "(time inside each layer / time inside all compressible layers)",
            "wall_s": round(time.perf_counter() - start, 3), "measured_at": time.time()}


def _key(result: dict[str, Any]) -> tuple:
    return (result["model"], result["technique"], result["method"], json.dumps(result["levels"]),
            result["device"]["id"])


def save(db: str | Path, result: dict[str, Any]) -> None:
    """Store (or replace) a sensitivity result beside the results rows."""
    from engine.results.store import Store

    with Store(db) as store:
        store.conn.execute(TABLE)
        store.conn.execute("INSERT OR REPLACE INTO sensitivity (model, technique, method, levels, device_id, "
                           "result_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (*_key(result), json.dumps(result), time.time()))


def load(db: str | Path, model: str, technique: str, device_id: str, levels: tuple | None = None,
         method: str | None = None) -> dict[str, Any] | None:
    """The newest stored sensitivity of `model` for `technique` on this machine (these levels, if given)."""
    from engine.results.store import Store

    if not Path(db).exists():
        return None
    with Store(db, write=False) as store:
        try:
            rows = store.conn.execute("SELECT levels, method, result_json FROM sensitivity WHERE model=? AND "
                                      "technique=? AND device_id=? ORDER BY created_at DESC",
                                      (model, technique, device_id)).fetchall()
        except sqlite3.OperationalError:  # a store that never held a sensitivity table
            return None
    for row in rows:
        if (levels is None or row["levels"] == json.dumps(list(levels))) and (method is None or row["method"] == method):
            try:
                return parse_json(row["result_json"], "a stored sensitivity", limit=None)
            except ValueError:
                continue
    return None


@dataclass(frozen=True)
class SensitivityTask:
    """A sensitivity scan as a job file holds it (see engine.jobs.command): read from the store unless `fresh`."""

    module: ClassVar[str] = "engine.jobs.sensitivity"
    model: str
    db: str
    technique: str = "prune"
    levels: list | None = None  # None: the technique's defaults
    method: str = "magnitude"
    fresh: bool = False

    def run(self, progress_file: str | Path | None = None,
            on_progress: Callable[[int, int, str], None] | None = None) -> Sensitivity:
        from engine.jobs.command import write_progress
        from engine.measure.fingerprint import fingerprint
        from engine.models import get_spec
        from engine.results.store import Store

        def progress(i: int, n: int, layer: str) -> None:
            write_progress(progress_file, {"done": i, "total": n, "layer": layer})
            if on_progress:
                on_progress(i, n, layer)

        levels = check_levels(self.technique, self.levels, self.method)
        get_spec(self.model)
        with Store(self.db):  # created (or upgraded) before the first probe: a bad path costs nothing
            pass
        method = self.method if self.technique == "prune" else "weight-only"
        if not self.fresh:
            hit = load(self.db, self.model, self.technique, fingerprint()["id"], levels, method)
            if hit is not None:
                return Sensitivity.from_dict({**hit, "from_store": True})
        out = measure(self.model, self.technique, levels, method, progress)
        save(self.db, out)
        write_progress(progress_file, {"done": len(out["layers"]), "total": len(out["layers"]), "finished": True})
        return Sensitivity.from_dict({**out, "from_store": False})

    def read(self, data: dict[str, Any]) -> Sensitivity:
        return Sensitivity.from_dict(data)


if __name__ == "__main__":
    sys.exit(run_file(SensitivityTask, sys.argv[1:]))
