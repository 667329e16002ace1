"""Pareto frontier over 2-3 objectives, an accuracy constraint, and the hypervolume.

Hand-written because the sets are small (hundreds of points) and the libraries that do this
(pymoo, botorch) are heavy dependencies for thirty lines of exact code.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.errors import UserError

# objective name -> (row column, sense)
OBJECTIVES: dict[str, tuple[str, str]] = {
    "accuracy": ("accuracy", "max"),
    "latency": ("latency_p50_ms", "min"),
    "size": ("size_bytes", "min"),
    "memory": ("peak_memory_bytes", "min"),
    "energy": ("energy_j", "min"),
    "params": ("params_nonzero", "min"),
}
DEFAULT_OBJECTIVES = ("accuracy:max", "latency:min", "size:min")
HV_MARGIN = 1.1  # reference point: accuracy 0 and each cost at 1.1x the largest measured (normalised)


@dataclass(frozen=True)
class Objective:
    name: str
    column: str
    sense: str


def parse_objectives(spec: str | list[str] | tuple[str, ...]) -> list[Objective]:
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not 2 <= len(items) <= 3:
        raise UserError(f"objectives={','.join(items)!r}: give 2 or 3, e.g. accuracy:max,latency:min")
    out = []
    for item in items:
        name, _, sense = item.partition(":")
        if name not in OBJECTIVES:
            raise UserError(f"objective {name!r} is not allowed: choose from {', '.join(OBJECTIVES)}")
        column, default = OBJECTIVES[name]
        sense = sense or default
        if sense not in ("min", "max"):
            raise UserError(f"objective {item!r}: the sense must be min or max")
        out.append(Objective(name, column, sense))
    return out


def non_dominated(points: np.ndarray, senses: list[str]) -> np.ndarray:
    """Boolean mask of points no other point dominates (>= in every objective, > in one).

    Duplicated points are all kept: none dominates its twin."""
    pts = np.asarray(points, dtype=float)
    if pts.size == 0:
        return np.zeros(0, dtype=bool)
    costs = pts * np.array([-1.0 if s == "max" else 1.0 for s in senses])
    mask = np.ones(len(costs), dtype=bool)
    for i, c in enumerate(costs):
        dominated = np.all(costs <= c, axis=1) & np.any(costs < c, axis=1)
        mask[i] = not dominated.any()
    return mask


def parse_min_accuracy(text: str | None, baseline: float | None) -> float | None:
    """'0.95' is absolute; '0.99x' is relative to the uncompressed baseline."""
    if text in (None, ""):
        return None
    try:
        if str(text).endswith("x"):
            if baseline is None:
                raise UserError("--min-accuracy relative to baseline needs a measured baseline")
            return float(str(text)[:-1]) * baseline
        return float(text)
    except ValueError:
        raise UserError(f"--min-accuracy={text!r} is not allowed: a number like 0.95 or a ratio like 0.99x") from None


def hypervolume(points: np.ndarray, senses: list[str], reference: np.ndarray) -> float:
    """Exact hypervolume dominated by `points` up to `reference` (2 or 3 objectives)."""
    flip = np.array([-1.0 if s == "max" else 1.0 for s in senses])
    costs, ref = np.asarray(points, float) * flip, np.asarray(reference, float) * flip
    costs = costs[np.all(costs < ref, axis=1)]
    if len(costs) == 0:
        return 0.0
    if costs.shape[1] == 2:
        return _hv2(costs, ref)
    # 3-D: slice along the third objective; each slab's area is the 2-D hypervolume of the points below it.
    order = np.argsort(costs[:, 2])
    costs = costs[order]
    levels = list(costs[:, 2]) + [ref[2]]
    total = 0.0
    for i in range(len(costs)):
        depth = levels[i + 1] - levels[i]
        if depth > 0:
            total += depth * _hv2(costs[: i + 1, :2], ref[:2])
    return float(total)


def _hv2(costs: np.ndarray, ref: np.ndarray) -> float:
    pts = costs[np.argsort(costs[:, 0])]
    area, best_y = 0.0, ref[1]
    for x, y in pts:
        if y < best_y:
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return float(area)


def frontier(rows: list[dict], objectives: list[Objective], min_accuracy: float | None = None) -> dict:
    """Mark each row: `eligible` (ran, has every objective, meets the constraint) and `on_frontier`.

    Costs are normalised by the uncompressed row's cost where present, so the hypervolume is
    dimensionless: reference point = accuracy 0, each normalised cost at HV_MARGIN x its largest value.
    """
    cols = [o.column for o in objectives]
    senses = [o.sense for o in objectives]
    for r in rows:
        r["eligible"] = (r.get("error") is None and all(r.get(c) is not None for c in cols)
                         and (min_accuracy is None or (r.get("accuracy") or 0) >= min_accuracy))
        r["on_frontier"] = False
    elig = [r for r in rows if r["eligible"]]
    hv = 0.0
    if elig:
        pts = np.array([[float(r[c]) for c in cols] for r in elig])
        for r, m in zip(elig, non_dominated(pts, senses)):
            r["on_frontier"] = bool(m)
        base = next((r for r in elig if r.get("prune_method") == "none" and r.get("bits") is None
                     and r.get("precision") == "fp32"), None)
        scale = np.array([1.0 if s == "max" or base is None or not base[c] else float(base[c])
                          for c, s in zip(cols, senses)])
        norm = pts / scale
        ref = np.array([0.0 if s == "max" else HV_MARGIN * norm[:, i].max() for i, s in enumerate(senses)])
        hv = hypervolume(norm, senses, ref)
    return {"rows": rows, "hypervolume": hv, "objectives": [o.__dict__ for o in objectives],
            "min_accuracy": min_accuracy}
