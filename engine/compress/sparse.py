"""Sparse kernels for magnitude-pruned Linear layers, used only where they are measured faster.

Unstructured zeros run at dense speed on the dense kernel. Stored CSR and multiplied with
torch.sparse (addmm), a 90 %-sparse 1536x384 layer ran ~3x faster here, while small layers ran slower:
so each candidate layer is timed on its real input, both ways, and swapped only when sparse wins.
"""
from __future__ import annotations

import time
import warnings
from typing import Any, Callable

import torch
from torch import nn

from engine.core.result import Kernel

MIN_SPARSITY = 0.7
MIN_SPEEDUP = 1.15


class SparseLinear(nn.Module):
    """A Linear layer whose weight is held in CSR form and multiplied by a sparse GEMM."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            self.weight_csr = linear.weight.detach().to_sparse_csr()
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).T
        out = (torch.sparse.mm(self.weight_csr, flat) if self.bias is None
               else torch.addmm(self.bias.unsqueeze(1), self.weight_csr, flat))
        return out.T.reshape(*x.shape[:-1], self.out_features)


def seconds_per_call(fn: Callable[[], Any], calls: int = 15) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def layer_inputs(model: nn.Module, names: list[str], run: Callable[[], Any]) -> dict[str, torch.Tensor]:
    """Each named layer's real input in one forward pass `run()`: what a timing-chosen kernel is timed on."""
    captured: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(lambda mod, args, n=n: captured.setdefault(n, args[0]))
             for n in names]
    try:
        with torch.inference_mode():
            run()
    finally:
        for h in hooks:
            h.remove()
    return captured


def sparsify(model: nn.Module, run: Callable[[], Any]) -> Kernel | None:
    """Swap sparse-enough Linear layers for SparseLinear where timing on their real input says it is faster.

    `run()` performs one forward pass with the inputs the model will be measured on."""
    candidates = {name: m for name, m in model.named_modules()
                  if type(m) is nn.Linear and m.weight.dtype == torch.float32 and not m.weight.is_cuda
                  and float((m.weight == 0).float().mean()) >= MIN_SPARSITY}
    if not candidates:
        return None
    captured = layer_inputs(model, list(candidates), run)
    swapped, speedups = [], []
    with torch.inference_mode():
        for name, lin in candidates.items():
            x = captured.get(name)
            if x is None:
                continue
            sparse = SparseLinear(lin)
            dense_s = seconds_per_call(lambda lin=lin, x=x: lin(x))
            sparse_s = seconds_per_call(lambda sparse=sparse, x=x: sparse(x))
            if dense_s / sparse_s >= MIN_SPEEDUP:
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, sparse)
                swapped.append(name)
                speedups.append(dense_s / sparse_s)
    return Kernel("prune", "sparse CSR GEMM (torch.sparse addmm) where measured faster",
                  detail={"layers": len(swapped), "candidates": len(candidates),
                          "layer_speedups": [round(s, 2) for s in speedups]})
