"""measure(recipe) -> Result: create (cached) -> deep copy -> apply -> evaluate -> time -> memory -> energy.

Base models and their fp32 reference outputs are cached per process and never mutated: every
measurement works on a deep copy, so a dashboard can share them between users.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from engine import __version__
from engine.errors import UserError
from engine.measure import energy as energy_mod
from engine.measure import memory as memory_mod
from engine.measure.fingerprint import fingerprint
from engine.measure.latency import PROFILES, time_calls
from engine.recipe import Recipe
from engine.registry import ModelSpec, create_model, get_spec
from engine.transforms import Applied, apply, check_device
from engine.transforms.precision import cast_inputs

log = logging.getLogger(__name__)
_LOCK = threading.Lock()  # torch thread settings and the peak-RSS counter are process-wide


@dataclass
class Result:
    """One measured configuration. Keys are the stable JSON contract documented in the README."""

    model: str
    recipe: dict
    accuracy: float | None = None
    baseline_accuracy: float | None = None
    metric: str = ""
    extra_metrics: dict = field(default_factory=dict)
    params_total: int | None = None
    params_nonzero: int | None = None
    param_bytes: int | None = None
    size_bytes: int | None = None
    baseline_size_bytes: int | None = None
    latency_ms: dict | None = None
    peak_memory_bytes: int | None = None
    memory_source: str | None = None
    energy_j: float | None = None
    energy_source: str | None = None
    energy_note: str | None = None
    kernels: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    device: dict = field(default_factory=dict)
    profile: str = "quick"
    threads: int | None = None
    engine_version: str = __version__
    wall_s: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Result":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@lru_cache(maxsize=4)
def base_model(name: str) -> tuple[nn.Module, ModelSpec]:
    """The uncompressed model, loaded once per process. Never mutate it: `apply` deep-copies."""
    model, spec = create_model(name)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, spec


@lru_cache(maxsize=4)
def reference(name: str) -> tuple[torch.Tensor, dict[str, float], int]:
    """fp32 outputs of the uncompressed model on the evaluation data, its score, and its stored size."""
    model, spec = base_model(name)
    with torch.inference_mode():
        out = torch.cat([spec.forward(model, x) for x in spec.eval_inputs()]).float()
    baseline = apply(model, Recipe(model=name), spec)
    return out, spec.score(out, out), baseline.size_bytes


def evaluate(applied: Applied, recipe: Recipe, spec: ModelSpec) -> dict[str, float]:
    ref, _, _ = reference(recipe.model)
    with torch.inference_mode():
        outs = [spec.forward(applied.model, cast_inputs(x, recipe.precision, recipe.device))
                for x in spec.eval_inputs()]
    out = torch.cat(outs).float().cpu()
    if not torch.isfinite(out).all():
        raise RuntimeError("the compressed model produced non-finite outputs (NaN/inf)")
    return spec.score(out, ref)


def default_threads() -> int:
    from engine.hardware import detect

    return detect().physical_cores


def measure(recipe: Recipe, profile: str = "quick", threads: int | None = None) -> Result:
    """Apply `recipe` to a fresh copy of its model and measure it. Bad input raises UserError;
    any failure while running the configuration is returned in `Result.error`."""
    if profile not in PROFILES:
        raise UserError(f"profile={profile!r} is not allowed: choose one of {', '.join(PROFILES)}")
    spec = get_spec(recipe.model)
    check_device(recipe.device)
    threads = threads or default_threads()
    result = Result(model=recipe.model, recipe=recipe.to_dict(), metric=spec.metric, device=fingerprint(),
                    profile=profile, threads=threads)
    start = time.perf_counter()
    with _LOCK:
        torch.set_num_threads(threads)
        try:
            base, _ = base_model(recipe.model)
            _, base_score, result.baseline_size_bytes = reference(recipe.model)
            result.baseline_accuracy = base_score["accuracy"]
            applied = apply(base, recipe, spec)
            result.kernels, result.warnings = applied.kernels, applied.warnings
            result.params_total, result.params_nonzero = applied.params_total, applied.params_nonzero
            result.param_bytes, result.size_bytes = applied.param_bytes, applied.size_bytes
            scores = evaluate(applied, recipe, spec)
            result.accuracy = scores.pop("accuracy")
            result.extra_metrics = scores
            _time(applied, recipe, spec, profile, result)
        except UserError:
            raise
        except Exception as exc:  # a configuration that fails is a result, not a crash
            log.debug("configuration %s failed:\n%s", recipe.key, traceback.format_exc())
            result.error = f"{type(exc).__name__}: {exc}".strip()[:500]
    result.wall_s = time.perf_counter() - start
    return result


def _time(applied: Applied, recipe: Recipe, spec: ModelSpec, profile: str, result: Result) -> None:
    inputs = cast_inputs(spec.example_inputs(recipe.batch_size), recipe.precision, recipe.device)
    model = applied.model

    def run() -> object:
        return spec.forward(model, inputs)

    sync = torch.cuda.synchronize if recipe.device == "cuda" else None
    window = energy_mod.EnergyWindow(recipe.device)
    with torch.inference_mode():
        lat = time_calls(run, PROFILES[profile], sync=sync, window=window)
        mem = memory_mod.measure_run(model, run, recipe.device)
    result.latency_ms = {**lat.to_dict(), "batch_size": recipe.batch_size, "threads": result.threads}
    if lat.noisy:
        result.warnings.append(f"latency is noisy (IQR/median {lat.iqr_ratio:.0%} > 10%): compare with care")
    result.peak_memory_bytes, result.memory_source = mem.peak_bytes, mem.source
    en = window.result(lat.calls)
    result.energy_j, result.energy_source, result.energy_note = en.joules_per_call, en.source, en.note
    if en.source.startswith("estimated"):
        result.warnings.append("energy is estimated from CPU time (no energy counter readable here)")
