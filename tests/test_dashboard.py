"""Real Streamlit AppTest runs of every page against a real SQLite store and the real measuring process."""
from __future__ import annotations

import shutil
import sqlite3
import time
import tomllib
from dataclasses import replace

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import pages
from engine import api
from engine.core.recipe import Prune, Recipe
from engine.core.result import Result
from engine.core.units import fmt_speedup
from engine.measure.fingerprint import fingerprint
from engine.results.store import Store
from tests.conftest import ROOT

APP = str(ROOT / "dashboard" / "app.py")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("dash") / "seeded.db")
    api.sweep(api.seed_grid("digits-cnn"), path, profile="quick")  # what the first start measures
    return path


@pytest.fixture
def db(seeded, tmp_path):
    path = str(tmp_path / "results.db")
    shutil.copy(seeded, path)
    return path


def open_app(db, monkeypatch) -> AppTest:
    monkeypatch.setenv("COMPRESSION_DASH_DB", db)
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    return at


@pytest.fixture
def app(db, monkeypatch):
    at = open_app(db, monkeypatch)
    assert not at.exception, at.exception
    return at


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def wait_for_job(name: str, at: AppTest, timeout: float = 120) -> None:
    job = at.session_state[f"_job_{name}"]
    deadline = time.time() + timeout
    while not job.progress().finished:
        assert time.time() < deadline, job.progress()
        time.sleep(0.2)


def test_explore_controls_change_the_numbers(app):
    before = metrics(app)
    assert {"Accuracy", "Latency p50", "Stored size", "Peak memory"} <= set(before)
    assert any(k.startswith("Energy (") for k in before)
    app.sidebar.slider(key="prune_amount").set_value(0.5).run()
    after = metrics(app)
    assert not app.exception
    assert after["Stored size"] != before["Stored size"] and after["Accuracy"] != before["Accuracy"]
    latency = next(m for m in app.metric if m.label == "Latency p50")
    assert "faster" in latency.delta or "slower" in latency.delta  # the paired speed-up, not a ratio of two rows
    app.sidebar.select_slider(key="bits").set_value(4).run()
    assert metrics(app)["Stored size"] != after["Stored size"]
    caveats = [e for e in app.expander if e.label.startswith("Caveats")]
    assert caveats and not app.warning  # one collapsible box, not stacked warnings


def test_runtime_is_a_control_and_its_point_is_measured_in_that_runtime(app):
    app.sidebar.select_slider(key="bits").set_value(8)
    app.sidebar.radio(key="runtime").set_value("onnxruntime").run()
    assert not app.exception and not app.error
    assert any("onnxruntime" in c.value for c in app.caption)
    assert "faster" in next(m for m in app.metric if m.label == "Latency p50").delta or \
        "slower" in next(m for m in app.metric if m.label == "Latency p50").delta  # paired with eager fp32


def test_impossible_combination_is_an_error_not_an_exception(app):
    app.sidebar.select_slider(key="bits").set_value(8)
    app.sidebar.selectbox(key="scheme").set_value("dynamic")
    app.sidebar.radio(key="precision").set_value("bf16").run()
    assert not app.exception
    assert any("cannot run" in e.value for e in app.error)


def test_a_failed_configuration_shows_its_error_and_the_app_keeps_running(db, monkeypatch):
    recipe = Recipe(model="digits-cnn", prune=Prune("structured", 0.35))
    with Store(db) as s:
        s.put(Result(model="digits-cnn", recipe=recipe.to_dict(), machine=fingerprint(), profile="quick",
                     error="RuntimeError: simulated kernel crash"))
    app = open_app(db, monkeypatch)
    app.sidebar.slider(key="prune_amount").set_value(0.35).run()
    assert not app.exception
    assert any("simulated kernel crash" in e.value for e in app.error)
    app.sidebar.slider(key="prune_amount").set_value(0.5).run()  # still alive, numbers back
    assert not app.exception and "Accuracy" in metrics(app)


def test_a_contended_row_is_flagged_and_can_be_re_measured(db, monkeypatch):
    recipe = Recipe(model="digits-cnn", prune=Prune("structured", 0.5))
    with Store(db) as s:
        r = s.get(recipe, fingerprint()["id"])[1]
        r.latency = replace(r.latency, contended=True)
        con = sqlite3.connect(db)
        con.execute("DELETE FROM results WHERE recipe_key=?", (recipe.key,))
        con.commit()
        s.put(r)
    app = open_app(db, monkeypatch)
    app.sidebar.slider(key="prune_amount").set_value(0.5).run()
    assert any("busy" in i.value for i in app.info)
    stamp = lambda: sqlite3.connect(db).execute(  # noqa: E731
        "SELECT created_at FROM results WHERE recipe_key=?", (recipe.key,)).fetchone()[0]
    before = stamp()
    app.button(key="explore_remeasure").click().run()
    assert not app.exception and stamp() > before  # measured again (quiet or not, it replaces a contended row)
    app.switch_page("app_pages/frontier.py").run()
    assert not app.exception


