"""The two digits models and their fixed data split.

Data is scikit-learn's bundled 8x8 digits set (no download). The split and the
normalisation live here so training and evaluation can never disagree.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn

SPLIT_SEED = 0
TEST_FRACTION = 0.25


@lru_cache(maxsize=1)
def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test); images as float32 in [0, 1], shape (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    return (torch.from_numpy(x_tr), torch.from_numpy(y_tr),
            torch.from_numpy(x_te), torch.from_numpy(y_te))


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
