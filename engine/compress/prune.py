"""Pruning: unstructured magnitude masks (torch.nn.utils.prune) and structured channel/head removal
(Torch-Pruning's dependency graph, so coupled layers such as BatchNorm shrink together)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune as tprune

from engine.core.errors import UserError
from engine.core.recipe import LayerOverride, Prune
from engine.core.result import Kernel
from engine.models.registry import ModelSpec

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _skipped(name: str, never: tuple[str, ...]) -> bool:
    return any(name == n or name.startswith(n + ".") for n in never)


def prunable_layers(model: nn.Module, spec: ModelSpec) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE) and not _skipped(n, spec.never_prune)]


def plan(model: nn.Module, step: Prune, spec: ModelSpec, overrides: dict[str, LayerOverride]
         ) -> tuple[dict[str, float], list[str]]:
    """({layer: its own amount} for layers an override sets, [layers pruned at the recipe's amount]).

    An override may not prune a layer the model never prunes (its output classes, say): refused by name."""
    layers = dict(prunable_layers(model, spec))
    own: dict[str, float] = {}
    for name, o in overrides.items():
        if o.prune is None:
            continue
        if name not in layers:
            raise UserError(f"layers[{o.pattern!r}] prunes {name}, which {spec.name} never prunes "
                            f"(never_prune: {', '.join(spec.never_prune) or 'none'}; its shape is the model's output)")
        own[name] = o.prune
    rest = [n for n in layers if n not in own] if step.amount > 0 else []
    return own, rest


def mask_by_magnitude(model: nn.Module, own: dict[str, float], rest: list[str], amount: float, scope: str,
                      fold: bool = True) -> None:
    """Zero the smallest-|w| weights: `own` layers each at their amount, `rest` at `amount` (one threshold over
    all of them when `scope` is global). Also used by the gradual schedule, whose amounts rise step by step."""
    mods = dict(model.named_modules())
    params = [(mods[n], "weight") for n in rest]
    if params and amount > 0:
        if scope == "global":
            tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=amount)
        else:
            for m, _ in params:
                tprune.l1_unstructured(m, "weight", amount=amount)
    for name, a in own.items():
        if a > 0:
            tprune.l1_unstructured(mods[name], "weight", amount=a)
    if fold:
        fold_masks(model)


def fold_masks(model: nn.Module) -> None:
    """Make masked weights plain tensors again (their zeros kept)."""
    for m in model.modules():
        if hasattr(m, "weight_orig"):
            tprune.remove(m, "weight")


def check_finetune(step: Prune, spec: ModelSpec) -> None:
    if step.finetune_epochs and spec.finetune is None:
        raise UserError(f"prune.finetune_epochs={step.finetune_epochs} is not available for {spec.name}: "
                        "it ships no training data; use 0")


def _finetune(model: nn.Module, step: Prune, spec: ModelSpec) -> None:
    """Retrain the pruned copy (gradients on, then off again: the copy came from a frozen base)."""
    if not step.finetune_epochs:
        return
    for p in model.parameters():
        p.requires_grad_(True)
    with torch.enable_grad():
        spec.finetune(model, step.finetune_epochs)
    for p in model.parameters():
        p.requires_grad_(False)


def magnitude(model: nn.Module, step: Prune, spec: ModelSpec, overrides: dict[str, LayerOverride] | None = None,
              initial: float | None = None) -> Kernel:
    """Zero the smallest-|w| weights (per-layer amounts where overrides give them); fine-tune with the masks in
    place (zeros stay zero); then fold the masks in (prune.remove) so the model is plain again.

    `initial`: the first sparsity of a gradual schedule (each layer at most its final amount); recovery
    raises it to the final amounts."""
    check_finetune(step, spec)
    own, rest = plan(model, step, spec, overrides or {})
    if initial is not None:
        own, amount = {n: min(a, initial) for n, a in own.items()}, min(step.amount, initial)
    else:
        amount = step.amount
    layers = prunable_layers(model, spec)
    mask_by_magnitude(model, own, rest, amount, step.scope, fold=False)
    _finetune(model, step, spec)  # with torch's masks in place: zeros stay zero
    fold_masks(model)
    total = sum(m.weight.numel() for _, m in layers)
    zeros = sum(int((m.weight == 0).sum()) for _, m in layers)
    return Kernel("prune", f"torch.nn.utils.prune L1 unstructured ({step.scope})",
                  detail={"layers": len(layers), "zero_fraction": round(zeros / max(total, 1), 4),
                          "finetune_epochs": step.finetune_epochs, "layer_overrides": len(own)})


def structured(model: nn.Module, step: Prune, spec: ModelSpec,
               overrides: dict[str, LayerOverride] | None = None) -> Kernel:
    """Physically remove the lowest-L2 channels (and attention heads where the model declares them); a layer's
    override sets the fraction of its output channels removed (0 keeps it whole)."""
    import torch_pruning as tp

    check_finetune(step, spec)
    before = sum(p.numel() for p in model.parameters())
    own, _ = plan(model, step, spec, overrides or {})
    mods = dict(model.named_modules())
    never = [m for n, m in model.named_modules() if n in spec.never_prune] + [mods[n] for n, a in own.items() if a == 0]
    kwargs: dict = {"ignored_layers": never}
    if any(own.values()):
        kwargs["pruning_ratio_dict"] = {mods[n]: a for n, a in own.items() if a > 0}
    finalize = None
    if spec.structured_setup is not None:
        extra, finalize = spec.structured_setup(model)
        kwargs["ignored_layers"] = never + extra.pop("ignored_layers", [])
        kwargs.update(extra)
        if kwargs.get("prune_num_heads"):
            kwargs["head_pruning_ratio"] = step.amount
    for p in model.parameters():  # the dependency graph is traced through autograd
        p.requires_grad_(True)
    with torch.enable_grad():  # also when a caller runs us under no_grad
        pruner = tp.pruner.BasePruner(
            model, spec.example_inputs(1), importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=step.amount, global_pruning=step.scope == "global", max_pruning_ratio=0.99, **kwargs)
        pruner.step()
    for p in model.parameters():
        p.requires_grad_(False)
    if finalize is not None:
        finalize(model, pruner)
    try:  # a layout the dependency graph misread fails here, with a reason a user can act on
        with torch.no_grad():  # not inference_mode: tensors a model caches here may be trained next
            spec.forward(model, spec.example_inputs(1))
    except Exception as exc:  # noqa: BLE001
        raise RuntimeError(f"structured pruning cannot keep this architecture's shapes consistent ({type(model).__name__}: "
                           f"{str(exc)[:160]}); use magnitude pruning, or list the layers to keep in never_prune") from None
    _finetune(model, step, spec)
    after = sum(p.numel() for p in model.parameters())
    return Kernel("prune", f"Torch-Pruning {tp.__version__} structured ({step.scope}); smaller dense kernels",
                  detail={"params_before": before, "params_after": after, "finetune_epochs": step.finetune_epochs})
