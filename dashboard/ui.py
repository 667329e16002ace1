"""Shared page pieces: error messages, metric cards, provenance, background jobs and the live chart."""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import streamlit as st

from dashboard import charts, state
from engine import api
from engine.core.errors import UserError
from engine.core.measurement import Latency
from engine.core.recipe import Recipe
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
[data-testid="stElementContainer"]:has(iframe[srcdoc*="stSidebarCollapseButton"]) { display: none; }
</style>"""


NARROW_PX = 1000
# Streamlit collapses its sidebar only below phone widths; a laptop window of 800-1000 px keeps it open over
# half the page. This closes it once per session on such a window (the `>` button opens it again). Written by
# hand because Streamlit has no setting for the width at which the sidebar starts collapsed.
COLLAPSE = f"""<script>
const doc = window.parent.document;
function collapse(tries) {{
  if (window.parent.innerWidth >= {NARROW_PX}) return;
  const bar = doc.querySelector('[data-testid="stSidebar"]');
  const button = doc.querySelector('[data-testid="stSidebarCollapseButton"] button');
  if (bar && button && bar.getBoundingClientRect().width > 100) button.click();
  else if (tries > 0) setTimeout(() => collapse(tries - 1), 200);
}}
collapse(25);
</script>"""


def style() -> None:
    st.html(STYLE)
    if not st.session_state.get("_sidebar_checked"):
        st.session_state["_sidebar_checked"] = True
        st.iframe(COLLAPSE)


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


def energy_kind(r: Result) -> str:
    return r.energy_source.kind if r.energy_source is not None else "n/a"


def metric_name(r: Result) -> str:
    return r.metric_name.capitalize()


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
    lat = r.latency or Latency()
    speed = None if b is None or r.speedup is None else fmt_speedup(r.speedup)
    c[1].metric("Latency p50", fmt_ms(lat.p50), speed,
                delta_color="normal" if (r.speedup or 1) >= 1 else "inverse",
                help=f"Median time of one call ({lat.calls_text()}). The change below it is the speed-up against "
                     "the uncompressed model, timed turn and turn about with it, so it holds even when other work "
                     f"slows both: {lat.speedup_text()}. Details: {lat.percentiles_text()}; "
                     f"{lat.machine_text()}.")
    c[2].metric("Stored size", fmt_bytes(r.size_bytes), _pct(r.size_bytes, r.baseline_size_bytes),
                delta_color="inverse",
                help=("Bytes of model.onnx, the file ONNX Runtime loads (measured in that runtime). "
                      if r.recipe.get("runtime") == "onnxruntime" else
                      "Bytes of model.bin, the OpenVINO IR's weights (measured in OpenVINO). "
                      if r.recipe.get("runtime") == "openvino" else
                      "Bytes of the compressed storage format: packed b-bit codes + scales, sparse tensors as "
                      "bitmap + values, DEFLATE where it helps. ") + f"{r.params_nonzero:,} non-zero of "
                     f"{r.params_total:,} parameters.")
    c[3].metric("Peak memory", fmt_bytes(r.peak_memory_bytes),
                _pct(r.peak_memory_bytes, b.peak_memory_bytes if b else None), delta_color="inverse",
                help="The model's weights in memory plus the extra memory one inference needs at its peak. "
                     f"How: {r.memory_source.to_text() if r.memory_source else 'n/a'}.")
    c[4].metric(f"Energy ({energy_kind(r)})", fmt_energy(r.energy_j),
                _pct(r.energy_j, b.energy_j if b else None), delta_color="inverse",
                help=f"per inference · {r.energy_source.to_text() if r.energy_source else 'n/a'}")


RUNTIME_STEP = {"onnxruntime": "exporting it to ONNX (a few seconds, once), then ",
                "compile": "compiling it with torch.compile (seconds to a minute, once), then ",
                "openvino": "converting it to OpenVINO IR and quantizing it with NNCF (seconds, once), then "}


def back_to_workshop() -> None:
    """While a lesson is under way, a link back to it from the page its preset opened."""
    if st.session_state.get("lesson_active"):
        st.page_link(st.session_state["_pages"]["workshop"], label="← Back to the workshop")


def measure_with_steps(recipe: Recipe, db: str, worker, fresh: bool = False) -> tuple[api.Measured, api.Measured]:
    """The baseline and the recipe's measurement, read from the store or measured; a measurement shows what
    is happening step by step (a first one loads the model, which takes a while for a transformer)."""
    need = [] if not Path(db).exists() else api.missing([recipe.baseline(), recipe], db)
    if not need and not fresh:
        base = api.baseline_of(recipe, db, via=worker)
        return base, (base if recipe == recipe.baseline() else api.measure_or_load(recipe, db, via=worker))
    start = time.perf_counter()
    with st.status(f"Measuring {recipe.label()}…", expanded=True) as box:
        if recipe.baseline() in need:
            st.write(f"**1. The uncompressed model**: loading {recipe.model} into the measuring process (the first "
                     "time only; a transformer takes several seconds), evaluating it on its held-out data and "
                     "timing it. Every change is measured against it.")
        base = api.baseline_of(recipe, db, via=worker)
        if base.result.error is None:
            st.write(f"uncompressed: {base.result.accuracy:.3f} {metric_name(base.result).lower()}, "
                     f"{fmt_ms(base.result.latency and base.result.latency.p50)} per call")
        if recipe == recipe.baseline() and not fresh:
            cur = base
        else:
            st.write(f"**2. {recipe.label()}**: applying the recipe to a copy of the model (pruning, quantizing), "
                     + RUNTIME_STEP.get(recipe.runtime, "") + "evaluating it and timing it in alternating blocks "
                     "with the uncompressed model, so the speed-up compares like with like.")
            cur = api.measure_or_load(recipe, db, via=worker, fresh=fresh)
        box.update(label=f"Measured {recipe.label()} in {time.perf_counter() - start:.1f} s", state="complete",
                   expanded=False)
    return base, cur


def compare_with_pin(recipe: Recipe, r: Result, db: str, worker) -> None:
    """A (pinned) and B (the controls) side by side, B's change against A from their paired speed-ups."""
    pin = st.session_state.get("pin")
    if not pin:
        return
    a_recipe = Recipe.from_dict(pin)
    st.subheader("Compare: A (pinned) and B (the controls)")
    if a_recipe.model != recipe.model:
        st.info(f"A is a configuration of {a_recipe.model}: choose that model to compare with it.")
    elif a_recipe == recipe:
        st.caption(f"A is pinned: **{a_recipe.label()}**. Move the controls to make B and compare.")
    else:
        a = api.measure_or_load(a_recipe, db, via=worker).result
        if a.error:
            st.warning(f"A failed to run: {plain(a.error)}")
        else:
            st.dataframe(compare_rows(a, r), hide_index=True, width="stretch")
            st.caption(f"A: {a_recipe.label()} · B: {recipe.label()}. Latency: B's speed-up divided by A's; both are "
                       "paired with the uncompressed model, so their ratio holds on a busy machine too.")
    if st.button("Unpin A", key="unpin"):
        st.session_state.pop("pin", None)
        st.rerun()


