"""The tasks a user model (`hf:` folder) can do, registered in `engine.core.axes.TASKS`: what evaluation data
each reads, how its model is loaded, forwarded and scored, and what structured pruning must keep.

Adding a task is a `Task` subclass here and its registration. This module loads no torch at import (the
dashboard's server lists the tasks); a spec is built in the measuring process.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.core.axes import TASKS
from engine.core.errors import UserError
from engine.models import hf, user
from engine.models.registry import ModelSpec


class Task:
    """One kind of model: its evaluation data and how it is scored."""

    name: str = ""
    eval_help: str = ""  # what the evaluation data must be, in every message about it
    eval_folder: bool = False  # a folder of class sub-folders (images), else one CSV/JSONL file
    columns: tuple[str, ...] = ("text",)  # the columns an evaluation file needs
    upload_kinds: tuple[str, ...] = ("csv", "jsonl")  # file types the dashboard's upload accepts

    def eval_path(self, text: str) -> Path:
        """The checked evaluation data path."""
        if not self.eval_folder:
            return user.file_path(text, "evaluation file", (".csv", ".jsonl"))
        path = Path(text).expanduser().resolve()
        if not path.is_dir():
            raise UserError(f"evaluation data {text} is not a folder: {self.eval_help}")
        return path

    def read(self, path: Path) -> tuple[list[Any], list[Any]]:
        """(inputs, labels): texts or image paths, and labels as written (empty without a label column)."""
        texts, rows = user.read_rows(path, self.columns, self.eval_help)
        return texts, [r["label"] for r in rows] if "label" in self.columns else []

    def data_files(self, path: Path) -> list[Path]:
        """The files whose content names the model (its digest)."""
        return [path]

    def spec(self, name: str, folder: str, data: Path) -> ModelSpec:
        """The ModelSpec of a Hugging Face model of this task, evaluated on `data`."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class _TextTask(Task):
    """A Transformers text model: tokenised with its own tokenizer."""

    auto = "AutoModel"

    def _common(self, name: str, folder: str, texts: list[str]) -> dict[str, Any]:
        import transformers

        auto = getattr(transformers, self.auto)
        tokenizer = hf.load_tokenizer(folder)
        config = hf.load_config(folder)

        def encode(batch: list[str]) -> dict:
            return dict(tokenizer(batch, padding=True, truncation=True, max_length=128, return_tensors="pt"))

        chunks = [texts[i:i + user.EVAL_BATCH] for i in range(0, len(texts), user.EVAL_BATCH)]
        return dict(
            name=name, description=f"{config.get('model_type', 'transformer')} from {Path(folder).name}",
            source=f"{folder} (Transformers {auto.__name__}, safetensors, no remote code)",
            build=lambda: hf.load_model(folder, auto), eval_inputs=lambda: [encode(c) for c in chunks],
            example_inputs=lambda batch: encode([texts[i % len(texts)] for i in range(batch)]),
            structured_setup=hf.transformer_structured,
            preprocessing="text tokenised with the model's own tokenizer (padding, truncation to 128 tokens)")


class FeatureExtraction(_TextTask):
    name = "feature-extraction"
    eval_help = "a CSV or JSONL file with a column text (the metric is fidelity to the uncompressed model)"

    def spec(self, name: str, folder: str, data: Path) -> ModelSpec:
        texts, _ = self.read(data)
        return ModelSpec(task="sentence embedding (your model)", score=hf.fidelity_score, forward=hf.mean_pooled,
                         metric_kind="fidelity", never_prune=("pooler",),
                         metric=f"fidelity: mean cosine similarity to the uncompressed model's embeddings on "
                                f"{len(texts)} sentences of {data.name}", **self._common(name, folder, texts))


class TextClassification(_TextTask):
    name = "text-classification"
    eval_help = "a CSV or JSONL file with columns text,label (label: the model's label name or id)"
    columns = ("text", "label")
    auto = "AutoModelForSequenceClassification"

    def spec(self, name: str, folder: str, data: Path) -> ModelSpec:
        import torch

        texts, labels = self.read(data)
        targets = torch.tensor(user.label_ids(labels, hf.load_config(folder), data))
        return ModelSpec(task="text classification (your model)", score=user.accuracy(targets), forward=hf.logits,
                         never_prune=("classifier", "pooler"),
                         metric=f"top-1 accuracy on {len(texts)} labelled rows of {data.name}",
                         **self._common(name, folder, texts))


class ImageClassification(Task):
    name = "image-classification"
    eval_help = "a folder with one sub-folder of images per class, named as the model's labels"
    eval_folder = True
    upload_kinds = ("zip",)

    def read(self, path: Path) -> tuple[list[Any], list[Any]]:
        return user.read_images(path, self.eval_help)

    def data_files(self, path: Path) -> list[Path]:
        return self.read(path)[0]

    def spec(self, name: str, folder: str, data: Path) -> ModelSpec:
        return user.hf_image_spec(name, folder, *self.read(data))


for _task in (FeatureExtraction(), TextClassification(), ImageClassification()):
    TASKS.register(_task.name, _task)
