"""How long the command line takes to answer: `models`, `results` and `frontier`, each a fresh process.

    python -m bench.bench_startup [--repeats 7] [--before /tmp/before] [--out bench/RESULTS-startup.md]

Each verb runs `--repeats` times as a new process from an empty folder (what a user typing it waits for: the
interpreter, the imports, the answer); the median is reported, with the fastest and slowest run. `results` and
`frontier` read a store of two digits-mlp configurations that the same code first measures (not timed).
Now: the `compression-dash` console script beside this interpreter (else `python -m engine` from this checkout).
`--before DIR`: also a checkout of an older commit (`git worktree add /tmp/before 415179b`), run as
`python -m engine` from its folder with this interpreter. Target: ≤ 1 s each. Nothing here is asserted in tests.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import machine_line

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 1.0
FRONTIER = ["frontier", "--db", "{db}", "--model", "digits-mlp"]
VERBS = {"models": ["models"], "results": ["results", "--db", "{db}"], "frontier": FRONTIER,
         "frontier, first since boot": FRONTIER}
# Its id is this machine's fingerprint, kept after the first computation (which imports torch) until a reboot:
# the last row times that first computation, each run with an empty cache folder.
UNKEPT = "frontier, first since boot"
SWEEP = ["sweep", "--model", "digits-mlp", "--prune", "0,0.5", "--profile", "quick", "--db", "{db}"]


def now_command() -> tuple[list[str], Path | None]:
    """The installed console script (run from any folder), or this checkout's module (run from its root)."""
    script = Path(sys.executable).with_name("compression-dash")
    return ([str(script)], None) if script.is_file() else ([sys.executable, "-m", "engine"], ROOT)


def fill(argv: list[str], db: Path) -> list[str]:
    return [a.replace("{db}", str(db)) for a in argv]


def time_verbs(command: list[str], cwd: Path | None, repeats: int) -> dict[str, list[float]]:
    """Seconds per run of each verb; a failing verb stops the benchmark (a fast error is no start-up figure)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        empty, db = Path(tmp) / "empty", Path(tmp) / "results.db"
        empty.mkdir()
        subprocess.run(command + fill(SWEEP, db), cwd=cwd or empty, env=env, check=True, capture_output=True)
        for verb, argv in VERBS.items():
            out[verb] = []
            for i in range(repeats):
                cache = Path(tmp) / f"cache-{verb}-{i}"
                run_env = {**env, "XDG_CACHE_HOME": str(cache)} if verb == UNKEPT else env
                t0 = time.perf_counter()
                proc = subprocess.run(command + fill(argv, db), cwd=cwd or empty, env=run_env, capture_output=True)
                out[verb].append(time.perf_counter() - t0)
                if proc.returncode != 0:
                    raise SystemExit(f"{' '.join(command)} {verb} failed: {proc.stderr.decode()[-300:]}")
    return out


def cell(runs: list[float]) -> str:
    return f"{statistics.median(runs):.2f} ({min(runs):.2f}-{max(runs):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--before", type=Path, default=None, help="a checkout of an older commit")
    parser.add_argument("--out", default=str(Path(__file__).with_name("RESULTS-startup.md")))
    args = parser.parse_args()
    command, cwd = now_command()
    load_before = os.getloadavg()[0]
    columns = {}
    if args.before is not None:
        commit = subprocess.run(["git", "-C", str(args.before), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or args.before.name
        columns[f"before ({commit}, `python -m engine`) s"] = time_verbs([sys.executable, "-m", "engine"],
                                                                       args.before, args.repeats)
    name = "compression-dash" if cwd is None else "python -m engine"
    columns[f"now (`{name}`) s"] = time_verbs(command, cwd, args.repeats)
    argv = " ".join(sys.argv[1:])
    lines = ["# Start-up of the command line: `models`, `results`, `frontier`", "",
             machine_line(f"bench.bench_startup {argv}".strip()) + f" Median of {args.repeats} fresh processes "
             "each (fastest-slowest); `results` and `frontier` read a store of two digits-mlp rows measured "
             "just before (so `frontier` finds this machine's fingerprint kept; the last row: not kept).", "",
             "| verb | " + " | ".join(columns) + f" | target ≤ {TARGET_S:g} s |",
             "|---|" + "---|" * len(columns) + "---|"]
    now = list(columns.values())[-1]
    for verb in VERBS:
        met = "met" if statistics.median(now[verb]) <= TARGET_S else "**missed**"
        lines.append(f"| {verb} | " + " | ".join(cell(c[verb]) for c in columns.values()) + f" | {met} |")
    lines += ["", f"Now: `{' '.join(command)}`" + (f" from {cwd}" if cwd else " from an empty folder") + ". "
              f"Load average (1 min) at start / end: {load_before:.1f} / {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} cores (other work on the machine inflates every column alike)."]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
