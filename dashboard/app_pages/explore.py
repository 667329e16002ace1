"""Explore: move the three controls, see what the engine measured, and where the point sits."""
from __future__ import annotations

import streamlit as st

from dashboard import charts, state, ui
from engine import service
from engine.errors import UserError
from engine.pareto import OBJECTIVES
from engine.recipe import Recipe
from engine.registry import get_spec

db = state.db_path()
s = st.session_state

with st.sidebar:
    st.subheader("Compression")
    st.slider("Pruning level", 0.0, 0.95, step=0.05, key="prune_amount",
              help="Fraction of weights (magnitude) or channels/heads (structured) removed.")
    st.radio("Pruning method", ["structured", "magnitude"], key="prune_method", horizontal=True,
             help="structured removes whole channels/heads (tensors shrink, kernels get faster); magnitude zeroes "
                  "single weights (smaller when stored sparse, but the dense kernel runs as before).")
    can_finetune = get_spec(s["model"]).finetune is not None
    st.slider("Fine-tune epochs after pruning", 0, 10, key="finetune_epochs",
              disabled=not can_finetune or s["prune_amount"] == 0,
              help="Retrain the pruned model briefly on its training data (zeros stay zero). "
                   + ("" if can_finetune else "This model ships no training data."))
    st.select_slider("Quantization bits", options=state.BIT_OPTIONS, key="bits",
                     help="Weights on a grid of at most 2^bits levels per channel. none = float weights.")
    st.radio("Numeric precision", ["fp32", "fp16", "bf16"], key="precision", horizontal=True)
    with st.expander("More options"):
        st.selectbox("Quantization scheme", state.SCHEME_OPTIONS, key="scheme",
                     help="auto: int8 activations (real int8 kernel) at fp32 on CPU, weight-only otherwise.")
        st.selectbox("Granularity", ["per-channel", "per-group"], key="granularity")
        st.number_input("Batch size", 1, 512, key="batch_size")

st.title("Explore compression trade-offs")
recipe = state.recipe_or_stop()

st.caption(f"**{recipe.model}** · {recipe.label()} · recipe `{recipe.key}` · results in `{db}`")
try:
    with st.spinner(f"Measuring {recipe.label()}…"):
        baseline = Recipe(model=recipe.model, batch_size=recipe.batch_size)
        base = service.measure_or_load(baseline, db)
        cur = service.measure_or_load(recipe, db)
except UserError as exc:
    st.error(str(exc))
    st.stop()

r = cur.result
if r.error:
    st.error(f"This configuration failed to run: {r.error}. It is recorded as failed (row #{cur.row_id}); "
             "try another setting.", icon=":material/error:")
else:
    ui.metric_cards(r, None if recipe == baseline else base.result)
    st.caption(("Read from the results store" if cur.from_store else "Measured just now")
               + f" (row #{cur.row_id}, {r.profile} profile). "
               + ("This is the uncompressed fp32 model: the baseline for every delta." if recipe == baseline
                  else "Deltas are against the uncompressed fp32 model."))
    st.session_state["explore_key"] = recipe.key
    ui.provenance(r)

st.subheader("Where this point sits")
ui.ensure_seeded(recipe.model, db)
c1, c2 = st.columns([1, 1])
cost = c1.selectbox("Cost axis", ["latency", "size", "memory", "energy"], key="explore_cost")
data = service.model_rows(recipe.model, db, ["accuracy:max", f"{cost}:min"])
fig = charts.pareto_figure(data["rows"], x=OBJECTIVES[cost][0], y="accuracy", current_key=recipe.key)
st.plotly_chart(fig, key="explore_chart", width="stretch")
n_front = sum(r_["on_frontier"] for r_ in data["rows"])
c2.metric("Configurations measured", len(data["rows"]), help=f"{n_front} on the frontier of accuracy vs this cost")