def compare_rows(a: Result, b: Result) -> list[dict[str, str]]:
    """Metric, A, B and B against A, as text (shown as a table)."""
    def ratio(x: float | None, y: float | None) -> str:
        return "n/a" if not x or not y else f"{y / x:.2f}×"

    name = metric_name(b)
    speed = "n/a" if not a.speedup or not b.speedup else fmt_speedup(b.speedup / a.speedup)
    return [
        {"metric": name, "A": f"{a.accuracy:.4f}", "B": f"{b.accuracy:.4f}",
         "B vs A": f"{(b.accuracy - a.accuracy) * 100:+.1f} pts"},
        {"metric": "Latency p50", "A": fmt_ms(a.latency and a.latency.p50), "B": fmt_ms(b.latency and b.latency.p50),
         "B vs A": speed},
        {"metric": "Stored size", "A": fmt_bytes(a.size_bytes), "B": fmt_bytes(b.size_bytes),
         "B vs A": ratio(a.size_bytes, b.size_bytes)},
        {"metric": "Peak memory", "A": fmt_bytes(a.peak_memory_bytes), "B": fmt_bytes(b.peak_memory_bytes),
         "B vs A": ratio(a.peak_memory_bytes, b.peak_memory_bytes)},
        {"metric": f"Energy ({energy_kind(a)} A, {energy_kind(b)} B)", "A": fmt_energy(a.energy_j),
         "B": fmt_energy(b.energy_j), "B vs A": ratio(a.energy_j, b.energy_j)},
    ]


def provenance(r: Result) -> None:
    """The caveats in one collapsible box, then how each step ran."""
    if r.warnings:
        with st.expander(f"Caveats ({len(r.warnings)})", expanded=r.contended):
            for w in r.warnings:
                st.markdown(f"- {w}")
    with st.expander("How this ran (kernels, device, timing)"):
        st.table([{"step": k.step, "kernel": k.kernel + (" (simulated)" if k.simulated else ""),
                   "detail": ", ".join(f"{a}={b}" for a, b in k.detail.items())} for k in r.kernels])
        st.caption(f"{r.machine.to_text()} · profile {r.profile} · measured in {r.wall_s or 0:.2f} s"
                   + (f" · {r.prepare_text} {r.prepare_s:.1f} s (not in the latency)" if r.prepare_s is not None
                      else ""))
        if r.latency is not None:
            st.caption(f"Timing: {r.latency.method}")


def start_background(name: str, recipes, db: str, profile: str = "quick", remeasure: bool = False):
    """Send recipes to the measuring process as a background job, remembered under `name` in this session."""
    job = api.start_sweep(recipes, db, api.worker(), profile, remeasure)
    st.session_state[f"_job_{name}"] = job
    return job


def job_status(name: str):
    job = st.session_state.get(f"_job_{name}")
    return None if job is None else job.progress()


def stop_background(name: str) -> None:
    job = st.session_state.get(f"_job_{name}")
    if job is not None:
        job.stop()


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
