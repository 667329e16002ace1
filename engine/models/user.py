"""Bring your own model: a Hugging Face folder (or hub id) with an evaluation file, or a Python file that
implements the contract below.

A user model's name in recipes and the store is canonical and self-describing, so any process (the CLI, the
dashboard's measuring process, `apply` in CI) rebuilds the model from the name alone:

    hf:<folder>|<task>|<evaluation file or folder>|<digest>
    py:<file.py>|<digest>

The digest is a content hash of the weights and the evaluation data: changed weights or data give another
name, so old rows are never reused for them, and a name whose files changed since is refused with a message.

Python-file contract (the user's own code, run on their machine: CLI and local dashboard only):

    build() -> nn.Module                     the model, weights loaded (safetensors recommended)
    example_inputs(batch: int) -> inputs     a tensor, or a dict of tensors passed as keyword arguments
    eval_batches() -> iterable of (inputs, targets)
    score(outputs, targets) -> dict          must hold "accuracy" (the headline metric, higher is better);
                                             outputs: the model's outputs on all eval batches, concatenated
    optional: train_batches() -> iterable of (inputs, targets), for fine-tuning after pruning
              loss(outputs, targets) -> scalar tensor (default: cross-entropy)
              never_prune: tuple of module names structured pruning must keep (default: the last layer)
              TASK, METRIC: strings shown beside the numbers
"""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.core.axes import TASKS
from engine.core.errors import RecipeError, UnknownModelError, UserError
from engine.core.recipe import parse_json
from engine.models import hf
from engine.models.registry import ModelSpec, register_source

if TYPE_CHECKING:
    import torch
    from torch import nn

PREFIXES = ("hf:", "py:")
SEP = "|"
MAX_EVAL_BYTES = 32 * 2 ** 20
MAX_EVAL_ROWS = 5000  # enough for a stable accuracy, few enough that one evaluation stays seconds on a laptop
EVAL_BATCH = 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def is_user_model(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIXES)


def display_name(name: str) -> str:
    """A short label: the folder or file name and the task."""
    if not is_user_model(name) or SEP not in name:
        return name
    parts = name[3:].split(SEP)
    label = f"{name[:3]}{Path(parts[0]).name or parts[0]}"
    return f"{label} ({parts[1]})" if name.startswith("hf:") else label


def canonical(model: str, task: str | None = None, eval_data: str | None = None) -> str:
    """The canonical name of `model`: registered names and canonical names as given; `hf:<folder or hub id>`
    (with `task` and `eval_data`) and `py:<file>` checked, hashed and named."""
    if not is_user_model(model) or SEP in model:
        return model
    if model.startswith("py:"):
        if task or eval_data:
            raise UserError("a py: model brings its own task and evaluation data (eval_batches): drop --task and "
                            "--eval-data")
        path = file_path(model[3:], "Python file", (".py",))
        return f"py:{path}{SEP}{_py_digest(*_py_contents(_load_module(path), path))}"
    if not model[3:].strip():
        raise UserError("hf: needs a model: give the folder or hub id after it, e.g. hf:./my-model")
    if task not in TASKS:
        raise UserError(f"an hf: model needs --task: one of {', '.join(TASKS)}" if task is None else
                        f"task={str(task)[:40]!r} is not supported: choose one of {', '.join(TASKS)}")
    if not eval_data:
        raise UserError("an hf: model needs --eval-data: " + TASKS.get(task).eval_help)
    folder = _local_folder(model[3:])
    data = TASKS.get(task).eval_path(eval_data)
    TASKS.get(task).read(data)  # columns and values checked before anything is named
    return f"hf:{folder}{SEP}{task}{SEP}{data}{SEP}{_hf_digest(folder, task, data)}"


def spec_for(name: str) -> ModelSpec:
    """Rebuild a user model's spec from its canonical name; refused when its files changed since."""
    parts = name[3:].split(SEP)
    if name.startswith("py:"):
        if len(parts) != 2:
            raise UserError(f"{name[:120]!r} is not a model name: use py:<file.py>")
        path, digest = Path(parts[0]), parts[1]
        module = _load_module(file_path(str(path), "Python file", (".py",)))
        built, batches = _py_contents(module, path)
        _same(name, digest, _py_digest(built, batches))
        return _py_spec(name, path, module, built, batches)
    if len(parts) != 4:
        raise UserError(f"{name[:120]!r} is not a model name: use hf:<folder or hub id> with --task and --eval-data")
    folder, task, data, digest = parts
    if task not in TASKS:
        raise UserError(f"{name[:120]!r}: task {task[:40]!r} is not supported")
    hf.resolve(folder)
    _same(name, digest, _hf_digest(Path(folder), task, Path(data)))
    return TASKS.get(task).spec(name, folder, Path(data))


def _source(name: str) -> ModelSpec:
    """The spec of an `hf:`/`py:` name, for the model registry (which knows no source by name)."""
    if SEP not in name:
        raise UnknownModelError(f"{name[:80]!r} must be added first: --model {name[:80]} with --task and "
                                "--eval-data (hf:), or the dashboard's 'Add a model'")
    return spec_for(name)


