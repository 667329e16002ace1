"""Command line: parse -> call an engine.api verb -> print. No compression or measurement logic here.

With --json, stdout holds exactly one strict JSON object (no NaN); progress and logs go to stderr. Bad
input is one line on stderr and exit code 2, never a traceback; a configuration that failed, or a
bundle that does not verify, exits 1.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
import traceback
import warnings
from typing import Any, Sequence

from engine.core.errors import UserError, VerificationError
from engine.core.recipe import BITS, PRECISIONS, PRUNE_METHODS, PRUNE_SCOPES, RUNTIMES, Recipe
from engine.core.result import strict
from engine.core.units import fmt_bytes, fmt_energy, fmt_ms, fmt_speedup
from engine.runtimes import PREPARE

EXIT_FAILED = 1
EXIT_USAGE = 2
DEFAULT_DB = "results.db"


# Flag parsers raise ArgumentTypeError: argparse shows its message (any other error becomes "invalid <name> value").
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints the whole usage)
        raise UserError(f"{self.prog}: {message}")


def _bits(text: str) -> int | None:
    if text.lower() in ("none", "fp"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not allowed: choose none or an integer {BITS[0]} to "
                                         f"{BITS[-1]}") from None


def _amount(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number: allowed 0 to 0.99") from None


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an integer") from None


def _list(parse):
    def many(text: str) -> list:
        return [parse(x.strip()) for x in text.split(",") if x.strip()]
    return many


def add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required,
                   help="a registered name (see `models`), hf:<folder or hub id> (with --task and --eval-data) or "
                        "py:<file.py> (see README, 'Use your own model')")
    p.add_argument("--task", default=None, help="for hf: models: feature-extraction, text-classification or "
                                                "image-classification")
    p.add_argument("--eval-data", default=None, help="for hf: models: CSV/JSONL (text[,label]) or a folder of class "
                                                     "folders of images")
    p.add_argument("--allow-network", action="store_true",
                   help="let an hf: hub id download (safetensors and configs only); off by default")


def model_from_args(a: argparse.Namespace) -> str | None:
    """The model's canonical name (a user model's carries a hash of its weights and evaluation data)."""
    from engine import api

    if getattr(a, "allow_network", False):
        os.environ["HF_HUB_OFFLINE"] = "0"
    return None if a.model is None else api.model_name(a.model, a.task, a.eval_data)


def add_recipe_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    add_model_args(p, required)
    p.add_argument("--prune", type=_amount, default=0.0, help="fraction of weights/channels to remove, 0-0.99")
    p.add_argument("--prune-method", default="magnitude", help=f"one of {', '.join(PRUNE_METHODS[1:])}")
    p.add_argument("--prune-scope", default="global", help=f"one of {', '.join(PRUNE_SCOPES)}")
    p.add_argument("--finetune-epochs", type=_int, default=0,
                   help="retrain this many epochs after pruning")
    p.add_argument("--bits", type=_bits, default=None, help=f"none or {BITS[0]}-{BITS[-1]}")
    p.add_argument("--scheme", default=None, help="weight-only or dynamic (default: dynamic, a real int8 kernel, "
                                                  "at fp32 on cpu; weight-only otherwise)")
    p.add_argument("--granularity", default="per-channel", help="per-channel or per-group")
    p.add_argument("--group-size", type=_int, default=32)
    p.add_argument("--precision", default="fp32", help=f"one of {', '.join(PRECISIONS)}")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch-size", type=_int, default=1)
    p.add_argument("--runtime", default="eager", help=f"one of {', '.join(RUNTIMES)}")
    p.add_argument("--threads", type=_int, default=None, help="intra-op threads (default: physical cores)")
    p.add_argument("--layers", type=_json_object, default=None, metavar="JSON",
                   help='per-layer overrides, e.g. \'{"fc1": {"prune": 0.2}, "conv*": {"bits": "none"}}\' '
                        "(exact names win over patterns; see `sensitivity` for the names)")
    p.add_argument("--recover", default="none", help="retrain after compressing: none, finetune or distill")
    p.add_argument("--recover-steps", type=_int, default=0, help="optimizer steps of the recovery")
    p.add_argument("--recover-lr", type=_amount, default=None, help="learning rate (default: the model's)")
    p.add_argument("--schedule", default="one-shot",
                   help="one-shot or gradual (magnitude sparsity raised from --initial-sparsity along a cubic ramp)")
    p.add_argument("--initial-sparsity", type=_amount, default=0.0)
    p.add_argument("--qat", action="store_true", help="train through fake-quantized weights (straight-through)")
    p.add_argument("--temperature", type=_amount, default=2.0, help="distillation temperature (classifiers)")


def _json_object(text: str) -> dict:
    from engine.core.recipe import parse_json

    try:
        value = parse_json(text, "--layers")
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("give a JSON object {layer name or pattern: {prune, bits}}")
    return value


def _recover_from_args(a: argparse.Namespace) -> dict[str, Any] | None:
    given = (a.recover_steps, a.recover_lr is not None, a.schedule != "one-shot", a.initial_sparsity, a.qat,
             a.temperature != 2.0)
    if a.recover == "none" and not any(given):
        return None
    return {"method": a.recover, "steps": a.recover_steps, "lr": a.recover_lr, "schedule": a.schedule,
            "initial_sparsity": a.initial_sparsity, "qat": a.qat, "temperature": a.temperature}


def recipe_from_args(a: argparse.Namespace) -> Recipe:
    from engine import api

    return api.recipe_from_fields(
        model_from_args(a), prune=a.prune, prune_method=a.prune_method, prune_scope=a.prune_scope,
        finetune_epochs=a.finetune_epochs, bits=a.bits, scheme=a.scheme, granularity=a.granularity,
        group_size=a.group_size, precision=a.precision, device=a.device, batch_size=a.batch_size,
        runtime=a.runtime, threads=a.threads, layers=a.layers, recover=_recover_from_args(a))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m engine", description="Measure and choose model-compression trade-offs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs (and tracebacks) on stderr")
    sub = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)

    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("run", help="apply one recipe and measure it")
    add_recipe_args(p)
    p.add_argument("--profile", default="quick", help="quick or thorough")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("sweep", help="measure a grid of recipes into a results store (resumable)")
    add_model_args(p)
    p.add_argument("--prune", type=_list(_amount), default=[0.0], help="comma-separated amounts, e.g. 0,0.3,0.6,0.9")
    p.add_argument("--prune-method", type=_list(str), default=["magnitude"], help="magnitude,structured")
    p.add_argument("--finetune-epochs", type=_int, default=0,
                   help="retrain pruned configurations this many epochs")
    p.add_argument("--bits", type=_list(_bits), default=[None], help="e.g. none,8,4")
    p.add_argument("--precision", type=_list(str), default=["fp32"], help="e.g. fp32,bf16")
    p.add_argument("--scheme", type=_list(str), default=None, help="default: the fastest real path per precision")
    p.add_argument("--granularity", default="per-channel")
    p.add_argument("--group-size", type=_int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=_list(_int), default=[1], help="e.g. 1,8,64")
    p.add_argument("--runtime", type=_list(str), default=["eager"], help=f"e.g. {','.join(RUNTIMES)}")
    p.add_argument("--db", default=DEFAULT_DB, help=f"SQLite results file (default {DEFAULT_DB})")
    p.add_argument("--profile", default="thorough", help="quick or thorough")
    p.add_argument("--threads", type=_list(_int), default=[None], help="e.g. 1,2 (default: physical cores)")
    p.add_argument("--executor", choices=["in-process", "ray"], default="in-process",
                   help="ray: measure on every machine type of a Ray cluster (pip install -r requirements-ray.txt)")
    p.add_argument("--address", default=None,
                   help="with --executor ray: auto (the cluster `ray start` made here), ray://HOST:10001 or "
                        "HOST:6379; default: a private Ray instance on this machine")
    p.add_argument("--resources", default=None,
                   help='with --executor ray: what one measurement claims, e.g. \'{"GPU": 1}\' (default: all CPUs '
                        'of its node)')
    p.add_argument("--node-label", action="append", default=None, metavar="KEY=VALUE",
                   help="with --executor ray: only nodes started with this label (ray start --labels)")
    p.add_argument("--retry-failed", action="store_true", help="measure failed configurations again")
    p.add_argument("--remeasure-contended", action="store_true",
                   help="measure again the configurations stored as contended (or by an older engine)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("frontier", help="the non-dominated configurations of a model")
    add_model_args(p)
    p.add_argument("--db", default=DEFAULT_DB)
    p.add_argument("--objectives", default="accuracy:max,latency:min,size:min",
                   help="2-3 of accuracy,latency,size,memory,energy,params,speedup")
    p.add_argument("--min-accuracy", default=None, help="absolute (0.95) or relative to baseline (0.99x)")
    p.add_argument("--device", default=None, metavar="ID",
                   help="the machine whose frontier to show: its id or first characters (default: this one)")
    p.add_argument("--all-devices", action="store_true",
                   help="one frontier per machine the store holds rows of (they never compete with each other)")
    p.add_argument("--batch-size", type=_int, default=None,
                   help="the batch size whose rows compete (default: the smallest stored)")
    p.add_argument("--include-contended", action="store_true",
                   help="let rows measured on a busy machine compete (they are left out by default)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("export", help="write a verified bundle (recipe, ONNX, PyTorch weights, storage, report)")
    p.add_argument("--out", required=True, help="bundle folder to create")
    p.add_argument("--force", action="store_true", help="replace --out if it is a bundle written by this tool")
    p.add_argument("--db", default=None, help="results store: with --id, export that stored row")
    p.add_argument("--id", type=_int, default=None, help="row id from `results` / the dashboard")
    add_recipe_args(p, required=False)
    p.add_argument("--profile", default="thorough", help="quick or thorough")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("apply", help="verify a bundle (or re-create a bare recipe) and optionally re-export it")
    p.add_argument("--recipe", required=True, help="a bundle folder, its recipe.json, or a bare recipe file")
    p.add_argument("--out", default=None, help="also write a new bundle here")
    p.add_argument("--force", action="store_true")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("sensitivity", help="each layer's accuracy drop when compressed alone (stored)")
    add_model_args(p)
    p.add_argument("--technique", default="prune", help="prune or quantize")
    p.add_argument("--prune-method", default="magnitude", help="for prune: magnitude or structured")
    p.add_argument("--levels", type=_list(_amount), default=None,
                   help="prune amounts (default 0.3,0.5,0.7,0.9) or bit widths (default 8,4,3,2)")
    p.add_argument("--db", default=DEFAULT_DB)
    p.add_argument("--fresh", action="store_true", help="measure again even if stored")
    p.add_argument("--progress", default=None, metavar="FILE", help="write the progress as JSON after each layer")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("search", help="find the cheapest recipes above an accuracy threshold (Optuna; resumable)")
    add_model_args(p)
    p.add_argument("--min-accuracy", required=True, help="absolute (0.95) or relative to the baseline (0.99x)")
    p.add_argument("--objectives", default="latency:min,size:min",
                   help="2-3 of latency,size,memory,energy,params,speedup,accuracy (latency: 1 / paired speed-up)")
    stop = p.add_mutually_exclusive_group(required=True)
    stop.add_argument("--trials", type=_int, default=None, help="trials the study should hold (a rerun resumes)")
    stop.add_argument("--budget-s", type=_amount, default=None, help="seconds this run may take")
    p.add_argument("--db", default=DEFAULT_DB)
    p.add_argument("--profile", default="quick", help="quick or thorough")
    p.add_argument("--progress", default=None, metavar="FILE", help="write the progress as JSON after each trial")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("results", help="every stored row, flat")
    p.add_argument("--db", default=DEFAULT_DB)
    p.add_argument("--model", default=None)
    p.add_argument("--device", default=None, metavar="ID", help="only the machine whose id starts with ID")
    p.add_argument("--format", default="table", choices=["table", "csv", "json"])
    p.add_argument("--export", default=None, metavar="FILE",
                   help="write the rows (each with its machine) to a results file to share")
    p.add_argument("--import", dest="import_", default=None, metavar="FILE",
                   help="merge a results file (e.g. a classmate's) into --db; rows keep their machine")
    return parser


# --- verbs ----------------------------------------------------------------------------------------------
def cmd_models(a: argparse.Namespace) -> dict[str, Any]:
    from engine import api

    return {"models": api.models()}


def print_models(out: dict[str, Any]) -> None:
    for r in out["models"]:
        if not r["available"]:
            print(f"{r['name']:<12} unavailable here: {r['error']}")
            continue
        print(f"{r['name']:<12} {r['parameters']:>11,} params  {r['task']}")
        print(f"{'':<12} metric: {r['metric']}")
        print(f"{'':<12} source: {r['source']}")


def cmd_run(a: argparse.Namespace) -> dict[str, Any]:
    from engine import api

    recipe = recipe_from_args(a)
    api.check_profile(a.profile)
    api.check_settings()
    api.load_model(recipe.model)
    print(f"measuring {recipe.model}: {recipe.label()} ({a.profile})", file=sys.stderr)
    return api.measure(recipe, profile=a.profile).to_dict()


def print_result(r: dict[str, Any]) -> None:
    rec = Recipe.from_dict(r["recipe"])
    print(f"{r['model']}  {rec.label()}  (key {rec.key})")
    if r["error"]:
        print(f"  FAILED: {r['error']}")
        return
    name = "fidelity" if r["metric_kind"] == "fidelity" else "accuracy"
    print(f"  {name:<10} {r['accuracy']:.4f}  (baseline {r['baseline_accuracy']:.4f}; {r['metric']})")
    for k, v in r["extra_metrics"].items():
        print(f"  {k:<10} {v:.4f}")
    print(f"  params     {r['params_nonzero']:,} non-zero of {r['params_total']:,}")
    print(f"  size       {fmt_bytes(r['size_bytes'])} stored (fp32 baseline {fmt_bytes(r['baseline_size_bytes'])})")
    lat = r["latency_ms"]
    if lat:
        print(f"  latency    p50 {fmt_ms(lat['p50'])}, p90 {fmt_ms(lat['p90'])}, p99 {fmt_ms(lat['p99'])} "
              f"(IQR/median {lat['iqr_ratio']:.0%}, {lat['calls']} calls, batch {lat['batch_size']}, "
              f"{lat['threads']} of {lat['threads_requested']} threads)")
        print(f"  speed-up   {fmt_speedup(r['speedup'])} than the uncompressed eager fp32 model (paired, spread "
              f"{(r['speedup_spread'] or 0):.0%})")
        print(f"  machine    other work used {lat['foreign_cpu']:.2f} cores while timing"
              + ("  CONTENDED: re-measure when the machine is quiet" if lat["contended"] else ""))
    if r["peak_memory_bytes"] is not None:
        print(f"  memory     {fmt_bytes(r['peak_memory_bytes'])} peak ({r['memory_source']})")
    if r["energy_j"] is not None:
        print(f"  energy     {fmt_energy(r['energy_j'])}/inference [{r['energy_source']}]")
    for k in r["kernels"]:
        print(f"  kernel     {k['step']}: {k['kernel']}{' (simulated)' if k['simulated'] else ''}")
    if r.get("prepare_s") is not None:
        what = PREPARE.get(Recipe.from_dict(r["recipe"]).runtime, "preparing the runtime")
        print(f"  prepared   in {r['prepare_s']:.1f} s ({what}; not in the latency)")
    for w in r["warnings"]:
        print(f"  warning    {w}")


def cmd_sweep(a: argparse.Namespace) -> dict[str, Any]:
    from engine import api

    api.check_settings()
    on_cluster = a.executor == "ray"
    if not on_cluster and (a.address or a.resources or a.node_label):
        raise UserError("--address, --resources and --node-label go with --executor ray")
    cluster = api.ClusterOptions.parse(a.address, a.resources, a.node_label) if on_cluster else None
    recipes, skipped = api.sweep_grid(
        model_from_args(a), here=not on_cluster, prune=a.prune, methods=a.prune_method, bits=a.bits, precisions=a.precision, schemes=a.scheme,
        granularity=a.granularity, group_size=a.group_size, device=a.device, batch_size=a.batch_size,
        finetune_epochs=a.finetune_epochs, runtimes=a.runtime, threads=a.threads)
    for s in skipped:
        print(f"skipped combinations: {s}", file=sys.stderr)
    bar = _ProgressBar(per_device=cluster is not None)
    if cluster is not None:
        summary = api.cluster_sweep(recipes, a.db, cluster, profile=a.profile, on_progress=bar.update,
                                    retry_failed=a.retry_failed, remeasure_contended=a.remeasure_contended)
    else:
        summary = api.sweep(recipes, a.db, profile=a.profile, on_progress=bar.update,
                            retry_failed=a.retry_failed, remeasure_contended=a.remeasure_contended)
    bar.close()
    return {"db": a.db, **summary.__dict__, "skipped_combinations": skipped}


class _ProgressBar:
    """configs done / total with ETA on stderr (one redrawn line on a terminal, plain lines otherwise)."""

    def __init__(self, per_device: bool = False) -> None:
        self.tty = sys.stderr.isatty()
        self.per_device = per_device  # a cluster sweep says which machine measured each row

    def update(self, step) -> None:
        width = 24
        fill = int(width * step.done / max(step.total, 1))
        status = "FAILED" if step.result.error else "contended" if step.result.contended else "ok"
        where = f"  on {step.result.device.get('cpu', '?')}" if self.per_device else ""
        line = (f"[{'#' * fill}{'.' * (width - fill)}] {step.done}/{step.total}  ETA {step.eta_s:4.0f}s  "
                f"{step.recipe.label()} {status}{where}")
        print(("\r" + line.ljust(100)) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def print_sweep(out: dict[str, Any]) -> None:
    print(f"{out['measured']} measured ({out['failed']} failed, {out['contended']} contended), "
          f"{out['skipped_existing']} already in {out['db']}, {out['total']} in the grid, {out['wall_s']:.1f} s"
          + ("; stopped early" if out["stopped"] else ""))
    if out["contended"]:
        print("contended rows were measured while other work used the CPU: run again with --remeasure-contended "
              "when the machine is quiet")


def cmd_frontier(a: argparse.Namespace) -> dict[str, Any]:
    from engine import api

    return api.frontier(model_from_args(a), a.db, a.objectives, a.min_accuracy, a.all_devices, a.include_contended,
                        a.batch_size, a.device)


def print_frontier(out: dict[str, Any]) -> None:
    if "devices" in out:
        for i, one in enumerate(out["devices"]):
            print(("\n" if i else "") + f"== {one['machine']['name']} (machine {one['machine']['device_id'][:12]})")
            print_frontier(one)
        return
    names = [o["name"] for o in out["objectives"]]
    print(f"{out['model']}: {len(out['frontier'])} of {out['considered']} configurations are on the "
          f"{' / '.join(names)} frontier at batch size {out['batch_size']} (hypervolume {out['hypervolume']:.4g})")
    if len(out["batch_sizes"]) > 1:
        print(f"also stored at batch sizes {', '.join(map(str, out['batch_sizes']))}: choose one with --batch-size")
    if out["min_accuracy"] is not None:
        print(f"constraint: accuracy >= {out['min_accuracy']:.4f}")
    if out["untrusted"] and not out["include_untrusted"]:
        print(f"{out['untrusted']} row(s) measured on a busy machine (or by an older engine) left out: "
              "`sweep --remeasure-contended` measures them again, `--include-contended` lets them compete")
    if out["damaged_rows"]:
        print(f"{out['damaged_rows']} damaged row(s) skipped")
    _table(out["frontier"], ["id", "label", "accuracy", "latency_p50_ms", "speedup", "size_bytes",
                             "peak_memory_bytes", "energy_j", "energy_source"])
    for f in out["failed"]:
        print(f"failed #{f['id']} {f['label']}: {f['error']}")


def cmd_export(a: argparse.Namespace) -> dict[str, Any]:
    from engine import api

    if a.id is not None:
        return api.export(a.out, row_id=a.id, db=a.db, force=a.force, profile=a.profile)
    if not a.model:
        raise UserError("export needs --db with --id, or --model with the recipe flags")
    return api.export(a.out, recipe=recipe_from_args(a), db=a.db, force=a.force, profile=a.profile)


def print_export(out: dict[str, Any]) -> None:
    print(f"wrote {out['out']}: {', '.join(out['files'])}")
    print(f"  {out['metric_kind']} {out['accuracy']:.4f} in PyTorch, {out['onnx_accuracy']:.4f} in ONNX Runtime "
          f"(gap {out['gap']:.4f})")
    print(f"  compressed.bin {fmt_bytes(out['size_bytes'])} vs {fmt_bytes(out['fp32_bytes'])} uncompressed fp32: "
          f"{out['compression_ratio']:.1f}x smaller")
    for w in out["warnings"]:
        print(f"  warning  {w}")


def cmd_apply(a: argparse.Namespace) -> dict[str, Any]:
    from engine import api

    return api.apply_bundle(a.recipe, a.out, a.force)


def print_apply(out: dict[str, Any]) -> None:
    rec = Recipe.from_dict(out["recipe"])
    if out["bundle"] is None:
        print(f"re-created {rec.model} ({rec.label()}, recipe {out['recipe_key']}): accuracy {out['accuracy']:.4f} "
              "(a bare recipe: nothing recorded to compare with)")
    else:
        for c in out["checks"]:
            print(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['file']}: {c['check']}" + (f" ({c['detail']})" if not c["ok"] else ""))
        verdict = "DOES NOT VERIFY: " + out["error"] if out["error"] else "verified"
        print(f"{out['bundle']}: {verdict}")
        for f in out.get("unverified_files", []):
            print(f"  note: {f} is not part of the bundle and was not checked")
    if out.get("new_bundle"):
        print(f"  new bundle: {out['new_bundle']['out']}")


def cmd_sensitivity(a: argparse.Namespace) -> dict[str, Any]:
    from engine import api

    levels = None if a.levels is None else [int(v) if a.technique == "quantize" and float(v).is_integer() else v
                                            for v in a.levels]
    return api.sensitivity(model_from_args(a), a.db, a.technique, levels, a.prune_method, fresh=a.fresh,
                           on_progress=lambda i, n, layer: print(f"[{i + 1}/{n}] {layer}", file=sys.stderr,
                                                                 flush=True), progress_file=a.progress)


def print_sensitivity(out: dict[str, Any]) -> None:
    what = f"{out['technique']} ({out['method']})"
    print(f"{out['model']}: accuracy drop when one layer alone is compressed, {what}; baseline "
          f"{out['baseline_accuracy']:.4f}" + (" (stored)" if out.get("from_store") else f" ({out['wall_s']:.1f} s)"))
    rows = []
    for r in sorted(out["layers"], key=lambda r: out["ranking"].index(r["layer"])):
        rows.append({"layer": r["layer"], "size": f"{r['size_share']:.1%}", "time": f"{r['latency_share']:.1%}",
                     **{f"@{lv}": r["drops"][str(lv)] for lv in out["levels"]}})
    _table(rows, ["layer", "size", "time"] + [f"@{lv}" for lv in out["levels"]])
    print(f"most sensitive first; size = share of parameters, time = {out['latency_share_source']}")


def cmd_search(a: argparse.Namespace) -> dict[str, Any]:
    from engine import api

    def show(s: dict[str, Any]) -> None:
        best = s["found"][0]["label"] if s["found"] else "none feasible yet"
        print(f"trial {s['trials_done']}{'/' + str(s['trials_target']) if s['trials_target'] else ''}  "
              f"{s['elapsed_s']:.0f}s  feasible {s['feasible']}  best: {best}", file=sys.stderr, flush=True)

    return api.search(model_from_args(a), a.db, a.min_accuracy, a.objectives, a.trials, a.budget_s, a.profile,
                      on_trial=show, progress_file=a.progress)


def print_search(out: dict[str, Any]) -> None:
    print(f"{out['trials_done']} trials, {out['feasible']} at accuracy >= {out['threshold']:.4f} "
          f"(baseline {out['baseline_accuracy']:.4f}), {out['failed']} failed; study {out['study']}")
    if not out["found"]:
        print("no recipe met the threshold yet: run longer, or lower --min-accuracy")
        return
    print(f"found (non-dominated on {', '.join(out['objectives'])}; best first; {out['latency_means']}):")
    _table(out["found"], ["row_id", "label", "accuracy"] + out["objectives"])
    print(f"export one: python -m engine export --db DB --id ROW_ID --out bundle/")


def cmd_results(a: argparse.Namespace) -> dict[str, Any]:
    from pathlib import Path

    from engine import api

    if a.export and a.import_:
        raise UserError("give --export or --import, not both")
    if a.import_:
        path = Path(a.import_)
        if not path.is_file():
            raise UserError(f"{path} is not a file")
        return {"imported": api.import_results(a.db, path.read_bytes()), "file": str(path)}
    if a.export:
        data = api.export_results(a.db, a.model)
        Path(a.export).write_bytes(data)
        return {"exported": str(a.export), "bytes": len(data)}
    return {**api.results(a.db, a.model, a.device), "format": a.format}


def print_results(out: dict[str, Any]) -> None:
    import csv

    if "exported" in out:
        print(f"wrote {out['exported']} ({fmt_bytes(out['bytes'])})")
        return
    if "imported" in out:
        i = out["imported"]
        print(f"{out['file']}: {i['rows_in_file']} rows: {i['new_rows']} new, {i['updated_rows']} replaced a worse "
              f"measurement, {i['already_as_good']} already stored as good or better, {i['skipped']} skipped")
        for why, n in i["skipped_why"].items():
            print(f"  skipped {n}: {why}")
        print(f"  machines: {', '.join(i['machines']) or 'none'}")
        return
    rows = out["rows"]
    if out["format"] == "json":
        print(json.dumps(strict(rows), allow_nan=False))
    elif out["format"] == "csv":
        if rows:
            w = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        for r in rows:
            r["machine"] = r["device_id"][:12]
        _table(rows, ["id", "machine", "model", "label", "accuracy", "latency_p50_ms", "speedup", "latency_contended",
                      "size_bytes", "energy_j", "energy_source", "error"])
    if out["damaged_rows"]:
        print(f"{out['damaged_rows']} damaged row(s) skipped", file=sys.stderr)


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


COMMANDS = {"models": (cmd_models, print_models), "run": (cmd_run, print_result),
            "sweep": (cmd_sweep, print_sweep), "frontier": (cmd_frontier, print_frontier),
            "export": (cmd_export, print_export), "apply": (cmd_apply, print_apply),
            "results": (cmd_results, print_results), "sensitivity": (cmd_sensitivity, print_sensitivity),
            "search": (cmd_search, print_search)}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500] or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the defaults download nothing
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=UserWarning)
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in args or "--verbose" in args
    try:
        a = build_parser().parse_args(args)
        logging.basicConfig(level=logging.DEBUG if a.verbose else logging.WARNING, stream=sys.stderr,
                            format="%(levelname)s %(name)s: %(message)s")
        run, show = COMMANDS[a.verb]
        out = run(a)
    except UserError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except VerificationError as exc:
        print(f"does not verify: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, sqlite3.Error) as exc:  # a user-supplied path or file the checks could not foresee
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except RecursionError:
        print("error: input nested too deeply", file=sys.stderr)
        return EXIT_USAGE
    except OverflowError:
        print("error: a number in the input is too large", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001  (never a traceback unless asked for)
        if verbose:
            traceback.print_exc()
        print(f"internal error: {type(exc).__name__}: {_one_line(exc)} (run with -v for details)", file=sys.stderr)
        return EXIT_FAILED
    if getattr(a, "json", False):
        sys.stdout.write(json.dumps(strict(out), allow_nan=False) + "\n")
    else:
        show(out)
    return EXIT_FAILED if isinstance(out, dict) and out.get("error") else 0
