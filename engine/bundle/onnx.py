"""The compressed model as ONNX, run and checked in ONNX Runtime (what a user would deploy)."""
from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from engine.compress.pipeline import Applied
from engine.compress.precision import DTYPES
from engine.core.errors import VerificationError
from engine.core.recipe import Recipe
from engine.measure.run import reference
from engine.models import ModelSpec


class _Exportable(nn.Module):
    """The model plus its output transform (e.g. mean pooling), with named positional inputs for ONNX."""

    def __init__(self, model: nn.Module, spec: ModelSpec, names: list[str] | None) -> None:
        super().__init__()
        self.model, self.spec, self.names = model, spec, names

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        inputs = dict(zip(self.names, xs)) if self.names else xs[0]
        return self.spec.forward(self.model, inputs).float()


def _input_arrays(inputs: Any) -> tuple[list[str], list[torch.Tensor]]:
    if isinstance(inputs, dict):
        return list(inputs), list(inputs.values())
    return ["input"], [inputs]


@contextmanager
def _quiet() -> Iterator[None]:
    """Mute the exporters' advice logs (torch.onnx registrations, ONNX Runtime's root-logger hints)."""
    root, tonnx = logging.getLogger(), logging.getLogger("torch.onnx")
    levels = root.level, tonnx.level
    root.setLevel(logging.ERROR)
    tonnx.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(levels[0])
        tonnx.setLevel(levels[1])


def export_onnx(applied: Applied, recipe: Recipe, spec: ModelSpec, path: Path) -> dict[str, Any]:
    """Write model.onnx; return what it computes in and any note about it."""
    import onnx

    model, notes = applied.model, []
    onnx_dtype = recipe.precision
    if recipe.precision == "bf16":
        # bf16 -> fp32 is exact: the graph keeps the bf16 weight values; ONNX Runtime's CPU provider has no bf16 kernels.
        model, onnx_dtype = model.float(), "fp32"
        notes.append("bf16 weights stored as exact fp32 values: ONNX Runtime's CPU provider has no bf16 kernels")
    example = spec.example_inputs(2)
    names, tensors = _input_arrays(example)
    dtype = DTYPES[onnx_dtype]
    tensors = [t.to(dtype) if t.is_floating_point() else t for t in tensors]
    wrapper = _Exportable(model, spec, names if isinstance(example, dict) else None).eval()
    dynamic = {n: {0: torch.export.Dim("batch", min=1, max=4096)} for n in names}
    if isinstance(example, dict):
        for n in names:
            dynamic[n][1] = torch.export.Dim("sequence", min=2, max=512)
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(wrapper, tuple(tensors), dynamo=True, input_names=names,
                                    output_names=["output"], dynamic_shapes=(tuple(dynamic[n] for n in names),),
                                    verbose=False)
    program.save(str(path), external_data=False)
    kernel = f"{onnx_dtype} ONNX Runtime kernels"
    if recipe.quantize.bits == 8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = path.with_suffix(".float.onnx")
        path.rename(tmp)
        with _quiet():
            quantize_dynamic(str(tmp), str(path), per_channel=True, weight_type=QuantType.QInt8)
        tmp.unlink()
        kernel = "int8 integer kernels (ONNX Runtime dynamic quantization: MatMulInteger/ConvInteger)"
    elif recipe.quantize.bits is not None:
        notes.append(f"{recipe.quantize.bits}-bit weights stored as their dequantized grid values "
                     "(ONNX Runtime has no sub-8-bit CPU kernels)")
    opset = next((o.version for o in onnx.load(str(path), load_external_data=False).opset_import
                  if o.domain in ("", "ai.onnx")), None)
    return {"file": path.name, "opset": opset, "computes_in": kernel, "notes": notes,
            "inputs": [{"name": n, "dtype": str(t.dtype).removeprefix("torch."),
                        "shape": ["batch"] + (["sequence"] if isinstance(example, dict) else list(t.shape[1:]))}
                       for n, t in zip(names, tensors)],
            "output": {"name": "output", "dtype": "float32"}}


def check_self_contained(path: Path) -> None:
    """Refuse a model that points ONNX Runtime at data outside its own file (a path out of the bundle)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001  (protobuf raises several types on garbage)
        raise VerificationError(f"{path.name} is not a valid ONNX model: {str(exc)[:160]}") from None
    if any(uses_external_data(t) for t in _tensors(proto.graph)):
        raise VerificationError(f"{path.name} refers to weights in other files: refused (a bundle is self-contained)")


def _tensors(graph) -> Iterator:
    """Every tensor of a graph, its subgraphs' (If/Loop/Scan bodies) included."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("g"):
                yield from _tensors(a.g)
            for g in a.graphs:
                yield from _tensors(g)


def onnx_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_feed(session, inputs: Any) -> dict[str, np.ndarray]:
    names, tensors = _input_arrays(inputs)
    types = {i.name: i.type for i in session.get_inputs()}
    feed = {}
    for n, t in zip(names, tensors):
        a = t.numpy()
        if a.dtype.kind == "f":
            a = a.astype(np.float16 if types[n] == "tensor(float16)" else np.float32)
        feed[n] = a
    return feed


def onnx_accuracy(path: Path, spec: ModelSpec) -> float:
    """Accuracy of the ONNX model in ONNX Runtime on the model's evaluation data."""
    session = onnx_session(path)
    ref, _, _ = reference(spec.name)
    outs = [torch.from_numpy(session.run(None, onnx_feed(session, x))[0]) for x in spec.eval_inputs()]
    return spec.score(torch.cat(outs).float(), ref)["accuracy"]
