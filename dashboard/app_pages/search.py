"""Search: let the engine look for the cheapest recipes above an accuracy floor, and see which layers are fragile.

Both jobs run in processes of their own (api.start_search, api.start_sensitivity): this page only starts them,
follows their progress files and reads what they stored."""
from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from dashboard import charts, state, ui
from engine import api
from engine.core.recipe import Recipe
from engine.core.units import fmt_bytes, fmt_energy, fmt_speedup

OBJECTIVE_NAMES = {"relative_latency": "speed-up", "size": "stored size", "energy": "energy per inference",
                   "memory": "peak memory", "params": "non-zero parameters"}


def trials_text(n: int) -> str:
    return f"{n} trial{'' if n == 1 else 's'}"


def shown(name: str, value: float | None) -> str:
    """An objective's value as a person reads it (the search minimises 1 / speed-up, bytes, joules)."""
    if value is None:
        return "n/a"
    if name == "relative_latency":
        return fmt_speedup(1.0 / value) if value > 0 else "n/a"
    if name in ("size", "memory"):
        return fmt_bytes(value)
    if name == "energy":
        return fmt_energy(value)
    if name == "params":
        return f"{int(value):,} parameters"
    return f"{value:.4g}"


db = state.db_path()
model = st.session_state["model"]
pages = st.session_state["_pages"]
ss = st.session_state
st.title(f"Search · {model}")
with ui.guard("This model cannot be loaded"):
    metric_kind = state.model_info(model).metric_kind
metric = "fidelity" if metric_kind == "fidelity" else "accuracy"
st.caption("The search tries recipes for you: pruning method and amount, a separate amount for the most sensitive "
           "layers, bit width, precision and a short re-training where the model has training data. It uses "
           f"Optuna's multi-objective TPE sampler: it minimises the two costs you pick while treating {metric} as "
           "a constraint, so it only keeps recipes at or above your floor (the ones below still teach it where not "
           "to look). Its first trials are warm-started from each layer's sensitivity (below): the fragile layers "
           "are compressed lightly, the others hard. Every trial is an ordinary stored measurement, so it also "
           "appears on the Frontier page, and the search itself is kept in the results file: a stopped search "
           "resumes where it left off.")

# --- the search -----------------------------------------------------------------------------------------
c = st.columns(2)
floor = c[0].number_input(f"Minimum {metric} (× baseline)", 0.90, 1.00, 0.99, 0.005, format="%.3f", key="se_min",
                          help=f"0.99: keep at least 99 % of the uncompressed model's {metric}. Each floor is a "
                               "search of its own (and so are other objectives).")
objectives = c[1].multiselect("Objectives (two, both minimised)", list(OBJECTIVE_NAMES), default=["relative_latency", "size"],
                              max_selections=2, key="se_objectives", format_func=OBJECTIVE_NAMES.get,
                              help="speed-up: paired with the uncompressed model, so trials measured minutes apart "
                                   "on a busy machine still compare. The others are costs per model or inference.")
c = st.columns(2)
rule = c[0].radio("Stop after", ["trials", "time budget"], horizontal=True, key="se_rule",
                  format_func={"trials": "a number of trials", "time budget": "a time budget"}.get)
if rule == "trials":
    trials = int(c[1].number_input("Trials in all", 1, 500, 30, key="se_trials",
                                   help="The search's total, earlier runs of the same search included: after it "
                                        "finished, raise it to go on."))
    budget_s = None
else:
    trials = None
    budget_s = 60.0 * c[1].number_input("Minutes for this run", 0.5, 600.0, 5.0, 0.5, key="se_minutes",
                                        help="The trial under way when the time is up is finished first.")
profile = st.radio("Measurement profile", ["quick", "thorough"], horizontal=True, key="se_profile",
                   help="quick: interactive timing (~0.5 s a point); thorough: longer windows, steadier numbers.")

key, sens_key = f"_search_{model}", f"_sensitivity_{model}"
run = ss.get(key)
running = run is not None and run["job"].running
sens_running = ss.get(sens_key) is not None and ss[sens_key]["job"].running
if len(objectives) != 2:
    st.warning("Choose two objectives: the search looks for the best trade-offs between them.")
