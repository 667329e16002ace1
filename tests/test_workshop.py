"""Workshop mode: the lesson path, compare A/B, Learn's controls, and a class pooling results (real AppTest,
real store, real measuring process)."""
from __future__ import annotations

import json

import pytest

from dashboard import lessons
from engine import api
from engine.core.errors import UserError
from engine.core.recipe import Prune, Recipe
from engine.measure.fingerprint import fingerprint
from tests.test_cli import run_cli
from tests.test_dashboard import app, db, open_app, seeded  # noqa: F401  (fixtures)


def test_every_exercise_has_what_a_lesson_needs():
    assert len(lessons.EXERCISES) >= 6
    assert len({e.key for e in lessons.EXERCISES}) == len(lessons.EXERCISES)
    for e in lessons.EXERCISES:
        assert e.goal and e.question and e.notice and e.page in ("explore", "learn", "frontier", "export")
        for p in e.presets:
            api.recipe_from_fields("digits-cnn", **p.fields)  # every preset is a valid recipe


def test_workshop_preset_sets_the_controls_and_opens_its_page(app):
    app.switch_page("app_pages/workshop.py").run()
    assert not app.exception
    assert sum(e.label.endswith(tuple(x.title for x in lessons.EXERCISES)) for e in app.expander) == 7
    app.button(key="preset_pruning_Magnitude 50%").click().run()
    assert not app.exception
    s = app.session_state
    assert s["prune_amount"] == 0.5 and s["prune_method"] == "magnitude"
    assert "Explore" in app.title[0].value


def test_an_answer_quotes_the_numbers_measured_here(app, db):
    app.switch_page("app_pages/workshop.py").run()
    app.button(key="reveal_btn_pruning").click().run()
    assert not app.exception
    answer = next(s.value for s in app.success)
    mag = api.measure_or_load(Recipe(model="digits-cnn", prune=Prune("magnitude", 0.5)), db).result
    st_ = api.measure_or_load(Recipe(model="digits-cnn", prune=Prune("structured", 0.5)), db).result
    assert f"{mag.accuracy:.3f}" in answer and f"{st_.accuracy:.3f}" in answer  # from the store, not written down
    app.checkbox(key="done_pruning").check().run()
    assert app.session_state["lesson_done"] == {"pruning"}
    assert "1 of 7" in app.get("progress")[0].proto.text


def test_pin_a_compare_b_and_learn_overlays_both(app):
    app.sidebar.select_slider(key="bits").set_value(8).run()
    app.button(key="explore_pin").click().run()
    app.sidebar.select_slider(key="bits").set_value(2).run()
    assert not app.exception
    table = app.dataframe[0].value
    assert list(table.columns) == ["metric", "A", "B", "B vs A"] and len(table) == 5
    app.switch_page("app_pages/learn.py").run()
    assert not app.exception
    hist = app.get("plotly_chart")[0].proto.spec
    assert "A (pinned)" in hist and "B (controls)" in hist
    app.sidebar.button(key="reset_baseline").click().run()  # Learn has the controls too
    assert app.session_state["bits"] == "none" and app.session_state["prune_amount"] == 0.0


def _other_machine(data: bytes) -> bytes:
    """The same results as if measured on a classmate's laptop."""
    doc = json.loads(data)
    for r in doc["results"]:
        r["machine"] = {**r["machine"], "id": "classmate0001", "cpu": "Classmate CPU"}
        r["latency_ms"]["p50"] *= 2
    return json.dumps(doc).encode()


def test_results_are_pooled_with_their_machine_and_never_duplicated(db, tmp_path, monkeypatch):
    data = api.export_results(db)
    n = len(json.loads(data)["results"])
    again = api.import_results(db, data)  # one's own file: nothing new
    assert again["new_rows"] == 0 and again["already_as_good"] == n
    theirs = api.import_results(db, _other_machine(data))
    assert theirs["new_rows"] == n and theirs["machines"] == ["Classmate CPU"]
    assert api.import_results(db, _other_machine(data))["new_rows"] == 0  # imported twice: no duplicates
    machines = api.machines("digits-cnn", db)
    assert [m["this_machine"] for m in machines] == [True, False] and machines[1]["name"].startswith("Classmate CPU")
    assert all(r["device_id"] == fingerprint()["id"] for r in api.model_rows("digits-cnn", db, "accuracy,latency")["rows"])

    at = open_app(db, monkeypatch)
    at.switch_page("app_pages/frontier.py").run()
    at.toggle(key="front_untrusted").set_value(True)  # a busy test machine must not empty the frontiers
    at.multiselect(key="front_machines").set_value(["classmate0001"]).run()
    assert not at.exception
    assert "frontier on Classmate CPU" in at.get("plotly_chart")[0].proto.spec
    at.selectbox(key="front_machine").set_value("classmate0001").run()  # the classmate's frontier, ours overlaid
    assert not at.exception and at.multiselect(key="front_machines").value == []
    at.multiselect(key="front_machines").set_value([fingerprint()["id"]]).run()
    assert not at.exception and "frontier on " + api.machines("digits-cnn", db)[0]["name"].split(",")[0] \
        in at.get("plotly_chart")[0].proto.spec

    # The command line groups by machine too: one frontier each, never one across machines.
    code, out, err = run_cli(["frontier", "--model", "digits-cnn", "--db", str(db), "--all-devices",
                              "--include-contended", "--json"])
    groups = json.loads(out)["devices"]
    assert code == 0 and [g["machine"]["device_id"] for g in groups] == [fingerprint()["id"], "classmate0001"], err
    code, out, err = run_cli(["frontier", "--model", "digits-cnn", "--db", str(db), "--device", "classm",
                              "--include-contended"])
    assert code == 0 and out.startswith("digits-cnn:"), err
    code, out, err = run_cli(["results", "--db", str(db), "--device", "classmate", "--format", "json"])
    assert {r["device_id"] for r in json.loads(out)} == {"classmate0001"}
    code, _, err = run_cli(["frontier", "--model", "digits-cnn", "--db", str(db), "--device", "nosuch"])
    assert code == 2 and "machines with rows:" in err and "Classmate CPU" in err


@pytest.mark.parametrize("data, match", [
    (b"not json", "not valid JSON"),
    (b'{"format": "something else", "results": []}', "not a results file"),
    (b'{"format": "compression-dash-results", "format_version": 99, "results": []}', "format_version"),
    (b"[" * 100_000, "not valid JSON"),
])
def test_a_bad_results_file_is_one_clear_error(db, data, match):
    with pytest.raises(UserError, match=match):
        api.import_results(db, data)


def test_bad_rows_in_a_results_file_are_skipped_and_counted(db):
    doc = json.loads(api.export_results(db))
    good = doc["results"][0]
    doc["results"] = [
        {**good, "model": "no-such-model", "recipe": {**good["recipe"], "model": "no-such-model"}},
        {**good, "accuracy": "high"},
        {**good, "machine": {"cpu": "no id"}},
        {**good, "speedup": 1e400},  # JSON infinity
        "a string",
    ]
    out = api.import_results(db, json.dumps(doc).encode())
    assert out["new_rows"] == 0 and out["skipped"] == 5
    assert any("not registered" in why for why in out["skipped_why"])
