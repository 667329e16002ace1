"""Command line: parse -> call an engine.api verb -> print its value (`to_text()`, or `to_dict()` with --json).

The recipe flags (of run and export) and the sweep's grid axes are generated from the Recipe's field table
(engine.core.recipe.FIELDS); no compression, measurement or formatting logic lives here.

With --json, stdout holds exactly one strict JSON object (no NaN); progress and logs go to stderr. Bad
input is one line on stderr and exit code 2, never a traceback; a configuration that failed, or a
bundle that does not verify, exits 1.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
import traceback
import warnings
from typing import Any, Callable, Sequence

from engine.core.axes import TASKS
from engine.core.errors import UserError, VerificationError
from engine.core.recipe import FIELDS, Field, Recipe, parse_amount, parse_int
from engine.core.result import strict

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a reader that stops early sees from any Unix tool
DEFAULT_DB = "results.db"


# Flag parsers raise ArgumentTypeError: argparse shows its message (any other error becomes "invalid <name> value").
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints the whole usage)
        raise UserError(f"{self.prog}: {message}")


def _typed(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A field's text parser as argparse wants it: its ValueError becomes the one-line message."""
    def one(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return one


def _list(parse: Callable[[str], Any]) -> Callable[[str], list]:
    def many(text: str) -> list:
        return [parse(x.strip()) for x in text.split(",") if x.strip()]
    return many


_amount, _int = _typed(parse_amount), _typed(parse_int)


def add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required,
                   help="a registered name (see `models`), hf:<folder or hub id> (with --task and --eval-data) or "
                        "py:<file.py> (see docs/own-models.md)")
    p.add_argument("--task", default=None, help=f"for hf: models: one of {', '.join(TASKS)}")
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


def add_field(p: argparse.ArgumentParser, f: Field, many: bool = False) -> None:
    """One flag of the recipe's field table; `many`: a comma-separated list (a sweep's axis; default: the grid's)."""
    if f.parse is None:
        p.add_argument(f.option, dest=f.dest, action="store_true", help=f.describe())
    elif many:
        p.add_argument(f.option, dest=f.dest, type=_list(_typed(f.parse)), default=None, metavar=f.metavar,
                       help=f"{f.describe()}; comma-separated (default {'none' if f.default is None else f.default})")
    else:
        p.add_argument(f.option, dest=f.dest, type=_typed(f.parse), default=f.default, metavar=f.metavar,
                       help=f.describe())


def add_recipe_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    add_model_args(p, required)
    for f in FIELDS:
        add_field(p, f)


def recipe_from_args(a: argparse.Namespace) -> Recipe:
    from engine import api

    flat = {f.name: getattr(a, f.dest) for f in FIELDS if f.part is None}
    recover = {f.name: getattr(a, f.dest) for f in FIELDS if f.part == "recover"}
    untouched = all(recover[f.name] == f.default for f in FIELDS if f.part == "recover")
    return api.recipe_from_fields(model_from_args(a), recover=None if untouched else recover, **flat)


