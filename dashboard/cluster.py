"""The Sweep page's "a Ray cluster": send the grid to a Ray address, follow it per machine, stop it.

The sweep runs in a process of its own (api.start_cluster_sweep); this page only reads what it stored."""
from __future__ import annotations

import os

import streamlit as st

from dashboard import ui
from dashboard.add_model import server_is_local
from engine import api

ADDRESS_ENV = "COMPRESSION_DASH_RAY_ADDRESS"


def page(model: str, db: str, recipes: list, profile: str) -> None:
    configured = os.environ.get(ADDRESS_ENV, "")
    if server_is_local():
        address = st.text_input("Ray address", value=configured, key="sw_ray_address",
                                placeholder="empty: a private Ray instance on this machine",
                                help=f"auto (the cluster `ray start` made on this machine), ray://HOST:10001 or "
                                     f"HOST:6379. Preset it with ${ADDRESS_ENV}.")
    else:  # a shared server reaches only the cluster its operator configured
        address = configured
        st.caption(f"Ray address: {configured or 'a private Ray instance on the server'} (set by ${ADDRESS_ENV}).")
    resources = st.text_input("Each measurement claims", key="sw_ray_resources", placeholder="all CPUs of its node",
                              help='JSON, e.g. {"GPU": 1} to measure on GPU nodes, one GPU per measurement.')
    key = f"_cluster_job_{model}"
    job = st.session_state.get(key)
    running = job is not None and job.progress()["running"]
    st.write(f"**{len(recipes)}** configurations in this grid, measured on every machine type of the cluster "
             "that does not hold them yet.")
    b1, b2 = st.columns(2)
    if b1.button("Run on the cluster", type="primary", disabled=running, key="sw_ray_run"):
        with ui.guard("Could not start the cluster sweep"):
            options = api.ClusterOptions.parse(address.strip() or None, resources.strip() or None, None)
            st.session_state[key] = api.start_cluster_sweep(recipes, db, options, profile)
            st.rerun()
    if b2.button("Stop", key="sw_ray_stop", disabled=not running,
                 help="Ends the sweep at once; every row stored so far is kept, and running again resumes."):
        job.stop()
        st.rerun()
    if job is not None:
        st.fragment(lambda: _progress(key), run_every=2.0)()


def _progress(key: str) -> None:
    now = st.session_state[key].progress()
    if now["error"]:
        st.error(f"Cluster sweep: {ui.plain(now['error'])}")
    for d in now["devices"]:
        st.progress(min(1.0, d["done"] / max(d["total"], 1)),
                    text=f"{d['name']}: {d['done']}/{d['total']}" + (f" ({d['failed']} failed)" if d["failed"] else ""))
    if now["running"]:
        st.caption("Measuring on the cluster… (starting Ray and its workers takes a few seconds)"
                   if not now["devices"] else "Measuring on the cluster…")
    elif not now["error"]:
        st.success("Cluster sweep finished: see each machine's frontier on the Frontier page (Machine).")