def test_frontier_page_lists_rows_and_loads_a_recipe_into_explore(app, db):
    app.switch_page("app_pages/frontier.py").run()
    assert not app.exception
    assert len(app.dataframe) == 1 and len(app.dataframe[0].value) >= 10
    assert any("Hypervolume" in c.value for c in app.caption)
    target = Recipe(model="digits-cnn", prune=Prune("magnitude", 0.5))
    row_id = api.measure_or_load(target, db).row_id
    app.selectbox(key="front_pick").set_value(row_id)
    app.button(key="front_load").click().run()
    assert not app.exception
    s = app.session_state
    assert s["prune_amount"] == 0.5 and s["prune_method"] == "magnitude" and s["bits"] == "none"
    assert "Explore" in app.title[0].value


def test_sweep_page_runs_a_grid_in_the_background_and_resumes(app):
    app.switch_page("app_pages/sweep.py").run()
    assert not app.exception
    app.multiselect(key="sw_amounts").set_value([0.0, 0.2])
    app.multiselect(key="sw_methods").set_value(["magnitude"])
    app.multiselect(key="sw_bits").set_value(["none"])
    app.multiselect(key="sw_prec").set_value(["fp32"]).run()
    app.button(key="sw_run").click().run()
    assert not app.exception
    wait_for_job("sweep-digits-cnn", app)
    app.run()
    assert any("Sweep finished" in s.value for s in app.success)
    assert "0** not measured yet" in " ".join(m.value for m in app.markdown)


def test_learn_page_shows_the_models_own_weights(app):
    app.sidebar.slider(key="prune_amount").set_value(0.5)
    app.sidebar.radio(key="prune_method").set_value("magnitude")
    app.sidebar.select_slider(key="bits").set_value(3).run()
    app.switch_page("app_pages/learn.py").run()
    assert not app.exception
    shown = metrics(app)
    assert shown["Zero weights"].endswith("%") and int(shown["Distinct values in channel 0"]) <= 8


def test_learn_page_says_precision_from_this_machines_rows_or_that_it_is_inferred(app, db):
    app.switch_page("app_pages/learn.py").run()
    assert not app.exception
    text = " ".join(m.value for m in app.markdown)
    measured = api.precision_speedups("digits-cnn", db)  # the seeded grid measured bf16, never fp16
    assert "fp16" not in measured and "fp16: " in text
    assert "inferred from the CPU's flags: not measured here yet; pick fp16" in text
    if "bf16" in measured:  # a quiet row (a busy one waits to be re-measured and is not quoted)
        batch, speedup = next(iter(measured["bf16"].items()))
        assert f"bf16: measured here on digits-cnn: {fmt_speedup(speedup)} than fp32 at batch {batch}" in text
    else:
        assert "pick bf16 on Explore" in text


def test_export_page_builds_a_verified_bundle_and_says_what_it_holds(app):
    app.sidebar.slider(key="prune_amount").set_value(0.5).run()
    app.switch_page("app_pages/export.py").run()
    assert not app.exception
    assert any('"amount": 0.5' in c.value for c in app.code)
    app.button(key="exp_build").click().run()
    assert not app.exception
    ok = [s.value for s in app.success]
    assert ok and "checked" in ok[0] and "accuracy **0." in ok[0]


PAGES = [p.path for p in pages.PAGES]  # the app's own list: a new page is covered without editing this file


def _corrupt(path):
    with open(path, "wb") as fh:
        fh.write(b"this is not sqlite " * 200)


def _folder(path):
    import os

    os.remove(path)
    os.mkdir(path)


def _bad_json(path):
    con = sqlite3.connect(path)
    con.execute("UPDATE results SET result_json='{not json'")
    con.commit()


def _bad_fields(path):
    """Readable JSON, wrong inside: the kinds of damage a hand edit leaves."""
    import json

    con = sqlite3.connect(path)
    for i, (rid, text) in enumerate(con.execute("SELECT id, result_json FROM results").fetchall()):
        data = json.loads(text)
        key, value = [("latency_ms", {"p50": "abc"}), ("extra_metrics", {"x": "y"}), ("accuracy", None),
                      ("device", {"cpu_flags": [1, 2]}), ("size_bytes", "big"), ("error", 12345)][i % 6]
        data[key] = value
        con.execute("UPDATE results SET result_json=? WHERE id=?", (json.dumps(data), rid))
    con.commit()


def _non_numeric(path):
    con = sqlite3.connect(path)
    con.execute("UPDATE results SET accuracy='high', latency_p50_ms='fast' WHERE id % 2 = 0")
    con.commit()


@pytest.mark.parametrize("damage", [_corrupt, _folder, _bad_json, _bad_fields, _non_numeric],
                         ids=lambda f: f.__name__[1:])
@pytest.mark.parametrize("page", PAGES)
def test_a_damaged_store_is_a_message_on_every_page(db, monkeypatch, damage, page):
    damage(db)
    app = open_app(db, monkeypatch)
    if not app.exception:
        app.switch_page(page).run()
    assert not app.exception, app.exception
    shown = " ".join(e.value for e in app.error) + " ".join(w.value for w in app.warning)
    assert "Traceback" not in shown and str(ROOT) not in shown
    if damage in (_corrupt, _folder):
        assert "results store cannot be used" in shown


def test_the_streamlit_settings_hold_from_any_folder():
    config = tomllib.loads((ROOT / "dashboard" / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "localhost" and config["browser"]["gatherUsageStats"] is False
    assert config["client"]["showErrorDetails"] == "none" and config["client"]["toolbarMode"] == "viewer"
    assert (ROOT / ".streamlit" / "config.toml").read_text() == (ROOT / "dashboard" / ".streamlit" /
                                                                  "config.toml").read_text()
