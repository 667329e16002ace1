"""Explore: move the three controls, see what the engine measured, and where the point sits."""
from __future__ import annotations

import streamlit as st

from dashboard import state, ui
from engine import api
from engine.core.recipe import RUNTIMES

db = state.db_path()
s = st.session_state

with st.sidebar:
    st.subheader("Compression")
    st.slider("Pruning level", 0.0, 0.95, step=0.05, key="prune_amount",
              help="Fraction of weights (magnitude) or channels/heads (structured) removed.")
    st.radio("Pruning method", ["structured", "magnitude"], key="prune_method", horizontal=True,
             help="structured removes whole channels/heads (tensors shrink, kernels get faster); magnitude zeroes "
                  "single weights (smaller when stored sparse, but the dense kernel runs as before).")
    can_finetune = api.check_model(s["model"]).finetune is not None
    st.slider("Fine-tune epochs after pruning", 0, 10, key="finetune_epochs",
              disabled=not can_finetune or s["prune_amount"] == 0,
              help="Retrain the pruned model briefly on its training data (zeros stay zero). "
                   + ("" if can_finetune else "This model ships no training data."))
    st.select_slider("Quantization bits", options=state.BIT_OPTIONS, key="bits",
                     help="Weights on a grid of at most 2^bits levels per channel. none = float weights.")
    st.radio("Numeric precision", ["fp32", "fp16", "bf16"], key="precision", horizontal=True)
    st.radio("Runtime", list(RUNTIMES), key="runtime", horizontal=True,
             help="eager: PyTorch as the engine runs it. onnxruntime: the compressed model exported to ONNX "
                  "(int8 quantized by ONNX Runtime's own quantizer) and measured in ONNX Runtime, the file you "
                  "would deploy. Speed-ups are always against the uncompressed model in eager PyTorch.")
    with st.expander("More options"):
        st.selectbox("Quantization scheme", state.SCHEME_OPTIONS, key="scheme",
                     help="auto: int8 activations (real int8 kernel) at fp32 on CPU, weight-only otherwise.")
        st.selectbox("Granularity", ["per-channel", "per-group"], key="granularity")
        st.number_input("Batch size", 1, 512, key="batch_size")

st.title("Explore compression trade-offs")
recipe = state.recipe_or_stop()
worker = api.worker()
st.caption(f"**{recipe.model}** · {recipe.label()} · recipe `{recipe.key}`")

with ui.guard("Could not measure this configuration"):
    fresh = st.session_state.pop("_remeasure", None) == recipe.key  # asked on the previous run: measure first
    export = " — exporting to ONNX first takes a few seconds" if recipe.runtime == "onnxruntime" else ""
    with st.spinner(f"Measuring {recipe.label()} {'again ' if fresh else ''}(in the measuring process{export})…"):
        base = api.baseline_of(recipe, db, via=worker)
        cur = base if recipe == recipe.baseline() and not fresh else \
            api.measure_or_load(recipe, db, via=worker, fresh=fresh)

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
        st.session_state["_remeasure"] = recipe.key
        st.rerun()
    if r.contended:
        st.info("Measured while the machine was busy: the absolute times are not those of a quiet machine, so this "
                "point is drawn hollow and kept off the frontier. Close other work and press **Re-measure**.")
    st.session_state["explore_key"] = recipe.key
    ui.provenance(r)

st.subheader("Where this point sits")
with ui.guard("Could not start the starter grid"):
    status = ui.job_status(f"seed-{recipe.model}")
    if status is None:
        ui.start_background(f"seed-{recipe.model}", api.seed_grid(recipe.model), db)
cost = st.selectbox("Against", ["latency", "speedup", "size", "memory", "energy"], key="explore_cost",
                    help="speedup: paired with the uncompressed model, so it holds when the machine is busy.")
with ui.guard("Could not draw the frontier"):
    ui.live_frontier(recipe.model, db, f"seed-{recipe.model}", cost, recipe.key, r.metric_kind, "explore_chart",
                     batch_size=recipe.batch_size)
