"""Shared page pieces: error messages, metric cards, provenance, background jobs and the live chart."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import streamlit as st

from dashboard import charts, state
from engine import api
from engine.core.errors import UserError
from engine.core.result import Result
from engine.core.units import fmt_bytes, fmt_energy, fmt_ms, fmt_speedup
from engine.results.pareto import OBJECTIVES


# Cards wrap instead of truncating on narrow windows (800 px with the sidebar open leaves ~500 px), and
# Streamlit's own "Running / Stop" status is hidden: the pages show their own progress and Stop button.
STYLE = """<style>
[data-testid="stHorizontalBlock"] { flex-wrap: wrap; row-gap: 0.5rem; }
[data-testid="stHorizontalBlock"] > [data-testid="stColumn"] { min-width: min(9.5rem, 100%); }
[data-testid="stMetricValue"] { font-size: 1.6rem; }
[data-testid="stStatusWidget"] { visibility: hidden; }
</style>"""


def style() -> None:
    st.html(STYLE)


def plain(message: str) -> str:
    """A message without the server's folders in it (file names are kept)."""
    db = Path(state.db_path()).resolve()
    for folder in (str(db.parent) + "/", str(state.ROOT) + "/", str(Path.home()) + "/"):
        message = message.replace(folder, "")
    return message


@contextmanager
def guard(what: str) -> Iterator[None]:
    """Turn any failure into one short message in the page, then stop this run of the page."""
    try:
        yield
    except UserError as exc:
        st.error(f"{what}: {plain(str(exc))}")
        st.stop()
    except Exception as exc:  # noqa: BLE001  (the server must keep serving; the message says what broke)
        st.error(f"{what}: {type(exc).__name__}: {plain(str(exc))[:300]}")
        st.stop()


def metric_name(r: Result) -> str:
    return "Fidelity" if r.metric_kind == "fidelity" else "Accuracy"


def _pct(new: float | None, old: float | None) -> str | None:
    if new is None or old in (None, 0) or new == old:
        return None
    return f"{(new - old) / old:+.0%}"


def metric_cards(r: Result, base: Result | None) -> None:
    """Accuracy, latency, size, memory, energy with their deltas vs the uncompressed model and their sources."""
    c = st.columns(5)
    b = base if base is not None and base.error is None else None
    acc_delta = None if b is None else f"{(r.accuracy - b.accuracy) * 100:+.1f} pts"
    c[0].metric(metric_name(r), f"{r.accuracy:.3f}", acc_delta,
                help=f"{r.metric}. Baseline {r.baseline_accuracy:.4f}. "
                + " · ".join(f"{k}: {v:.3f}" for k, v in r.extra_metrics.items()))
    lat = r.latency_ms or {}
    speed = None if b is None or r.speedup is None else fmt_speedup(r.speedup)
    c[1].metric("Latency p50", fmt_ms(lat.get("p50")), speed,
                delta_color="normal" if (r.speedup or 1) >= 1 else "inverse",
                help=f"Median time of one call with a batch of {lat.get('batch_size')} "
                     f"({lat.get('calls')} calls timed, {lat.get('threads')} of {lat.get('threads_requested')} "
                     f"threads). The change below it is the speed-up against the uncompressed model, timed turn and "
                     f"turn about with it, so it holds even when other work slows both. Details: p90 "
                     f"{fmt_ms(lat.get('p90'))}, p99 {fmt_ms(lat.get('p99'))}"
                     f"{'' if lat.get('p99_reliable') else ' (from < 100 calls)'}; spread of calls (IQR/median) "
                     f"{lat.get('iqr_ratio', 0):.0%}, of the speed-up {(r.speedup_spread or 0):.0%}; other work used "
                     f"{lat.get('foreign_cpu', 0):.2f} cores meanwhile.")
    c[2].metric("Stored size", fmt_bytes(r.size_bytes), _pct(r.size_bytes, r.baseline_size_bytes),
                delta_color="inverse",
                help=("Bytes of model.onnx, the file ONNX Runtime loads (measured in that runtime). "
                      if r.recipe.get("runtime") == "onnxruntime" else
                      "Bytes of the compressed storage format: packed b-bit codes + scales, sparse tensors as "
                      "bitmap + values, DEFLATE where it helps. ") + f"{r.params_nonzero:,} non-zero of "
                     f"{r.params_total:,} parameters.")
    c[3].metric("Peak memory", fmt_bytes(r.peak_memory_bytes),
                _pct(r.peak_memory_bytes, b.peak_memory_bytes if b else None), delta_color="inverse",
                help="The model's weights in memory plus the extra memory one inference needs at its peak. "
                     f"How: {r.memory_source}.")
    src = r.energy_source or "n/a"
    c[4].metric(f"Energy ({'estimated' if src.startswith('estimated') else 'measured'})", fmt_energy(r.energy_j),
                _pct(r.energy_j, b.energy_j if b else None), delta_color="inverse",
                help=f"per inference · {src} · {r.energy_note}")


