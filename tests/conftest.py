import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent  # the checkout (pyproject.toml puts it on the tests' path)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture
def busy():
    """Start n busy-loop processes (`while True: pass`); they are killed when the test ends."""
    procs: list[subprocess.Popen] = []

    def start(n: int) -> None:
        import time

        procs.extend(subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n))
        time.sleep(0.5)

    yield start
    for p in procs:
        p.kill()
        p.wait()
