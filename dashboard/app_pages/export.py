"""Export: take the chosen configuration away as a recipe file (the full bundle arrives with export)."""
from __future__ import annotations

import json

import streamlit as st

from dashboard import state

st.title("Export the chosen configuration")
recipe, problem = state.safe_recipe()
if problem:
    st.error(f"This combination cannot run: {problem}")
    st.stop()
st.write(f"**{recipe.model}** · {recipe.label()} · recipe `{recipe.key}`")
text = json.dumps(recipe.to_dict(), indent=2, sort_keys=True)
st.code(text, language="json")
st.download_button("Download recipe.json", text.encode(), f"{recipe.model}-{recipe.key}.recipe.json",
                   "application/json", type="primary")
args = [f"--model {recipe.model}"]
if recipe.prune.method != "none":
    args += [f"--prune {recipe.prune.amount}", f"--prune-method {recipe.prune.method}"]
if recipe.quantize.bits is not None:
    args += [f"--bits {recipe.quantize.bits}", f"--scheme {recipe.quantize.scheme}"]
args += [f"--precision {recipe.precision}"]
st.caption("Re-measure the same configuration from the command line:")
st.code("python -m engine run " + " ".join(args) + " --json", language="bash")
st.info("The full bundle (ONNX model, PyTorch weights, compressed storage file and report) is built by the "
        "export step; this page will offer it as one download.", icon=":material/construction:")
