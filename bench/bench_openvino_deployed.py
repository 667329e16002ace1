"""OpenVINO as deployed: the measured IR compiled alone (a plain `openvino.Core`) vs inside the paired protocol.

    python -m bench.bench_openvino_deployed [--out bench/RESULTS-openvino-deployed.md]

For digits-mlp (batch 1) and MiniLM (batch 1, 16), OpenVINO fp32 and NNCF int8, 2 threads:
- alone: the very IR the engine measures (its model.xml + model.bin), compiled by a plain `openvino.Core` with the
  latency hint and the thread count, no engine code, timed in a bare perf_counter loop of the same call the engine
  times (`infer(..., share_inputs=True)`: copying the inputs per call costs ~40 us, most of digits-mlp's time);
- paired: `run_recipe` (thorough profile), the engine's ABAB blocks against eager fp32.
Target: the paired p50 within 10 % of alone (OpenVINO's threads do not spin after a call, so the engine lets the
pair's arms follow each other without a settling wait).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from bench import machine_line
from engine.compress.pipeline import apply
from engine.core.recipe import Quantize, Recipe
from engine.measure.run import run_recipe
from engine.models import base_model, get_spec
from engine.runtimes import openvino as ov_rt

THREADS = 2
CASES = [("digits-mlp", 1), ("minilm", 1), ("minilm", 16)]
RECIPES = {"fp32": {}, "int8 (NNCF)": {"quantize": Quantize(8, "dynamic")}}
ALONE_S = 2.0
TOLERANCE = 0.10


def _alone_p50(folder: Path, inputs: object) -> tuple[float, str]:
    """p50 ms of the IR compiled by a plain Core (latency hint, the thread count), and how it compiled."""
    import openvino

    core = openvino.Core()
    compiled = core.compile_model(core.read_model(str(folder / "model.xml")), "CPU",
                                  {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": THREADS,
                                   "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    feed = ov_rt.feed(compiled, inputs)  # the inputs as numpy arrays by name (not timed)
    for _ in range(20):
        request.infer(feed, share_inputs=True)
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < ALONE_S:
        a = time.perf_counter()
        request.infer(feed, share_inputs=True)  # the call the engine times (inputs not copied per call)
        times.append(time.perf_counter() - a)
    return float(np.median(times) * 1e3), ov_rt.settings(compiled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("RESULTS-openvino-deployed.md")))
    args = parser.parse_args()
    header = machine_line("bench.bench_openvino_deployed")
    print(header, flush=True)
    lines = ["# OpenVINO as deployed: the measured IR alone vs inside the paired protocol", "",
             header + f" {THREADS} threads everywhere; thorough profile for the paired runs; alone: {ALONE_S:.0f} s "
             "bare loop.", "",
             "| model | batch | recipe | alone ms | paired (engine) ms | paired / alone | contended | compiled as |",
             "|---|---|---|---|---|---|---|---|"]
    checks = []
    for model, batch in CASES:
        spec = get_spec(model)
        for name, fields in RECIPES.items():
            recipe = Recipe(model=model, batch_size=batch, runtime="openvino", threads=THREADS, **fields)
            r = run_recipe(recipe, profile="thorough")
            if r.error:
                lines.append(f"| {model} | {batch} | {name} | failed: {r.error[:80]} | | | | |")
                continue
            base, _ = base_model(model)
            xml, weights, _, _ = ov_rt.artifact(apply(base, recipe, spec, kernels=False), recipe, spec)  # the cached IR
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "model.xml").write_bytes(xml)
                (Path(tmp) / "model.bin").write_bytes(weights)
                alone, how = _alone_p50(Path(tmp), spec.example_inputs(batch))
            ratio = r.latency.p50 / alone
            lines.append(f"| {model} | {batch} | {name} | {alone:.3f} | {r.latency.p50:.3f} | {ratio:.3f} | "
                         f"{'yes' if r.contended else 'no'} | {how} |")
            checks.append((f"{model} batch {batch} {name}: paired {r.latency.p50:.3f} ms vs alone {alone:.3f} ms "
                           f"({ratio - 1:+.1%}; target within {TOLERANCE:.0%})", abs(ratio - 1) <= TOLERANCE))
            print(lines[-1], flush=True)
    lines += ["", "## Targets", ""] + [f"- {'met' if ok else 'MISSED'}: {text}" for text, ok in checks]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-len(checks) - 2:]))


if __name__ == "__main__":
    main()
