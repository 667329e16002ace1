"""Compression trade-off dashboard: `compression-dash dashboard` (or `streamlit run dashboard/app.py` where the
package is installed, `pip install -e .` in a checkout)."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the defaults download nothing
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from engine.jobs.worker import shared

if shared().pid is None:  # first thing: torch loads in the measuring process while this one imports the rest
    shared().start()

import streamlit as st

from dashboard import add_model, pages, state, ui
from engine import api
from engine.models.user import display_name

# No icons: the icon font behind ":material/...:" names is fetched from the network (an offline room has none),
# and emoji need a colour font that not every machine has.
st.set_page_config(page_title="Compression trade-offs", layout="wide")
ui.style()
state.init()
if "_next_model" in st.session_state:  # a model just added: chosen before the picker is drawn
    st.session_state["model"] = st.session_state.pop("_next_model")
if st.session_state.get("_preloaded") != st.session_state["model"]:  # loaded while this page draws
    api.worker().start(preload=st.session_state["model"])
    st.session_state["_preloaded"] = st.session_state["model"]

PAGES = {p.key: st.Page(p.path, title=p.title, default=p.default) for p in pages.PAGES}
st.session_state["_pages"] = PAGES

with st.sidebar:
    try:
        choices = api.model_choices(state.db_path())
    except api.UserError:  # a damaged store: said once, below, where the store is opened
        choices = api.model_choices(":none:")
    for name in [*st.session_state.get("added_models", []), st.session_state["model"]]:
        if name not in choices:
            choices.append(name)
    st.selectbox("Model", choices, key="model", format_func=display_name,
                 help="The sample models (they ship offline), and every model you added or the store holds rows of.")
    add_model.form()
    with ui.guard("This model cannot be loaded"):
        spec = state.model_info(st.session_state["model"])
    st.caption(f"{spec.task}. Metric: {spec.metric}.")
    hw = api.worker().hardware  # the measuring process's machine (this process never loads torch)
    if hw.gpu_name:
        st.radio("Device", ["cpu", "cuda"], key="device", horizontal=True,
                 help=f"{hw.gpu_name}: latency CUDA-synchronised, energy from NVML's counter.")
    else:
        st.session_state["device"] = "cpu"
    st.caption(f"Machine: {hw.cpu_model}, {hw.logical_cores} cores"
               f"{', ' + ', '.join(hw.cpu_flags) if hw.cpu_flags else ''}. GPU: {hw.gpu_name or 'none'}.")

with ui.guard("The results store cannot be used"):
    api.open_store(state.db_path())  # created here; a damaged or foreign file: one message, not one per page
st.navigation(list(PAGES.values())).run()
