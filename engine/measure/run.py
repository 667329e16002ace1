"""run_recipe(recipe) -> Result: create (cached) -> deep copy -> apply -> evaluate -> time (paired) -> memory
-> energy.

Base models and their fp32 reference outputs are cached per process and never mutated: every
measurement works on a deep copy, so a dashboard worker can share them between users.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
from functools import lru_cache
from typing import Callable

import torch
from torch import nn

from engine.compress.pipeline import Applied, apply, check_device
from engine.compress.precision import cast_inputs
from engine.core.axes import RUNTIMES
from engine.core.errors import UserError
from engine.core.measurement import Latency
from engine.core.recipe import Recipe
from engine.core.result import Result
from engine.measure import interference
from engine.measure import memory as memory_mod
from engine.measure.energy import CounterMeter, energy_of, watts_per_core
from engine.measure.fingerprint import fingerprint
from engine.measure.latency import PROFILES, Timing, thread_clock, time_paired
from engine.models import ModelSpec, base_model, get_spec

log = logging.getLogger(__name__)
_LOCK = threading.Lock()  # torch thread settings and the peak-RSS counter are process-wide


@lru_cache(maxsize=2)
def _base_on(name: str, device: str) -> nn.Module:
    import copy

    return copy.deepcopy(base_model(name)[0]).to(device)


def baseline_on(name: str, device: str) -> nn.Module:
    """The uncompressed model on `device` (the CPU one is the cached base itself)."""
    return base_model(name)[0] if device == "cpu" else _base_on(name, device)


@lru_cache(maxsize=4)
def reference(name: str) -> tuple[torch.Tensor, dict[str, float], int]:
    """fp32 outputs of the uncompressed model on the evaluation data, its score, and its stored size."""
    model, spec = base_model(name)
    with torch.inference_mode():
        out = torch.cat([spec.forward(model, x) for x in spec.eval_inputs()]).float()
    baseline = apply(model, Recipe(model=name), spec)
    return out, spec.score(out, out), baseline.size_bytes


def evaluate(applied: Applied, recipe: Recipe, spec: ModelSpec) -> dict[str, float]:
    """The scores of the compressed model run eager."""
    return _evaluate_outputs(lambda x: spec.forward(applied.model, cast_inputs(x, recipe.precision, recipe.device)),
                             recipe, spec, "the compressed model")


def _evaluate_outputs(outputs: Callable[[object], torch.Tensor], recipe: Recipe, spec: ModelSpec, what: str
                      ) -> dict[str, float]:
    """Scores of `outputs` (a runtime's model) on the evaluation data against the uncompressed model's."""
    ref, _, _ = reference(recipe.model)
    with torch.inference_mode():
        out = torch.cat([outputs(x) for x in spec.eval_inputs()]).float().cpu()
    if not torch.isfinite(out).all():
        raise RuntimeError(f"{what} produced non-finite outputs (NaN/inf)")
    return spec.score(out, ref)


def default_threads() -> int:
    from engine.core.hardware import detect

    return detect().physical_cores


def run_recipe(recipe: Recipe, profile: str = "quick") -> Result:
    """Apply `recipe` to a fresh copy of its model and measure it with its threads (default: physical cores).
    Bad input raises UserError; any failure while running the configuration is returned in `Result.error`."""
    if profile not in PROFILES:
        raise UserError(f"profile={profile!r} is not allowed: choose one of {', '.join(PROFILES)}")
    spec = get_spec(recipe.model)
    check_device(recipe.device)
    requested = recipe.threads or default_threads()
    watts_per_core()  # a bad override is refused before any work
    result = Result(model=recipe.model, recipe=recipe.to_dict(), metric=spec.metric, metric_kind=spec.metric_kind,
                    machine=fingerprint(), profile=profile, threads=requested, measured_at=time.time())
    start = time.perf_counter()
    with _LOCK:
        previous = torch.get_num_threads()
        try:
            used = interference.choose_threads(requested, interference.probe())
            result.threads = used
            torch.set_num_threads(used)
            base, _ = base_model(recipe.model)
            _, base_score, result.baseline_size_bytes = reference(recipe.model)
            result.baseline_accuracy = base_score["accuracy"]
            runtime = RUNTIMES.get(recipe.runtime)
            applied = apply(base, recipe, spec, kernels=runtime.engine_kernels)
            result.kernels, result.warnings = applied.kernels, applied.warnings
            result.params_total, result.params_nonzero = applied.params_total, applied.params_nonzero
            result.param_bytes, result.size_bytes = applied.param_bytes, applied.size_bytes
            artifact = runtime.prepare(applied, recipe, spec, used)
            result.kernels, result.warnings = artifact.kernels, artifact.warnings
            result.prepare_s = artifact.prepare_s
            if artifact.size_bytes is not None:
                result.size_bytes = artifact.size_bytes
            scores = _evaluate_outputs(artifact.outputs, recipe, spec, runtime.outputs_name)
            result.accuracy = scores.pop("accuracy")
            result.extra_metrics = scores
            with torch.inference_mode():
                artifact.call()  # the evaluation's shapes may have recompiled a compiled model: warm again
            _time_calls(artifact.call, artifact.held, artifact.held_as, recipe, spec, profile, used, requested,
                        result, settle=artifact.settle)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001  (a configuration that fails is a result, not a crash)
            log.debug("configuration %s failed:\n%s", recipe.key, traceback.format_exc())
            result.error = f"{type(exc).__name__}: {exc}".strip()[:500]
        finally:
            torch.set_num_threads(previous)
    result.wall_s = time.perf_counter() - start
    if result.prepare_s is not None:
        result.prepare_how = RUNTIMES.get(recipe.runtime).prepares or None
    return result


def _time_calls(run: Callable[[], object], model: nn.Module | int, held_as: str, recipe: Recipe, spec: ModelSpec,
                profile: str, threads: int, requested: int, result: Result,
                settle: Callable[[], None] | None = None) -> None:
    """Time `run` paired with the eager fp32 baseline (`settle` between its blocks and the baseline's), then
    its memory and energy."""
    baseline = None
    if not recipe.is_baseline:  # timed in alternating blocks with this one: the speed-up is paired
        base = baseline_on(recipe.model, recipe.device)
        base_inputs = cast_inputs(spec.example_inputs(recipe.batch_size), "fp32", recipe.device)

        def baseline() -> object:
            return spec.forward(base, base_inputs)

    sync = torch.cuda.synchronize if recipe.device == "cuda" else None
    meter = CounterMeter(recipe.device)
    with torch.inference_mode():
        timing = time_paired(run, baseline, PROFILES[profile], threads, requested, sync=sync, energy=meter,
                             cpu_clock=thread_clock(threads, recipe.device == "cpu"), settle=settle)
        mem = memory_mod.measure_run(model, run, recipe.device, held_as=held_as)
    _record(timing, recipe, result)
    result.peak_memory_bytes, result.memory_source = mem.peak_bytes, mem.source
    en = energy_of(timing, meter)
    result.energy_j, result.energy_source = en.joules_per_call, en.source
    if en.source.kind == "estimated":
        result.warnings.append("energy is estimated from CPU time (no energy counter readable here)")


def _record(timing: Timing, recipe: Recipe, result: Result) -> None:
    speedup, spread = (1.0, 0.0) if recipe.is_baseline else (timing.speedup, timing.speedup_spread)
    lat = result.latency = Latency.from_dict({**timing.latency, "batch_size": recipe.batch_size}, speedup, spread)
    if lat.contended:
        result.warnings.append(f"measured while the machine was busy ({lat.why_contended}): absolute times are not "
                               "those of a quiet machine; the paired speed-up still compares like with like. "
                               "Re-measure when the machine is quiet")
    elif lat.noisy:
        result.warnings.append(f"latency is noisy (IQR/median {lat.iqr_ratio:.0%} > 10%): compare with care")
    if lat.insufficient:
        result.warnings.append(f"only {lat.calls} calls fitted in the time limit: fewer than the profile asks for")
