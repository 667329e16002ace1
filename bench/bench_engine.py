"""Engine benchmarks: interactive speed, sweep speed and side-by-side ratios on this machine.

    python -m bench.bench_engine [--out bench/RESULTS.md]

Ratios come from one run, measured side by side; nothing here is asserted in tests.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench import machine_line
from engine.core.recipe import Prune, Quantize, Recipe
from engine.jobs.sweep import expand_grid, run_sweep
from engine.measure.fingerprint import fingerprint
from engine.measure.run import run_recipe as measure
from engine.results.store import Store


def interactive(lines: list[str]) -> None:
    measure(Recipe(model="digits-cnn"), profile="quick")  # load + reference once, as the dashboard does
    walls = []
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "i.db") as store:
        for amount in (0.1, 0.2, 0.3, 0.4, 0.5):
            r = Recipe(model="digits-cnn", prune=Prune("structured", amount), quantize=Quantize(8, "dynamic"))
            t0 = time.perf_counter()
            store.put(measure(r, profile="quick"))
            walls.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(20):
            store.get(r, fingerprint()["id"])
        hit = (time.perf_counter() - t0) / 20
    lines += ["## Interactive (digits-cnn, `quick` profile, model already loaded)", "",
              f"- new configuration measured and stored: median {statistics.median(walls):.2f} s "
              f"(max {max(walls):.2f} s) over {len(walls)} configurations (target <= 1.5 s)",
              f"- stored configuration read back: {hit * 1e3:.2f} ms (target <= 0.2 s)", ""]


def sweep(lines: list[str]) -> None:
    recipes, _ = expand_grid("digits-cnn", [0, 0.2, 0.4, 0.6, 0.8], ["magnitude", "structured"], [None, 8, 4],
                             ["fp32", "bf16", "fp16"])
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "s.db") as store:
        t0 = time.perf_counter()
        summary = run_sweep(recipes, store, profile="thorough")
        wall = time.perf_counter() - t0
        rows, _ = store.rows()
    iqr = [r["latency_iqr_ratio"] for r in rows if r["latency_iqr_ratio"] is not None]
    quiet = sum(x <= 0.10 for x in iqr)
    spread = [r["speedup_spread"] for r in rows if r["speedup_spread"]]
    lines += ["## Sweep (digits-cnn, `thorough` profile, each configuration paired with the baseline)", "",
              f"- {summary.total} configurations in {wall:.1f} s ({wall / summary.total:.2f} s each; target: 60+ in <= 60 s)",
              f"- latency IQR/median <= 10 % on {quiet} of {len(iqr)} rows; median IQR/median "
              f"{statistics.median(iqr):.1%}; median speed-up spread {statistics.median(spread):.1%}",
              f"- failed: {summary.failed}; contended: {summary.contended}", ""]


def side_by_side(lines: list[str]) -> None:
    families = {
        "fp32 (baseline)": {},
        "structured 50 %": dict(prune=Prune("structured", 0.5)),
        "structured 50 % + 3 epochs fine-tune": dict(prune=Prune("structured", 0.5, finetune_epochs=3)),
        "magnitude 50 %": dict(prune=Prune("magnitude", 0.5)),
        "magnitude 90 %": dict(prune=Prune("magnitude", 0.9)),
        "int8 dynamic": dict(quantize=Quantize(8, "dynamic")),
        "4-bit weight-only (simulated)": dict(quantize=Quantize(4, "weight-only")),
        "bf16": dict(precision="bf16"),
        "fp16": dict(precision="fp16"),
    }
    for model, batch in (("digits-cnn", 1), ("digits-cnn", 64), ("minilm", 1), ("minilm", 16)):
        lines += [f"## {model}, batch {batch} (`thorough`; speed-up paired with fp32 in alternating blocks)", "",
                  "| recipe | accuracy | p50 ms | speed-up (spread) | IQR/med | contended | size | size ratio | "
                  "energy mJ (source) | kernels |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        measure(Recipe(model=model, batch_size=batch), profile="thorough")  # warm caches and clocks first
        base = None
        for name, kw in families.items():
            if model == "minilm" and "prune" in kw and kw["prune"].finetune_epochs:
                continue  # no training data ships for the transformer
            r = measure(Recipe(model=model, batch_size=batch, **kw), profile="thorough")
            if r.error:
                lines.append(f"| {name} | failed: {r.error} | | | | | | | |")
                continue
            base = base or r
            kern = "; ".join(k.kernel + (" (simulated)" if k.simulated else "") for k in r.kernels
                             if k.step != "precision" or "fp32" not in k.kernel)
            lines.append(f"| {name} | {r.accuracy:.4f} | {r.latency.p50:.3f} | {r.speedup:.2f}x "
                         f"({r.speedup_spread:.0%}) | {r.latency.iqr_ratio:.0%} | "
                         f"{'yes' if r.contended else 'no'} | {r.size_bytes / 1024:.0f} KiB | "
                         f"{base.size_bytes / r.size_bytes:.2f}x | {r.energy_j * 1e3:.3g} ({r.energy_source}) | {kern} |")
        lines.append("")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("RESULTS-engine.md")))
    args = parser.parse_args()
    lines = ["# Engine benchmark results", "",
             machine_line("bench.bench_engine"), ""]
    for part in (interactive, sweep, side_by_side):
        part(lines)
        print("\n".join(lines[-14:]), flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
