"""The compression controls, shared by every page that shows one configuration (Explore, Learn, Workshop):
one set of session-state keys, so a change on one page is the configuration on all of them."""
from __future__ import annotations

import streamlit as st

from dashboard import state
from engine.core.recipe import GRANULARITIES, PRECISIONS


def sidebar() -> None:
    """The controls in the sidebar, with a reset to the uncompressed model."""
    s = st.session_state
    with st.sidebar:
        st.subheader("Compression")
        st.slider("Pruning level", 0.0, 0.95, step=0.05, key="prune_amount",
                  help="Fraction of weights (magnitude) or channels/heads (structured) removed.")
        st.radio("Pruning method", state.PRUNE_METHOD_OPTIONS, key="prune_method", horizontal=True,
                 help="structured removes whole channels/heads (tensors shrink, kernels get faster); magnitude zeroes "
                      "single weights (smaller when stored sparse, but the dense kernel runs as before).")
        can_finetune = state.model_info(s["model"]).can_finetune
        st.slider("Fine-tune epochs after pruning", 0, 10, key="finetune_epochs",
                  disabled=not can_finetune or s["prune_amount"] == 0,
                  help="Retrain the pruned model briefly on its training data (zeros stay zero). "
                       + ("" if can_finetune else "This model ships no training data."))
        st.select_slider("Quantization bits", options=state.BIT_OPTIONS, key="bits",
                         help="Weights on a grid of at most 2^bits levels per channel. none = float weights.")
        st.radio("Numeric precision", list(PRECISIONS), key="precision", horizontal=True)
        st.radio("Runtime", state.RUNTIME_OPTIONS, key="runtime", horizontal=True,
                 help="eager: PyTorch as the engine runs it. compile: the same model through torch.compile "
                      "(compiling takes seconds to a minute, timed apart from the latency). onnxruntime: the "
                      "compressed model exported to ONNX (int8 quantized by ONNX Runtime's own quantizer) and measured "
                      "in ONNX Runtime, the file you would deploy (4/8-bit weight-only on its MatMulNBits kernel). "
                      "openvino: the model as OpenVINO IR (int8 by NNCF post-training quantization, 4/8-bit "
                      "weight-only by NNCF weight compression) run by OpenVINO's CPU plugin with its latency hint. "
                      "Speed-ups are always against the uncompressed model in eager PyTorch.")
        with st.expander("More options"):
            st.selectbox("Quantization scheme", state.SCHEME_OPTIONS, key="scheme",
                         help="auto: int8 activations (real int8 kernel) at fp32 on CPU, weight-only otherwise. "
                              "codebook: Deep Compression's weight sharing, 2^bits k-means centroids per layer, "
                              "stored as entropy-coded indices (one codebook per layer, whatever the granularity).")
            st.selectbox("Granularity", list(GRANULARITIES), key="granularity",
                         help="per-layer goes with the codebook scheme.")
            st.number_input("Batch size", 1, 512, key="batch_size")
        note = state.extra_note()
        if note:  # a loaded recipe (from a search, say) with settings no control above shows
            st.caption(f"Also part of the loaded recipe: {note}. They stay as you move the controls.")
            if st.button("Drop these", key="drop_extra", width="stretch",
                         help="Back to what the controls above describe, nothing else."):
                s[state.EXTRA_KEY] = None
                st.rerun()
        if st.button("Reset to baseline", key="reset_baseline", width="stretch",
                     help="Back to the uncompressed fp32 model in eager PyTorch (the reference of every change)."):
            state.reset()
            st.rerun()
