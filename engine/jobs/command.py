"""Long engine commands (a search, a sensitivity scan) in a process of their own, for a front end to follow.

The front end's process stays free (and never imports torch); Stop ends the process group at once, which
loses nothing: every trial is a stored row and the search's study lives in the results database, so the same
command resumes. Progress is a JSON file the command rewrites after each step.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class CommandJob:
    """`python -m engine VERB ... --progress FILE --json` running in the background: its progress and output."""

    def __init__(self, argv: list[str]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="engine-job-"))
        self.progress_path, self.out_path, self.log_path = (self.dir / "progress.json", self.dir / "out.json",
                                                            self.dir / "log.txt")
        env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
        with open(self.out_path, "wb") as out, open(self.log_path, "wb") as log:  # the child keeps its copies
            self.proc = subprocess.Popen([sys.executable, "-m", "engine", *argv, "--progress", str(self.progress_path),
                                          "--json"], cwd=ROOT, env=env,
                                         stdout=out, stderr=log, start_new_session=True)

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
        """The latest progress the command wrote (None before its first step)."""
        try:
            return json.loads(self.progress_path.read_text())
        except (OSError, ValueError):
            return None

    def result(self) -> dict[str, Any] | None:
        """The command's JSON output once it finished successfully."""
        if self.running or self.proc.returncode != 0:
            return None
        try:
            return json.loads(self.out_path.read_text())
        except (OSError, ValueError):
            return None

    def error(self) -> str | None:
        """The command's one-line error (exit 2) or why it ended, once it ended unsuccessfully."""
        code = self.proc.poll()
        if code in (None, 0) or code == -signal.SIGTERM:
            return None
        lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.startswith(("error:",
                                                                                                          "internal error:"))]
        return lines[-1].split(": ", 1)[1] if lines else f"the command ended with exit code {code}"


def write_progress(path: str | Path | None, data: dict[str, Any]) -> None:
    """Replace the progress file in one step (a reader never sees half of it)."""
    if path is None:
        return
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".progress-")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)