def provenance(r: Result) -> None:
    """The caveats in one collapsible box, then how each step ran."""
    if r.warnings:
        with st.expander(f"Caveats ({len(r.warnings)})", expanded=r.contended):
            for w in r.warnings:
                st.markdown(f"- {w}")
    with st.expander("How this ran (kernels, device, timing)"):
        st.table([{"step": k.step, "kernel": k.kernel + (" (simulated)" if k.simulated else ""),
                   "detail": ", ".join(f"{a}={b}" for a, b in k.detail.items())} for k in r.kernels])
        d = r.device
        st.caption(f"{d.get('cpu')} · {d.get('logical_cores')} cores · flags {', '.join(d.get('cpu_flags', []))} · "
                   f"GPU {d.get('gpu') or 'none'} · torch {d.get('torch')} · profile {r.profile} · "
                   f"measured in {r.wall_s or 0:.2f} s"
                   + (f" · ONNX export and quantization {r.prepare_s:.1f} s (not in the latency)"
                      if r.prepare_s is not None else ""))


def start_background(name: str, recipes, db: str, profile: str = "quick", remeasure: bool = False) -> int | None:
    """Send recipes to the measuring process as a background job, remembered under `name` in this session."""
    job = api.start_sweep(recipes, db, api.worker(), profile, remeasure)
    st.session_state[f"_job_{name}"] = job
    return job


def job_status(name: str):
    job = st.session_state.get(f"_job_{name}")
    return None if job is None else api.worker().status(job)


def _progress(status, verb: str) -> None:
    st.progress(min(1.0, status.done / max(status.total, 1)),
                text=f"{verb}: {status.done}/{status.total}"
                     + (f" · now {status.current}" if status.current else "")
                     + (f" · about {status.eta_s:.0f} s left" if status.eta_s else ""))


def job_progress(name: str, verb: str) -> None:
    """A progress bar for a background job that refreshes itself, and the whole page once the job ends."""
    status = job_status(name)
    if status is None or status.finished:
        return

    def draw() -> None:
        now = job_status(name)
        if now.finished:
            st.rerun()
        _progress(now, verb)

    st.fragment(draw, run_every=2.0)()


def live_frontier(model: str, db: str, job_name: str, cost: str, current_key: str | None, metric_kind: str,
                  chart_key: str, batch_size: int | None = None) -> None:
    """The accuracy-vs-cost plot at one batch size; while a background job runs it redraws every 2 s with its
    progress."""
    running = (job_status(job_name) is not None) and not job_status(job_name).finished

    def draw() -> None:
        status = job_status(job_name)
        if status is not None and not status.finished:
            _progress(status, "Measuring in the background")
        elif running:  # it finished since the last full run: let the whole page catch up
            st.rerun()
        data = api.model_rows(model, db, ["accuracy", cost], batch_size=batch_size)
        fig = charts.pareto_figure(data["rows"], x=OBJECTIVES[cost][0], y="accuracy", current_key=current_key,
                                   metric_kind=metric_kind)
        st.plotly_chart(fig, key=chart_key, width="stretch")
        st.caption(charts.legend_note(data["rows"], cost == "energy")
                   + (f" · {data['damaged']} damaged row(s) skipped" if data["damaged"] else ""))
        busy_only(data["rows"])

    st.fragment(draw, run_every=2.0 if running else None)()


def busy_only(rows: list[dict]) -> None:
    """Say so when every point was measured on a busy machine (the frontier is empty, not broken)."""
    shown = [r for r in rows if r.get("shown")]
    if shown and not any(r["eligible"] for r in shown):
        st.info(f"All {len(shown)} points were measured while the machine was busy, so none is compared yet. "
                "Close other work and re-measure them (Frontier page), or let them compete there for now.")