for _prefix in PREFIXES:
    register_source(_prefix, _source)


def _same(name: str, recorded: str, now: str) -> None:
    if recorded != now:
        raise UserError(f"{display_name(name)} changed since it was named (weights or evaluation data differ: "
                        f"{recorded} then, {now} now): add it again to measure the new version")


# --- files ---------------------------------------------------------------------------------------------
def file_path(text: str, what: str, suffixes: tuple[str, ...]) -> Path:
    path = Path(text).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"{what} {text} does not exist")
    if path.suffix.lower() not in suffixes:
        raise UserError(f"{what} {text} must end in {' or '.join(suffixes)}")
    if SEP in str(path):
        raise UserError(f"{path}: paths with '{SEP}' cannot be used (it separates the parts of a model name)")
    return path


def _local_folder(source: str) -> Path:
    """A checked local folder; a hub id is downloaded (safetensors and configs only) where the network is allowed."""
    resolved = hf.resolve(source)
    if Path(resolved).exists():
        path = Path(resolved).resolve()
    else:
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(resolved, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
        except Exception as exc:  # noqa: BLE001  (no network, no such repo, gated: say which)
            raise UserError(f"could not download {source!r}: {hf._first_line(exc)}") from None
        hf.resolve(str(path))
    if SEP in str(path):
        raise UserError(f"{path}: paths with '{SEP}' cannot be used (it separates the parts of a model name)")
    return path


def read_rows(path: Path, need: tuple[str, ...], expected: str) -> tuple[list[str], list[dict[str, Any]]]:
    """(texts, rows) of a CSV or JSONL evaluation file holding the columns `need`; `expected` says what it must be."""
    if path.stat().st_size > MAX_EVAL_BYTES:
        raise UserError(f"{path} is larger than {MAX_EVAL_BYTES // 2 ** 20} MB: keep an evaluation sample")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        missing = [c for c in need if c not in (reader.fieldnames or [])]
        if missing:
            found = ", ".join(reader.fieldnames or []) or "none"
            raise UserError(f"{path} has no column {', '.join(missing)} (columns: {found}): {expected}")
        rows = list(reader)
    else:
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = parse_json(line, f"{path} line {i}", limit=None)  # the file's size is bounded above
            except RecipeError as exc:
                raise UserError(f"{exc}: {expected}") from None
            if not isinstance(row, dict) or any(c not in row for c in need):
                raise UserError(f"{path} line {i} has no {' or '.join(need)}: {expected}")
            rows.append(row)
    if not rows:
        raise UserError(f"{path} holds no rows: {expected}")
    if len(rows) > MAX_EVAL_ROWS:
        raise UserError(f"{path} holds {len(rows)} rows; at most {MAX_EVAL_ROWS}: keep an evaluation sample")
    for i, row in enumerate(rows, 1):
        if not isinstance(row["text"], str) or not row["text"].strip():
            raise UserError(f"{path} row {i}: text is empty or not text")
    return [r["text"] for r in rows], rows


def read_images(folder: Path, expected: str) -> tuple[list[Path], list[str]]:
    """(image paths, their class folder names) of an evaluation folder with one sub-folder per class."""
    images, labels = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()):
        for f in sorted(sub.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() and not f.is_symlink():
                images.append(f)
                labels.append(sub.name)
    if not images:
        raise UserError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}) in class sub-folders: "
                        + expected)
    if len(images) > MAX_EVAL_ROWS:
        raise UserError(f"{folder} holds {len(images)} images; at most {MAX_EVAL_ROWS}: keep an evaluation sample")
    return images, labels


def _hash_files(h: "hashlib._Hash", files: list[Path]) -> None:
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)


def _hf_digest(folder: Path, task: str, data: Path) -> str:
    h = hashlib.sha256(task.encode())
    _hash_files(h, sorted(p for p in folder.iterdir() if p.suffix in (".json", ".safetensors", ".txt", ".model")))
    _hash_files(h, TASKS.get(task).data_files(data))
    return h.hexdigest()[:12]


def _py_contents(module: Any, path: Path) -> tuple[nn.Module, list[tuple[Any, Any]]]:
    """The model the file builds and its evaluation batches, read once for both the name and the spec."""
    batches = list(module.eval_batches())
    if not batches:
        raise UserError(f"{path}: eval_batches() yielded nothing")
    return module.build(), batches


def _py_digest(built: nn.Module, batches: list[tuple[Any, Any]]) -> str:
    """The weights the file builds and the evaluation data it yields (its code can change neither unseen)."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(built.state_dict().items()):
        h.update(name.encode() + b"\0" + t.detach().cpu().contiguous().numpy().tobytes())
    for inputs, targets in batches:
        for t in (list(inputs.values()) if isinstance(inputs, dict) else [inputs]) + [targets]:
            h.update(torch.as_tensor(t).detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


# --- Python files --------------------------------------------------------------------------------------
CONTRACT = ("build", "example_inputs", "eval_batches", "score")


def _load_module(path: Path) -> Any:
    """Run the user's own file (their code, on their machine) and check it implements the contract."""
    name = "user_model_" + hashlib.sha256(str(path).encode()).hexdigest()[:8]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001  (their code: say where it broke, once)
        raise UserError(f"{path} failed to run: {hf._first_line(exc)}") from None
    missing = [f for f in CONTRACT if not callable(getattr(module, f, None))]
    if missing:
        raise UserError(f"{path} does not implement the model contract: no {', '.join(missing)}() "
                        "(see docs/own-models.md)")
    return module


