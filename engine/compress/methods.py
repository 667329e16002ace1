"""The prune methods a recipe can name, registered in `engine.core.axes.PRUNE_METHODS`.

Each says what it does to a model and what that means downstream (sparse kernels, dense runtimes, recovery);
the pruning itself is in `engine.compress.prune`, imported when a model is pruned (this module loads no torch:
the registry is filled when a recipe is validated, also where torch never loads).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from engine.core.axes import PRUNE_METHODS

if TYPE_CHECKING:
    from torch import nn

    from engine.core.recipe import LayerOverride, Prune
    from engine.core.result import Kernel
    from engine.models import ModelSpec


class PruneMethod:
    """One way of removing weights."""

    name: str = ""
    prunes: bool = True  # False for "none": the identity
    # Zeros left in place (shapes unchanged): stored sparse, run on sparse kernels where faster, dense elsewhere;
    # recovery keeps them zero by re-applying the masks.
    zeros_in_place: bool = False

    def prune(self, model: "nn.Module", step: "Prune", spec: "ModelSpec", overrides: dict[str, "LayerOverride"],
              initial: float | None = None) -> "Kernel | None":
        """Prune `model` in place; how, as a Kernel (None: nothing done). `initial`: a gradual schedule's first
        sparsity, for methods that support one."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class NoPrune(PruneMethod):
    name = "none"
    prunes = False


class Magnitude(PruneMethod):
    """Zero the smallest-|w| weights (unstructured, shapes unchanged)."""

    name = "magnitude"
    zeros_in_place = True

    def prune(self, model, step, spec, overrides, initial=None):
        from engine.compress import prune

        return prune.magnitude(model, step, spec, overrides, initial=initial)


class Structured(PruneMethod):
    """Remove whole channels / attention heads, so tensors really shrink."""

    name = "structured"

    def prune(self, model, step, spec, overrides, initial=None):
        from engine.compress import prune

        return prune.structured(model, step, spec, overrides)


for _method in (NoPrune(), Magnitude(), Structured()):
    PRUNE_METHODS.register(_method.name, _method)
