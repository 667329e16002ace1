"""Real Streamlit AppTest runs of every page against a real SQLite store."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from engine import service
from engine.recipe import Prune, Recipe
from tests.conftest import ROOT

APP = str(ROOT / "dashboard" / "app.py")


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("dash") / "results.db")
    service.sweep(service.seed_grid("digits-cnn"), path, profile="quick")  # what the first start would do
    return path


@pytest.fixture
def app(db, monkeypatch):
    monkeypatch.setenv("COMPRESSION_DASH_DB", db)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_explore_controls_change_the_numbers(app):
    before = metrics(app)
    assert {"Accuracy", "Latency p50", "Stored size", "Peak memory"} <= set(before)
    assert any(k.startswith("Energy (") for k in before)
    app.sidebar.slider(key="prune_amount").set_value(0.5).run()
    after = metrics(app)
    assert not app.exception
    assert after["Stored size"] != before["Stored size"] and after["Accuracy"] != before["Accuracy"]
    app.sidebar.select_slider(key="bits").set_value(4).run()
    assert metrics(app)["Stored size"] != after["Stored size"]
    assert any("simulated" in w.value or "int8" in w.value for w in app.warning)


def test_impossible_combination_is_an_error_not_an_exception(app):
    app.sidebar.select_slider(key="bits").set_value(8)
    app.sidebar.selectbox(key="scheme").set_value("dynamic")
    app.sidebar.radio(key="precision").set_value("bf16").run()
    assert not app.exception
    assert any("cannot run" in e.value for e in app.error)


def test_failing_configuration_shows_error_and_app_keeps_running(app, monkeypatch):
    import engine.runner as runner

    real = runner.apply

    def broken(model, recipe, spec):
        if recipe.prune.amount == 0.35:
            raise RuntimeError("simulated kernel crash")
        return real(model, recipe, spec)

    monkeypatch.setattr(runner, "apply", broken)
    app.sidebar.slider(key="prune_amount").set_value(0.35).run()
    assert not app.exception
    assert any("simulated kernel crash" in e.value for e in app.error)
    app.sidebar.slider(key="prune_amount").set_value(0.5).run()  # still alive, numbers back
    assert not app.exception and "Accuracy" in metrics(app)


def test_frontier_page_lists_rows_and_loads_a_recipe_into_explore(app, db):
    app.switch_page("app_pages/frontier.py").run()
    assert not app.exception
    assert len(app.dataframe) == 1 and len(app.dataframe[0].value) >= 10
    target = Recipe(model="digits-cnn", prune=Prune("magnitude", 0.5))
    row_id = service.measure_or_load(target, db).row_id
    app.selectbox(key="front_pick").set_value(row_id)
    app.button(key="front_load").click().run()
    assert not app.exception
    s = app.session_state
    assert s["prune_amount"] == 0.5 and s["prune_method"] == "magnitude" and s["bits"] == "none"
    assert "Explore" in app.title[0].value


def test_sweep_page_runs_a_grid_and_resumes(app):
    app.switch_page("app_pages/sweep.py").run()
    assert not app.exception
    app.multiselect(key="sw_amounts").set_value([0.0, 0.2])
    app.multiselect(key="sw_methods").set_value(["magnitude"])
    app.multiselect(key="sw_bits").set_value(["none"])
    app.multiselect(key="sw_prec").set_value(["fp32"]).run()
    app.button(key="sw_run").click().run()
    assert not app.exception
    assert any("Sweep finished" in s.value for s in app.success)
    app.run()
    assert "0** not measured yet" in " ".join(m.value for m in app.markdown)


def test_learn_page_shows_the_models_own_weights(app):
    app.sidebar.slider(key="prune_amount").set_value(0.5)
    app.sidebar.radio(key="prune_method").set_value("magnitude")
    app.sidebar.select_slider(key="bits").set_value(3).run()
    app.switch_page("app_pages/learn.py").run()
    assert not app.exception
    shown = metrics(app)
    assert shown["Zero weights"].endswith("%") and int(shown["Distinct values in channel 0"]) <= 8


def test_export_page_shows_the_recipe(app):
    app.sidebar.slider(key="prune_amount").set_value(0.5).run()
    app.switch_page("app_pages/export.py").run()
    assert not app.exception
    assert any('"amount": 0.5' in c.value for c in app.code)


def test_export_page_builds_a_verified_bundle(app):
    app.sidebar.slider(key="prune_amount").set_value(0.5).run()
    app.switch_page("app_pages/export.py").run()
    app.button(key="exp_build").click().run()
    assert not app.exception
    assert any("Verified" in s.value for s in app.success)
