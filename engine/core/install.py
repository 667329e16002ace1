"""Where the code runs from: a source checkout (editable installs included) or an installed package.

A checkout keeps its habits (the dashboard's store beside the code, a Ray cluster shipped the project folder);
an installed package has no project folder, so it uses the working folder and the nodes' own installs.
"""
from __future__ import annotations

from pathlib import Path

_ABOVE = Path(__file__).resolve().parents[2]  # the folder holding the `engine` package


def source_checkout() -> Path | None:
    """The project folder when running from a checkout (it holds pyproject.toml), else None."""
    return _ABOVE if (_ABOVE / "pyproject.toml").is_file() else None
