"""An example of the model contract (`--model py:sample_models/contract_example.py`): the digits CNN, its
committed weights and its held-out split, described the way you would describe your own model.

Copy this file next to your model and replace the bodies; `python -m engine run --model py:your_file.py`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from sample_models.digits import DigitsCNN, digits_split

HERE = Path(__file__).resolve().parent
TASK = "image classification (8x8 digits, 10 classes), through the model contract"
METRIC = "top-1 accuracy on the held-out digits split (450 images)"
never_prune = ("classifier",)  # the output layer: its 10 classes must stay


def build() -> torch.nn.Module:
    model = DigitsCNN()
    model.load_state_dict(load_file(str(HERE / "digits-cnn.safetensors")))  # safetensors: loading runs no code
    return model


def example_inputs(batch: int) -> torch.Tensor:
    test = digits_split()[2]
    return test[:batch].clone() if batch <= len(test) else test.repeat(-(-batch // len(test)), 1, 1, 1)[:batch]


def eval_batches():
    _, _, x_test, y_test = digits_split()
    yield x_test, y_test


def score(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    return {"accuracy": (outputs.argmax(1) == targets).float().mean().item()}


def train_batches():
    x_train, y_train, _, _ = digits_split()
    for i in range(0, len(x_train), 64):
        yield x_train[i:i + 64], y_train[i:i + 64]
