"""Export: take the chosen configuration away as a verified bundle (zip), or just its recipe."""
from __future__ import annotations

import json

import streamlit as st

from dashboard import state, ui
from engine import service
from engine.errors import UserError

db = state.db_path()
st.title("Export the chosen configuration")
recipe = state.recipe_or_stop()
st.write(f"**{recipe.model}** · {recipe.label()} · recipe `{recipe.key}`")

left, right = st.columns([3, 2])
with left:
    text = json.dumps(recipe.to_dict(), indent=2, sort_keys=True)
    st.code(text, language="json")
    st.download_button("Download recipe.json", text.encode(), f"{recipe.model}-{recipe.key}.recipe.json",
                       "application/json", key="exp_recipe")
with right:
    st.markdown("""
**The bundle** holds the recipe with the metrics measured for it, the compressed model as ONNX (checked in
ONNX Runtime on the evaluation data), PyTorch weights as safetensors, the compressed storage file that
the size figure counts, a model card and a self-contained HTML report.

Re-apply it from the command line or in CI:
""")
    st.code("python -m engine apply --recipe recipe.json", language="bash")
    if st.button("Build bundle", type="primary", key="exp_build"):
        try:
            with st.spinner("Exporting to ONNX and verifying it in ONNX Runtime…"):
                data, summary = service.bundle_zip(recipe, db)
            st.session_state["_bundle"] = (recipe.key, data, summary)
        except UserError as exc:
            st.error(str(exc))
    built = st.session_state.get("_bundle")
    if built and built[0] == recipe.key:
        _, data, summary = built
        st.success(f"Verified: accuracy {summary['onnx_accuracy']:.4f} in ONNX Runtime vs "
                   f"{summary['accuracy']:.4f} in PyTorch. compressed.bin {ui.fmt_bytes(summary['size_bytes'])}, "
                   f"{summary['compression_ratio']:.1f}x smaller than fp32.")
        for w in summary["warnings"]:
            st.warning(w)
        st.download_button("Download bundle (.zip)", data, f"{recipe.model}-{recipe.key}.zip", "application/zip",
                           key="exp_zip")
