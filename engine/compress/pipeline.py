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

from engine.compress import codec, layers, precision, prune, quantize, recover, sparse
from engine.core.axes import PRUNE_METHODS, SCHEMES
from engine.core.errors import NO_CUDA, UserError
from engine.core.hardware import detect, precision_note
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
# Recovered (trained) weights per (model, compression): training takes seconds to minutes, and the same
# compression is measured at several batch sizes and runtimes, exported and shown on the Learn page.
_RECOVERED: dict[tuple, tuple[nn.Module, dict, list[Kernel]]] = {}
RECOVERED_CACHE = 4
_WATCHED: set[int] = set()


def _forget(model_id: int) -> None:
    for cache in (_SIZES, _RECOVERED):
        for key in [k for k in cache if k[0] == model_id]:
            del cache[key]
    _WATCHED.discard(model_id)


def _watch(source: nn.Module) -> None:
    if id(source) not in _WATCHED:
        _WATCHED.add(id(source))
        weakref.finalize(source, _forget, id(source))


def _compression(source: nn.Module, recipe: Recipe) -> tuple:
    return (id(source), recipe.prune, recipe.quantize, recipe.layers, recipe.recover)


def _storage_size(source: nn.Module, out: Applied, recipe: Recipe) -> int:
    key = _compression(source, recipe) + (recipe.precision,)
    if key not in _SIZES:
        _watch(source)
        _SIZES[key] = len(codec.encode(out.storage_state, out.quant, precision.DTYPES[recipe.precision]))
    return _SIZES[key]


def apply(model: nn.Module, recipe: Recipe, spec: ModelSpec, kernels: bool = True) -> Applied:
    """Return a compressed copy of `model` (never mutated) and the provenance of every step.

    With `kernels=False` the result stays a plain float model whose weights lie on the grid (what
    export and storage need); otherwise the fastest real kernels are selected for it.
    """
    check_device(recipe.device)
    recover.check(recipe, spec)
    source, model = model, copy.deepcopy(model).eval()
    out = Applied(model=model)
    overrides = layers.resolve(recipe, model)
    step, method = recipe.prune, PRUNE_METHODS.get(recipe.prune.method)
    gradual = recipe.recover.schedule == "gradual"
    pruned = method.prune(model, step, spec, overrides, initial=recipe.recover.initial_sparsity if gradual else None)
    if pruned is not None:
        out.kernels.append(pruned)
    if recipe.recover.method != "none":
        _recover(source, out, recipe, spec, overrides)
        model = out.model
        if method.zeros_in_place:  # the prune record states the final sparsity (a gradual schedule began lower)
            names = prune.prunable_layers(model, spec)
            zeros = sum(int((m.weight == 0).sum()) for _, m in names)
            out.kernels[0].detail["zero_fraction"] = round(zeros / max(sum(m.weight.numel() for _, m in names), 1), 4)
    elif recipe.quantize.bits is not None:
        out.quant = quantize.to_grid(model, recipe.quantize, overrides)
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
        _select_kernels(out, recipe, spec, overrides)
    return out


def _recover(source: nn.Module, out: Applied, recipe: Recipe, spec: ModelSpec, overrides: dict) -> None:
    """Train the pruned copy (then quantize it, then train a codebook's centroids), or reuse the weights this
    process already trained for the same compression."""
    key = _compression(source, recipe)
    if key in _RECOVERED:  # the whole module is kept: its parameter order (which the storage encoding follows) too
        trained, out.quant, kernels = _RECOVERED[key]
        out.model = copy.deepcopy(trained)
        out.kernels += kernels
        return
    threads = recipe.threads or detect().physical_cores  # not the contended count: re-creation must match
    plan = None
    if PRUNE_METHODS.get(recipe.prune.method).zeros_in_place:  # recovery re-applies the masks
        own, rest = prune.plan(out.model, recipe.prune, spec, overrides)
        plan = (own, rest, recipe.prune.scope, recipe.prune.amount)
    kernels = [recover.recover(out.model, source, recipe, spec, plan, threads)]
    if recipe.quantize.bits is not None:
        out.quant = quantize.to_grid(out.model, recipe.quantize, overrides)
        if SCHEMES.get(recipe.quantize.scheme).tunes_centroids:
            kernel, out.quant = recover.tune_codebooks(out.model, source, recipe, spec, out.quant, threads)
            kernels.append(kernel)
    out.kernels += kernels
    _watch(source)
    _RECOVERED[key] = (copy.deepcopy(out.model), out.quant, kernels)
    while len(_RECOVERED) > RECOVERED_CACHE:
        _RECOVERED.pop(next(iter(_RECOVERED)))


def _select_kernels(out: Applied, recipe: Recipe, spec: ModelSpec, overrides: dict) -> None:
    """After the storage state is taken: swapping modules changes how the model runs, not what it stores."""
    if recipe.quantize.bits is not None:
        inputs = precision.cast_inputs(spec.example_inputs(recipe.batch_size), recipe.precision, recipe.device)
        k, w = quantize.select_kernels(out.model, recipe.quantize, recipe.device, overrides, out.quant,
                                       lambda: spec.forward(out.model, inputs))
        out.kernels += k
        out.warnings += w
    if not PRUNE_METHODS.get(recipe.prune.method).zeros_in_place:
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
