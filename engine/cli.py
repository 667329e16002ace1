"""Command line: parse -> build a Recipe -> call an engine verb -> print. No compression logic here.

With --json, stdout holds exactly one JSON object; progress and logs go to stderr. Bad input is one
line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from engine.errors import UserError
from engine.pareto import DEFAULT_OBJECTIVES
from engine.recipe import BITS, PRECISIONS, PRUNE_METHODS, PRUNE_SCOPES, Prune, Quantize, Recipe
from engine.units import fmt_bytes

EXIT_USAGE = 2
DEFAULT_DB = "results.db"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints the whole usage)
        raise UserError(f"{self.prog}: {message}")


def _bits(text: str) -> int | None:
    if text.lower() in ("none", "fp", "0x"):
        return None
    try:
        return int(text)
    except ValueError:
        raise UserError(f"--bits={text!r} is not allowed: choose none or an integer 2 to 8") from None


def _amount(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"--prune={text!r} is not a number: allowed 0 to 0.99") from None


def add_recipe_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required, help="registered model name (see `models`)")
    p.add_argument("--prune", type=_amount, default=0.0, help="fraction of weights/channels to remove, 0-0.99")
    p.add_argument("--prune-method", default="magnitude", choices=[m for m in PRUNE_METHODS if m != "none"])
    p.add_argument("--prune-scope", default="global", choices=PRUNE_SCOPES)
    p.add_argument("--finetune-epochs", type=int, default=0, help="retrain this many epochs after pruning")
    p.add_argument("--bits", type=_bits, default=None, help=f"none or {BITS[0]}-{BITS[-1]}")
    p.add_argument("--scheme", default=None, choices=["weight-only", "dynamic"],
                   help="default: dynamic (real int8 kernel) at fp32 on cpu, weight-only otherwise")
    p.add_argument("--granularity", default="per-channel", choices=["per-channel", "per-group"])
    p.add_argument("--group-size", type=int, default=32)
    p.add_argument("--precision", default="fp32", help=f"one of {', '.join(PRECISIONS)}")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch-size", type=int, default=1)


def recipe_from_args(a: argparse.Namespace) -> Recipe:
    from engine.registry import get_spec
    from engine.sweep import default_scheme
    from engine.transforms import check_device

    get_spec(a.model)  # unknown model or missing device: clear error before anything runs
    check_device(a.device)
    scheme = a.scheme or default_scheme(a.precision, a.device)
    return Recipe(
        model=a.model,
        prune=Prune(method=a.prune_method if a.prune else "none", amount=a.prune, scope=a.prune_scope,
                    finetune_epochs=a.finetune_epochs),
        quantize=Quantize(bits=a.bits, scheme=scheme, granularity=a.granularity, group_size=a.group_size),
        precision=a.precision, device=a.device, batch_size=a.batch_size)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m engine", description="Measure and choose model-compression trade-offs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs on stderr")
    sub = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)

    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("run", help="apply one recipe and measure it")
    add_recipe_args(p)
    p.add_argument("--profile", default="quick", choices=["quick", "thorough"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("sweep", help="measure a grid of recipes into a results store (resumable)")
    p.add_argument("--model", required=True)
    p.add_argument("--prune", type=lambda t: [_amount(x) for x in t.split(",")], default=[0.0],
                   help="comma-separated amounts, e.g. 0,0.3,0.6,0.9")
    p.add_argument("--prune-method", type=_list, default=["magnitude"], help="magnitude,structured")
    p.add_argument("--finetune-epochs", type=int, default=0, help="retrain pruned configurations this many epochs")
    p.add_argument("--bits", type=lambda t: [_bits(x) for x in t.split(",")], default=[None], help="e.g. none,8,4")
    p.add_argument("--precision", type=_list, default=["fp32"], help="e.g. fp32,bf16")
    p.add_argument("--scheme", type=_list, default=None, help="default: the fastest real path per precision")
    p.add_argument("--granularity", default="per-channel", choices=["per-channel", "per-group"])
    p.add_argument("--group-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--db", default=DEFAULT_DB, help=f"SQLite results file (default {DEFAULT_DB})")
    p.add_argument("--profile", default="thorough", choices=["quick", "thorough"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--retry-failed", action="store_true", help="measure failed configurations again")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("frontier", help="the non-dominated configurations of a model")
    p.add_argument("--model", required=True)
    p.add_argument("--db", default=DEFAULT_DB)
    p.add_argument("--objectives", default=",".join(DEFAULT_OBJECTIVES),
                   help="2-3 of accuracy,latency,size,memory,energy,params with :max/:min")
    p.add_argument("--min-accuracy", default=None, help="absolute (0.95) or relative to baseline (0.99x)")
    p.add_argument("--all-devices", action="store_true", help="include rows measured on other machines")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("export", help="write a verified bundle (recipe, ONNX, PyTorch weights, storage, report)")
    p.add_argument("--out", required=True, help="bundle folder to create")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--db", default=None, help="results store: with --id, export that stored row")
    p.add_argument("--id", type=int, default=None, help="row id from `results` / the dashboard")
    add_recipe_args(p, required=False)
    p.add_argument("--profile", default="thorough", choices=["quick", "thorough"])
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("apply", help="re-create a bundle's compressed model from its recipe and compare")
    p.add_argument("--recipe", required=True, help="recipe.json (a bundle's, or a bare recipe)")
    p.add_argument("--out", default=None, help="also write a new bundle here")
    p.add_argument("--force", action="store_true")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("results", help="every stored row, flat")
    p.add_argument("--db", default=DEFAULT_DB)
    p.add_argument("--model", default=None)
    p.add_argument("--format", default="table", choices=["table", "csv", "json"])
    return parser


def _list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _open_store(path: str, must_exist: bool = False):
    from engine.store import Store

    if must_exist and not Path(path).exists():
        raise UserError(f"no results database at {path}: run `python -m engine sweep --db {path} ...` first")
    return Store(path)


def cmd_sweep(a: argparse.Namespace) -> dict[str, Any]:
    from engine.registry import get_spec
    from engine.sweep import expand_grid, run_sweep
    from engine.transforms import check_device

    get_spec(a.model)
    check_device(a.device)
    for m in a.prune_method:
        if m not in ("magnitude", "structured"):
            raise UserError(f"--prune-method={m!r} is not allowed: choose magnitude or structured")
    recipes, skipped = expand_grid(a.model, a.prune, a.prune_method, a.bits, a.precision, a.scheme,
                                   a.granularity, a.group_size, a.device, a.batch_size, a.finetune_epochs)
    for s in skipped:
        print(f"skipped combinations: {s}", file=sys.stderr)
    bar = _ProgressBar(len(recipes))
    with _open_store(a.db) as store:
        summary = run_sweep(recipes, store, profile=a.profile, threads=a.threads, on_progress=bar.update,
                            retry_failed=a.retry_failed)
    bar.close()
    return {"db": a.db, **summary.__dict__, "skipped_combinations": skipped}


class _ProgressBar:
    """configs done / total with ETA on stderr (one redrawn line on a terminal, plain lines otherwise)."""

    def __init__(self, total: int) -> None:
        self.total, self.tty = total, sys.stderr.isatty()

    def update(self, done: int, total: int, recipe: Recipe, result, eta: float) -> None:
        width = 24
        fill = int(width * done / max(total, 1))
        status = "FAILED" if result is not None and result.error else "ok"
        line = (f"[{'#' * fill}{'.' * (width - fill)}] {done}/{total}  ETA {eta:4.0f}s  "
                f"{recipe.label()} {status}")
        print(("\r" + line.ljust(100)) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr,
              flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def print_sweep(out: dict[str, Any]) -> None:
    print(f"{out['measured']} measured ({out['failed']} failed), {out['skipped_existing']} already in {out['db']}, "
          f"{out['total']} in the grid, {out['wall_s']:.1f} s" + ("; stopped early" if out["stopped"] else ""))


def cmd_frontier(a: argparse.Namespace) -> dict[str, Any]:
    from engine.measure.fingerprint import fingerprint
    from engine.pareto import frontier, parse_min_accuracy, parse_objectives

    objectives = parse_objectives(a.objectives)
    with _open_store(a.db, must_exist=True) as store:
        rows = store.rows(model=a.model, device_id=None if a.all_devices else fingerprint()["id"])
    if not rows:
        raise UserError(f"no results for model {a.model!r} on this machine in {a.db}: run a sweep first")
    baseline = next((r["baseline_accuracy"] for r in rows if r["baseline_accuracy"] is not None), None)
    out = frontier(rows, objectives, parse_min_accuracy(a.min_accuracy, baseline))
    front = [r for r in out["rows"] if r["on_frontier"]]
    return {"model": a.model, "objectives": out["objectives"], "min_accuracy": out["min_accuracy"],
            "hypervolume": out["hypervolume"],
            "hypervolume_reference": "costs / uncompressed cost; accuracy 0 and 1.1 x the largest normalised cost",
            "frontier": [_public(r) for r in sorted(front, key=lambda r: -(r["accuracy"] or 0))],
            "considered": sum(r["eligible"] for r in out["rows"]),
            "failed": [{"id": r["id"], "label": r["label"], "error": r["error"]} for r in rows if r["error"]]}


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("recipe_json", "eligible", "on_frontier")}


def print_frontier(out: dict[str, Any]) -> None:
    names = [o["name"] for o in out["objectives"]]
    print(f"{out['model']}: {len(out['frontier'])} of {out['considered']} configurations are on the "
          f"{' / '.join(names)} frontier (hypervolume {out['hypervolume']:.4g})")
    if out["min_accuracy"] is not None:
        print(f"constraint: accuracy >= {out['min_accuracy']:.4f}")
    _table(out["frontier"], ["id", "label", "accuracy", "latency_p50_ms", "size_bytes", "peak_memory_bytes",
                             "energy_j", "energy_source"])
    for f in out["failed"]:
        print(f"failed #{f['id']} {f['label']}: {f['error']}")


def cmd_export(a: argparse.Namespace) -> dict[str, Any]:
    from engine.export import export
    from engine.measure.fingerprint import fingerprint

    result, rows = None, None
    if a.id is not None:
        if not a.db:
            raise UserError("--id needs --db (the results store the row is in)")
        with _open_store(a.db, must_exist=True) as store:
            result = store.get_id(a.id)
            recipe = Recipe.from_dict(result.recipe)
            rows = store.rows(model=recipe.model, device_id=result.device.get("id"))
        if result.error:
            raise UserError(f"row {a.id} is a failed configuration ({result.error}): nothing to export")
    elif a.model:
        recipe = recipe_from_args(a)
        if a.db:
            with _open_store(a.db, must_exist=True) as store:
                rows = store.rows(model=recipe.model, device_id=fingerprint()["id"])
    else:
        raise UserError("export needs --db with --id, or --model with the recipe flags")
    print(f"exporting {recipe.model}: {recipe.label()} to {a.out}", file=sys.stderr)
    return export(recipe, a.out, result=result, rows=rows, force=a.force, profile=a.profile)


def print_export(out: dict[str, Any]) -> None:
    print(f"wrote {out['out']}: {', '.join(out['files'])}")
    print(f"  accuracy {out['accuracy']:.4f} in PyTorch, {out['onnx_accuracy']:.4f} in ONNX Runtime "
          f"(gap {out['gap']:.4f})")
    print(f"  compressed.bin {fmt_bytes(out['size_bytes'])} vs {fmt_bytes(out['fp32_bytes'])} fp32: "
          f"{out['compression_ratio']:.1f}x smaller")
    for w in out["warnings"]:
        print(f"  warning  {w}")


def cmd_apply(a: argparse.Namespace) -> dict[str, Any]:
    from engine.export import export, read_recipe, reapply

    recipe, record = read_recipe(a.recipe)
    if a.out and Path(a.out).exists() and not a.force:
        raise UserError(f"{a.out} already exists: choose another --out or pass --force to replace it")
    print(f"re-applying {recipe.model}: {recipe.label()}", file=sys.stderr)
    out = reapply(recipe, record)
    if a.out:
        out["bundle"] = export(recipe, a.out, force=a.force)
    out["error"] = None if out["identical_weights"] is not False and out["same_accuracy"] is not False else \
        "the re-created model differs from the recorded one"
    return out


def print_apply(out: dict[str, Any]) -> None:
    print(f"re-created {out['recipe']['model']} (recipe {out['recipe_key']}): accuracy {out['accuracy']:.4f}")
    if out["recorded_accuracy"] is not None:
        print(f"  recorded accuracy {out['recorded_accuracy']:.4f}: "
              f"{'same' if out['same_accuracy'] else 'DIFFERENT'}")
    if out["recorded_weights_sha256"]:
        print(f"  weights {'identical' if out['identical_weights'] else 'DIFFERENT'} "
              f"(sha256 {out['weights_sha256'][:16]})")
    if out.get("bundle"):
        print(f"  new bundle: {out['bundle']['out']}")


def cmd_results(a: argparse.Namespace) -> dict[str, Any]:
    with _open_store(a.db, must_exist=True) as store:
        rows = store.rows(model=a.model)
    return {"rows": [_public(r) for r in rows], "format": a.format}


def print_results(out: dict[str, Any]) -> None:
    import csv

    rows = out["rows"]
    if out["format"] == "json":
        json.dump(rows, sys.stdout, default=str)
        print()
    elif out["format"] == "csv":
        if rows:
            w = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        _table(rows, ["id", "model", "label", "accuracy", "latency_p50_ms", "size_bytes", "energy_j",
                      "energy_source", "error"])


def _table(rows: list[dict[str, Any]], cols: list[str]) -> None:
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def cmd_models(a: argparse.Namespace) -> dict[str, Any]:
    from engine.registry import model_names
    from engine.runner import base_model

    rows = []
    for name in model_names():
        model, spec = base_model(name)
        rows.append({"name": name, "task": spec.task, "description": spec.description,
                     "parameters": sum(p.numel() for p in model.parameters()), "metric": spec.metric,
                     "source": spec.source})
    return {"models": rows}


def print_models(out: dict[str, Any]) -> None:
    for r in out["models"]:
        print(f"{r['name']:<12} {r['parameters']:>11,} params  {r['task']}")
        print(f"{'':<12} metric: {r['metric']}")
        print(f"{'':<12} source: {r['source']}")


def cmd_run(a: argparse.Namespace) -> dict[str, Any]:
    from engine.runner import measure

    recipe = recipe_from_args(a)
    print(f"measuring {recipe.model}: {recipe.label()} ({a.profile})", file=sys.stderr)
    return measure(recipe, profile=a.profile, threads=a.threads).to_dict()


def print_result(r: dict[str, Any]) -> None:
    rec = Recipe.from_dict(r["recipe"])
    print(f"{r['model']}  {rec.label()}  (key {rec.key})")
    if r["error"]:
        print(f"  FAILED: {r['error']}")
        return
    print(f"  accuracy   {r['accuracy']:.4f}  (baseline {r['baseline_accuracy']:.4f}; {r['metric']})")
    for k, v in r["extra_metrics"].items():
        print(f"  {k:<10} {v:.4f}")
    print(f"  params     {r['params_nonzero']:,} non-zero of {r['params_total']:,}")
    print(f"  size       {fmt_bytes(r['size_bytes'])} stored (fp32 baseline {fmt_bytes(r['baseline_size_bytes'])})")
    lat = r["latency_ms"]
    if lat:
        print(f"  latency    p50 {lat['p50']:.3f} ms, p90 {lat['p90']:.3f}, p99 {lat['p99']:.3f} "
              f"(IQR/median {lat['iqr_ratio']:.0%}, {lat['calls']} calls, batch {lat['batch_size']}, "
              f"{lat['threads']} threads)")
    if r["peak_memory_bytes"] is not None:
        print(f"  memory     {fmt_bytes(r['peak_memory_bytes'])} peak ({r['memory_source']})")
    if r["energy_j"] is not None:
        print(f"  energy     {r['energy_j'] * 1e3:.3f} mJ/inference [{r['energy_source']}]")
    for k in r["kernels"]:
        print(f"  kernel     {k['step']}: {k['kernel']}")
    for w in r["warnings"]:
        print(f"  warning    {w}")


COMMANDS = {"models": (cmd_models, print_models), "run": (cmd_run, print_result),
            "sweep": (cmd_sweep, print_sweep), "frontier": (cmd_frontier, print_frontier),
            "export": (cmd_export, print_export), "apply": (cmd_apply, print_apply),
            "results": (cmd_results, print_results)}


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the defaults download nothing
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=UserWarning)
    try:
        a = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.DEBUG if a.verbose else logging.WARNING, stream=sys.stderr,
                            format="%(levelname)s %(name)s: %(message)s")
        run, show = COMMANDS[a.verb]
        out = run(a)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if getattr(a, "json", False):
        json.dump(out, sys.stdout, default=str)
        sys.stdout.write("\n")
    else:
        show(out)
    return 1 if isinstance(out, dict) and out.get("error") else 0
