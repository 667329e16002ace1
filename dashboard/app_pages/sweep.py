"""Sweep: choose a grid, run it with progress and a live frontier; stop any time, resume from the store."""
from __future__ import annotations

import streamlit as st

from dashboard import charts, state
from engine import service
from engine.sweep import expand_grid

db = state.db_path()
model = st.session_state["model"]
st.title(f"Sweep · {model}")
st.caption("Every configuration is stored as soon as it is measured: stopping (or closing the page) loses nothing, "
           "and running the same grid again only measures what is missing. A configuration that fails is "
           "recorded with its error and the sweep goes on.")

c = st.columns(4)
amounts = c[0].multiselect("Pruning levels", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
                           default=[0.0, 0.3, 0.6], key="sw_amounts")
methods = c[1].multiselect("Pruning methods", ["magnitude", "structured"], default=["magnitude", "structured"],
                           key="sw_methods")
bits = c[2].multiselect("Bit widths", state.BIT_OPTIONS, default=["none", 8, 4], key="sw_bits")
precisions = c[3].multiselect("Precisions", ["fp32", "fp16", "bf16"], default=["fp32", "bf16"], key="sw_prec")
profile = st.radio("Measurement profile", ["quick", "thorough"], horizontal=True, key="sw_profile",
                   help="quick: interactive timing (~0.3 s a point); thorough: longer windows, steadier numbers.")

recipes, skipped = expand_grid(model, amounts or [0.0], methods or ["magnitude"],
                               [None if b == "none" else int(b) for b in bits] or [None], precisions or ["fp32"])
todo = service.missing(recipes, db, profile)
st.write(f"**{len(recipes)}** configurations in this grid, **{len(todo)}** not measured yet at this profile.")
for msg in skipped:
    st.caption(f"Skipped: {msg}")

b1, b2 = st.columns([1, 5])
run = b1.button("Run sweep", type="primary", disabled=not todo, key="sw_run")
b2.button("Stop", key="sw_stop", help="Stops after the configuration being measured; rows so far are kept.")
chart = st.empty()


draws = iter(range(10**9))  # each redraw in one run needs its own element key


def draw() -> None:
    data = service.model_rows(model, db, ["accuracy:max", "latency:min"])
    chart.plotly_chart(charts.pareto_figure(data["rows"], "latency_p50_ms", "accuracy"), width="stretch",
                       key=f"sweep_chart_{next(draws)}")


if run:
    bar = st.progress(0.0, text="Starting…")

    def progress(done, total, recipe, result, eta):
        status = "failed" if result is not None and result.error else "ok"
        bar.progress(done / total, text=f"{done}/{total} · {recipe.label()} {status} · ETA {eta:.0f} s")
        draw()

    summary = service.sweep(todo, db, profile=profile, on_progress=progress)
    st.success(f"Sweep finished: {summary.measured} measured ({summary.failed} failed) in {summary.wall_s:.1f} s.")
draw()