def build_parser() -> argparse.ArgumentParser:
    prog = "compression-dash" if os.path.basename(sys.argv[0]) == "compression-dash" else "python -m engine"
    parser = _Parser(prog=prog, description="Measure and choose model-compression trade-offs.")
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
    for f in FIELDS:
        if f.grid:
            add_field(p, f, many=f.many)
    p.add_argument("--db", default=DEFAULT_DB, help=f"SQLite results file (default {DEFAULT_DB})")
    p.add_argument("--profile", default="thorough", help="quick or thorough")
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
    p.add_argument("--machine", "--device", dest="machine", default=None, metavar="ID",
                   help="the machine whose frontier to show: its id or first characters (default: this one; "
                        "--device is the old spelling)")
    p.add_argument("--all-machines", "--all-devices", dest="all_machines", action="store_true",
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
    p.add_argument("--objectives", default="relative_latency:min,size:min",
                   help="2-3 of relative_latency,size,memory,energy,params,speedup,accuracy (relative_latency: "
                        "1 / paired speed-up; `latency` is accepted for it)")
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
    p.add_argument("--machine", "--device", dest="machine", default=None, metavar="ID",
                   help="only the machine whose id starts with ID (--device is the old spelling)")
    p.add_argument("--format", default="table", choices=["table", "csv", "json"])
    p.add_argument("--export", default=None, metavar="FILE",
                   help="write the rows (each with its machine) to a results file to share")
    p.add_argument("--import", dest="import_", default=None, metavar="FILE",
                   help="merge a results file (e.g. a classmate's) into --db; rows keep their machine")

    p = sub.add_parser("dashboard", add_help=False,
                       help="open the dashboard (streamlit run; further arguments go to Streamlit, e.g. "
                            "--server.port 8600)")
    p.add_argument("streamlit_args", nargs=argparse.REMAINDER)
    return parser


# --- verbs: each returns a value with to_dict() (for --json) and to_text() -------------------------------
def cmd_models(a: argparse.Namespace) -> Any:
    from engine import api

    return api.models()


def cmd_run(a: argparse.Namespace) -> Any:
    from engine import api

    recipe = recipe_from_args(a)
    api.check_profile(a.profile)
    api.check_settings()
    api.load_model(recipe.model)
    print(f"measuring {recipe.model}: {recipe.label()} ({a.profile})", file=sys.stderr)
    return api.measure(recipe, profile=a.profile)


def cmd_sweep(a: argparse.Namespace) -> Any:
    from dataclasses import replace

    from engine import api

    api.check_settings()
    on_cluster = a.executor == "ray"
    if not on_cluster and (a.address or a.resources or a.node_label):
        raise UserError("--address, --resources and --node-label go with --executor ray")
    cluster = api.ClusterOptions.parse(a.address, a.resources, a.node_label) if on_cluster else None
    axes = {f.grid: getattr(a, f.dest) for f in FIELDS if f.grid and getattr(a, f.dest) is not None}
    recipes, skipped = api.sweep_grid(model_from_args(a), here=not on_cluster, **axes)
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
    return replace(summary, skipped_combinations=skipped)


class _ProgressBar:
    """configs done / total with ETA on stderr (one redrawn line on a terminal, plain lines otherwise)."""

    def __init__(self, per_device: bool = False) -> None:
        self.tty = sys.stderr.isatty()
        self.per_device = per_device  # a cluster sweep says which machine measured each row

    def update(self, step) -> None:
        width = 24
        fill = int(width * step.done / max(step.total, 1))
        status = "FAILED" if step.result.error else "contended" if step.result.contended else "ok"
        where = f"  on {step.result.machine.cpu or '?'}" if self.per_device else ""
        line = (f"[{'#' * fill}{'.' * (width - fill)}] {step.done}/{step.total}  ETA {step.eta_s:4.0f}s  "
                f"{step.recipe.label()} {status}{where}")
        print(("\r" + line.ljust(100)) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def cmd_frontier(a: argparse.Namespace) -> Any:
    from engine import api

    return api.frontier(model_from_args(a), a.db, a.objectives, a.min_accuracy, a.all_machines, a.include_contended,
                        a.batch_size, a.machine)


def cmd_export(a: argparse.Namespace) -> Any:
    from engine import api

    if a.id is not None:
        return api.export(a.out, row_id=a.id, db=a.db, force=a.force, profile=a.profile)
    if not a.model:
        raise UserError("export needs --db with --id, or --model with the recipe flags")
    return api.export(a.out, recipe=recipe_from_args(a), db=a.db, force=a.force, profile=a.profile)


def cmd_apply(a: argparse.Namespace) -> Any:
    from engine import api

    return api.apply_bundle(a.recipe, a.out, a.force)


def cmd_sensitivity(a: argparse.Namespace) -> Any:
    from engine import api

    levels = None if a.levels is None else [int(v) if a.technique == "quantize" and float(v).is_integer() else v
                                            for v in a.levels]
    return api.sensitivity(model_from_args(a), a.db, a.technique, levels, a.prune_method, fresh=a.fresh,
                           on_progress=lambda i, n, layer: print(f"[{i + 1}/{n}] {layer}", file=sys.stderr,
                                                                 flush=True), progress_file=a.progress)


def cmd_search(a: argparse.Namespace) -> Any:
    from engine import api

    def show(s: dict[str, Any]) -> None:
        best = s["found"][0]["label"] if s["found"] else "none feasible yet"
        print(f"trial {s['trials_done']}{'/' + str(s['trials_target']) if s['trials_target'] else ''}  "
              f"{s['elapsed_s']:.0f}s  feasible {s['feasible']}  best: {best}", file=sys.stderr, flush=True)

    return api.search(model_from_args(a), a.db, a.min_accuracy, a.objectives, a.trials, a.budget_s, a.profile,
                      on_trial=show, progress_file=a.progress)


def cmd_results(a: argparse.Namespace) -> Any:
    from dataclasses import replace
    from pathlib import Path

    from engine import api
    from engine.core.summaries import ResultsFile, ResultsImport

    if a.export and a.import_:
        raise UserError("give --export or --import, not both")
    if a.import_:
        path = Path(a.import_)
        if not path.is_file():
            raise UserError(f"{path} is not a file")
        return ResultsImport(api.import_results(a.db, path.read_bytes()), str(path))
    if a.export:
        data = api.export_results(a.db, a.model)
        Path(a.export).write_bytes(data)
        return ResultsFile(str(a.export), len(data))
    table = api.results(a.db, a.model, a.machine)
    if table.damaged_rows:
        print(f"{table.damaged_rows} damaged row(s) skipped", file=sys.stderr)
    return replace(table, format=a.format)


COMMANDS: dict[str, Callable[[argparse.Namespace], Any]] = {
    "models": cmd_models, "run": cmd_run, "sweep": cmd_sweep, "frontier": cmd_frontier, "export": cmd_export,
    "apply": cmd_apply, "results": cmd_results, "sensitivity": cmd_sensitivity, "search": cmd_search}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500] or type(exc).__name__


def dashboard(streamlit_args: list[str]) -> int:
    """`streamlit run` on the dashboard this engine came with, from any folder. Its settings (this machine only,
    no usage statistics, no tracebacks) are the .streamlit/config.toml beside app.py, which Streamlit reads
    wherever it is started; Streamlit's own flags override them."""
    import importlib.util
    from pathlib import Path

    from streamlit.web import cli as streamlit_cli

    package = importlib.util.find_spec("dashboard")  # found, not imported: the app imports it in its own run
    folders = list(package.submodule_search_locations or []) if package else []
    app = Path(folders[0]) / "app.py" if folders else None
    if app is None or not app.is_file():
        print("error: the dashboard package is missing beside the engine: reinstall (pip install . in the project "
              "folder)", file=sys.stderr)
        return EXIT_USAGE
    return streamlit_cli.main(["run", str(app), *streamlit_args], prog_name="streamlit")


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so it unwinds as Ctrl-C does (transactions roll back)."""


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated


def _stopped_line(argv: Sequence[str] | None) -> str:
    """What an interrupted verb leaves: rows are written one transaction each and bundles in a temporary
    folder first, so only whole rows and whole bundles remain, and the same command resumes."""
    import contextlib
    import io
    from pathlib import Path

    args = list(sys.argv[1:] if argv is None else argv)
    db = None
    with contextlib.suppress(SystemExit, Exception), contextlib.redirect_stderr(io.StringIO()):
        db = getattr(build_parser().parse_known_args(args)[0], "db", None)
    if db and Path(db).is_file():
        from engine.results.store import Store

        with contextlib.suppress(UserError, sqlite3.Error), Store(db, write=False) as store:
            return f"stopped: {store.count()} rows saved in {db}; run the same command to resume"
    return "stopped: nothing was left half-written; run the same command again"


def _stops_cleanly(verb: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
    """Ctrl-C (SIGINT) and SIGTERM end every verb with one line on stderr and exit 130 / 143, never a traceback."""
    @functools.wraps(verb)
    def run(argv: Sequence[str] | None = None) -> int:
        on_main = threading.current_thread() is threading.main_thread()  # signals can be caught only there
        previous = (signal.getsignal(signal.SIGINT), signal.signal(signal.SIGTERM, _terminate)) if on_main else None
        try:
            return verb(argv)
        except KeyboardInterrupt as exc:
            if on_main:  # a second Ctrl-C while the line is written is not a traceback either
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print(("\n" if sys.stderr.isatty() else "") + _stopped_line(argv), file=sys.stderr, flush=True)
            return EXIT_TERMINATED if isinstance(exc, _Terminated) else EXIT_INTERRUPTED
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous[0])
                signal.signal(signal.SIGTERM, previous[1])
    return run


@_stops_cleanly
def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the defaults download nothing
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=UserWarning)
    args = list(sys.argv[1:] if argv is None else argv)
    verb = next((i for i, x in enumerate(args) if not x.startswith("-")), None)
    if verb is not None and args[verb] == "dashboard":  # Streamlit parses the rest (argparse would refuse its flags)
        return dashboard(args[verb + 1:])
    verbose = "-v" in args or "--verbose" in args
    try:
        a = build_parser().parse_args(args)
        logging.basicConfig(level=logging.DEBUG if a.verbose else logging.WARNING, stream=sys.stderr,
                            format="%(levelname)s %(name)s: %(message)s")
        out = COMMANDS[a.verb](a)
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
    try:
        if getattr(a, "json", False):
            sys.stdout.write(json.dumps(strict(out.to_dict()), allow_nan=False) + "\n")
        elif text := out.to_text():
            print(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `… | head` closed the pipe: the reader has what it wanted; no traceback at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return EXIT_FAILED if getattr(out, "error", None) else 0
