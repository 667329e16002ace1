"""The Search page in a real Streamlit AppTest (real search and sensitivity processes, real store), and the
sensitivity heatmap on a hand-made result."""
from __future__ import annotations

import time

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import charts
from engine import api
from tests.conftest import ROOT

APP = str(ROOT / "dashboard" / "app.py")
MODEL = "digits-mlp"  # the smallest model: one search trial takes tens of seconds on a laptop


def hand_made(technique: str = "prune") -> dict:
    levels = [0.3, 0.7] if technique == "prune" else [8, 2]
    return {"model": "m", "technique": technique, "method": "magnitude", "levels": levels,
            "baseline_accuracy": 0.97, "metric_kind": "accuracy", "ranking": ["b", "a"],
            "layers": [{"layer": "a", "params": 10, "size_share": 0.25, "latency_share": 0.5,
                        "drops": {str(levels[0]): 0.0, str(levels[1]): None}, "mean_drop": 0.0,
                        "errors": {str(levels[1]): "RuntimeError: cannot prune this layer"}},
                       {"layer": "b", "params": 30, "size_share": 0.75, "latency_share": 0.125,
                        "drops": {str(levels[0]): 0.02, str(levels[1]): 0.30}, "mean_drop": 0.16, "errors": {}}],
            "latency_share_source": "hooks", "wall_s": 0.1, "measured_at": 0.0}


def test_heatmap_puts_the_most_sensitive_layer_on_top_in_points():
    fig = charts.sensitivity_heatmap(hand_made())
    hm = fig.data[0]
    assert list(hm.y) == ["b", "a"] and list(hm.x) == ["30 %", "70 %"]
    assert fig.layout.yaxis.autorange == "reversed"  # first row drawn on top
    assert list(hm.z[0]) == pytest.approx([2.0, 30.0]) and hm.z[1][1] is None  # points; a failed probe is blank
    assert hm.zmin == -hm.zmax and hm.zmax == pytest.approx(30.0)  # no change is the middle (white)
    assert dict(hm.colorscale)[0.5].lower() == "#ffffff"
    assert "failed: RuntimeError: cannot prune this layer" in hm.hovertext[1][1]
    assert "size share 75.0 %" in hm.hovertext[0][0] and "time share 12.5 %" in hm.hovertext[0][0]
    assert list(charts.sensitivity_heatmap(hand_made("quantize")).data[0].x) == ["8-bit", "2-bit"]


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("search") / "results.db")


@pytest.fixture
def app(db, monkeypatch) -> AppTest:
    monkeypatch.setenv("COMPRESSION_DASH_DB", db)
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["model"] = MODEL  # opened straight on Search: Explore would start measuring a starter grid
    at.switch_page("app_pages/search.py").run()
    assert not at.exception, at.exception
    assert at.title[0].value == f"Search · {MODEL}"
    return at


def wait(at: AppTest, key: str, timeout: float) -> None:
    """Re-run the page (as the browser's refresh would) until the job under `key` has ended."""
    job = at.session_state[key]["job"]
    deadline = time.time() + timeout
    while job.running:
        assert time.time() < deadline, job.progress()
        time.sleep(1.0)
    at.run()
    assert not at.exception, at.exception


def test_sensitivity_scan_draws_the_heatmap_and_bad_choices_are_refused(app, db):
    assert any("Not measured yet" in i.value for i in app.info)
    app.button(key="se_sens_run").click().run()
    assert not app.exception and app.button(key="se_sens_run").disabled  # one scan at a time
    assert app.button(key="se_run").disabled  # and no search meanwhile: they would slow each other's timing
    wait(app, f"_sensitivity_{MODEL}", 60)
    assert not app.error
    assert len(app.get("plotly_chart")) == 1
    shares = app.dataframe[0].value
    stored = api.stored_sensitivity(MODEL, db, "prune", "magnitude")
    assert list(shares["layer"]) == stored["ranking"] and shares["size share"].str.endswith("%").all()
    app.radio(key="se_sens_technique").set_value("quantize").run()
    assert app.radio(key="se_sens_method").disabled and not app.get("plotly_chart")
    assert any("Not measured yet" in i.value for i in app.info)

    app.multiselect(key="se_objectives").set_value(["relative_latency"]).run()
    assert any("Choose two objectives" in w.value for w in app.warning) and app.button(key="se_run").disabled


def test_search_runs_in_its_own_process_finds_a_recipe_and_loads_it(app, db):
    app.number_input(key="se_trials").set_value(1)
    app.button(key="se_run").click().run()
    assert not app.exception and not app.error
    assert app.button(key="se_stop").disabled is False and app.button(key="se_run").disabled
    wait(app, f"_search_{MODEL}", 120)
    assert not app.error, [e.value for e in app.error]
    assert any("Search done: 1 trial in all" in s.value for s in app.success)
    summary = app.session_state[f"_search_{MODEL}"]["job"].result()
    found = summary["found"]
    assert found and summary["objectives"] == ["relative_latency", "size"]
    rows = {r["id"] for r in api.results(db, MODEL)["rows"]}
    assert found[0]["row_id"] in rows  # an ordinary stored row: on the Frontier page too
    shown = " ".join(m.value for m in app.markdown)
    assert found[0]["label"] in shown and ("faster" in shown or "slower" in shown) and "KiB" in shown

    app.button(key=f"se_load_{found[0]['row_id']}").click().run()
    assert not app.exception
    assert "Explore" in app.title[0].value
    assert app.session_state["recipe_extra"]["model"] == MODEL  # the search's own layer amounts and re-training
    assert any(found[0]["label"] in c.value for c in app.caption)  # the very recipe found, not a cousin of it


def test_stop_ends_the_search_at_once_and_the_server_never_loads_torch(db):
    """Heatmap drawn from the store, a search started and stopped (it says it resumes), all in a fresh process
    like the server's: that process imports none of the heavy libraries."""
    import os
    import subprocess
    import sys

    script = f"""
import sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({APP!r}, default_timeout=120)
at.session_state["model"] = {MODEL!r}
at.switch_page("app_pages/search.py").run()
assert at.get("plotly_chart"), "no heatmap"
at.multiselect(key="se_objectives").set_value(["memory", "params"]).run()  # a search of its own
at.button(key="se_run").click().run()
job = at.session_state["_search_{MODEL}"]["job"]
assert job.running and not at.button(key="se_stop").disabled
at.button(key="se_stop").click().run()
assert not at.exception, [e.value for e in at.exception]
assert not job.running and job.error() is None, job.error()  # stopped, not failed
assert any("resume where it left off" in i.value for i in at.info), [i.value for i in at.info]
assert not at.button(key="se_run").disabled
print("HEAVY", [m for m in ("torch", "transformers", "sklearn", "optuna") if m in sys.modules])
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, "COMPRESSION_DASH_DB": db})
    assert "HEAVY []" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
