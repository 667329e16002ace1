"""Frontier: every stored configuration of the model, the non-dominated ones joined; click to load one."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import charts, state
from engine import service
from engine.pareto import OBJECTIVES

db = state.db_path()
model = st.session_state["model"]
st.title(f"Pareto frontier · {model}")

costs = [k for k in OBJECTIVES if k != "accuracy"]
c = st.columns(4)
x_obj = c[0].selectbox("x (cost, minimised)", costs, key="front_x")
y_obj = c[1].selectbox("y", ["accuracy"] + costs, key="front_y")
third = c[2].selectbox("colour (third objective)", ["none"] + [k for k in costs if k not in (x_obj, y_obj)],
                       key="front_third")
min_acc = c[3].slider("Minimum accuracy (× baseline)", 0.0, 1.0, 0.0, 0.01, key="front_min_acc",
                      help="Only configurations that keep at least this fraction of the baseline accuracy compete.")
if x_obj == y_obj:
    st.warning("Choose two different objectives.")
    st.stop()
objectives = [f"{x_obj}:min", f"{y_obj}:{OBJECTIVES[y_obj][1]}"] + ([f"{third}:min"] if third != "none" else [])
data = service.model_rows(model, db, objectives, f"{min_acc}x" if min_acc > 0 else None)
rows = data["rows"]
if not rows:
    st.info("No configurations measured yet for this model on this machine: open Explore or run a Sweep.")
    st.stop()

fig = charts.pareto_figure(rows, x=OBJECTIVES[x_obj][0], y=OBJECTIVES[y_obj][0],
                           color=OBJECTIVES[third][0] if third != "none" else None,
                           current_key=st.session_state.get("explore_key"))
event = st.plotly_chart(fig, key="frontier_chart", on_select="rerun", selection_mode="points", width="stretch")
n_front = sum(r["on_frontier"] for r in rows)
st.caption(f"{n_front} of {sum(r['eligible'] for r in rows)} configurations on the frontier · hypervolume "
           f"{data['hypervolume']:.4g} (costs normalised by the uncompressed model; reference: accuracy 0, "
           "1.1 × the largest cost). Diamonds: frontier; grey: dominated; hollow: energy estimated.")


def load(row_id: int) -> None:
    state.request_load(service.recipe_of_row(row_id, db))
    st.switch_page(st.session_state["_pages"]["explore"])


points = (event.selection.points if event and event.selection else []) or []
if points:
    load(int(points[0]["customdata"][0]))

ok = [r for r in rows if r["error"] is None]
failed = [r for r in rows if r["error"] is not None]
sel = st.columns([3, 1])
choice = sel[0].selectbox("Load a configuration into Explore", [r["id"] for r in ok], key="front_pick",
                          format_func=lambda i: next(f"#{r['id']} · {r['label']}" + (" ★" if r["on_frontier"] else "")
                                                     for r in ok if r["id"] == i))
if sel[1].button("Load into Explore", key="front_load", type="primary"):
    load(int(choice))

table = pd.DataFrame([{
    "id": r["id"], "frontier": r["on_frontier"], "configuration": r["label"], "accuracy": r["accuracy"],
    "latency p50 ms": r["latency_p50_ms"], "latency p90 ms": r["latency_p90_ms"],
    "size KiB": (r["size_bytes"] or 0) / 1024, "peak memory KiB": (r["peak_memory_bytes"] or 0) / 1024,
    "energy mJ": (r["energy_j"] or 0) * 1e3, "energy source": r["energy_source"],
    "simulated kernel": bool(r["simulated"]), "profile": r["profile"]} for r in ok])
st.dataframe(table, hide_index=True, width="stretch", key="front_table")
st.download_button("Download CSV", table.to_csv(index=False).encode(), f"{model}-results.csv", "text/csv")
if failed:
    st.subheader("Failed configurations")
    for r in failed:
        st.error(f"#{r['id']} {r['label']}: {r['error']}")
