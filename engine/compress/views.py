"""What a recipe does to a model's own weights, layer by layer: for teaching and for sanity checks.

Returns plain numbers (NumPy arrays) so any front end can draw them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.compress.pipeline import apply
from engine.compress.prune import prunable_layers
from engine.core.recipe import Quantize, Recipe
from engine.models import base_model

MAX_VALUES = 20_000  # per histogram: enough for the shape, small enough to draw instantly
MAP_SIZE = 48


@dataclass
class LayerView:
    name: str
    shape_before: tuple[int, ...]
    shape_after: tuple[int, ...]
    before: np.ndarray  # sample of original weights
    after: np.ndarray  # same sample positions after pruning+quantization (where the shape is unchanged)
    quant_error: np.ndarray | None  # W_pruned - Q(W_pruned), sample
    zero_fraction: float
    levels: int | None  # distinct values in the first output channel after quantization
    sparsity_map: np.ndarray  # fraction of zeros per (row block, column block), at most MAP_SIZE x MAP_SIZE


def _sample(t: torch.Tensor, idx: np.ndarray) -> np.ndarray:
    return t.detach().float().reshape(-1).numpy()[idx]


def _map(w: torch.Tensor) -> np.ndarray:
    z = (w.detach().reshape(w.shape[0], -1) == 0).float().numpy()
    rows, cols = z.shape
    rb, cb = max(1, -(-rows // MAP_SIZE)), max(1, -(-cols // MAP_SIZE))
    out = np.zeros((-(-rows // rb), -(-cols // cb)))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = z[i * rb:(i + 1) * rb, j * cb:(j + 1) * cb].mean()
    return out


def layer_views(recipe: Recipe, max_layers: int = 8) -> list[LayerView]:
    """Before/after weights, quantization error and sparsity for the first `max_layers` prunable layers."""
    base, spec = base_model(recipe.model)
    pruned_only = apply(base, recipe.with_(quantize=Quantize(), precision="fp32", device="cpu"), spec,
                        kernels=False).storage_state
    full = apply(base, recipe.with_(device="cpu"), spec, kernels=False).storage_state
    rng = np.random.default_rng(0)
    views = []
    for name, mod in prunable_layers(base, spec)[:max_layers]:
        key = f"{name}.weight"
        w0 = mod.weight
        w_p, w_q = pruned_only.get(key), full.get(key)
        if w_p is None or w_q is None:
            continue
        same = tuple(w_q.shape) == tuple(w0.shape)
        n = w_q.numel()
        idx = rng.choice(n, size=min(n, MAX_VALUES), replace=False)
        idx0 = rng.choice(w0.numel(), size=min(w0.numel(), MAX_VALUES), replace=False)
        views.append(LayerView(
            name=name, shape_before=tuple(w0.shape), shape_after=tuple(w_q.shape),
            before=_sample(w0, idx if same else idx0),
            after=_sample(w_q, idx),
            quant_error=_sample(w_p.float() - w_q.float(), idx) if recipe.quantize.bits is not None else None,
            zero_fraction=float((w_q == 0).float().mean()),
            levels=int(torch.unique(w_q.reshape(w_q.shape[0], -1)[0]).numel()) if recipe.quantize.bits else None,
            sparsity_map=_map(w_q)))
    return views
