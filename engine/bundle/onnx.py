"""Checks on a bundle's ONNX model: self-contained, and its accuracy in ONNX Runtime."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from engine.core.errors import VerificationError
from engine.measure.run import reference
from engine.models import ModelSpec
from engine.runtimes.onnx import onnx_feed, onnx_session


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


def onnx_accuracy(path: Path, spec: ModelSpec) -> float:
    """Accuracy of the ONNX model in ONNX Runtime on the model's evaluation data."""
    session = onnx_session(path)
    ref, _, _ = reference(spec.name)
    outs = [torch.from_numpy(session.run(None, onnx_feed(session, x))[0]) for x in spec.eval_inputs()]
    return spec.score(torch.cat(outs).float(), ref)["accuracy"]
