"""Recovery and search benchmarks: Deep Compression storage, distillation, accuracy-constrained search, sensitivity.

    python -m bench.bench_recovery [--out bench/RESULTS-recovery.md] [--search-s 300] [--only NAME,...]

Targets (development machine):
- digits-mlp >= 30x smaller storage than fp32 at <= 1 point accuracy loss (Deep Compression's LeNet-300-100 row);
- MiniLM structured 50 % with distillation: fidelity >= 0.95 and still >= 1.7x faster than fp32 (paired);
- a 5-minute search on digits-cnn finds a recipe at >= 99 % of baseline accuracy that no point of an 81-point grid
  dominates, and that is faster than the grid's fastest point at that accuracy (timed side by side, ABAB);
- sensitivity on digits-cnn ranks layers consistently across two runs (same top 3).
Ratios come from one run, measured side by side; nothing here is asserted in tests.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench import machine_line
from engine import api
from engine.results import pareto


def _ok(met: bool) -> str:
    return "**met**" if met else "**missed**"


def deep_compression(lines: list[str], db: Path) -> None:
    """digits-mlp: gradual magnitude pruning with fine-tuning, then 4-bit codebooks with fine-tuned centroids."""
    candidates = {
        "magnitude 90 % (gradual from 50 %, 600 steps) + 4-bit codebook": dict(
            prune=0.9, recover={"method": "finetune", "steps": 600, "schedule": "gradual", "initial_sparsity": 0.5}),
        "magnitude 95 % (gradual) + 4-bit codebook, fc1 at 88 %": dict(
            prune=0.95, layers={"fc1": {"prune": 0.88}},
            recover={"method": "finetune", "steps": 1200, "schedule": "gradual", "initial_sparsity": 0.5}),
        "magnitude 97 % (gradual) + 4-bit codebook, fc1 at 90 %": dict(
            prune=0.97, layers={"fc1": {"prune": 0.9}},
            recover={"method": "finetune", "steps": 1500, "schedule": "gradual", "initial_sparsity": 0.5}),
        "magnitude 97 % (gradual) + 3-bit codebook, fc1 at 92 %": dict(
            prune=0.97, bits=3, layers={"fc1": {"prune": 0.92}},
            recover={"method": "finetune", "steps": 1500, "schedule": "gradual", "initial_sparsity": 0.5}),
    }
    lines += ["## Deep Compression storage (digits-mlp, LeNet-300-100 shape)", "",
              "| recipe | accuracy (baseline) | stored bytes (fp32) | smaller | recovery wall |", "|---|---|---|---|---|"]
    best = None
    for name, fields in candidates.items():
        fields = {"bits": 4, "scheme": "codebook", "prune_method": "magnitude", **fields}
        recipe = api.recipe_from_fields("digits-mlp", **fields)
        t0 = time.perf_counter()
        r = api.measure_or_load(recipe, db, "quick").result
        wall = time.perf_counter() - t0
        ratio = r.baseline_size_bytes / r.size_bytes
        loss = r.baseline_accuracy - r.accuracy
        lines.append(f"| {name} | {r.accuracy:.4f} ({r.baseline_accuracy:.4f}) | {r.size_bytes:,} "
                     f"({r.baseline_size_bytes:,}) | {ratio:.1f}x | {wall:.1f} s |")
        if loss <= 0.01 and (best is None or ratio > best[1]):
            best = (name, ratio, loss, recipe)
    lines.append("")
    if best:
        with tempfile.TemporaryDirectory() as tmp:
            out = api.export(Path(tmp) / "bundle", recipe=best[3], db=db)
            check = api.apply_bundle(Path(tmp) / "bundle")
        lines.append(f"- target >= 30x at <= 1 point loss: {_ok(best[1] >= 30)} ({best[0]}: {best[1]:.1f}x, "
                     f"loss {best[2] * 100:.2f} points); its bundle's compressed.bin is {out['size_bytes']:,} bytes and "
                     f"`apply` {'verified it (weights re-created bit for bit)' if not check['error'] else 'FAILED: ' + check['error']}")
    else:
        lines.append("- target >= 30x at <= 1 point loss: **missed** (no candidate within 1 point)")
    lines.append("- Han et al. (2016) report 40x for LeNet-300-100 on MNIST (784 inputs); digits has 64 inputs, so the "
                 "first layer is 12x smaller and the biases and header weigh more in the total.")
    lines.append("")


def distillation(lines: list[str], db: Path) -> None:
    """MiniLM structured 50 %: fidelity without and with distillation on the shipped corpus; speed-up paired."""
    lines += ["## Distillation (MiniLM, structured 50 %: heads and FFN channels)", "",
              "| recipe | fidelity | speed-up vs fp32 (paired, batch 1) | recovery |", "|---|---|---|---|"]
    rows = {}
    for name, recover in (("no recovery", None), ("distilled, 300 steps", {"method": "distill", "steps": 300}),
                          ("distilled, 1000 steps", {"method": "distill", "steps": 1000})):
        recipe = api.recipe_from_fields("minilm", prune=0.5, prune_method="structured", recover=recover)
        t0 = time.perf_counter()
        r = api.measure_or_load(recipe, db, "thorough").result
        wall = time.perf_counter() - t0
        rows[name] = r
        if r.error:
            lines.append(f"| {name} | failed: {r.error} | | |")
            continue
        lines.append(f"| {name} | {r.accuracy:.4f} | {r.speedup:.2f}x (spread {r.speedup_spread or 0:.0%}) | "
                     f"{wall:.0f} s wall |")
    best = max((r for r in rows.values() if r.error is None and r.recipe["recover"]["method"] != "none"),
               key=lambda r: r.accuracy, default=None)
    lines.append("")
    if best:
        lines.append(f"- target fidelity >= 0.95 and >= 1.7x: fidelity {_ok(best.accuracy >= 0.95)} "
                     f"({best.accuracy:.4f}), speed-up {_ok(best.speedup >= 1.7)} ({best.speedup:.2f}x)")
    lines.append("- corpus: `sample_models/minilm_corpus.txt` (its header states the source), disjoint from the 40 "
                 "evaluation sentences; loss: 1 - cosine between the compressed and uncompressed embeddings plus each "
                 "layer's hidden states' relative MSE (TinyBERT-style)")
    lines.append("")


def grid_and_search(lines: list[str], db: Path, search_s: float) -> None:
    """81-point grid vs a 5-minute search on digits-cnn; the search's pick timed against the grid's fastest."""
    import torch

    from engine.compress.pipeline import apply
    from engine.compress.precision import cast_inputs
    from engine.measure.latency import PROFILES, time_paired
    from engine.measure.run import default_threads
    from engine.models import base_model

    model = "digits-cnn"
    recipes, _ = api.sweep_grid(model, prune=[0.0, 0.3, 0.5, 0.7, 0.9], methods=["magnitude", "structured"],
                                bits=[None, 8, 4], precisions=["fp32", "fp16", "bf16"])
    t0 = time.perf_counter()
    api.sweep(recipes, db, profile="quick")
    grid_s = time.perf_counter() - t0
    keys = {r.key for r in recipes}
    rows = [r for r in api.results(db, model)["rows"] if r["recipe_key"] in keys and r["error"] is None]
    baseline = next(r["baseline_accuracy"] for r in rows)
    threshold = 0.99 * baseline
    t0 = time.perf_counter()
    found = api.search(model, db, "0.99x", "latency:min,size:min", budget_s=search_s)
    search_wall = time.perf_counter() - t0
    lines += [f"## Search vs grid (digits-cnn, threshold 0.99x baseline = {threshold:.4f})", "",
              f"- grid: {len(recipes)} recipes (prune none/magnitude/structured 30-90 % x bits none/8/4 x fp32/fp16/bf16), "
              f"measured in {grid_s:.0f} s, {len(rows)} ran",
              f"- search: {found['trials_done']} trials in {search_wall:.0f} s (budget {search_s:.0f} s), "
              f"{found['feasible']} feasible, {len(found['found'])} non-dominated", ""]
    feasible_grid = [r for r in rows if r["accuracy"] >= threshold]
    fastest = max(feasible_grid, key=lambda r: r["speedup"])
    objs = pareto.parse_objectives("accuracy:max,speedup:max,size:min")

    def dominated(p: dict) -> bool:
        return any(all((g[o.column] >= p[o.column]) if o.sense == "max" else (g[o.column] <= p[o.column]) for o in objs)
                   and any((g[o.column] > p[o.column]) if o.sense == "max" else (g[o.column] < p[o.column]) for o in objs)
                   for g in rows)

    search_rows = {r["id"]: r for r in api.results(db, model)["rows"]}
    picks = [search_rows[f["row_id"]] for f in found["found"]]
    undominated = [p for p in picks if not dominated(p)]
    lines += ["| | recipe | accuracy | speed-up (paired with fp32) | size |", "|---|---|---|---|---|",
              f"| grid's fastest at the threshold | {fastest['label']} | {fastest['accuracy']:.4f} | "
              f"{fastest['speedup']:.2f}x | {fastest['size_bytes']:,} |"]
    for p in picks:
        lines.append(f"| search{'' if p in undominated else ' (dominated by a grid point)'} | {p['label']} | "
                     f"{p['accuracy']:.4f} | {p['speedup']:.2f}x | {p['size_bytes']:,} |")
    lines.append("")
    if not undominated:
        lines += ["- target: **missed** (every search pick is dominated by a grid point)", ""]
        return
    pick = max(undominated, key=lambda r: r["speedup"])
    # The pick and the grid's fastest, timed in alternating blocks in one process: their ratio is paired.
    base, spec = base_model(model)
    ra, rb = api.recipe_of_row(pick["id"], db), api.recipe_of_row(fastest["id"], db)
    a, b = apply(base, ra, spec), apply(base, rb, spec)
    xa = cast_inputs(spec.example_inputs(1), ra.precision, "cpu")
    xb = cast_inputs(spec.example_inputs(1), rb.precision, "cpu")
    threads = default_threads()
    torch.set_num_threads(threads)
    with torch.inference_mode():
        t = time_paired(lambda: spec.forward(a.model, xa), lambda: spec.forward(b.model, xb), PROFILES["thorough"],
                        threads, threads)
    lines += [f"- no grid point dominates the search's pick ({pick['label']}): **met**",
              f"- the pick against the grid's fastest feasible point, timed side by side (ABAB blocks, thorough): "
              f"{t.speedup:.2f}x faster (spread {t.speedup_spread:.0%}): {_ok(t.speedup > 1.0)}", ""]


def sensitivity_consistency(lines: list[str], db: Path) -> None:
    runs = [api.sensitivity("digits-cnn", db, "prune", None, "magnitude", fresh=True) for _ in range(2)]
    same = runs[0]["ranking"][:3] == runs[1]["ranking"][:3]
    lines += ["## Sensitivity (digits-cnn, magnitude pruning one layer at a time, levels 30/50/70/90 %)", "",
              "| layer | size share | time share | drop @30 % | @50 % | @70 % | @90 % |", "|---|---|---|---|---|---|---|"]
    for name in runs[0]["ranking"]:
        r = next(x for x in runs[0]["layers"] if x["layer"] == name)
        d = r["drops"]
        lines.append(f"| {name} | {r['size_share']:.1%} | {r['latency_share']:.1%} | "
                     + " | ".join(f"{d[k] * 100:+.1f} pt" for k in ("0.3", "0.5", "0.7", "0.9")) + " |")
    lines += ["", f"- top 3 in two runs: {runs[0]['ranking'][:3]} and {runs[1]['ranking'][:3]}: {_ok(same)} "
              f"({runs[0]['wall_s']:.1f} s and {runs[1]['wall_s']:.1f} s); accuracy is evaluated on the fixed split, "
              "so the drops themselves repeat exactly; the time shares (forward hooks) vary run to run", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/RESULTS-recovery.md")
    parser.add_argument("--search-s", type=float, default=300.0)
    parser.add_argument("--only", default="storage,distill,search,sensitivity")
    args = parser.parse_args()
    only = set(args.only.split(","))
    lines = ["# Recovery, search and Deep Compression storage", "",
             machine_line("bench.bench_recovery " + " ".join(os.sys.argv[1:])), ""]
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        for name, fn in (("sensitivity", lambda: sensitivity_consistency(lines, db)),
                         ("storage", lambda: deep_compression(lines, db)),
                         ("search", lambda: grid_and_search(lines, db, args.search_s)),
                         ("distill", lambda: distillation(lines, db))):
            if name in only:
                t0 = time.perf_counter()
                fn()
                print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
