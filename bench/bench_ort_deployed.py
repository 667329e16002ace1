"""ONNX Runtime as deployed: its default session timed alone vs inside the engine's paired protocol.

    python -m bench.bench_ort_deployed [--out bench/RESULTS-ort-deployed.md]

For digits-mlp (batch 1) and MiniLM (batch 1, 16), ONNX Runtime fp32 and int8 (dynamic), same threads:
- ORT alone: a plain `onnxruntime.InferenceSession` with default options (only the thread count set) on the
  very model file the engine measures, timed in a bare perf_counter loop, no engine code; beside it the same
  session with spinning off (the engine's old setting);
- ORT paired: `run_recipe` (thorough profile), the engine's ABAB blocks against eager fp32, its pool threads
  let go idle before each baseline block (`Artifact.settle`);
- eager paired with ORT (the baseline arm's p50 in that same run) vs eager paired with itself (the same
  protocol, eager against a copy of itself); the eager arm's mean beside ORT with and without the settling (the same
  protocol run directly: the spinning lands in the first calls of a baseline block, so it moves the mean more
  than the p50), and how long each settling waited.
Targets: ORT paired p50 within 10 % of alone; the eager arm paired with ORT within 10 % of paired with itself.
"""
from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from bench import machine_line
from engine.compress.pipeline import apply
from engine.compress.precision import cast_inputs
from engine.core.recipe import Quantize, Recipe
from engine.measure.latency import PROFILES, time_paired
from engine.measure.run import baseline_on, run_recipe
from engine.models import base_model, get_spec
from engine.runtimes import onnx as ort_rt
from engine.runtimes.base import until_idle

THREADS = 2
CASES = [("digits-mlp", 1), ("minilm", 1), ("minilm", 16)]
RECIPES = {"fp32": {}, "int8": {"quantize": Quantize(8, "dynamic")}}
ALONE_S = 2.0
TOLERANCE = 0.10


def _alone_p50(path: Path, feed: dict, threads: int, spinning: bool) -> float:
    """p50 ms of a plain session (default options but the thread count) in a bare loop."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for _ in range(20):
        session.run(None, feed)
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < ALONE_S:
        a = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - a)
    session = None  # its pool ends with it
    time.sleep(0.3)  # its pool threads go idle before whatever is timed next
    return float(np.median(times) * 1e3)


def _eager_fn(model: str, batch: int, own_copy: bool = False):
    """Eager fp32 at `batch`; `own_copy`: on a copy of the weights, as the other arm of a pair has its own (the
    ONNX Runtime session holds its copy: sharing one would keep the weights cache-hot for both arms)."""
    spec = get_spec(model)
    base = copy.deepcopy(baseline_on(model, "cpu")) if own_copy else baseline_on(model, "cpu")
    x = cast_inputs(spec.example_inputs(batch), "fp32", "cpu")
    return lambda: spec.forward(base, x)


def _eager_paired_with(other, model: str, batch: int, settle=None) -> tuple[float, float]:
    """The eager arm's p50 and mean ms in the engine's paired protocol against `other` (None: eager itself)."""
    eager = _eager_fn(model, batch)
    torch.set_num_threads(THREADS)
    with torch.inference_mode():
        t = time_paired(other or _eager_fn(model, batch, own_copy=True), eager, PROFILES["thorough"], THREADS, THREADS,
                        settle=settle)
    samples = [s for p in t.used for s in p.baseline.samples_ns]
    return t.latency["baseline_p50"], float(np.mean(samples) / 1e6)


class _TimedSettle:
    """The runtime's settle, with the seconds each wait took."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self) -> None:
        self.waits.append(until_idle())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("RESULTS-ort-deployed.md")))
    args = parser.parse_args()
    header = machine_line("bench.bench_ort_deployed")
    print(header, flush=True)
    lines = ["# ONNX Runtime as deployed: default session alone vs inside the paired protocol", "",
             header + f" {THREADS} threads everywhere; thorough profile for the paired runs; alone: {ALONE_S:.0f} s bare loop.",
             "", "| model | batch | recipe | ORT alone, default (spinning on) ms | ORT alone, spinning off ms | "
             "ORT paired (engine) ms | paired / alone | eager paired with ORT (engine) ms | eager paired with eager ms | "
             "eager-with-ORT / eager-with-eager | eager mean ms: with eager / with ORT settled / with ORT not settled "
             "| settle wait ms (median, max) | contended | session |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    checks = []
    for model, batch in CASES:
        spec = get_spec(model)
        self_p50, self_mean = _eager_paired_with(None, model, batch)
        for name, fields in RECIPES.items():
            recipe = Recipe(model=model, batch_size=batch, runtime="onnxruntime", threads=THREADS, **fields)
            r = run_recipe(recipe, profile="thorough")
            if r.error:
                lines.append(f"| {model} | {batch} | {name} | failed: {r.error[:80]} |" + " |" * 10)
                continue
            base, _ = base_model(model)
            blob, _, _ = ort_rt.artifact(apply(base, recipe, spec, kernels=False), recipe, spec)  # the cached file
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.onnx"
                path.write_bytes(blob)
                session = ort_rt.onnx_session(path, threads=THREADS)
                feed = ort_rt.onnx_feed(session, spec.example_inputs(batch))
                settle = _TimedSettle()
                _, settled_mean = _eager_paired_with(lambda: session.run(None, feed), model, batch, settle)
                _, unsettled_mean = _eager_paired_with(lambda: session.run(None, feed), model, batch)
                session = None  # its pool ends with it
                time.sleep(0.3)
                alone = _alone_p50(path, feed, THREADS, spinning=True)
                alone_off = _alone_p50(path, feed, THREADS, spinning=False)
            paired, with_ort = r.latency.p50, r.latency.baseline_p50
            session_text = next((k.detail.get("session", "") for k in r.kernels if k.step == "onnxruntime"), "")
            lines.append(f"| {model} | {batch} | {name} | {alone:.3f} | {alone_off:.3f} | {paired:.3f} | "
                         f"{paired / alone:.3f} | {with_ort:.3f} | {self_p50:.3f} | {with_ort / self_p50:.3f} | "
                         f"{self_mean:.3f} / {settled_mean:.3f} / {unsettled_mean:.3f} | "
                         f"{np.median(settle.waits) * 1e3:.1f}, {max(settle.waits) * 1e3:.1f} | "
                         f"{'yes' if r.contended else 'no'} | {session_text} |")
            print(lines[-1], flush=True)
            checks.append((f"{model} batch {batch} {name}: ORT paired {paired:.3f} ms vs alone {alone:.3f} ms "
                           f"({paired / alone - 1:+.1%}; target within {TOLERANCE:.0%})",
                           abs(paired / alone - 1) <= TOLERANCE))
            checks.append((f"{model} batch {batch} {name}: eager arm paired with ORT {with_ort:.3f} ms vs paired "
                           f"with itself {self_p50:.3f} ms ({with_ort / self_p50 - 1:+.1%}; target not slower than "
                           f"{TOLERANCE:.0%})", with_ort / self_p50 - 1 <= TOLERANCE))
    lines += ["", "## Targets", ""] + [f"- {'met' if ok else 'MISSED'}: {text}" for text, ok in checks]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-len(checks) - 3:]))


if __name__ == "__main__":
    main()
