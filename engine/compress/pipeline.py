"""`apply(model, recipe)`: prune -> quantize -> precision -> device, on a deep copy, with provenance.

The fixed order matters: pruning needs float weights, the quantization grid is computed on what
pruning left (zeros stay exactly zero), and the precision cast comes last.
"""
from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from engine.compress import codec, precision, prune, quantize, sparse
from engine.core.errors import NO_CUDA, UserError
from engine.core.hardware import precision_note
from engine.core.recipe import Recipe
from engine.core.result import Kernel
from engine.models.registry import ModelSpec


@dataclass
class Applied:
    """A compressed model plus how it was made and what it costs to store."""

    model: nn.Module
    kernels: list[Kernel] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    quant: dict[str, quantize.QuantMeta] = field(default_factory=dict)
    size_bytes: int = 0
    params_total: int = 0
    params_nonzero: int = 0
    param_bytes: int = 0
    # The float state that `size_bytes` encodes (before any int8 kernel swap), for export.
    storage_state: dict[str, torch.Tensor] = field(default_factory=dict)


def check_device(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError(NO_CUDA)


def _count(model: nn.Module) -> tuple[int, int, int]:
    total = nonzero = nbytes = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int((p != 0).sum())
        nbytes += p.numel() * p.element_size()
    return total, nonzero, nbytes


# Storage length per (model, prune, quantize, precision): a sweep over batch sizes, threads or runtimes stores
# the same bytes, and encoding a transformer takes seconds. Keyed by the source model object's id; an entry is
# dropped when that model is freed (so an id is never reused for another model, and no model is kept alive).
# Models are never mutated by `apply`.
_SIZES: dict[tuple, int] = {}


def _forget(model_id: int) -> None:
    for key in [k for k in _SIZES if k[0] == model_id]:
        del _SIZES[key]


def _storage_size(source: nn.Module, out: Applied, recipe: Recipe) -> int:
    key = (id(source), recipe.prune, recipe.quantize, recipe.precision)
    if key not in _SIZES:
        if not any(k[0] == id(source) for k in _SIZES):
            weakref.finalize(source, _forget, id(source))
        _SIZES[key] = len(codec.encode(out.storage_state, out.quant, precision.DTYPES[recipe.precision]))
    return _SIZES[key]


def apply(model: nn.Module, recipe: Recipe, spec: ModelSpec, kernels: bool = True) -> Applied:
    """Return a compressed copy of `model` (never mutated) and the provenance of every step.

    With `kernels=False` the result stays a plain float model whose weights lie on the grid (what
    export and storage need); otherwise the fastest real kernels are selected for it.
    """
    check_device(recipe.device)
    source, model = model, copy.deepcopy(model).eval()
    out = Applied(model=model)
    step = recipe.prune
    if step.method == "magnitude":
        out.kernels.append(prune.magnitude(model, step, spec))
    elif step.method == "structured":
        out.kernels.append(prune.structured(model, step, spec))
    if recipe.quantize.bits is not None:
        out.quant = quantize.to_grid(model, recipe.quantize)
    precision.cast(model, recipe.precision)
    kernel, warning = precision_note(recipe.precision, recipe.device)
    out.kernels.append(Kernel("precision", kernel))
    if warning:
        out.warnings.append(warning)
    out.params_total, out.params_nonzero, out.param_bytes = _count(model)
    out.storage_state = {k: v.detach() for k, v in model.state_dict().items()}
    out.size_bytes = _storage_size(source, out, recipe)
    model.to(recipe.device)
    if kernels:
        _select_kernels(out, recipe, spec)
    return out


def _select_kernels(out: Applied, recipe: Recipe, spec: ModelSpec) -> None:
    """After the storage state is taken: swapping modules changes how the model runs, not what it stores."""
    if recipe.quantize.bits is not None:
        k, w = quantize.select_kernels(out.model, recipe.quantize, recipe.device)
        out.kernels += k
        out.warnings += w
    if recipe.prune.method != "magnitude":
        return
    sparse_info = None
    if recipe.device == "cpu" and recipe.precision == "fp32":
        inputs = precision.cast_inputs(spec.example_inputs(recipe.batch_size), recipe.precision, recipe.device)
        sparse_info = sparse.sparsify(out.model, lambda: spec.forward(out.model, inputs))
    if sparse_info and sparse_info.detail["layers"]:
        out.kernels.append(sparse_info)
        dense_left = sparse_info.detail["candidates"] - sparse_info.detail["layers"]
        if dense_left:
            out.warnings.append(f"{dense_left} sparse layer(s) stayed on the dense kernel (sparse was not faster "
                                "for them here): their zeros give no speed-up")
    else:
        out.warnings.append("unstructured sparsity runs on the dense kernel here (no sparse kernel was faster): "
                            "no speed-up expected; the zeros shrink only the sparse storage size")
