"""Runtimes side by side: the same recipes measured in eager PyTorch, through torch.compile and in ONNX Runtime.

    python -m bench.bench_runtime [--profile quick|thorough] [--out bench/RESULTS-runtime.md]

digits-cnn (batch 1, 64) and MiniLM (batch 1, 16), each runtime x {fp32, int8, bf16, structured 50 %}: p50,
the paired speed-up against eager fp32 (timed in alternating blocks with it), accuracy or fidelity, and the
size of what the runtime loads. Ratios come from this one run; nothing here is asserted in tests.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench import machine_line
from engine.core.recipe import RUNTIMES, Prune, Quantize, Recipe
from engine.measure.run import run_recipe

CASES = [("digits-cnn", (1, 64)), ("minilm", (1, 16))]
RECIPES = {
    "fp32": {},
    "int8": {"quantize": Quantize(8, "dynamic")},
    "bf16": {"precision": "bf16"},
    "structured 50 %": {"prune": Prune("structured", 0.5)},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="thorough", choices=["quick", "thorough"])
    parser.add_argument("--out", default=str(Path(__file__).with_name("RESULTS-runtime.md")))
    args = parser.parse_args()
    lines = ["# Runtimes: eager PyTorch, torch.compile and ONNX Runtime, same recipes, same threads", "",
             machine_line(f"bench.bench_runtime --profile {args.profile}") + " Speed-up: paired against eager fp32 at the same batch size; size: what "
             "the runtime loads (the compressed storage for eager and compile, model.onnx for ONNX Runtime); prepare s: "
             "exporting (ONNX) or compiling (torch.compile), never inside the latency.", "",
             "| model | batch | recipe | runtime | p50 ms | speed-up vs eager fp32 | spread | accuracy / fidelity | "
             "size KiB | simulated | contended | kernels | prepare s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    results = {}
    for model, batches in CASES:
        for batch in batches:
            for name, fields in RECIPES.items():
                for runtime in RUNTIMES:
                    r = run_recipe(Recipe(model=model, batch_size=batch, runtime=runtime, **fields), profile=args.profile)
                    results[(model, batch, name, runtime)] = r
                    if r.error:
                        lines.append(f"| {model} | {batch} | {name} | {runtime} | failed: {r.error[:80]} "
                                     "| | | | | | | | |")
                        continue
                    kernels = "; ".join(k.kernel for k in r.kernels if k.step in ("quantize", "onnxruntime", "compile", "precision"))
                    lines.append(f"| {model} | {batch} | {name} | {runtime} | {r.latency.p50:.3f} | "
                                 f"{r.speedup:.2f}x | {r.speedup_spread:.0%} | {r.accuracy:.4f} | "
                                 f"{r.size_bytes / 1024:.0f} | {'yes' if r.simulated else 'no'} | "
                                 f"{'yes' if r.contended else 'no'} | {kernels} | "
                                 f"{'' if r.prepare_s is None else f'{r.prepare_s:.1f}'} |")
                    print(lines[-1], flush=True)
    lines += ["", "## Targets", ""] + [f"- {'met' if ok else 'MISSED'}: {text}" for text, ok in _checks(results)]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _checks(results: dict) -> list[tuple[str, bool]]:
    ok = {k: r for k, r in results.items() if r.error is None}
    checks = []
    for batch, target in ((1, 4.0), (16, 2.0)):
        good = [(r.speedup, name, rt) for (m, b, name, rt), r in ok.items()
                if m == "minilm" and b == batch and r.accuracy >= 0.99]
        best = max(good, default=(0.0, "none", ""))
        checks.append((f"MiniLM batch {batch}: best point at fidelity >= 0.99 is {best[1]} in {best[2]}, "
                       f"{best[0]:.2f}x eager fp32 (target >= {target}x)", best[0] >= target))
    fp32_size = ok[("minilm", 1, "fp32", "eager")].size_bytes if ("minilm", 1, "fp32", "eager") in ok else None
    for rt in RUNTIMES:
        r = ok.get(("minilm", 1, "int8", rt))
        if r and fp32_size:
            checks.append((f"MiniLM int8 in {rt}: fidelity {r.accuracy:.4f}, {fp32_size / r.size_bytes:.2f}x smaller "
                           f"than fp32 (target >= 3x at fidelity >= 0.99)",
                           r.accuracy >= 0.99 and fp32_size / r.size_bytes >= 3))
    for rt in RUNTIMES:
        i8, f32 = ok.get(("digits-cnn", 64, "int8", rt)), ok.get(("digits-cnn", 64, "fp32", rt))
        if i8 and f32:
            ratio = i8.speedup / f32.speedup
            checks.append((f"digits-cnn batch 64 int8 in {rt}: {'simulated convs' if i8.simulated else 'real int8 convs'}, "
                           f"{ratio:.2f}x the speed of fp32 in the same runtime (target: real, >= 1.0x)",
                           not i8.simulated and ratio >= 1.0))
    keys = {tuple(sorted(r.to_dict())) for r in ok.values()}
    lat = {tuple(sorted(r.to_dict()["latency_ms"])) for r in ok.values()}
    checks.append(("every runtime's rows carry the same metric keys", len(keys) == 1 and len(lat) == 1))
    return checks


if __name__ == "__main__":
    main()
