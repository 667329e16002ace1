"""What a user would deploy instead: ONNX Runtime latency of the exported model beside the engine's own.

    python -m bench.bench_export [--out bench/RESULTS-export.md]

Both timed with the same `thorough` protocol (warm-up, per-call perf_counter_ns, p50) in one run.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from bench import machine_line
from engine.bundle.bundle import write_bundle
from engine.core.recipe import Quantize, Recipe
from engine.measure.latency import PROFILES, time_paired
from engine.measure.run import default_threads
from engine.measure.run import run_recipe as measure
from engine.models import get_spec
from engine.runtimes.onnx import onnx_feed, onnx_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("RESULTS-export.md")))
    args = parser.parse_args()
    torch.set_num_threads(default_threads())
    lines = ["# Export benchmark: ONNX Runtime vs the engine, same recipe, same machine", "",
             machine_line("bench.bench_export"), "",
             "| model | batch | recipe | engine p50 ms | ONNX Runtime p50 ms | ORT / engine | accuracy engine / ORT |",
             "|---|---|---|---|---|---|---|"]
    for model, batch in (("digits-cnn", 1), ("digits-cnn", 64), ("minilm", 1), ("minilm", 16)):
        spec = get_spec(model)
        for name, recipe in (("fp32", Recipe(model=model, batch_size=batch)),
                             ("int8 dynamic", Recipe(model=model, batch_size=batch,
                                                     quantize=Quantize(8, "dynamic")))):
            result = measure(recipe, profile="thorough")
            with tempfile.TemporaryDirectory() as tmp:
                summary = write_bundle(recipe, Path(tmp) / "b", result, [])
                session = onnx_session(Path(tmp) / "b" / "model.onnx", threads=default_threads())
                feed = onnx_feed(session, spec.example_inputs(batch))
                threads = default_threads()
                ort = time_paired(lambda: session.run(None, feed), None, PROFILES["thorough"], threads, threads)
            eng = result.latency.p50
            lines.append(f"| {model} | {batch} | {name} | {eng:.3f} | {ort.latency['p50']:.3f} | "
                         f"{ort.latency['p50'] / eng:.2f} | {result.accuracy:.4f} / {summary['onnx_accuracy']:.4f} |")
            print(lines[-1], flush=True)
    lines += ["", "Both run with the same number of intra-op threads; int8 in ONNX Runtime is ONNX Runtime's own "
              "quantizer (static QDQ, QLinearConv, for convolution models; dynamic MatMulInteger otherwise), the "
              "engine's is torch.ao's fbgemm/x86 kernel (Linear only, full-range activations)."]
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
