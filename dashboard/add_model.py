"""The sidebar's "Add a model": a folder or hub id on this machine (only while the server listens on localhost,
since the path is read on the server), or an upload of a zipped Hugging Face folder with its evaluation data."""
from __future__ import annotations

import streamlit as st

from dashboard import state
from engine import api
from engine.core.axes import TASKS
from engine.models.upload import MAX_UPLOAD_BYTES

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def server_is_local() -> bool:
    return str(st.get_option("server.address") or "") in LOCAL_HOSTS


def form() -> None:
    with st.expander("Add a model"):
        task = st.selectbox("Task", TASKS.names(), key="add_task", help="What the model does; decides how it is scored.")
        st.caption(f"Evaluation data: {TASKS.get(task).eval_help}.")
        local, upload = st.tabs(["On this machine", "Upload"])
        with local:
            if not server_is_local():
                st.caption("Paths on the server are accepted only while it listens on localhost: upload instead.")
            else:
                source = st.text_input("Folder or hub id", key="add_source",
                                       help="A Transformers folder (safetensors, no custom code), or a hub id "
                                            "where the network is allowed (HF_HUB_OFFLINE=0). py:<file.py> adds "
                                            "a Python file implementing the model contract (see docs/own-models.md).")
                data = st.text_input("Evaluation file or folder", key="add_eval",
                                     disabled=source.strip().startswith("py:"))
                if st.button("Add", key="add_local", disabled=not source.strip()):
                    text = source.strip()
                    _add(lambda: api.model_name(text if text.startswith("py:") else f"hf:{text}",
                                                None if text.startswith("py:") else task,
                                                None if text.startswith("py:") else data.strip() or None))
        with upload:
            model_zip = st.file_uploader("Zipped model folder", type=["zip"], key="add_zip",
                                         max_upload_size=MAX_UPLOAD_BYTES // 2 ** 20,
                                         help="config.json, *.safetensors and the tokenizer or image processor "
                                              "files; Python files are refused.")
            kinds = list(TASKS.get(task).upload_kinds)
            eval_file = st.file_uploader("Evaluation data" + (" (zipped class folders)" if kinds == ["zip"] else ""),
                                         type=kinds, key="add_eval_file")
            if st.button("Add upload", key="add_upload", disabled=not (model_zip and eval_file)):
                _add(lambda: api.add_uploaded_model(model_zip.getvalue(), eval_file.name, eval_file.getvalue(), task,
                                                    state.db_path()))


def _add(name_of) -> None:
    """Name the model (checked, hashed), have the measuring process load it, and make it the current model."""
    try:
        with st.spinner("Checking the model and its evaluation data…"):
            name = name_of()
            state.model_info(name)
    except api.UserError as exc:
        st.error(str(exc))
        return
    st.session_state["added_models"] = [*st.session_state.get("added_models", []), name]
    st.session_state["_next_model"] = name
    st.rerun()
