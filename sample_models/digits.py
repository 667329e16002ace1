"""The two digits models and their fixed data split.

Data is scikit-learn's bundled 8x8 digits set (no download). The split and the
normalisation live here so training and evaluation can never disagree.
"""
from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

SPLIT_SEED = 0
TEST_FRACTION = 0.25


SPLIT_FILE = Path(__file__).with_name("digits-split.json")


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 8, 8) float32 in 0..16, labels): scikit-learn's bundled digits.csv.gz, read as its
    `load_digits` reads it, but without importing scikit-learn (about 3 s of imports before a first number)."""
    package = Path(importlib.util.find_spec("sklearn").submodule_search_locations[0])
    data = np.loadtxt(package / "datasets" / "data" / "digits.csv.gz", delimiter=",", dtype=np.float32)
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


def split_indices() -> tuple[list[int], list[int]]:
    """(train, test) row order of scikit-learn's stratified `train_test_split` (TEST_FRACTION, SPLIT_SEED),
    computed once by `python -m sample_models.train --write-split` and committed; a test checks it still is."""
    split = json.loads(SPLIT_FILE.read_text())
    return split["train"], split["test"]


@lru_cache(maxsize=1)
def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test); images as float32 in [0, 1], shape (N, 1, 8, 8)."""
    images, labels = digits_arrays()
    x, (train, test) = (images / 16.0)[:, None, :, :], split_indices()
    with torch.inference_mode(False):  # cached: a first call inside inference mode must not taint fine-tuning
        return (torch.from_numpy(x[train]), torch.from_numpy(labels[train]),
                torch.from_numpy(x[test]), torch.from_numpy(labels[test]))


class DigitsMLP(nn.Module):
    """LeNet-300-100 shape on flattened 8x8 digits (64 -> 300 -> 100 -> 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 300)
        self.fc2 = nn.Linear(300, 100)
        self.classifier = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.classifier(x)


class DigitsCNN(nn.Module):
    """Two conv+BatchNorm blocks, so structured channel pruning has channels to remove."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(64 * 4 * 4, 128)
        self.classifier = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))
        x = torch.relu(self.fc(x.flatten(1)))
        return self.classifier(x)


ARCHITECTURES: dict[str, type[nn.Module]] = {"digits-mlp": DigitsMLP, "digits-cnn": DigitsCNN}
