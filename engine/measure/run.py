"""run_recipe(recipe) -> Result: create (cached) -> deep copy -> apply -> evaluate -> time (paired) -> memory
-> energy.

Base models and their fp32 reference outputs are cached per process and never mutated: every
measurement works on a deep copy, so a dashboard worker can share them between users.
"""
from __future__ import annotations

import logging
import tempfile
import threading
import time
import traceback
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from engine.compress.pipeline import Applied, apply, check_device
from engine.compress.precision import cast_inputs
from engine.core.errors import UserError
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
ONNX_CACHE_SIZE = 8
_ONNX_CACHE: dict[str, tuple[bytes, dict, float]] = {}


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
    ref, _, _ = reference(recipe.model)
    with torch.inference_mode():
        outs = [spec.forward(applied.model, cast_inputs(x, recipe.precision, recipe.device))
                for x in spec.eval_inputs()]
    out = torch.cat(outs).float().cpu()
    if not torch.isfinite(out).all():
        raise RuntimeError("the compressed model produced non-finite outputs (NaN/inf)")
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
                    device=fingerprint(), profile=profile, threads=requested, measured_at=time.time())
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
            # eager and compile run the engine's fastest kernels; ONNX Runtime gets the plain float model on
            # the grid and makes its own kernels from it.
            applied = apply(base, recipe, spec, kernels=recipe.runtime != "onnxruntime")
            result.kernels, result.warnings = applied.kernels, applied.warnings
            result.params_total, result.params_nonzero = applied.params_total, applied.params_nonzero
            result.param_bytes, result.size_bytes = applied.param_bytes, applied.size_bytes
            if recipe.runtime == "onnxruntime":
                _run_onnxruntime(applied, recipe, spec, profile, used, requested, result)
            elif recipe.runtime == "compile":
                _run_compiled(applied, recipe, spec, profile, used, requested, result)
            else:
                scores = evaluate(applied, recipe, spec)
                result.accuracy = scores.pop("accuracy")
                result.extra_metrics = scores
                _time(applied, recipe, spec, profile, used, requested, result)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001  (a configuration that fails is a result, not a crash)
            log.debug("configuration %s failed:\n%s", recipe.key, traceback.format_exc())
            result.error = f"{type(exc).__name__}: {exc}".strip()[:500]
        finally:
            torch.set_num_threads(previous)
    result.wall_s = time.perf_counter() - start
    return result


def _time(applied: Applied, recipe: Recipe, spec: ModelSpec, profile: str, threads: int, requested: int,
          result: Result) -> None:
    inputs = cast_inputs(spec.example_inputs(recipe.batch_size), recipe.precision, recipe.device)
    model = applied.model

    def run() -> object:
        return spec.forward(model, inputs)

    _time_calls(run, model, "model tensor bytes", recipe, spec, profile, threads, requested, result)


def _run_compiled(applied: Applied, recipe: Recipe, spec: ModelSpec, profile: str, threads: int, requested: int,
                  result: Result) -> None:
    """Measure the model through torch.compile: accuracy from the compiled model, latency after compiling
    (the compile time is `prepare_s`, outside the latency)."""
    from engine.runtimes.compiled import compiled

    inputs = cast_inputs(spec.example_inputs(recipe.batch_size), recipe.precision, recipe.device)
    fn, kernels, result.prepare_s = compiled(recipe.with_(batch_size=1).key, threads, applied.model, spec.forward,
                                             inputs)
    result.kernels = applied.kernels + kernels
    breaks = kernels[-1].detail["graph breaks"]
    if breaks:
        result.warnings.append(f"torch.compile split the model at {breaks} graph break(s) (typically the int8 "
                               "layers, whose packed weights it cannot trace): those layers run uncompiled between "
                               "compiled parts")
    ref, _, _ = reference(recipe.model)
    with torch.inference_mode():
        out = torch.cat([fn(cast_inputs(x, recipe.precision, recipe.device)) for x in spec.eval_inputs()]).float()
    if not torch.isfinite(out.cpu()).all():
        raise RuntimeError("the compiled model produced non-finite outputs (NaN/inf)")
    scores = spec.score(out.cpu(), ref)
    result.accuracy = scores.pop("accuracy")
    result.extra_metrics = scores
    with torch.inference_mode():
        fn(inputs)  # the evaluation's shapes may have recompiled: the timed shape is warm again before timing

    def run() -> object:
        return fn(inputs)

    _time_calls(run, applied.model, "model tensor bytes", recipe, spec, profile, threads, requested, result)


