import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from engine import __version__
from engine.core.errors import UserError
from engine.results.pareto import frontier, hypervolume, non_dominated, parse_min_accuracy, parse_objectives

SENSES = ["max", "min", "min"]
point_sets = arrays(np.float64, st.tuples(st.integers(1, 30), st.just(3)),
                    elements=st.integers(0, 10).map(float))


def dominates(a, b, senses):
    sa = np.array([-x if s == "max" else x for x, s in zip(a, senses)])
    sb = np.array([-x if s == "max" else x for x, s in zip(b, senses)])
    return bool(np.all(sa <= sb) and np.any(sa < sb))


@settings(max_examples=150, deadline=None)
@given(point_sets)
def test_frontier_properties(pts):
    mask = non_dominated(pts, SENSES)
    front = pts[mask]
    assert mask.any()
    for p in front:  # nothing on the frontier is dominated
        assert not any(dominates(q, p, SENSES) for q in pts)
    for p in pts[~mask]:  # everything else is dominated by a frontier point
        assert any(dominates(q, p, SENSES) for q in front)
    perm = np.random.default_rng(0).permutation(len(pts))  # order-independent
    assert np.array_equal(non_dominated(pts[perm], SENSES), mask[perm])


def test_hypervolume_2d_and_3d_known_values():
    pts = np.array([[1.0, 0.5], [2.0, 1.0]])  # maximise x, minimise y; ref (0, 2)
    assert hypervolume(pts, ["max", "min"], np.array([0.0, 2.0])) == pytest.approx(1.5 + 2.0 - 1.0)
    cube = np.array([[1.0, 0.0, 0.0]])
    assert hypervolume(cube, ["max", "min", "min"], np.array([0.0, 1.0, 2.0])) == pytest.approx(2.0)


@settings(max_examples=60, deadline=None)
@given(point_sets)
def test_hypervolume_depends_only_on_frontier(pts):
    ref = np.array([-1.0, 11.0, 11.0])
    assert hypervolume(pts, SENSES, ref) == pytest.approx(hypervolume(pts[non_dominated(pts, SENSES)], SENSES, ref))


def test_errors_never_on_frontier_and_constraint():
    v = __version__
    rows = [
        {"id": 1, "accuracy": 0.99, "latency_p50_ms": 1.0, "size_bytes": 100, "error": None,
         "prune_method": "none", "bits": None, "precision": "fp32", "engine_version": v},
        {"id": 2, "accuracy": 0.90, "latency_p50_ms": 0.5, "size_bytes": 50, "error": None, "engine_version": v},
        {"id": 3, "accuracy": None, "latency_p50_ms": None, "size_bytes": None, "error": "boom", "engine_version": v},
    ]
    out = frontier(rows, parse_objectives("accuracy:max,latency:min,size:min"))
    assert [r["on_frontier"] for r in out["rows"]] == [True, True, False]
    out = frontier(rows, parse_objectives("accuracy,latency"), parse_min_accuracy("0.95x", 0.99))
    assert [r["on_frontier"] for r in out["rows"]] == [True, False, False]


def test_contended_rows_are_shown_but_kept_off_the_frontier_unless_asked():
    v = __version__
    rows = [
        {"id": 1, "accuracy": 0.99, "latency_p50_ms": 1.0, "error": None, "engine_version": v},
        {"id": 2, "accuracy": 0.99, "latency_p50_ms": 0.1, "error": None, "engine_version": v, "latency_contended": 1},
        {"id": 3, "accuracy": 0.99, "latency_p50_ms": 0.2, "error": None, "engine_version": "0.0.1"},
    ]
    out = frontier(rows, parse_objectives("accuracy,latency"))["rows"]
    assert [r["shown"] for r in out] == [True] * 3 and [r["trusted"] for r in out] == [True, False, False]
    assert [r["on_frontier"] for r in out] == [True, False, False]
    out = frontier(rows, parse_objectives("accuracy,latency"), include_untrusted=True)["rows"]
    assert [r["on_frontier"] for r in out] == [False, True, False]


@pytest.mark.parametrize("spec", ["accuracy", "accuracy,speed", "latency:min,latency:max", "accuracy,latency:max",
                                  "accuracy,latency,size,memory"])
def test_bad_objectives(spec):
    with pytest.raises(UserError):
        parse_objectives(spec)


@pytest.mark.parametrize("text", ["lots", "nan", "inf", "-0.1", "1.5", "nanx", "2x"])
def test_bad_constraints(text):
    with pytest.raises(UserError, match="min accuracy"):
        parse_min_accuracy(text, 0.9)


def test_constraints():
    assert parse_min_accuracy("0.5", None) == 0.5
    assert parse_min_accuracy("0.9x", 0.5) == pytest.approx(0.45)
    assert [o.sense for o in parse_objectives("accuracy,latency,speedup")] == ["max", "min", "max"]


def test_the_search_names_its_latency_apart_from_the_frontiers():
    """The frontier's `latency` is p50 ms; the search's is relative to the baseline, under a name of its own. The
    old spelling is still accepted, and a study begun under it resumes under the same study name."""
    from engine.jobs import search

    new = search.check("relative_latency:min,size", 3, None)
    old = search.check("latency,size:min", 3, None)
    assert [o.name for o in old] == [o.name for o in new] == ["relative_latency", "size"]
    assert search.study_name("m", new, 0.9, "id") == search.study_name("m", old, 0.9, "id")
    assert [o.column for o in parse_objectives("accuracy,latency")] == ["accuracy", "latency_p50_ms"]
    with pytest.raises(UserError, match="relative_latency is always minimised"):
        search.check("latency:max,size", 3, None)
    with pytest.raises(UserError, match="choose from relative_latency, size"):
        search.check("p50,size", 3, None)


def _plotted_row(i: int, p50: float, trusted: bool = True, q75: float | None = None) -> dict:
    return {"id": i, "label": f"row {i}", "recipe_key": f"k{i}", "runtime": "eager", "accuracy": 0.99 - i / 1000,
            "latency_p50_ms": p50, "latency_block_q25_ms": p50 * 0.97, "latency_block_q75_ms": q75 or p50 * 1.03,
            "energy_j": 1e-4, "energy_source": "estimated:cpu-time", "trusted": trusted, "eligible": trusted,
            "shown": True, "on_frontier": trusted and i % 3 == 0}


def test_the_frontier_axes_fit_the_points_drawn():
    """16 digits-cnn rows between 0.08 and 0.19 ms and one busy row whose block spread reaches 20 ms: the latency
    axis spans the points (not 0-20 ms), and a compared row's error bar stays inside it."""
    from engine.results.figures import pareto_figure

    rows = [_plotted_row(i, 0.08 + i * 0.0073) for i in range(16)]
    rows.append(_plotted_row(16, 0.15, trusted=False, q75=20.0))
    fig = pareto_figure(rows, x="latency_p50_ms", y="accuracy")
    lo, hi = fig.layout.xaxis.range
    assert 0.06 < lo < 0.08 and 0.19 < hi < 0.22, (lo, hi)
    ylo, yhi = fig.layout.yaxis.range
    assert ylo < min(r["accuracy"] for r in rows) and yhi > max(r["accuracy"] for r in rows)
    busy = next(t for t in fig.data if t.name == "busy machine: not compared")
    assert busy.error_x.array is None  # its spread measures the other work, not the configuration
