"""Explore: move the three controls, see what the engine measured, and where the point sits."""
from __future__ import annotations

import streamlit as st

from dashboard import controls, state, ui
from engine import api
from engine.models.user import display_name

db = state.db_path()
s = st.session_state

controls.sidebar()

ui.back_to_workshop()
st.title("Explore compression trade-offs")
recipe = state.recipe_or_stop()
worker = api.worker()
st.caption(f"**{display_name(recipe.model)}** · {recipe.label()} · recipe `{recipe.key}`")

with ui.guard("Could not measure this configuration"):
    fresh = s.pop("_remeasure", None) == recipe.key  # asked on the previous run: measure first
    base, cur = ui.measure_with_steps(recipe, db, worker, fresh)

r = cur.result
if r.error:
    st.error(f"This configuration failed to run: {ui.plain(r.error)}. It is recorded as failed (row #{cur.row_id}); "
             "try another setting.")
else:
    ui.metric_cards(r, None if recipe == recipe.baseline() else base.result)
    left, right = st.columns([4, 1])
    left.caption(("Read from the results store" if cur.from_store else
                  "Measured again just now, but the machine was busier than for the stored measurement, which is "
                  "kept" if cur.kept_better else "Measured just now")
                 + f" (row #{cur.row_id}, {r.profile} profile). "
                 + ("This is the uncompressed fp32 model: the baseline for every change shown."
                    if recipe == recipe.baseline() else
                    "Changes are against the uncompressed fp32 model in eager PyTorch; the latency change is the "
                    "paired speed-up."))
    if right.button("Re-measure", key="explore_remeasure",
                    help="Measure this configuration again now (the store keeps the better of the two: a "
                         "measurement on a busy machine never replaces a quiet one)."):
        s["_remeasure"] = recipe.key
        st.rerun()
    if right.button("Pin as A", key="explore_pin",
                    help="Keep this configuration as A, then move the controls: B (the controls) is compared "
                         "with A side by side, here and on Learn."):
        s["pin"] = recipe.to_dict()
        st.rerun()
    if r.contended:
        st.info("Measured while the machine was busy: the absolute times are not those of a quiet machine, so this "
                "point is drawn hollow and kept off the frontier. Close other work and press **Re-measure**.")
    st.session_state["explore_key"] = recipe.key
    ui.compare_with_pin(recipe, r, db, worker)
    ui.provenance(r)

st.subheader("Where this point sits")
with ui.guard("Could not start the starter grid"):
    status = ui.job_status(f"seed-{recipe.model}")
    if status is None:
        ui.start_background(f"seed-{recipe.model}", api.seed_grid(recipe.model, via=worker), db)
cost = st.selectbox("Against", ["latency", "speedup", "size", "memory", "energy"], key="explore_cost",
                    help="speedup: paired with the uncompressed model, so it holds when the machine is busy.")
with ui.guard("Could not draw the frontier"):
    ui.live_frontier(recipe.model, db, f"seed-{recipe.model}", cost, recipe.key, r.metric_kind, "explore_chart",
                     batch_size=recipe.batch_size)
