"""Pareto frontier over 2-3 objectives, an accuracy constraint, and the hypervolume.

Hand-written because the sets are small (hundreds of points) and the libraries that do this
(pymoo, botorch) are heavy dependencies for thirty lines of exact code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine import __version__
from engine.core.errors import UserError

# objective name -> (row column, sense)
OBJECTIVES: dict[str, tuple[str, str]] = {
    "accuracy": ("accuracy", "max"),
    "latency": ("latency_p50_ms", "min"),
    "size": ("size_bytes", "min"),
    "memory": ("peak_memory_bytes", "min"),
    "energy": ("energy_j", "min"),
    "params": ("params_nonzero", "min"),
    "speedup": ("speedup", "max"),  # paired with the baseline: comparable across machine load
}
DEFAULT_OBJECTIVES = ("accuracy:max", "latency:min", "size:min")
HV_MARGIN = 1.1  # reference point: accuracy 0 and each cost at 1.1x the largest measured (normalised)


@dataclass(frozen=True)
class Objective:
    name: str
    column: str
    sense: str


def parse_objectives(spec: str | list[str] | tuple[str, ...], table: dict[str, tuple[str, str]] = OBJECTIVES,
                     old_names: dict[str, str] | None = None) -> list[Objective]:
    """'accuracy:max,latency:min' -> Objectives of `table` (name -> (column, sense)); `old_names` maps a former
    spelling to its name. Each objective's sense is fixed by what it measures (more accuracy or speed-up is
    better, more of any cost is worse); naming the other sense is refused."""
    example = ",".join(f"{n}:{sense}" for n, (_, sense) in list(table.items())[:2])
    if not isinstance(spec, (str, list, tuple)) or not all(isinstance(s, str) for s in spec):
        raise UserError(f"objectives: give a comma-separated list such as {example}")
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not 2 <= len(items) <= 3:
        raise UserError(f"objectives={','.join(items)[:80]!r}: give 2 or 3, e.g. {example}")
    out = []
    for item in items:
        name, _, sense = item.partition(":")
        name = (old_names or {}).get(name, name)
        if name not in table:
            raise UserError(f"objective {name[:40]!r} is not allowed: choose from {', '.join(table)}")
        column, natural = table[name]
        if sense not in ("", natural):
            raise UserError(f"objective {item[:40]!r}: {name} is always {'maximised' if natural == 'max' else 'minimised'} "
                            f"(write {name}:{natural} or just {name})")
        if any(o.name == name for o in out):
            raise UserError(f"objective {name!r} is given twice: give 2 or 3 different objectives")
        out.append(Objective(name, column, natural))
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
    """'0.95' is absolute; '0.99x' is relative to the uncompressed baseline. Both lie in [0, 1]."""
    if text in (None, ""):
        return None
    text = str(text).strip()
    relative = text.endswith("x")
    try:
        value = float(text[:-1] if relative else text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise UserError(f"min accuracy {text[:40]!r} is not allowed: a number from 0 to 1 like 0.95, or a ratio of "
                        "the baseline from 0 to 1 like 0.99x")
    if not relative:
        return value
    if baseline is None:
        raise UserError("a minimum accuracy relative to the baseline needs a measured baseline")
    return value * baseline


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


def trusted(row: dict) -> bool:
    """Measured quietly by this engine: a number fit to be compared (contended or older rows wait to be re-measured)."""
    return row.get("error") is None and not row.get("latency_contended") and row.get("engine_version") == __version__


def frontier(rows: list[dict], objectives: list[Objective], min_accuracy: float | None = None,
             include_untrusted: bool = False) -> dict:
    """Mark each row: `shown` (ran, has every objective, meets the constraint), `trusted`, `eligible`
    (shown, and trusted unless `include_untrusted`) and `on_frontier` (eligible and not dominated).

    Costs are normalised by the uncompressed row's cost where present, so the hypervolume is
    dimensionless: reference point = accuracy 0, each normalised cost at HV_MARGIN x its largest value.
    """
    cols = [o.column for o in objectives]
    senses = [o.sense for o in objectives]
    for r in rows:
        r["shown"] = (r.get("error") is None and all(r.get(c) is not None for c in cols)
                      and (min_accuracy is None or (r.get("accuracy") or 0) >= min_accuracy))
        r["trusted"] = trusted(r)
        r["eligible"] = r["shown"] and (r["trusted"] or include_untrusted)
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
