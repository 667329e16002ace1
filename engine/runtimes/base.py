"""What a runtime is: how a compressed model is made ready to run, evaluated and timed in it, and what its
bundle deploys.

A runtime supplies callables; the measurement (paired ABAB timing, memory, energy) stays in
`engine.measure.run`, the same for every runtime, so numbers from different runtimes compare like with like.
Adding one is a module here with a `Runtime` subclass registered in `engine.core.axes.RUNTIMES` and imported
by `engine/runtimes/__init__.py`. Runtime modules import torch lazily: the registry is filled when a recipe
is validated, also in the dashboard's server process, which never loads torch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from torch import nn

    from engine.compress.pipeline import Applied
    from engine.core.recipe import Recipe
    from engine.core.result import Kernel
    from engine.models import ModelSpec


@dataclass
class Artifact:
    """A compressed model made ready to run in one runtime: what the measurement evaluates and times."""

    outputs: Callable[[Any], "torch.Tensor"]  # evaluation inputs (as the spec gives them) -> output tensor
    call: Callable[[], object]  # one timed call at the recipe's batch size
    held: Any  # what the memory pass measures: the module, or the artifact's size in bytes
    held_as: str  # how that memory is described ("model tensor bytes")
    kernels: list["Kernel"] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    size_bytes: int | None = None  # the artifact's own size where it, not compressed.bin, is what is deployed
    prepare_s: float | None = None  # seconds building the artifact took (export, compilation)
    # Called by the paired timer after a block of this artifact, before the baseline's: a runtime whose idle
    # threads keep spinning after a call (ONNX Runtime's default) lets them go idle here, so they do not run
    # into the baseline's block. None: nothing outlives a call.
    settle: Callable[[], None] | None = None


SETTLE_POLL_S = 0.002
# The process CPU clock may advance only per scheduler tick (4 ms steps on the development VM), so idleness is
# judged over a window of several ticks: a spinning thread fills >= 3/4 of it, an idle process next to none.
SETTLE_WINDOW_S = 0.016
SETTLE_IDLE_CORES = 0.5
SETTLE_LIMIT_S = 0.3  # never wait longer: other threads of the process may be busy for their own reasons


def until_idle(window_s: float = SETTLE_WINDOW_S, idle_cores: float = SETTLE_IDLE_CORES,
               limit_s: float = SETTLE_LIMIT_S, poll_s: float = SETTLE_POLL_S) -> float:
    """Wait until this process's threads stop using CPU (spinning pool threads have gone to sleep), at most
    `limit_s`; return the seconds waited. Read from the process CPU clock, so it holds whatever a runtime's
    spin bound is on this CPU (ONNX Runtime's is an iteration count, not a time)."""
    start = time.perf_counter()
    marks = [(start, time.process_time())]
    while True:
        time.sleep(poll_s)
        now, used = time.perf_counter(), time.process_time()
        marks.append((now, used))
        while len(marks) > 2 and now - marks[1][0] >= window_s:
            marks.pop(0)
        then, before = marks[0]
        if now - then >= window_s and (used - before) / (now - then) < idle_cores or now - start >= limit_s:
            return now - start


class Runtime:
    """One way of running a compressed model. Subclasses set the attributes and implement `prepare`."""

    name: str = ""
    label: str = "PyTorch"  # what ran the PyTorch weights, in the bundle report ("torch.compile")
    # Whether `apply` selects the engine's fastest kernels (int8 GEMM, sparse) for this runtime; a runtime that
    # makes its own kernels from the stored form (ONNX Runtime) gets the plain float model on the grid.
    engine_kernels: bool = True
    devices: tuple[str, ...] = ("cpu", "cuda")  # where it runs; a recipe for another device is refused
    devices_note: str = ""  # why it runs nowhere else, in that refusal
    prepares: str | None = None  # what building the artifact involves, said beside `prepare_s`
    outputs_name: str = "the compressed model"  # in the message about non-finite outputs
    # The bundle: the file to deploy; the file whose size the result's size_bytes is; which verification
    # accuracy is this runtime's measurement; and the README's line on it (None: no line, as bundles written
    # before runtimes existed have none).
    primary: str = "model.safetensors"
    sized: str = "compressed.bin"
    accuracy_key: str = "torch_accuracy"
    deploy_note: str | None = ""
    # True where the measured accuracy is the stored PyTorch model's itself (nothing is rebuilt between
    # measurement and export), so export records it as is; otherwise export re-runs the artifact and a
    # different figure is refused.
    replays_exactly: bool = False
    exported_name: str = "the exported model"  # in the message when the re-run disagrees
    # Frontier figures outline points measured here in this colour, and the legend says so (None: eager's look).
    figure_edge: str | None = None
    figure_note: str | None = None
    # The bundle files of its own besides the common ones (its primary model, e.g. OpenVINO's model.xml +
    # model.bin): hashed in the record like the rest, written by `write_files`, re-run by `files_outputs`.
    files: tuple[str, ...] = ()

    def prepare(self, applied: "Applied", recipe: "Recipe", spec: "ModelSpec", threads: int) -> Artifact:
        """Make `applied` ready to run in this runtime with `threads` threads."""
        raise NotImplementedError

    def write_files(self, applied: "Applied", recipe: "Recipe", spec: "ModelSpec", folder: "Path") -> dict[str, Any]:
        """Write `files` (the artifact that was measured) into a bundle folder; return the model card's entry."""
        raise NotImplementedError

    def files_outputs(self, folder: "Path", recipe: "Recipe", spec: "ModelSpec") -> "torch.Tensor":
        """The bundle's own model's outputs on the evaluation data (VerificationError where it does not run)."""
        raise NotImplementedError

    def torch_runner(self, model: "nn.Module", spec: "ModelSpec", example: Any) -> Callable[[Any], "torch.Tensor"]:
        """How a bundle's PyTorch model is run to reproduce this runtime's measurement (eager by default)."""
        return lambda x: spec.forward(model, x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