def _py_spec(name: str, path: Path, module: Any, built: nn.Module, batches: list[tuple[Any, Any]]) -> ModelSpec:
    import torch

    targets = torch.cat([torch.as_tensor(t) for _, t in batches])

    def score(outputs: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
        scores = module.score(outputs, targets)
        if not isinstance(scores, dict) or "accuracy" not in scores:
            raise UserError(f"{path}: score() must return a dict with 'accuracy'")
        return {k: float(v) for k, v in scores.items()}

    last = [n for n, m in built.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1:]
    trains = callable(getattr(module, "train_batches", None))

    return ModelSpec(
        name=name, task=str(getattr(module, "TASK", "user model (Python file)")),
        description=f"{path.name}: {type(built).__name__}", source=f"{path} (the model contract)",
        metric=str(getattr(module, "METRIC", "accuracy as the file's score() computes it")),
        build=module.build, example_inputs=module.example_inputs, eval_inputs=lambda: [b[0] for b in batches],
        score=score, never_prune=tuple(getattr(module, "never_prune", last)),
        finetune=(lambda model, epochs: _fit(model, module, epochs)) if trains else None,
        train_batches=(lambda epoch: module.train_batches()) if trains else None,
        loss=getattr(module, "loss", None))


def _fit(model: nn.Module, module: Any, epochs: int) -> None:
    """Seeded Adam over the file's train_batches (pruned weights stay pruned: the masks are re-applied)."""
    import torch

    torch.manual_seed(0)
    loss_fn = getattr(module, "loss", None) or torch.nn.functional.cross_entropy
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-4)
    model.train()
    for _ in range(epochs):
        for inputs, targets in module.train_batches():
            opt.zero_grad()
            out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
            loss_fn(out, torch.as_tensor(targets)).backward()
            opt.step()
    model.eval()


# --- Hugging Face folders (the text tasks build theirs in engine.models.tasks) -------------------------
def hf_image_spec(name: str, folder: str, images: list[Path], labels: list[str]) -> ModelSpec:
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    config = hf.load_config(folder)
    targets = torch.tensor(label_ids(labels, config, Path(images[0]).parent.parent))
    try:
        processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{folder} has no usable image processor (preprocessor_config.json): "
                        f"{hf._first_line(exc)}") from None

    def pixels(paths: list[Path]) -> dict[str, torch.Tensor]:
        from PIL import Image, UnidentifiedImageError

        try:
            batch = [Image.open(p).convert("RGB") for p in paths]
        except (OSError, UnidentifiedImageError) as exc:
            raise UserError(f"an evaluation image cannot be read: {hf._first_line(exc)}") from None
        return {"pixel_values": processor(images=batch, return_tensors="pt")["pixel_values"]}

    encoded = [pixels(images[i:i + EVAL_BATCH]) for i in range(0, len(images), EVAL_BATCH)]
    return ModelSpec(
        name=name, task="image classification (your model)",
        description=f"{config.get('model_type', 'model')} from {Path(folder).name}",
        source=f"{folder} (Transformers AutoModelForImageClassification, safetensors, no remote code)",
        metric=f"top-1 accuracy on {len(images)} images in class folders",
        build=lambda: hf.load_model(folder, AutoModelForImageClassification), eval_inputs=lambda: encoded,
        example_inputs=lambda batch: {"pixel_values": torch.cat([e["pixel_values"] for e in encoded])
                                      .repeat(-(-batch // len(images)), 1, 1, 1)[:batch]},
        score=accuracy(targets), forward=hf.logits, never_prune=("classifier",),
        structured_setup=hf.transformer_structured, preprocessing="images through the model's own image processor")


def label_ids(labels: list[Any], config: dict, where: Path) -> list[int]:
    """Labels as written (names or ids) to the head's class ids; one the head does not know is an error."""
    label2id = {str(k): int(v) for k, v in (config.get("label2id") or {}).items()}
    n = len(config.get("id2label") or label2id) or int(config.get("num_labels", 0))
    ids = []
    for i, label in enumerate(labels, 1):
        text = str(label).strip()
        if text in label2id:
            ids.append(label2id[text])
        elif text.lstrip("-").isdigit() and 0 <= int(text) < n:
            ids.append(int(text))
        else:
            known = ", ".join(list(label2id)[:10]) or f"0-{n - 1}"
            raise UserError(f"{where}: label {text[:40]!r} (row {i}) is not one the model's head knows ({known})")
    return ids


def accuracy(targets: torch.Tensor):
    def score(outputs: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
        pred = outputs.float().argmax(-1)
        return {"accuracy": (pred == targets).float().mean().item(),
                "agreement_with_fp32": (pred == reference.float().argmax(-1)).float().mean().item()}
    return score
