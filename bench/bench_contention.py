"""Numbers that hold on a busy machine: the same configurations quiet, beside one and beside two busy processes.

    python -m bench.bench_contention [--profile quick|thorough] [--out bench/RESULTS-contention.md]

Starts its own busy-loop processes (`while True: pass`), so the load is known. For each configuration and
load it reports p50, calls, the paired speed-up against the uncompressed model, `contended` and
`foreign_cpu`, then checks the targets: speed-ups under load within 15 % of the quiet one; every p50 not
flagged contended within 25 % of its quiet value; quiet runs never flagged. Ratios come from this one run.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench import machine_line
from engine.core.recipe import Prune, Quantize, Recipe
from engine.measure.run import default_threads, run_recipe

CASES = [
    ("digits-cnn", 64, "fp32", Recipe(model="digits-cnn", batch_size=64)),
    ("digits-cnn", 64, "structured 50 %", Recipe(model="digits-cnn", batch_size=64, prune=Prune("structured", 0.5))),
    ("minilm", 1, "fp32", Recipe(model="minilm", batch_size=1)),
    ("minilm", 1, "int8 dynamic", Recipe(model="minilm", batch_size=1, quantize=Quantize(8, "dynamic"))),
    # runtimes timed as deployed (ONNX Runtime's pool threads spin after a call; OpenVINO's latency hint)
    ("minilm", 1, "int8 onnxruntime", Recipe(model="minilm", batch_size=1, quantize=Quantize(8, "dynamic"),
                                             runtime="onnxruntime")),
    ("minilm", 1, "int8 openvino", Recipe(model="minilm", batch_size=1, quantize=Quantize(8, "dynamic"),
                                          runtime="openvino")),
]


def busy(n: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    time.sleep(0.5 if n else 0)
    return procs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="thorough", choices=["quick", "thorough"])
    parser.add_argument("--out", default=str(Path(__file__).with_name("RESULTS-contention.md")))
    args = parser.parse_args()
    for _, _, _, recipe in CASES:  # load models and references before any timing
        run_recipe(recipe, profile="quick")
    # (busy processes, threads asked for): quiet twice (the floor: how much two quiet runs differ), quiet at
    # one thread (what a loaded run that gets one free core should match), then one and two busy processes.
    requested = default_threads()
    settings = [(0, requested, "quiet"), (0, requested, "quiet again")]
    settings += [(0, 1, "quiet, 1 thread")] if requested > 1 else []
    settings += [(1, requested, "1 busy"), (2, requested, "2 busy")]
    results = {}
    for load, threads, name in settings:
        procs = busy(load)
        try:
            for i, (_, _, _, recipe) in enumerate(CASES):
                r = results[(i, name)] = run_recipe(recipe.with_(threads=threads), profile=args.profile)
                print(f"{name}: {recipe.model} {recipe.label()}: p50 {r.latency.p50:.3f} ms, speed-up "
                      f"{r.speedup:.2f}, threads {r.threads}, contended {r.latency.contended}", flush=True)
        finally:
            for p in procs:
                p.kill()
                p.wait()
    lines = ["# Numbers under load: quiet, beside one and beside two busy processes", "",
             machine_line(f"bench.bench_contention --profile {args.profile}") + " Busy processes are `while True: pass`, started by the benchmark. "
             f"{requested} threads asked for in every run except 'quiet, 1 thread'.", "",
             "| model | batch | recipe | load | p50 ms | calls | threads used | speed-up (paired) | spread | contended | "
             "foreign CPU (cores) | CPU pressure | blocks disturbed |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    checks, info = [], []
    for i, (model, batch, name, recipe) in enumerate(CASES):
        for _, _, setting in settings:
            r = results[(i, setting)]
            lat = r.to_dict()["latency_ms"]
            pressure = "n/a" if lat["cpu_pressure"] is None else f"{lat['cpu_pressure']:.2f}"
            lines.append(f"| {model} | {batch} | {name} | {setting} | {lat['p50']:.3f} | {lat['calls']} | "
                         f"{lat['threads']}/{lat['threads_requested']} | {r.speedup:.2f}x | {r.speedup_spread:.0%} | "
                         f"{'yes' if lat['contended'] else 'no'} | {lat['foreign_cpu']:.2f} | {pressure} | "
                         f"{lat['blocks_disturbed']}/{lat['blocks']} |")
        quiet = results[(i, "quiet")]
        for _, _, setting in settings:
            r = results[(i, setting)]
            if setting.startswith("quiet"):
                checks.append((f"{model} b{batch} {name}, {setting}: not flagged contended", not r.latency.contended))
                continue
            # Like with like: the quiet run at the thread count this loaded run could use.
            ref = next(results[(i, s)] for _, t, s in settings if s.startswith("quiet") and t == r.threads)
            if not recipe.is_baseline:
                dev = r.speedup / ref.speedup - 1
                checks.append((f"{model} b{batch} {name}, {setting}: speed-up {r.speedup:.2f} vs quiet at "
                               f"{r.threads} thread(s) {ref.speedup:.2f} ({dev:+.0%}; target within 15 %)", abs(dev) <= 0.15))
                if r.threads != quiet.threads:
                    info.append(f"{model} b{batch} {name}, {setting}: speed-up {r.speedup:.2f} at {r.threads} thread(s) "
                                f"vs {quiet.speedup:.2f} quiet at {quiet.threads} ({r.speedup / quiet.speedup - 1:+.0%}): "
                                "the thread count changes the true ratio, so this row is flagged contended")
            if not r.latency.contended:
                dev = r.latency.p50 / ref.latency.p50 - 1
                checks.append((f"{model} b{batch} {name}, {setting}, not flagged: p50 {r.latency.p50:.3f} vs "
                               f"quiet {ref.latency.p50:.3f} ms ({dev:+.0%}; target within 25 %)", abs(dev) <= 0.25))
        again = results[(i, "quiet again")]
        info.append(f"{model} b{batch} {name}: two quiet runs read {quiet.latency.p50:.3f} and "
                    f"{again.latency.p50:.3f} ms, speed-up {quiet.speedup:.2f} and {again.speedup:.2f} (the floor)")
    lines += ["", "## Targets", ""] + [f"- {'met' if ok else 'MISSED'}: {text}" for text, ok in checks]
    lines += ["", f"{sum(ok for _, ok in checks)} of {len(checks)} checks met.", "", "## Also seen", ""]
    lines += [f"- {text}" for text in info]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