elif sens_running:
    st.caption("A sensitivity scan is running (below): the search can start once it ends, so neither slows the "
               "other's timing.")
b1, b2 = st.columns(2)
if b1.button("Run search", type="primary", key="se_run", width="stretch",
             disabled=running or sens_running or len(objectives) != 2):
    with ui.guard("Could not start the search"):
        job = api.start_search(model, db, f"{round(floor, 3)}x", ",".join(f"{o}:min" for o in objectives),
                               trials=trials, budget_s=budget_s, profile=profile)
    ss[key] = {"job": job, "started": time.time(), "budget_s": budget_s, "stopped": False}
    st.rerun()
if b2.button("Stop", key="se_stop", width="stretch", disabled=not running,
             help="Ends the search at once. Every trial measured so far is stored; Run search with the same "
                  "settings resumes where it left off."):
    run["job"].stop()
    run["stopped"] = True
    st.rerun()


def load(recipe: dict) -> None:
    """Into the controls, then Explore (as a clicked Frontier point is)."""
    with ui.guard("Could not load that recipe"):
        state.request_load(Recipe.from_dict(recipe))
    st.switch_page(pages["explore"])


def found_table(summary: dict) -> None:
    """The recipes found so far, best first, each with its numbers and a button to open it in Explore."""
    found = summary.get("found") or []
    if not found:
        if summary.get("trials_done"):
            st.caption(f"None of the {trials_text(summary['trials_done'])} so far kept {metric} at "
                       f"{summary['threshold']:.3f} or more.")
        return
    names = summary["objectives"]
    base = summary.get("baseline_accuracy")
    st.markdown(f"**Found: {len(found)} recipe{'s' if len(found) > 1 else ''}**, none better than another in both "
                f"{OBJECTIVE_NAMES[names[0]]} and {OBJECTIVE_NAMES[names[-1]]}; best {OBJECTIVE_NAMES[names[0]]} "
                "first.")
    for i, f in enumerate(found):
        left, right = st.columns([3, 1], vertical_alignment="center")
        lost = "" if base is None else f" ({(f['accuracy'] - base) * 100:+.1f} pts)"
        left.markdown(f"**{i + 1}.** {f['label']}  \n{metric} {f['accuracy']:.3f}{lost} · "
                      + " · ".join(shown(n, f.get(n)) for n in names))
        if right.button("Load in Explore", key=f"se_load_{f['row_id']}", width="stretch"):
            load(f["recipe"])


def search_status() -> None:
    """Progress while the search runs; how it ended, and what it found, once it has."""
    now = ss[key]
    job = now["job"]
    alive = job.running
    summary = job.progress() if alive else (job.result() or job.progress())
    elapsed = time.time() - now["started"]
    if alive:
        if summary is None or "feasible" not in summary:
            st.progress(0.0, text=f"Starting ({elapsed:.0f} s): " + (summary or {}).get(
                "phase", "loading the model") + " (the first search of a model measures each layer's sensitivity).")
        else:
            done, feasible = summary["trials_done"], summary["feasible"]
            if summary.get("trials_target"):
                value = done / summary["trials_target"]
                text = f"{done} of {trials_text(summary['trials_target'])} done"
            else:
                value = elapsed / summary["budget_s"]
                text = (f"{elapsed / 60:.1f} of {summary['budget_s'] / 60:g} min, {trials_text(done)}"
                        + (" (finishing the trial under way)" if value >= 1 else ""))
            st.progress(min(1.0, value), text=f"{text} · {feasible} at or above the floor "
                                              f"({summary['threshold']:.3f}) · {summary['failed']} failed")
            if summary.get("phase"):
                st.caption(f"Now: {summary['phase']}")
    elif job.error():
        st.error(f"The search stopped with an error: {ui.plain(job.error())}")
    else:
        done = summary["trials_done"] if summary else 0
        if now["stopped"]:
            st.info(f"Stopped after {trials_text(done)}: every trial measured is stored (Frontier page). Run "
                    "search with the same settings to resume where it left off.")
        else:
            st.success(f"Search done: {trials_text(done)} in all, {summary['feasible'] if summary else 0} at or above "
                       f"the floor ({summary['threshold']:.3f} {metric})." if summary else "Search done.")
    if summary is not None and "feasible" in summary:
        found_table(summary)
    if alive != now["was_running"]:  # it ended since the last full run: the buttons catch up
        st.rerun()


