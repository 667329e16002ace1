"""Workshop: a lesson path through the tool (presets, questions, answers from this machine's numbers), and the
class's results pooled into one store."""
from __future__ import annotations

import streamlit as st

from dashboard import controls, lessons, state, ui
from engine import api

db = state.db_path()
s = st.session_state
controls.sidebar()
model = s["model"]
spec = state.model_info(model)
done: set[str] = s.setdefault("lesson_done", set())

st.title("Workshop")
st.caption(f"Seven exercises on **{model}**, in order. Each preset sets the controls and opens the page to look "
           "at; each answer is written from the numbers measured on this machine, so it may differ from your "
           "neighbour's (pool the class's results at the bottom to compare).")
st.progress(len(done & {e.key for e in lessons.EXERCISES}) / len(lessons.EXERCISES),
            text=f"{len(done)} of {len(lessons.EXERCISES)} exercises done")


def recipe_of(preset: lessons.Preset):
    return api.recipe_from_fields(model, via=api.worker(), device=s["device"], **preset.fields)


def facts(ex: lessons.Exercise) -> lessons.Facts:
    """Measure (or read) the exercise's presets, step by step."""
    results = {}
    for p in ex.presets:
        _, m = ui.measure_with_steps(recipe_of(p), db, api.worker())
        results[p.label] = m.result
    front = None
    if ex.key == "frontier":
        data = api.model_rows(model, db, ["accuracy", "latency"], "0.99x")
        allowed = [r for r in data["rows"] if r["eligible"] and r["latency_p50_ms"] is not None]
        best = min(allowed, key=lambda r: r["latency_p50_ms"], default=None)
        front = {"best": best, "eligible": len(allowed),
                 "metric": "fidelity" if spec.metric_kind == "fidelity" else "accuracy"}
    return lessons.Facts(results, api.worker().hardware, front)


def mark(key: str) -> None:
    """Runs before the page does, so the progress bar above counts this click."""
    (done.add if s[f"done_{key}"] else done.discard)(key)


for ex in lessons.EXERCISES:
    with st.expander(("✓ " if ex.key in done else "") + ex.title, expanded=ex is lessons.EXERCISES[0]):
        st.markdown(f"**Goal.** {ex.goal}")
        if ex.needs_finetune and not spec.can_finetune:
            st.info(f"{model} ships no training data to fine-tune on: choose digits-cnn or digits-mlp in the "
                    "sidebar for this exercise.")
        elif ex.presets:
            cols = st.columns(len(ex.presets))
            for col, p in zip(cols, ex.presets):
                if col.button(f"Load preset: {p.label}", key=f"preset_{ex.key}_{p.label}", width="stretch"):
                    with ui.guard("This preset cannot run"):
                        state.request_load(recipe_of(p))
                    s["lesson_active"] = True
                    st.switch_page(s["_pages"][ex.page])
        else:
            if st.button("Open Frontier", key=f"open_{ex.key}"):
                s["lesson_active"] = True
                st.switch_page(s["_pages"][ex.page])
        st.markdown(f"**Question.** {ex.question}")
        if s.get(f"reveal_{ex.key}") and not (ex.needs_finetune and not spec.can_finetune):
            with ui.guard("Could not measure the presets"):
                answer = ex.answer(facts(ex))
            st.success(answer)
        elif st.button("Reveal the answer", key=f"reveal_btn_{ex.key}",
                       help="Measures the presets if they are not in the store yet, then answers from their numbers."):
            s[f"reveal_{ex.key}"] = True
            st.rerun()
        st.markdown(f"**What to notice.** {ex.notice}")
        st.checkbox("Done", value=ex.key in done, key=f"done_{ex.key}", on_change=mark, args=(ex.key,))

st.header("Pool the class's results")
st.markdown("Everyone exports their results; one person (or everyone) imports the others' files. Each row keeps "
            "the machine it was measured on, so laptops never mix: the Frontier page can then draw each machine's "
            "frontier over yours.")
left, right = st.columns(2)
with left:  # the file is written when the button is pressed, not on every run of this page
    st.download_button("Export my results", lambda: api.export_results(db), "my-results.json", "application/json",
                       key="results_export",
                       help="Every row in this dashboard's store, with the machine each was measured on.")
with right:
    upload = st.file_uploader("Import results", type=["json"], key="results_import", max_upload_size=64,
                              help="A file from Export my results (a classmate's). Rows keep their machine; a "
                                   "configuration already stored for that machine keeps the better measurement.")
    if upload is not None:
        if s.get("_imported") != upload.file_id:
            with ui.guard("Could not import this file"):
                s["_import_summary"] = api.import_results(db, upload.getvalue())
            s["_imported"] = upload.file_id
        out = s.get("_import_summary")
        if out:
            st.success(f"{out.rows_in_file} rows read: {out.new_rows} new, {out.updated_rows} replaced a "
                       f"worse measurement, {out.already_as_good} already stored, {out.skipped} skipped. "
                       f"Machines: {', '.join(out.machines) or 'none'}.")
            for why, n in out.skipped_why.items():
                st.caption(f"Skipped {n}: {why}")
