"""Eager PyTorch, as the engine runs it: the compressed module itself, with the engine's fastest kernels."""
from __future__ import annotations

from typing import TYPE_CHECKING

from engine.core.axes import RUNTIMES
from engine.runtimes.base import Artifact, Runtime

if TYPE_CHECKING:
    from engine.compress.pipeline import Applied
    from engine.core.recipe import Recipe
    from engine.models import ModelSpec


class Eager(Runtime):
    name = "eager"
    replays_exactly = True
    deploy_note = None

    def prepare(self, applied: "Applied", recipe: "Recipe", spec: "ModelSpec", threads: int) -> Artifact:
        from engine.compress.precision import cast_inputs

        model = applied.model
        inputs = cast_inputs(spec.example_inputs(recipe.batch_size), recipe.precision, recipe.device)
        return Artifact(outputs=lambda x: spec.forward(model, cast_inputs(x, recipe.precision, recipe.device)),
                        call=lambda: spec.forward(model, inputs), held=model, held_as="model tensor bytes",
                        kernels=list(applied.kernels), warnings=list(applied.warnings))


RUNTIMES.register("eager", Eager())