if run is not None:
    run["was_running"] = running
    st.fragment(search_status, run_every=2.0 if running else None)()
    st.page_link(pages["frontier"], label="Every trial is a point on the Frontier page")

# --- per-layer sensitivity -------------------------------------------------------------------------------
st.header("Per-layer sensitivity")
st.markdown(f"Each cell: the {metric} lost when **only this layer** is compressed this much, the rest of the model "
            "left as it is. Layers at the top are the ones to compress least; those at the bottom can take more. "
            "Beside it, each layer's share of the model's size and time: a layer that is cheap to compress *and* "
            "holds much of the size or time is where compression pays.")
c = st.columns(2)
technique = c[0].radio("Technique", ["prune", "quantize"], horizontal=True, key="se_sens_technique",
                       format_func={"prune": "pruning", "quantize": "quantization"}.get)
method = c[1].radio("Pruning method", ["magnitude", "structured"], horizontal=True, key="se_sens_method",
                    disabled=technique != "prune",
                    help="magnitude zeroes single weights; structured removes whole channels or heads.")
with ui.guard("Could not read the stored sensitivity"):
    stored = api.stored_sensitivity(model, db, technique, method)
sens = ss.get(sens_key)
if st.button("Measure sensitivity" if stored is None else "Measure sensitivity again", key="se_sens_run",
             disabled=sens_running or running,
             help="Compresses one layer at a time at each level and evaluates the model: seconds for the digits "
                  "models, minutes for a transformer." + (" Waits for the search to end." if running else "")):
    with ui.guard("Could not start the sensitivity scan"):
        job = api.start_sensitivity(model, db, technique, method=method)
    ss[sens_key] = {"job": job, "started": time.time(), "what": f"pruning ({method})"
                    if technique == "prune" else "quantization"}
    st.rerun()


def sensitivity_status() -> None:
    """'Layer i of n' while the scan runs; its error if it failed."""
    now = ss[sens_key]
    job = now["job"]
    if job.running:
        p = job.progress()
        if p is None or "layer" not in p:
            st.progress(0.0, text=f"Loading the model ({time.time() - now['started']:.0f} s)…")
        else:
            st.progress(p["done"] / max(p["total"], 1),
                        text=f"Measuring {now['what']}: layer {p['done'] + 1} of {p['total']} ({p['layer']})")
    elif job.error():
        st.error(f"The sensitivity scan failed: {ui.plain(job.error())}")
    if job.running != now["was_running"]:  # it ended: the heatmap and the buttons catch up
        st.rerun()


if sens is not None:
    sens["was_running"] = sens_running
    st.fragment(sensitivity_status, run_every=2.0 if sens_running else None)()

if stored is None:
    if not sens_running:
        st.info(f"Not measured yet for {model} on this machine with these settings: press **Measure sensitivity**. "
                "(A search measures pruning sensitivity by itself the first time.)")
else:
    st.plotly_chart(charts.sensitivity_heatmap(stored), width="stretch", key="se_heatmap")
    st.caption(f"Numbers are points of {metric} lost (blue: a little gained). Uncompressed: "
               f"{stored['baseline_accuracy']:.4f}. Blank cells failed (hover for why). Measured in "
               f"{stored.get('wall_s') or 0:.1f} s; time share from {stored.get('latency_share_source', 'n/a')}.")
    by_name = {row["layer"]: row for row in stored["layers"]}
    st.dataframe(pd.DataFrame([{
        "layer": name, "parameters": by_name[name]["params"],
        "size share": f"{by_name[name]['size_share'] * 100:.1f} %",
        "time share": f"{by_name[name]['latency_share'] * 100:.1f} %",
        "mean lost": "n/a" if by_name[name]["mean_drop"] is None else f"{by_name[name]['mean_drop'] * 100:.1f} pts"}
        for name in stored["ranking"] if name in by_name]), hide_index=True, width="stretch", key="se_shares")
