"""Train the digits sample models deterministically and write their weights and cards.

    python -m sample_models.train            # writes sample_models/<name>.safetensors + <name>.card.json

Seeded, single-threaded, fixed split: the same weights on every run of the same torch build.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from sample_models.digits import ARCHITECTURES, SPLIT_FILE, SPLIT_SEED, TEST_FRACTION, digits_arrays, digits_split

HERE = Path(__file__).resolve().parent
SEED = 1234
EPOCHS = 30
BATCH = 64
LR = 1e-3


def fit(model: nn.Module, epochs: int, lr: float = LR, seed: int = SEED) -> None:
    """Seeded Adam training on the digits training split (also used to fine-tune after pruning)."""
    torch.manual_seed(seed)
    x_tr, y_tr, _, _ = digits_split()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(order), BATCH):
            idx = order[i:i + BATCH]
            opt.zero_grad()
            loss_fn(model(x_tr[idx]), y_tr[idx]).backward()
            opt.step()
    model.eval()


def train_one(name: str, out_dir: Path = HERE) -> dict:
    """Train model `name`, save weights as safetensors and a card; return the card."""
    torch.set_num_threads(1)
    x_tr, _, x_te, y_te = digits_split()
    torch.manual_seed(SEED)
    model = ARCHITECTURES[name]()
    fit(model, EPOCHS)
    with torch.no_grad():
        acc = (model(x_te).argmax(1) == y_te).float().mean().item()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(out_dir / f"{name}.safetensors"))
    card = {
        "name": name,
        "architecture": repr(model),
        "parameters": sum(p.numel() for p in model.parameters()),
        "data": "sklearn.datasets.load_digits (1797 8x8 images, bundled with scikit-learn)",
        "split": {"test_fraction": TEST_FRACTION, "random_state": SPLIT_SEED, "stratified": True,
                  "train": len(x_tr), "test": len(x_te)},
        "training": {"seed": SEED, "epochs": EPOCHS, "batch": BATCH, "optimizer": f"Adam lr={LR}"},
        "test_accuracy": round(acc, 4),
        "torch": torch.__version__,
    }
    (out_dir / f"{name}.card.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def sklearn_split() -> dict[str, list[int]]:
    """The fixed split, as scikit-learn's stratified `train_test_split` draws it (row indices, in its order)."""
    from sklearn.model_selection import train_test_split

    labels = digits_arrays()[1]
    train, test = train_test_split(list(range(len(labels))), test_size=TEST_FRACTION, random_state=SPLIT_SEED,
                                   stratify=labels)
    return {"train": [int(i) for i in train], "test": [int(i) for i in test]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(ARCHITECTURES), action="append")
    parser.add_argument("--write-split", action="store_true", help=f"write {SPLIT_FILE.name} first")
    args = parser.parse_args()
    if args.write_split:
        SPLIT_FILE.write_text(json.dumps(sklearn_split()) + "\n")
    for name in args.model or sorted(ARCHITECTURES):
        card = train_one(name)
        print(f"{name}: test accuracy {card['test_accuracy']:.4f}, {card['parameters']} parameters")


if __name__ == "__main__":
    main()
