"""Learn: what each technique does, shown on the live model's own weights (for workshops)."""
from __future__ import annotations

import streamlit as st

from dashboard import charts, controls, state, ui
from engine import api
from engine.compress.views import layer_views
from engine.core.recipe import Recipe
from engine.core.units import fmt_speedup

controls.sidebar()
ui.back_to_workshop()
st.title("Learn: what compression does to a model")
recipe = state.recipe_or_stop()
pin = st.session_state.get("pin")
pinned = Recipe.from_dict(pin) if pin and Recipe.from_dict(pin).model == recipe.model else None
pinned = None if pinned == recipe else pinned
st.caption(f"Showing **{recipe.model}** as the controls set it (the same settings as Explore): {recipe.label()}."
           + (f" Pinned A, drawn beside it: {pinned.label()}." if pinned else ""))

st.markdown("""
**Pruning** removes weights. *Magnitude* pruning sets the smallest weights (by absolute value) to exactly zero:
the shape of each layer stays the same, so the ordinary dense matrix multiply still does every multiplication,
zeros included. It makes the model smaller only if it is *stored* in a sparse format, and faster only with a
sparse kernel at very high sparsity. *Structured* pruning removes whole channels (or attention heads): the
layers really become narrower, so every later computation shrinks. Accuracy usually drops more, because whole
features disappear; a short re-training ("fine-tuning") normally wins much of it back.

**Quantization** stores each weight as one of a few levels: with *b* bits, at most 2^b levels per output channel
(or per group of weights), plus one scale and zero point per channel. 8 bits keep 256 levels; 2 bits only 4.
The difference between a weight and its level is the *quantization error* E = W − Q(W), below. The model is
smaller; it is faster only where the hardware has a kernel that computes on the small integers directly
(int8 on most CPUs). Otherwise the weights are turned back into floats before use ("dequantized") and the
speed is that of the float model: this tool then labels the latency *simulated*.

**Numeric precision** is the float format of the computation: fp32 (32 bits), fp16 and bf16 (16 bits each).
bf16 keeps fp32's range with fewer digits; fp16 keeps more digits with a smaller range. Half the bytes to move;
faster only where the processor has instructions for it.
""")

@st.cache_data(max_entries=16, show_spinner=False)
def views_of(recipe_json: str):
    """Per recipe, once: switching layers must not re-run pruning and fine-tuning."""
    return layer_views(Recipe.from_json(recipe_json))


with ui.guard("Could not compare the weights"), st.spinner("Comparing the weights before and after…"):
    views = views_of(recipe.to_json())
    a_views = {v.name: v for v in views_of(pinned.to_json())} if pinned else {}
if not views:
    st.info("This model has no layers to show.")
    st.stop()
names = [v.name for v in views]
name = st.selectbox("Layer", names, key="learn_layer")
v = views[names.index(name)]

a = a_views.get(name)
shrunk = v.shape_after != v.shape_before
c = st.columns(3)
c[0].metric("Shape", "×".join(map(str, v.shape_after)),
            f"was {'×'.join(map(str, v.shape_before))}" if shrunk else None, delta_color="off", delta_arrow="off",
            help="Output channels (or neurons) × inputs. Structured pruning removes whole rows: the layer shrinks.")
c[1].metric("Zero weights", f"{v.zero_fraction:.0%}")
c[2].metric("Distinct values in channel 0", v.levels if v.levels is not None else "all (float)",
            help="With b-bit quantization at most 2^b.")

left, right = st.columns(2)
left.plotly_chart(charts.histogram_before_after(v.before, v.after, f"{name}: weight values before and after",
                                                pinned=None if a is None else a.after),
                  width="stretch", key="learn_hist")
if v.quant_error is not None:
    right.plotly_chart(charts.error_histogram(v.quant_error, f"Quantization error ({recipe.quantize.bits} bits)"),
                       width="stretch", key="learn_err")
    right.caption(f"Largest |E| in the sample: {abs(v.quant_error).max():.2e}. Fewer bits: wider error.")
    if a is not None and a.quant_error is not None:
        right.caption(f"A ({pinned.quantize.bits} bits): largest |E| {abs(a.quant_error).max():.2e}.")
else:
    right.info("Pick a bit width in the sidebar to see the quantization error E = W − Q(W).")
st.plotly_chart(charts.sparsity_heatmap(v.sparsity_map, f"{name}: where the zeros are (dark = all zero)"),
                width="stretch", key="learn_map")
st.caption("Each cell is a block of the weight matrix: rows are output channels (neurons), columns are inputs; "
           "its shade is the fraction of zeros in that block."
           + (" Structured pruning removed whole rows instead of zeroing them, so the smaller matrix has few zeros: "
              f"the change is its shape ({'×'.join(map(str, v.shape_before))} → "
              f"{'×'.join(map(str, v.shape_after))}), which is why it runs faster." if shrunk else ""))

st.page_link(st.session_state["_pages"]["search"],
             label="Which layers can take it? Per-layer sensitivity, on the Search page")
st.caption("Compressing one layer at a time shows which layers cost the most accuracy: those are the ones to "
           "compress least.")

st.subheader("Why smaller is not always faster on this machine")
hw = api.worker().hardware
measured = api.precision_speedups(recipe.model, state.db_path())


def precision_line(precision: str, inferred: str) -> str:
    """Measured here where the store holds the plain model at this precision; the flags' guess otherwise (a
    flag is no promise: an fp16 instruction set does not make PyTorch's fp16 matmuls fast)."""
    if precision in measured:
        at = ", ".join(f"{fmt_speedup(s)} than fp32 at batch {b}" for b, s in measured[precision].items())
        return f"measured here on {recipe.model}: {at}."
    return f"{inferred} *(inferred from the CPU's flags: not measured here yet; pick {precision} on Explore)*"


st.markdown(f"""
- This processor: **{hw.cpu_model}**, {hw.logical_cores} cores; instruction sets that matter here:
  {', '.join(hw.cpu_flags) or 'none detected'}.
- int8: {'VNNI instructions compute int8 dot products directly, so int8 layers can be several times faster.'
        if hw.cpu_int8_vnni else 'no VNNI: int8 runs on AVX2 paths, with smaller gains.'}
- bf16: {precision_line("bf16", 'native instructions (AVX512-BF16 / AMX): bf16 models can run faster than fp32.'
                        if hw.cpu_bf16_native else
                        'not native here: bf16 is converted to fp32 inside kernels, so expect no speed-up.')}
- fp16: {precision_line("fp16", 'native instructions (AVX512-FP16): fp16 may run faster than fp32.'
                        if hw.cpu_fp16_native else
                        'no fast CPU kernel: fp16 is usually *slower* than fp32 on this CPU.')}
- Tiny models (like the digits ones at batch 1) spend most of their time in fixed per-call overhead, not in
  arithmetic, so compressing them changes size far more than speed. Larger models and batches show the kernels.
- Unstructured zeros still go through the dense kernel: no speed-up, whatever the sparsity.
""")
