"""Session state: the controls' values, the Recipe they build, and where results are stored."""
from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from engine import api
from engine.core.axes import PRUNE_METHODS, RUNTIMES, SCHEMES
from engine.core.errors import UserError
from engine.core.install import source_checkout
from engine.core.recipe import Recipe

ROOT = Path(__file__).resolve().parent.parent
DB_ENV = "COMPRESSION_DASH_DB"
DEFAULT_MODEL = "digits-cnn"
BIT_OPTIONS = ["none", 8, 7, 6, 5, 4, 3, 2]
# The pickers read the registries, so a registered technique or runtime appears without a dashboard change.
# auto: the fastest real path for the precision and device (recipe.default_scheme).
SCHEME_OPTIONS = ["auto", *SCHEMES.names()]
PRUNE_METHOD_OPTIONS = [name for name, method in PRUNE_METHODS.items() if method.prunes]  # amount 0: none
RUNTIME_OPTIONS = list(RUNTIMES.names())
DEFAULTS = {
    "model": DEFAULT_MODEL, "prune_amount": 0.0, "prune_method": "structured", "finetune_epochs": 0, "bits": "none",
    "scheme": "auto", "granularity": "per-channel", "precision": "fp32", "batch_size": 1, "device": "cpu",
    "runtime": "eager",
}
# Recipe fields the controls have no widget for (a searched recipe's per-layer amounts and recovery, say).
# Kept beside the controls so loading such a recipe into Explore measures that recipe, not a cousin of it.
EXTRA_KEY = "recipe_extra"
EXTRA_DEFAULTS = {"prune_scope": "global", "group_size": 32, "threads": None, "layers": {}, "recover": None}


def model_info(name: str):
    """The model's description (ModelInfo), read by the measuring process: this one never loads torch."""
    return api.describe_model(name, via=api.worker())


def db_path() -> str:
    """The results store: $COMPRESSION_DASH_DB, else results.db beside the code in a checkout, else (an installed
    package, whose code folder is no place for data) results.db in the folder the dashboard was started in."""
    return os.environ.get(DB_ENV) or str((source_checkout() or Path.cwd()) / "results.db")


def init() -> None:
    """Run first on every script run, before any widget.

    Re-assigning each control's value keeps it when its page is not shown (Streamlit drops the state of
    widgets that were not drawn), so Learn and Export see the recipe chosen in Explore. A recipe queued by
    `request_load` is applied here, before the widgets that own those keys exist.
    """
    s = st.session_state
    for k, v in DEFAULTS.items():
        s[k] = s[k] if k in s else v
    pending = s.pop("_load", None)
    if pending is not None:
        _apply(Recipe.from_dict(pending))


def recipe_from_state() -> Recipe:
    """Build the Recipe the controls describe (raises UserError for a combination that cannot run)."""
    s = st.session_state
    amount = float(s["prune_amount"])
    can_finetune = model_info(s["model"]).can_finetune  # the control is disabled where it cannot apply
    return api.recipe_from_fields(
        s["model"], via=api.worker(), prune=amount, prune_method=s["prune_method"],
        finetune_epochs=int(s["finetune_epochs"]) if can_finetune else 0,
        bits=None if s["bits"] == "none" else int(s["bits"]), scheme=None if s["scheme"] == "auto" else s["scheme"],
        granularity=s["granularity"], precision=s["precision"], device=s["device"], batch_size=int(s["batch_size"]),
        runtime=s["runtime"], **extra_fields())


def extra_fields() -> dict:
    """The loaded recipe's fields that no control shows, for the model they were loaded for (else none)."""
    extra = st.session_state.get(EXTRA_KEY) or {}
    if extra.get("model") != st.session_state["model"]:
        return {}
    return {k: v for k, v in extra.items() if k in EXTRA_DEFAULTS}


def _override_words(what: str, value) -> str:
    if what == "prune":
        return f"prune {value:.0%}"
    return "kept in float" if value == "none" else f"{value} bits"


def extra_note() -> str | None:
    """What the controls do not show of the current recipe, in words (None when nothing)."""
    extra = extra_fields()
    if not extra:
        return None
    parts = []
    if extra.get("layers"):
        parts.append("own amounts for " + ", ".join(
            f"{name} ({', '.join(_override_words(k, v) for k, v in o.items())})"
            for name, o in extra["layers"].items()))
    if extra.get("recover"):
        parts.append(f"{extra['recover']['method']} {extra['recover']['steps']} steps after compressing")
    if extra.get("prune_scope", "global") != "global":
        parts.append(f"pruning scope {extra['prune_scope']}")
    if extra.get("group_size", 32) != 32:
        parts.append(f"group size {extra['group_size']}")
    if extra.get("threads") is not None:
        parts.append(f"{extra['threads']} threads")
    return "; ".join(parts)


def request_load(recipe: Recipe) -> None:
    """Queue a recipe for the controls (e.g. a point clicked on the frontier); applied on the next run."""
    st.session_state["_load"] = recipe.to_dict()


def reset() -> None:
    """The controls back to the uncompressed model (same model and device)."""
    s = st.session_state
    request_load(Recipe(model=s["model"], device=s["device"]))


def _apply(recipe: Recipe) -> None:
    s = st.session_state
    s["model"] = recipe.model
    s["prune_amount"] = recipe.prune.amount
    if recipe.prune.method != "none":
        s["prune_method"] = recipe.prune.method
    s["finetune_epochs"] = recipe.prune.finetune_epochs
    s["bits"] = "none" if recipe.quantize.bits is None else recipe.quantize.bits
    s["scheme"] = recipe.quantize.scheme if recipe.quantize.bits is not None else "auto"
    s["granularity"] = recipe.quantize.granularity
    s["precision"] = recipe.precision
    s["batch_size"] = recipe.batch_size
    s["device"] = recipe.device
    s["runtime"] = recipe.runtime
    extra = {"prune_scope": recipe.prune.scope, "group_size": recipe.quantize.group_size, "threads": recipe.threads,
             "layers": {o.pattern: o.to_dict() for o in recipe.layers},
             "recover": None if recipe.recover.method == "none" else recipe.to_dict()["recover"]}
    changed = {k: v for k, v in extra.items() if v != EXTRA_DEFAULTS[k]}
    s[EXTRA_KEY] = {"model": recipe.model, **changed} if changed else None


def recipe_or_stop() -> Recipe:
    """The controls' recipe; for a combination that cannot run, say why in the page and stop it there."""
    try:
        return recipe_from_state()
    except UserError as exc:
        st.error(f"This combination cannot run: {exc}")
        st.stop()
        raise  # unreachable: st.stop() ends the run
