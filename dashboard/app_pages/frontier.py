"""Frontier: every stored configuration of the model, the non-dominated ones joined; click to load one."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import charts, state, ui
from engine import api
from engine.results.pareto import OBJECTIVES

db = state.db_path()
model = st.session_state["model"]
ui.back_to_workshop()
st.title(f"Pareto frontier · {model}")
metric_kind = state.model_info(model).metric_kind
metric = "fidelity" if metric_kind == "fidelity" else "accuracy"

costs = [k for k in OBJECTIVES if k != "accuracy"]
c = st.columns(4)
x_obj = c[0].selectbox("x", costs, key="front_x")
y_obj = c[1].selectbox("y", ["accuracy"] + costs, key="front_y", format_func=lambda k: metric if k == "accuracy" else k)
third = c[2].selectbox("third objective (colour)", ["none"] + [k for k in costs if k not in (x_obj, y_obj)],
                       key="front_third")
min_acc = c[3].slider(f"Minimum {metric} (× baseline)", 0.0, 1.0, 0.0, 0.01, key="front_min_acc",
                      help="Only configurations that keep at least this fraction of the baseline compete.")
include = st.toggle("Let rows measured on a busy machine compete", key="front_untrusted",
                    help="Contended rows (and rows from an older engine) are drawn hollow and left off the frontier "
                         "until they are re-measured on a quiet machine.")
if x_obj == y_obj:
    st.warning("Choose two different objectives.")
    st.stop()
objectives = [x_obj, y_obj] + ([third] if third != "none" else [])
with ui.guard("Could not read the machines of this store"):
    known = api.machines(model, db)
names = {m["device_id"]: f"{m['name']}" + (" (this machine)" if m["this_machine"] else "") + f", {m['rows']} rows"
         for m in known}
machine = None  # this machine
if len(known) > 1 or (known and not known[0]["this_machine"]):
    if st.session_state.get("front_machine") not in names:
        st.session_state.pop("front_machine", None)
    machine = st.selectbox("Machine", list(names), key="front_machine", format_func=names.get,
                           help="Each machine's configurations compete only with its own (latencies of different "
                                "machines never compare): pick the machine whose frontier to show; sweeps on a Ray "
                                "cluster and imported results add machines.")
with ui.guard("Could not read the results"):
    # One read: the batch size chosen on the previous run (the widget below shows the sizes this read found).
    data = api.model_rows(model, db, objectives, f"{min_acc}x" if min_acc > 0 else None, include_untrusted=include,
                          batch_size=st.session_state.get("front_batch"), device_id=machine)
    if data["batch_size"] not in data["batch_sizes"] and data["batch_sizes"]:  # chosen for another model
        st.session_state.pop("front_batch", None)
        data = api.model_rows(model, db, objectives, f"{min_acc}x" if min_acc > 0 else None,
                              include_untrusted=include, device_id=machine)
if len(data["batch_sizes"]) > 1:
    st.selectbox("Batch size", data["batch_sizes"], key="front_batch",
                 help="Latencies of different batch sizes never compete: one frontier per batch size.")
rows = data["rows"]
if data["damaged"]:
    st.warning(f"{data['damaged']} damaged row(s) in the results store were skipped.")
if not rows:
    st.info("No configurations measured yet for this model on this machine: open Explore or run a Sweep.")
    st.stop()

untrusted = [r for r in rows if r["shown"] and not r["trusted"]]
if untrusted:
    left, right = st.columns([4, 1])
    left.info(f"{len(untrusted)} configuration(s) were measured while the machine was busy (or by an older engine): "
              "hollow, and off the frontier until re-measured.")
    if right.button("Re-measure them", key="front_remeasure"):
        with ui.guard("Could not start re-measuring"):
            ui.start_background(f"remeasure-{model}", api.untrusted_recipes(model, db), db, remeasure=True)
ui.job_progress(f"remeasure-{model}", "Re-measuring")

overlays = []
with ui.guard("Could not read the other machines' results"):
    shown = machine or next((m["device_id"] for m in known if m["this_machine"]), None)
    others = [m["device_id"] for m in known if m["device_id"] != shown]
    if others:
        if "front_machines" in st.session_state:  # a machine now chosen above is no longer an overlay
            st.session_state["front_machines"] = [d for d in st.session_state["front_machines"] if d in others]
        picked = st.multiselect("Overlay other machines' frontiers", others, format_func=names.get,
                                key="front_machines",
                                help="Machines of a Ray cluster sweep, or results imported from classmates (Workshop "
                                     "page). Each machine's points compete only with its own; its frontier is drawn "
                                     "dashed over the one chosen above, side by side.")
        for dev in picked:
            other = api.model_rows(model, db, objectives, f"{min_acc}x" if min_acc > 0 else None,
                                   include_untrusted=include, batch_size=data["batch_size"], device_id=dev)
            overlays.append((names[dev].rsplit(", ", 1)[0].removesuffix(" (this machine)"), other["rows"]))
fig = charts.pareto_figure(rows, x=OBJECTIVES[x_obj][0], y=OBJECTIVES[y_obj][0],
                           color=OBJECTIVES[third][0] if third != "none" else None,
                           current_key=st.session_state.get("explore_key"), metric_kind=metric_kind,
                           overlays=overlays)
event = st.plotly_chart(fig, key="frontier_chart", on_select="rerun", selection_mode="points", width="stretch")
ui.busy_only(rows)
n_front = sum(r["on_frontier"] for r in rows)
st.caption(f"{n_front} of {sum(r['eligible'] for r in rows)} configurations on the frontier. "
           + charts.legend_note(rows, "energy" in objectives)
           + (". With a third objective, a point is on the frontier if no other point is at least as good in all "
              "three: some frontier points look dominated in this 2-D view, and no line joins them."
              if third != "none" else "."))
st.caption(f"Hypervolume {data['hypervolume']:.4g}: the size of the region of the objective space that the frontier "
           "dominates (costs divided by the uncompressed model's, from 0 up to 1.1 × the worst). Larger is better; "
           "compare it between sweeps of the same model and objectives.")


def load(row_id: int) -> None:
    with ui.guard("Could not load that configuration"):
        state.request_load(api.recipe_of_row(row_id, db))
    st.switch_page(st.session_state["_pages"]["explore"])


points = (event.selection.points if event and event.selection else []) or []
if points:
    load(int(points[0]["customdata"][0]))

ok = [r for r in rows if r["error"] is None]
failed = [r for r in rows if r["error"] is not None]
sel = st.columns([3, 1])
labels = {r["id"]: f"#{r['id']} · {r['label']}" + (" ★" if r["on_frontier"] else "")
          + ("" if r["trusted"] else " (busy machine)") for r in ok}
choice = sel[0].selectbox("Load a configuration into Explore", list(labels), key="front_pick",
                          format_func=lambda i: labels.get(i, str(i)))
if sel[1].button("Load into Explore", key="front_load", type="primary") and choice is not None:
    load(int(choice))

table = pd.DataFrame([{
    "id": r["id"], "frontier": r["on_frontier"], "configuration": r["label"], metric: r["accuracy"],
    "p50 ms": r["latency_p50_ms"], "speed-up": r["speedup"], "busy machine": not r["trusted"],
    "size KiB": (r["size_bytes"] or 0) / 1024, "memory KiB": (r["peak_memory_bytes"] or 0) / 1024,
    "energy mJ": (r["energy_j"] or 0) * 1e3, "energy": r["energy_source"],
    "simulated": bool(r["simulated"]), "profile": r["profile"]} for r in ok])
st.dataframe(table, hide_index=True, width="stretch", key="front_table")
st.download_button("Download CSV", table.to_csv(index=False).encode(), f"{model}-results.csv", "text/csv")
if len(data["batch_sizes"]) > 1:
    with st.expander("Where compression pays off: speed-up by batch size"):
        st.plotly_chart(charts.batch_figure(data["all_rows"]), key="front_batch_chart", width="stretch")
        st.caption("Each line is one configuration, measured at several batch sizes; the speed-up is paired with "
                   "the uncompressed eager model at the same batch size. Small batches are dominated by fixed "
                   "per-call costs, which compression does not remove.")
if failed:
    st.subheader("Failed configurations")
    for r in failed:
        st.error(f"#{r['id']} {r['label']}: {ui.plain(r['error'])}")
