"""Parameter counts read from safetensors headers, so listing models needs neither torch nor a built model.

A safetensors file opens with an 8-byte little-endian header length and a JSON table of every tensor's dtype and
shape. A state dict also holds buffers: integer ones (position ids, BatchNorm's batch counter) and BatchNorm's
running statistics are not parameters and are not counted. A model whose spec offers this count is checked
against its built model in the tests.
"""
from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Callable, Iterable

from engine.core.errors import UserError
from engine.core.recipe import parse_json

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
BUFFERS = ("running_mean", "running_var")


def header(path: Path) -> dict:
    """The tensor table of a safetensors file (UserError for a file that is not one)."""
    try:
        with open(path, "rb") as fh:
            size = struct.unpack("<Q", fh.read(8))[0]
            if size > MAX_HEADER_BYTES:
                raise ValueError("header too large")
            table = parse_json(fh.read(size), "its header", limit=None)  # bounded above
        if not isinstance(table, dict):
            raise ValueError("header is not a table")
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"could not load the weights {path}: not a safetensors file ({str(exc)[:80]})") from None
    return {k: v for k, v in table.items() if k != "__metadata__"}


def count_parameters(files: Iterable[Path]) -> int:
    """Trainable-shaped tensors (floating point, not BatchNorm's running statistics) of the given files."""
    files = list(files)
    if not files:
        raise UserError("no .safetensors weights found")
    return sum(math.prod(t["shape"]) for f in files for name, t in header(f).items()
               if t.get("dtype") in FLOAT_DTYPES and not name.endswith(BUFFERS))


def folder_parameters(source: str) -> Callable[[], int] | None:
    """The count of a Transformers model given as a local folder (checked as loading checks it); None for a hub
    id, whose weights are not here to read."""
    from engine.models.hf import resolve

    try:
        local = Path(source).expanduser().exists()
    except RuntimeError:  # "~someone" with no such user: loading says so
        local = False
    return (lambda: count_parameters(sorted(Path(resolve(source)).glob("*.safetensors")))) if local else None
