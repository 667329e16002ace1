"""Model registry: each model declares how to build it, feed it, score it and what never to prune.

Models plug in with `@register_model` (the built-in ones register on import of `engine.models`).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable

from engine.core.errors import UnknownModelError

if TYPE_CHECKING:  # a front end lists models and reads their description without loading torch
    import torch
    from torch import nn

Inputs = Any  # a tensor, or a dict of tensors passed as keyword arguments


@dataclass(frozen=True)
class ModelSpec:
    """What the engine needs to know about a model.

    `forward(model, inputs)` turns the model's raw output into the tensor that `score` compares;
    `score(outputs, reference)` returns the metric, where `reference` is the uncompressed fp32
    model's outputs on the same evaluation data (so fidelity metrics need no labels).
    """

    name: str
    task: str
    description: str
    source: str
    metric: str
    build: Callable[[], nn.Module]
    example_inputs: Callable[[int], Inputs]
    eval_inputs: Callable[[], list[Inputs]]
    score: Callable[[torch.Tensor, torch.Tensor], dict[str, float]]
    forward: Callable[[nn.Module, Inputs], torch.Tensor] = lambda model, x: model(x)
    metric_kind: str = "accuracy"  # "fidelity" when the score is agreement with the fp32 model
    never_prune: tuple[str, ...] = ()
    # Optional: extra Torch-Pruning arguments and a fix-up to run after structured pruning.
    structured_setup: Callable[[nn.Module], tuple[dict[str, Any], Callable[[nn.Module, Any], None]]] | None = None
    # Optional: retrain in place for n epochs on the model's training data (after pruning).
    finetune: Callable[[nn.Module, int], None] | None = None
    # Optional: training batches (inputs, targets[, key]) for one epoch (`epoch` seeds its order); targets None
    # for an unlabelled corpus (distillation only); a key marks a batch that recurs across epochs (its teacher
    # outputs are computed once). `loss(outputs, targets)` defaults to cross-entropy; `recover_lr`
    # is the learning rate recovery uses unless a recipe sets one.
    train_batches: Callable[[int], Any] | None = None
    train_labelled: bool = True
    loss: Callable[[Any, Any], Any] | None = None
    recover_lr: float = 1e-3
    # Optional, for distilling an encoder: (model, inputs) -> [each layer's states..., the final output]; matched
    # layer by layer (relative MSE) besides the output's cosine, a far richer signal than the output alone.
    distill_forward: Callable[[nn.Module, Inputs], list[torch.Tensor]] | None = None
    # Optional: inputs drawn from training data (never the evaluation data) to calibrate static int8 activation
    # ranges; without them int8 uses dynamic activation quantization only.
    calibration_inputs: Callable[[], list[Inputs]] | None = None
    # How to prepare raw inputs, for the bundle's model card.
    preprocessing: str = ""
    # Optional: the parameter count without building the model (e.g. from the weights' headers), so a list of
    # models needs no torch; it raises UserError where the model cannot load. Tests check it against the build.
    parameters: Callable[[], int] | None = None

    def info(self, parameters: int | None = None) -> "ModelInfo":
        return ModelInfo(self.name, self.task, self.description, self.source, self.metric, self.metric_kind,
                         self.finetune is not None, parameters, self.train_batches is not None,
                         self.train_batches is not None and self.train_labelled)


@dataclass(frozen=True)
class ModelInfo:
    """What a front end shows about a model (plain data: it crosses from the measuring process)."""

    name: str
    task: str
    description: str
    source: str
    metric: str
    metric_kind: str
    can_finetune: bool
    parameters: int | None = None  # known once the model is built
    can_distill: bool = False  # it has training inputs (labelled or not)
    can_recover_labels: bool = False  # its training inputs carry labels (fine-tuning)


_REGISTRY: dict[str, Callable[[], ModelSpec]] = {}
_SPECS: dict[str, ModelSpec] = {}
# Name prefixes of models built from their name alone ("hf:", "py:"): prefix -> name -> spec. Registered by
# the modules that parse them (engine.models.user), so this registry knows no source by name.
_SOURCES: dict[str, Callable[[str], ModelSpec]] = {}


def register_source(prefix: str, spec_for: Callable[[str], ModelSpec]) -> None:
    """Models named `<prefix>...` are built by `spec_for(name)`; a prefix claimed twice is an error."""
    if prefix in _SOURCES:
        raise ValueError(f"model source {prefix!r} is registered twice: give the new one another prefix")
    _SOURCES[prefix] = spec_for


def register_model(name: str) -> Callable[[Callable[[], ModelSpec]], Callable[[], ModelSpec]]:
    """Register a factory returning the ModelSpec of `name`; a name registered twice is refused, as in every
    registry (which one the store's rows meant would otherwise depend on import order)."""

    def deco(factory: Callable[[], ModelSpec]) -> Callable[[], ModelSpec]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice: give the new one another name")
        _REGISTRY[name] = factory
        return factory

    return deco


def model_names() -> list[str]:
    return list(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The spec of a registered model or of a name a registered source builds (a user model's canonical name)."""
    if isinstance(name, str) and name in _SPECS:
        return _SPECS[name]
    source = next((fn for prefix, fn in _SOURCES.items() if isinstance(name, str) and name.startswith(prefix)), None)
    if source is not None:
        _SPECS[name] = source(name)
        return _SPECS[name]
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UnknownModelError(f"unknown model {str(name)[:80]!r}: registered models are {', '.join(_REGISTRY)}; "
                                "your own: hf:<folder> (with --task, --eval-data) or py:<file.py>")
    _SPECS[name] = _REGISTRY[name]()
    return _SPECS[name]


def create_model(name: str) -> tuple[nn.Module, ModelSpec]:
    """A fresh model in eval mode with its spec."""
    spec = get_spec(name)
    return spec.build().eval(), spec


@lru_cache(maxsize=4)
def base_model(name: str) -> tuple[nn.Module, ModelSpec]:
    """The uncompressed model, loaded once per process. Never mutate it: `apply` deep-copies."""
    model, spec = create_model(name)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, spec
