"""Compression trade-off dashboard: `streamlit run dashboard/app.py`."""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the defaults download nothing
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import streamlit as st  # noqa: E402

from dashboard import state  # noqa: E402
from engine.hardware import detect  # noqa: E402
from engine.registry import get_spec, model_names  # noqa: E402

st.set_page_config(page_title="Compression trade-offs", page_icon=":material/compress:", layout="wide")
state.init()

PAGES = {
    "explore": st.Page("app_pages/explore.py", title="Explore", icon=":material/tune:", default=True),
    "frontier": st.Page("app_pages/frontier.py", title="Frontier", icon=":material/scatter_plot:"),
    "sweep": st.Page("app_pages/sweep.py", title="Sweep", icon=":material/grid_on:"),
    "learn": st.Page("app_pages/learn.py", title="Learn", icon=":material/school:"),
    "export": st.Page("app_pages/export.py", title="Export", icon=":material/download:"),
}
st.session_state["_pages"] = PAGES

with st.sidebar:
    st.selectbox("Model", model_names(), key="model", help="Registered models (sample models ship offline).")
    spec = get_spec(st.session_state["model"])
    st.caption(f"{spec.task}. Metric: {spec.metric}.")
    hw = detect()
    if hw.gpu_name:
        st.radio("Device", ["cpu", "cuda"], key="device", horizontal=True,
                 help=f"{hw.gpu_name}: latency CUDA-synchronised, energy from NVML's counter.")
    else:
        st.session_state["device"] = "cpu"
    st.caption(f"Machine: {hw.cpu_model}, {hw.logical_cores} cores"
               f"{', ' + ', '.join(hw.cpu_flags) if hw.cpu_flags else ''}. GPU: {hw.gpu_name or 'none'}.")

st.navigation(list(PAGES.values())).run()
