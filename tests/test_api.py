"""The front door's own decisions: when a stored number is good enough, and when it is measured again."""
import time
from dataclasses import replace

from engine import api
from engine.core.recipe import Prune, Recipe
from engine.measure.fingerprint import fingerprint
from engine.results.store import Store


def _store_baseline(db, **changes):
    base = Recipe(model="digits-mlp")
    m = api.measure_or_load(base, db)
    r = m.result
    r.latency = replace(r.latency, **changes.pop("latency", {}))
    for k, v in changes.items():
        setattr(r, k, v)
    with Store(db) as s:
        s.conn.execute("DELETE FROM results WHERE id=?", (m.row_id,))
        s.put(r)
    return base


def test_a_contended_baseline_is_measured_again_but_not_on_every_click(tmp_path):
    db = str(tmp_path / "b.db")
    recipe = Recipe(model="digits-mlp", prune=Prune("magnitude", 0.5))
    _store_baseline(db, latency={"contended": True, "noisy": False}, measured_at=time.time())
    assert api.baseline_of(recipe, db).from_store  # just measured: the machine is still busy, keep it for now
    _store_baseline(db, latency={"contended": True, "noisy": False}, measured_at=time.time() - 3600)
    assert not api.baseline_of(recipe, db).from_store  # an hour old: measured again


def test_a_noisy_quick_baseline_is_measured_again_thoroughly(tmp_path):
    db = str(tmp_path / "n.db")
    recipe = Recipe(model="digits-mlp", prune=Prune("magnitude", 0.5))
    _store_baseline(db, latency={"contended": False, "noisy": True}, profile="quick")
    again = api.baseline_of(recipe, db)
    # Measured again at `thorough` (the store keeps the new row unless it was measured on a busy machine).
    assert not again.from_store


def test_a_stored_quick_row_does_not_answer_a_thorough_request(tmp_path):
    db = str(tmp_path / "p.db")
    recipe = Recipe(model="digits-mlp", prune=Prune("structured", 0.5))
    quick = api.measure_or_load(recipe, db, "quick")
    assert api.measure_or_load(recipe, db, "quick").from_store
    thorough = api.measure_or_load(recipe, db, "thorough")
    assert not thorough.from_store and thorough.row_id == quick.row_id
    kept = api.measure_or_load(recipe, db, "quick")
    assert kept.from_store and kept.result.profile == thorough.result.profile  # the better row answers


def test_untrusted_recipes_are_the_contended_and_the_outdated(tmp_path):
    db = str(tmp_path / "u.db")
    recipes = [Recipe(model="digits-mlp", prune=Prune("magnitude", a)) for a in (0.0, 0.3, 0.6)]
    api.sweep(recipes, db, profile="quick")
    with Store(db) as s:
        s.conn.execute("UPDATE results SET latency_contended=0")  # whatever the machine was doing meanwhile
        s.conn.execute("UPDATE results SET latency_contended=1 WHERE recipe_key=?", (recipes[1].key,))
        s.conn.execute("UPDATE results SET engine_version='0.0.1' WHERE recipe_key=?", (recipes[2].key,))
    assert {r.key for r in api.untrusted_recipes("digits-mlp", db)} == {recipes[1].key, recipes[2].key}
    assert {r.key for r in api.missing(recipes, db, remeasure_contended=True)} == {recipes[1].key, recipes[2].key}
    assert fingerprint()["id"]
