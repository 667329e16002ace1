"""The compressed model through torch.compile (inductor): the runtime of a PyTorch deployment that compiles.

Compiling happens on the first call and takes seconds to a minute, so it is timed on its own (`prepare_s`)
and never inside the latency, and the compiled model is kept per recipe for the life of the process. What
ran is read from the graphs TorchDynamo captured (how many, so graph breaks show, and which compute
operators they hold), not assumed.
"""
from __future__ import annotations

import time
import types
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable

from engine.core.axes import RUNTIMES
from engine.core.result import Kernel
from engine.runtimes.base import Artifact, Runtime

if TYPE_CHECKING:  # torch loads when a model is compiled, not when the runtime registers
    import torch
    from torch import nn

    from engine.compress.pipeline import Applied
    from engine.core.recipe import Recipe
    from engine.models import ModelSpec

CACHE_SIZE = 4
_CACHE: dict[tuple[str, int], tuple[Callable[[Any], Any], list[Kernel], float]] = {}
# Substrings of operator names that do the arithmetic (the rest is reshapes, activations and glue).
_COMPUTE = ("linear", "conv", "matmul", "bmm", "addmm", "embedding", "attention", "pack_mm")


def _name(target: Any) -> str:
    return getattr(target, "__name__", None) or str(target)


def _own_code(fn: Callable) -> Callable:
    """`fn` with a code object of its own. TorchDynamo keeps compiled graphs, and its limit of 8 recompiles
    before silently running eager, per code object: one per recipe keeps recipes apart, and dropping the
    function drops its graphs."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


def compiled(key: str | None, threads: int, model: nn.Module, forward: Callable[[nn.Module, Any], Any], inputs: Any
             ) -> tuple[Callable[[Any], Any], list[Kernel], float]:
    """`forward(model, ·)` compiled, the kernels it holds and the seconds the first (compiling) call took.

    Kept per (recipe `key`, threads), since inductor bakes the OpenMP thread count into the C++ it generates;
    `key=None` compiles a model that must not be shared (weights loaded from a bundle being verified)."""
    import torch

    if key is not None and (key, threads) in _CACHE:
        return _CACHE[key, threads]
    graphs: list[Counter] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        from torch._inductor.compile_fx import compile_fx  # what backend="inductor" calls

        graphs.append(Counter(_name(n.target) for n in gm.graph.nodes
                              if n.op in ("call_function", "call_method", "call_module")))
        return compile_fx(gm, example_inputs)

    fn = torch.compile(_own_code(lambda x: forward(model, x)), backend=backend)
    start = time.perf_counter()
    with torch.inference_mode():
        fn(inputs)
    seconds = time.perf_counter() - start
    if not graphs:
        raise RuntimeError("torch.compile captured no graph: the model would run eager")
    ops = sum(graphs, Counter())
    compute = {op: c for op, c in ops.items() if any(s in op.lower() for s in _COMPUTE)}
    breaks = max(len(graphs) - 1, 0)
    kernels = [Kernel("compile", f"inductor, {len(graphs)} graph(s): " + (
        ", ".join(f"{op} x{c}" for op, c in sorted(compute.items())) or "no compute operators captured"), False,
        {"graph breaks": breaks, "read from": "the graphs TorchDynamo captured",
         "note": "inductor generates C++/OpenMP code for the glue and calls library kernels for matmuls and "
                 "quantized operators"})]
    if key is None:
        return fn, kernels, seconds
    _CACHE[key, threads] = fn, kernels, seconds
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    return fn, kernels, seconds


class Compile(Runtime):
    """Accuracy from the compiled model; latency after compiling (the compile time is `prepare_s`)."""

    name = "compile"
    label = "torch.compile"
    prepares = "torch.compile (inductor)"
    outputs_name = "the compiled model"
    exported_name = "the compiled model"
    figure_edge, figure_note = "#9333ea", "purple outline: measured through torch.compile"
    deploy_note = ": rebuild it with `engine.bundle.bundle.load_torch(<this folder>)` and run `torch.compile(model)`"

    def prepare(self, applied: "Applied", recipe: "Recipe", spec: "ModelSpec", threads: int) -> Artifact:
        from engine.compress.precision import cast_inputs

        inputs = cast_inputs(spec.example_inputs(recipe.batch_size), recipe.precision, recipe.device)
        fn, kernels, seconds = compiled(recipe.with_(batch_size=1).key, threads, applied.model, spec.forward, inputs)
        warnings = list(applied.warnings)
        breaks = kernels[-1].detail["graph breaks"]
        if breaks:
            warnings.append(f"torch.compile split the model at {breaks} graph break(s) (typically the int8 layers, "
                            "whose packed weights it cannot trace): those layers run uncompiled between compiled "
                            "parts")
        return Artifact(outputs=lambda x: fn(cast_inputs(x, recipe.precision, recipe.device)), call=lambda: fn(inputs),
                        held=applied.model, held_as="model tensor bytes", kernels=applied.kernels + kernels,
                        warnings=warnings, prepare_s=seconds)

    def torch_runner(self, model: "nn.Module", spec: "ModelSpec", example: Any) -> Callable[[Any], "torch.Tensor"]:
        import torch

        return compiled(None, torch.get_num_threads(), model, spec.forward, example)[0]


RUNTIMES.register("compile", Compile())
