"""Long engine tasks (a search, a sensitivity scan) in a process of their own, for a front end to follow.

The front end writes a job file (the task's dataclass as JSON) and starts `python -m engine.jobs.<x> JOB.json`;
nothing is spelled as command-line flags, so renaming a flag cannot break a page. The front end's process
stays free (and never imports torch); Stop ends the process group at once, which loses nothing: every trial
is a stored row and the search's study lives in the results database, so the same task resumes. Progress is
a JSON file the task rewrites after each step.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

from engine.core.errors import UserError
from engine.core.recipe import parse_json


@runtime_checkable
class Job(Protocol):
    """What a front end holds of work running elsewhere (CommandJob, ClusterJob): started by constructing it,
    then polled. `progress()` is the latest step (None before the first), `result()` the finished value (None
    until it finished well), `error()` why it ended badly (None while running, after success or a Stop)."""

    @property
    def running(self) -> bool: ...

    def progress(self) -> Any: ...

    def stop(self) -> None: ...

    def result(self) -> Any: ...

    def error(self) -> str | None: ...


class Task(Protocol):
    """A job file's content: a dataclass of plain fields, run by the module named in `module`."""

    module: ClassVar[str]  # `python -m <module> JOB.json` runs it

    def run(self, progress_file: str | Path | None = None) -> Any: ...

    def read(self, data: dict[str, Any]) -> Any:
        """The task's value from the JSON its run wrote (`run(...).to_dict()`)."""


class CommandJob:
    """A Task running in the background (`python -m <task.module> JOB.json`): its progress and its result."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.dir = Path(tempfile.mkdtemp(prefix="engine-job-"))
        self.progress_path, self.out_path, self.log_path = (self.dir / "progress.json", self.dir / "out.json",
                                                            self.dir / "log.txt")
        job = self.dir / "job.json"
        job.write_text(json.dumps({"task": asdict(task), "progress": str(self.progress_path),  # type: ignore[call-overload]
                                   "out": str(self.out_path)}))
        env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
        with open(self.log_path, "wb") as log:  # the child keeps its copy
            self.proc = subprocess.Popen([sys.executable, "-m", task.module, str(job)], env=env,
                                         stdout=log, stderr=log, start_new_session=True)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)

    def progress(self) -> dict[str, Any] | None:
        """The latest progress the task wrote (None before its first step)."""
        try:
            return parse_json(self.progress_path.read_text(), "the job's progress", limit=None)
        except (OSError, ValueError):
            return None

    def result(self) -> Any:
        """The task's value (its type's `read` of the JSON it wrote) once it finished successfully."""
        if self.running or self.proc.returncode != 0:
            return None
        try:
            return self.task.read(parse_json(self.out_path.read_text(), "the job's output", limit=None))
        except (OSError, ValueError):
            return None

    def error(self) -> str | None:
        """The task's one-line error or why it ended, once it ended unsuccessfully (a Stop is not an error)."""
        code = self.proc.poll()
        if code in (None, 0) or code == -signal.SIGTERM:
            return None
        lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines()
                 if ln.startswith(("error:", "internal error:"))]
        return lines[-1].split(": ", 1)[1] if lines else f"the task ended with exit code {code}"


def run_file(task_type: Callable[..., Task], argv: list[str]) -> int:
    """`python -m engine.jobs.<x> JOB.json`: run the task the file describes and write its value as JSON.

    A user's error is one line `error: ...` on stderr and exit 2; anything else `internal error: ...` (after
    its traceback) and exit 1, as the command line does."""
    from engine.core.result import strict

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        job = parse_json(Path(argv[0]).read_text(), f"job file {argv[0]}", limit=None)
        value = task_type(**job["task"]).run(job["progress"])
    except UserError as exc:
        print(f"error: {' '.join(str(exc).split())[:500]}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001  (the front end shows one line; the log keeps the traceback)
        traceback.print_exc()
        print(f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}", file=sys.stderr)
        return 1
    out = Path(job["out"])
    tmp = out.with_name(f".{out.name}")
    tmp.write_text(json.dumps(strict(value.to_dict()), allow_nan=False))
    os.replace(tmp, out)
    return 0


def write_progress(path: str | Path | None, data: dict[str, Any]) -> None:
    """Replace the progress file in one step (a reader never sees half of it)."""
    if path is None:
        return
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".progress-")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)
