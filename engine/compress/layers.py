"""Which per-layer override of a recipe applies to which module of a model.

A name given exactly wins over patterns; a layer matched by two patterns, or an override that matches no
compressible layer, is refused by name (a typo must never silently leave a layer at the recipe's default).
"""
from __future__ import annotations

from torch import nn

from engine.core.errors import UserError
from engine.core.recipe import LayerOverride, Recipe

COMPRESSIBLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)


def compressible(model: nn.Module) -> list[str]:
    """Names of the modules that pruning or quantization can touch (those an override may name)."""
    return [n for n, m in model.named_modules() if isinstance(m, COMPRESSIBLE)]


def resolve(recipe: Recipe, model: nn.Module) -> dict[str, LayerOverride]:
    """{module name: its override} for every layer an override of `recipe` applies to."""
    if not recipe.layers:
        return {}
    names = compressible(model)
    out: dict[str, LayerOverride] = {}
    used: set[str] = set()
    for name in names:
        exact = [o for o in recipe.layers if o.pattern == name]
        hits = exact or [o for o in recipe.layers if o.matches(name)]
        if len(hits) > 1:
            raise UserError(f"layer {name} matches overrides {', '.join(repr(o.pattern) for o in hits)}: give it "
                            "by its exact name, or make the patterns disjoint")
        if hits:
            out[name] = hits[0]
            used.add(hits[0].pattern)
    unknown = [o.pattern for o in recipe.layers if o.pattern not in used]
    if unknown:
        shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
        raise UserError(f"layers: {', '.join(repr(u[:60]) for u in unknown)} names no compressible layer of "
                        f"{recipe.model}: its layers are {shown}")
    return out