def _run_onnxruntime(applied: Applied, recipe: Recipe, spec: ModelSpec, profile: str, threads: int, requested: int,
                     result: Result) -> None:
    """Measure the deployable artifact: exported (and quantized) ONNX, run in an ONNX Runtime session with
    the same thread count. Accuracy, latency, memory and energy all come from that session."""
    from engine.runtimes.onnx import graph_kernels, onnx_feed, onnx_session

    with tempfile.TemporaryDirectory(prefix="compression-dash-") as tmp:
        path, optimized = Path(tmp) / "model.onnx", Path(tmp) / "optimized.onnx"
        blob, info, result.prepare_s = _onnx_artifact(applied, recipe, spec)
        path.write_bytes(blob)
        first = "kernels" not in info  # the optimized graph is read once per artifact, then kept with it
        session = onnx_session(path, threads=threads, optimized=optimized if first else None)
        if first:
            info["kernels"] = graph_kernels(path, optimized, info, recipe.precision)
        result.kernels = [k for k in applied.kernels if k.step == "prune"] + info["kernels"]
    result.warnings = list(info["notes"])  # the eager kernel notes do not apply to this runtime
    if recipe.prune.method == "magnitude":
        result.warnings.append("ONNX Runtime runs the pruned weights densely: the zeros give no speed-up and the "
                               "ONNX file does not shrink")
    result.size_bytes = len(blob)
    ref, _, _ = reference(recipe.model)
    out = torch.cat([torch.from_numpy(session.run(None, onnx_feed(session, x))[0]) for x in spec.eval_inputs()])
    if not torch.isfinite(out).all():
        raise RuntimeError("the ONNX model produced non-finite outputs (NaN/inf)")
    scores = spec.score(out.float(), ref)
    result.accuracy = scores.pop("accuracy")
    result.extra_metrics = scores
    feed = onnx_feed(session, spec.example_inputs(recipe.batch_size))

    def run() -> object:
        return session.run(None, feed)

    _time_calls(run, len(blob), "model.onnx bytes", recipe, spec, profile, threads, requested, result)


def _onnx_artifact(applied: Applied, recipe: Recipe, spec: ModelSpec) -> tuple[bytes, dict, float]:
    """The exported model of a recipe and the seconds exporting took (kept per process: it takes seconds,
    and a re-measurement of the same recipe must not pay it again)."""
    from engine.runtimes.onnx import export_onnx

    key = recipe.with_(batch_size=1).key  # the exported graph takes any batch size
    if key not in _ONNX_CACHE:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="compression-dash-") as tmp:
            info = export_onnx(applied, recipe, spec, Path(tmp) / "model.onnx")
            blob = (Path(tmp) / "model.onnx").read_bytes()
        _ONNX_CACHE[key] = blob, info, time.perf_counter() - start
        while len(_ONNX_CACHE) > ONNX_CACHE_SIZE:
            _ONNX_CACHE.pop(next(iter(_ONNX_CACHE)))
    return _ONNX_CACHE[key]


def _time_calls(run: Callable[[], object], model: nn.Module | int, held_as: str, recipe: Recipe, spec: ModelSpec,
                profile: str, threads: int, requested: int, result: Result) -> None:
    """Time `run` paired with the eager fp32 baseline, then its memory and energy."""
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
                             cpu_clock=thread_clock(threads, recipe.device == "cpu"))
        mem = memory_mod.measure_run(model, run, recipe.device, held_as=held_as)
    _record(timing, recipe, result)
    result.peak_memory_bytes, result.memory_source = mem.peak_bytes, mem.source
    en = energy_of(timing, meter)
    result.energy_j, result.energy_source, result.energy_note = en.joules_per_call, en.source, en.note
    if en.source.startswith("estimated"):
        result.warnings.append("energy is estimated from CPU time (no energy counter readable here)")


def _record(timing: Timing, recipe: Recipe, result: Result) -> None:
    lat = result.latency_ms = {**timing.latency, "batch_size": recipe.batch_size}
    result.speedup, result.speedup_spread = (1.0, 0.0) if recipe.is_baseline else (timing.speedup,
                                                                                     timing.speedup_spread)
    if lat["contended"]:
        why = (f"only {lat['threads']} of {lat['threads_requested']} threads had a free core"
               if lat["threads"] < lat["threads_requested"] else
               f"other work used {lat['foreign_cpu']:.1f} cores during the timed blocks")
        result.warnings.append(f"measured while the machine was busy ({why}): absolute times are not those of a "
                               "quiet machine; the paired speed-up still compares like with like. Re-measure when "
                               "the machine is quiet")
    elif lat["noisy"]:
        result.warnings.append(f"latency is noisy (IQR/median {lat['iqr_ratio']:.0%} > 10%): compare with care")
    if lat["insufficient"]:
        result.warnings.append(f"only {lat['calls']} calls fitted in the time limit: fewer than the profile asks for")
