"""Tiny user models made inside the tests (offline): a BERT text classifier, a BERT encoder and a ViT image
classifier, each saved with `save_pretrained` as a user's folder would be, plus their evaluation data."""
from __future__ import annotations

import csv
from pathlib import Path

WORDS = "good great fine bad awful poor movie film plot actor the a was is very not".split()


def _tokenizer(folder: Path):
    from transformers import BertTokenizerFast

    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    return BertTokenizerFast(vocab_file=str(vocab))


def bert(folder: Path, classes: tuple[str, ...] | None = ("negative", "positive")) -> Path:
    """A random-initialised 2-layer BERT (text classifier with `classes`, or a bare encoder with None)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(folder)
    config = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    if classes:
        config.id2label = dict(enumerate(classes))
        config.label2id = {c: i for i, c in enumerate(classes)}
        model = BertForSequenceClassification(config)
    else:
        model = BertModel(config)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def texts(path: Path, labels: bool = True, rows: int = 24) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"] if labels else ["text"])
        for i in range(rows):
            words = " ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(5))
            w.writerow([words, "positive" if i % 2 else "negative"] if labels else [words])
    return path


def vit(folder: Path, images: Path, classes: tuple[str, ...] = ("cat", "dog")) -> tuple[Path, Path]:
    """A random-initialised tiny ViT image classifier and a folder of class folders of 16x16 images."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64, id2label=dict(enumerate(classes)),
                       label2id={c: i for i, c in enumerate(classes)})
    ViTForImageClassification(config).save_pretrained(folder, safe_serialization=True)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    rng = np.random.default_rng(0)
    for c in classes:
        (images / c).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(images / c / f"{i}.png")
    return folder, images


_CONTRACT = """

def build():
    torch.manual_seed(0)
    return MODEL()


def example_inputs(batch):
    return torch.randn(batch, 8)


def eval_batches():
    torch.manual_seed(1)
    yield torch.randn(16, 8), torch.randint(0, 2, (16,))


def score(outputs, targets):
    return {"accuracy": (outputs.argmax(1) == targets).float().mean().item()}
"""


def contract_file(path: Path, module: str, cls: str) -> Path:
    """A `py:` model file: `module` (imports and an nn.Module `cls` from 8 features to 2 classes) with the model
    contract around it (random inputs, 16 random labelled rows, accuracy)."""
    path.write_text(module + _CONTRACT.replace("MODEL", cls))
    return path
