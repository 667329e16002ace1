"""Sweep: choose a grid, run it in the measuring process with progress and a live frontier; stop any time."""
from __future__ import annotations

import streamlit as st

from dashboard import cluster, state, ui
from engine import api
from engine.core.recipe import RUNTIMES

db = state.db_path()
model = st.session_state["model"]
st.title(f"Sweep · {model}")
st.caption("Every configuration is stored as soon as it is measured: stopping (or closing the page) loses nothing, "
           "and running the same grid again only measures what is missing. A configuration that fails is "
           "recorded with its error and the sweep goes on.")

c = st.columns(2)
amounts = c[0].multiselect("Pruning levels", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
                           default=[0.0, 0.3, 0.6], key="sw_amounts")
methods = c[1].multiselect("Pruning methods", ["magnitude", "structured"], default=["magnitude", "structured"],
                           key="sw_methods")
c = st.columns(2)
bits = c[0].multiselect("Bit widths", state.BIT_OPTIONS, default=["none", 8, 4], key="sw_bits")
precisions = c[1].multiselect("Precisions", ["fp32", "fp16", "bf16"], default=["fp32", "bf16"], key="sw_prec")
runtimes = st.multiselect("Runtimes", list(RUNTIMES), default=["eager"], key="sw_runtimes",
                          help="onnxruntime: each configuration exported to ONNX and measured in ONNX Runtime "
                               "(the export adds a few seconds per configuration). openvino: converted to OpenVINO IR, "
                               "quantized by NNCF and measured in OpenVINO (seconds per configuration). compile: "
                               "each configuration through torch.compile (seconds to a minute per configuration).")
profile = st.radio("Measurement profile", ["quick", "thorough"], horizontal=True, key="sw_profile",
                   help="quick: interactive timing (~0.5 s a point); thorough: longer windows, steadier numbers.")
remeasure = st.checkbox("Also measure again the points measured on a busy machine", key="sw_remeasure")

with ui.guard("This grid cannot run"):
    recipes, skipped = api.sweep_grid(model, via=api.worker(), prune=amounts or [0.0], methods=methods or ["magnitude"],
                                      bits=[None if b == "none" else int(b) for b in bits] or [None],
                                      precisions=precisions or ["fp32"], runtimes=runtimes or ["eager"])
    todo = api.missing(recipes, db, profile, remeasure_contended=remeasure)
status = ui.job_status(f"sweep-{model}")
running = status is not None and not status.finished
st.write(f"**{len(recipes)}** configurations in this grid, **{len(todo)}** "
         + ("to measure (new, or measured on a busy machine)." if remeasure else "not measured yet at this profile."))
if skipped:
    with st.expander(f"Skipped combinations ({len(skipped)})"):
        for msg in skipped:
            st.caption(msg)

where = st.radio("Where to measure", ["this machine", "a Ray cluster"], horizontal=True, key="sw_where",
                 help="A Ray cluster measures the grid on each of its machine types (identical machines share the "
                      "work); each machine gets its own frontier (Frontier page, Machine). Needs "
                      "`pip install -r requirements-ray.txt` here and on every node.")
if where == "a Ray cluster":
    cluster.page(model, db, recipes, profile)
    st.stop()

b1, b2 = st.columns(2)
if b1.button("Run sweep", type="primary", disabled=not todo or running, key="sw_run"):
    with ui.guard("Could not start the sweep"):
        ui.start_background(f"sweep-{model}", recipes, db, profile, remeasure)
    st.rerun()
if b2.button("Stop", key="sw_stop", disabled=not running,
             help="Stops after the configuration being measured; rows so far are kept."):
    ui.stop_background(f"sweep-{model}")
    st.session_state["_sweep_stop_asked"] = True
    st.rerun()

if status is not None and status.finished:
    what = "stopped" if status.stopped else "finished"
    if status.error:
        st.error(f"Sweep {what}: {ui.plain(status.error)}")
    else:
        st.success(f"Sweep {what}: {status.measured} measured ({status.failed} failed, {status.contended} on a busy "
                   f"machine); {status.done} of {status.total} configurations are in the store.")
    st.session_state.pop("_sweep_stop_asked", None)
elif running and st.session_state.get("_sweep_stop_asked"):
    st.info("Stopping after the configuration being measured…")

with ui.guard("Could not draw the frontier"):
    ui.live_frontier(model, db, f"sweep-{model}", "latency", None, state.model_info(model).metric_kind, "sweep_chart")
