"""What a Ray cluster costs: the same grid measured in-process and through a local Ray cluster, side by side.

    python -m bench.bench_ray [--model digits-cnn] [--profile quick] [--out bench/RESULTS-ray.md]

Both runs write a new store each. Reported: wall time of each, Ray's overhead per configuration (the difference
divided by the configurations), and each configuration's paired speed-up (against the uncompressed model,
measured in the same process, as every row is) from both runs, with their ratio: a cluster must report the
speed-ups a laptop does, on the same machine. Needs requirements-ray.txt. Nothing here is asserted in tests.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench import machine_line
from engine import api
from engine.measure.interference import probe

GRID = dict(prune=[0.0, 0.5], methods=["magnitude", "structured"], bits=[None, 8], precisions=["fp32"])


def _speedups(db: Path) -> dict[str, tuple[str, float | None]]:
    return {r["recipe_key"]: (r["label"], r["speedup"]) for r in api.results(db)["rows"] if r["error"] is None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="digits-cnn")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--out", default="bench/RESULTS-ray.md")
    args = ap.parse_args()
    recipes, _ = api.sweep_grid(args.model, **GRID)
    tmp = Path(tempfile.mkdtemp())
    busy_before = probe()
    t0 = time.perf_counter()
    local = api.sweep(recipes, tmp / "local.db", profile=args.profile)
    local_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    remote = api.cluster_sweep(recipes, tmp / "ray.db", api.ClusterOptions(), profile=args.profile)
    ray_s = time.perf_counter() - t0
    a, b = _speedups(tmp / "local.db"), _speedups(tmp / "ray.db")
    n = len(recipes)
    lines = ["# Ray executor against in-process sweeps", "",
             machine_line(f"bench.bench_ray --model {args.model} --profile {args.profile}")
             + f" Other processes' CPU load before the runs: {busy_before.foreign_cpu:.2f} cores.", "",
             f"Grid: {n} configurations of {args.model} (prune 0/0.5 magnitude and structured, int8 or not, fp32), "
             f"profile {args.profile}. The Ray run starts a private local cluster (`ray.init`), one measuring actor "
             "claiming every CPU, and ships the project to it as its working directory.", "",
             "| | in-process | Ray (local cluster) |", "|---|---|---|",
             f"| wall time | {local_s:.1f} s | {ray_s:.1f} s |",
             f"| measured / failed | {local.measured} / {local.failed} | {remote.measured} / {remote.failed} |",
             f"| Ray's overhead, in all / per configuration | – | {ray_s - local_s:+.1f} s / {(ray_s - local_s) / n:+.2f} s |",
             "", "Most of the overhead is paid once per sweep (starting Ray, shipping the project, the worker "
             "importing torch and loading the model); per configuration it is a task round trip.", "",
             "Paired speed-ups (each against the uncompressed model measured in the same process):", "",
             "| configuration | in-process | Ray | Ray / in-process |", "|---|---|---|---|"]
    worst = 0.0
    for key, (label, s_local) in a.items():
        s_ray = b.get(key, (label, None))[1]
        if s_local and s_ray:
            worst = max(worst, abs(s_ray / s_local - 1))
            lines.append(f"| {label} | {s_local:.2f}× | {s_ray:.2f}× | {s_ray / s_local:.2f} |")
        else:
            lines.append(f"| {label} | {s_local or '–'} | {s_ray or '–'} | – |")
    lines += ["", f"Largest difference between the two runs' speed-ups: {worst:.0%} (target: within 15 %)."]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
