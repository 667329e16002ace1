"""Export: take the chosen configuration away as a verified bundle (zip), or just its recipe."""
from __future__ import annotations

import json

import streamlit as st

from dashboard import state, ui
from engine import api
from engine.core.units import fmt_bytes, fmt_ms, fmt_speedup

db = state.db_path()
ui.back_to_workshop()
st.title("Export the chosen configuration")
recipe = state.recipe_or_stop()
st.write(f"**{recipe.model}** · {recipe.label()} · recipe `{recipe.key}`")

left, right = st.columns([3, 2])
with left:
    text = json.dumps(recipe.to_dict(), indent=2, sort_keys=True)
    st.code(text, language="json", wrap_lines=True)
    st.download_button("Download recipe.json", text.encode(), f"{recipe.model}-{recipe.key}.recipe.json",
                       "application/json", key="exp_recipe")
with right:
    st.markdown("""
**The bundle** holds the recipe with the metrics measured for it, the compressed model as ONNX (checked in
ONNX Runtime on the evaluation data), PyTorch weights as safetensors, the compressed storage file that
the size figure counts, a model card and a self-contained HTML report.

Unzip it, then check every file and re-create the model from the command line or in CI:
""")
    st.code(f"unzip {recipe.model}-{recipe.key}.zip\npython -m engine apply --recipe {recipe.model}-{recipe.key}/",
            language="bash", wrap_lines=True)
    if st.button("Build bundle", type="primary", key="exp_build"):
        with ui.guard("Could not build the bundle"), \
                st.spinner("Exporting to ONNX and verifying it in ONNX Runtime…"):
            data, summary = api.bundle_zip(recipe, db, via=api.worker())
        st.session_state["_bundle"] = (recipe.key, data, summary)
    built = st.session_state.get("_bundle")
    if built and built[0] == recipe.key:
        _, data, summary = built
        name = "fidelity" if summary["metric_kind"] == "fidelity" else "accuracy"
        lat = summary["latency_ms"] or {}
        st.success(f"Bundle built and checked: the exported model.onnx reproduces the PyTorch {name} "
                   f"({summary['onnx_accuracy']:.4f} vs {summary['accuracy']:.4f}). What you are exporting: "
                   f"{name} **{summary['accuracy']:.4f}**, latency {fmt_ms(lat.get('p50'))} "
                   f"({fmt_speedup(summary['speedup'])}), compressed.bin {fmt_bytes(summary['size_bytes'])} "
                   f"({summary['compression_ratio']:.1f}x smaller than fp32).")
        for w in summary["warnings"]:
            st.warning(w)
        caveats = summary["caveats"]
        if caveats:
            with st.expander(f"Caveats recorded with it ({len(caveats)})"):
                for w in caveats:
                    st.markdown(f"- {w}")
        st.download_button("Download bundle (.zip)", data, f"{recipe.model}-{recipe.key}.zip", "application/zip",
                           key="exp_zip")
