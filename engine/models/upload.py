"""Uploaded models: a zipped Hugging Face folder (and its evaluation data) unpacked beside the results store.

An upload comes from a browser, so it is treated as hostile: size-capped before and while unpacking, every
entry checked (no absolute paths, no `..`, no links, no nesting tricks), and only weights and configuration
files kept: safetensors, JSON and tokenizer vocabularies. No Python file is ever written, so the folder has no
custom code to run (and `engine.models.hf` refuses `auto_map` anyway).
"""
from __future__ import annotations

import hashlib
import io
import stat
import zipfile
from pathlib import Path, PurePosixPath

from engine.core.errors import UserError

MAX_UPLOAD_BYTES = 512 * 2 ** 20  # MiniLM-sized models fit; a bomb or a whole checkpoint history does not
MODEL_FILES = (".safetensors", ".json", ".txt", ".model")
IMAGE_FILES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MAX_ENTRIES = 10_000


def unpack(data: bytes, dest: Path, allowed: tuple[str, ...], what: str) -> Path:
    """Unpack the zip `data` into `dest` (created), keeping only files whose suffix is `allowed`; the folder
    that holds them (a single top-level folder in the zip is stepped into)."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise UserError(f"the {what} is larger than {MAX_UPLOAD_BYTES // 2 ** 20} MB")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError):
        raise UserError(f"the {what} is not a zip file") from None
    if len(infos) > MAX_ENTRIES:
        raise UserError(f"the {what} holds more than {MAX_ENTRIES} entries")
    if sum(i.file_size for i in infos) > MAX_UPLOAD_BYTES:
        raise UserError(f"the {what} unpacks to more than {MAX_UPLOAD_BYTES // 2 ** 20} MB")
    kept = []
    for info in infos:
        name = PurePosixPath(info.filename.replace("\\", "/"))
        if not name.parts:
            continue
        if name.is_absolute() or ".." in name.parts or info.filename.startswith(("/", "\\")) or ":" in name.parts[0]:
            raise UserError(f"the {what} has an entry outside its folder ({info.filename[:80]!r}): refused")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UserError(f"the {what} has a link ({info.filename[:80]!r}): refused")
        if info.is_dir():
            continue
        if name.suffix.lower() == ".py":
            raise UserError(f"the {what} holds Python code ({info.filename[:80]!r}): uploads run no custom code")
        if name.suffix.lower() in allowed:
            kept.append((info, name))
    if not kept:
        raise UserError(f"the {what} holds no {', '.join(allowed)} files")
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    for info, name in kept:
        target = (root / Path(*name.parts)).resolve()
        if root not in target.parents:
            raise UserError(f"the {what} has an entry outside its folder ({info.filename[:80]!r}): refused")
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as src, open(target, "wb") as out:
            written = 0
            while chunk := src.read(1 << 20):
                written += len(chunk)
                if written > info.file_size:  # the header lied about the size
                    raise UserError(f"the {what} is damaged ({info.filename[:80]!r})")
                out.write(chunk)
    tops = {n.parts[0] for _, n in kept}
    single = next(iter(tops))
    return root / single if len(tops) == 1 and len(kept[0][1].parts) > 1 else root


def store_upload(model_zip: bytes, eval_name: str, eval_data: bytes, task: str, folder: Path) -> tuple[str, str]:
    """Unpack an uploaded model and its evaluation data under `folder` (beside the store), in a place named by
    their content; (model folder, evaluation file or folder) for `engine.models.user.canonical`."""
    from engine.core.axes import TASKS

    if task not in TASKS:
        raise UserError(f"task={str(task)[:40]!r} is not supported: choose one of {', '.join(TASKS)}")
    digest = hashlib.sha256(model_zip + b"\0" + eval_data).hexdigest()[:16]
    home = folder / digest
    model = unpack(model_zip, home / "model", MODEL_FILES, "model upload")
    if TASKS.get(task).eval_folder:  # uploaded zipped
        return str(model), str(unpack(eval_data, home / "eval", IMAGE_FILES, "image upload"))
    suffix = Path(eval_name).suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise UserError("the evaluation file must be .csv or .jsonl")
    if len(eval_data) > MAX_UPLOAD_BYTES:
        raise UserError(f"the evaluation file is larger than {MAX_UPLOAD_BYTES // 2 ** 20} MB")
    path = home / f"eval{suffix}"
    path.write_bytes(eval_data)
    return str(model), str(path)
