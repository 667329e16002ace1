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
from typing import Any, Sequence

from engine.errors import UserError
from engine.recipe import BITS, PRECISIONS, PRUNE_METHODS, PRUNE_SCOPES, Prune, Quantize, Recipe

EXIT_USAGE = 2


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


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="registered model name (see `models`)")
    p.add_argument("--prune", type=_amount, default=0.0, help="fraction of weights/channels to remove, 0-0.99")
    p.add_argument("--prune-method", default="magnitude", choices=[m for m in PRUNE_METHODS if m != "none"])
    p.add_argument("--prune-scope", default="global", choices=PRUNE_SCOPES)
    p.add_argument("--bits", type=_bits, default=None, help=f"none or {BITS[0]}-{BITS[-1]}")
    p.add_argument("--scheme", default=None, choices=["weight-only", "dynamic"],
                   help="default: dynamic (real int8 kernel) at fp32 on cpu, weight-only otherwise")
    p.add_argument("--granularity", default="per-channel", choices=["per-channel", "per-group"])
    p.add_argument("--group-size", type=int, default=32)
    p.add_argument("--precision", default="fp32", help=f"one of {', '.join(PRECISIONS)}")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch-size", type=int, default=1)


def default_scheme(precision: str, device: str) -> str:
    """The fastest real path: int8 activations where the int8 kernel can run, weight-only elsewhere."""
    return "dynamic" if precision == "fp32" and device == "cpu" else "weight-only"


def recipe_from_args(a: argparse.Namespace) -> Recipe:
    from engine.registry import get_spec

    from engine.transforms import check_device

    get_spec(a.model)  # unknown model or missing device: clear error before anything runs
    check_device(a.device)
    scheme = a.scheme or default_scheme(a.precision, a.device)
    return Recipe(
        model=a.model,
        prune=Prune(method=a.prune_method if a.prune else "none", amount=a.prune, scope=a.prune_scope),
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
    return parser


def cmd_models(a: argparse.Namespace) -> dict[str, Any]:
    from engine.runner import base_model
    from engine.registry import model_names

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


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


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


COMMANDS = {"models": (cmd_models, print_models), "run": (cmd_run, print_result)}


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
