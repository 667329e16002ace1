"""The compressed model as ONNX, quantized for and run in ONNX Runtime: the artifact a user would deploy.

Used twice: the `onnxruntime` runtime measures this artifact, and every bundle ships it. int8 uses ONNX
Runtime's own quantizer: static QDQ (activation ranges calibrated on the model's training split) where
the model has convolutions and ships calibration data, so convolutions run QLinearConv; dynamic
quantization (MatMulInteger) otherwise. What actually runs is read back from the session's optimized
graph, never assumed.
"""
from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from engine.core.axes import RUNTIMES, SCHEMES
from engine.core.result import Kernel
from engine.runtimes.base import Artifact, Runtime, until_idle

if TYPE_CHECKING:  # torch, numpy and ONNX load when a model is exported, not when the runtime registers
    import numpy as np
    import torch
    from torch import nn

    from engine.compress.pipeline import Applied
    from engine.core.recipe import Recipe
    from engine.models import ModelSpec

CALIBRATION_BATCH = 64
# Operators that compute on integers in ONNX Runtime (contrib ops included).
_INT8_OPS = {"MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul", "QGemm", "DynamicQuantizeMatMul",
             "MatMulIntegerToFloat", "QAttention", "QEmbedLayerNormalization", "DynamicQuantizeLSTM",
             "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat",
             "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere"}
_COMPUTE_OPS = {"Conv", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm", "Attention",
                "MultiHeadAttention", "Gather"}


def _exportable(model: nn.Module, spec: ModelSpec, names: list[str] | None) -> nn.Module:
    """The model plus its output transform (e.g. mean pooling), with named positional inputs for ONNX."""
    from torch import nn

    class Exportable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *xs: torch.Tensor) -> torch.Tensor:
            inputs = dict(zip(names, xs)) if names else xs[0]
            return spec.forward(self.model, inputs).float()

    return Exportable()


def input_arrays(inputs: Any) -> tuple[list[str], list[torch.Tensor]]:
    if isinstance(inputs, dict):
        return list(inputs), list(inputs.values())
    return ["input"], [inputs]


@contextmanager
def quiet() -> Iterator[None]:
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
    """Write the deployable model.onnx; return what it computes in, how it was quantized, and notes."""
    import onnx
    import torch

    from engine.compress.precision import DTYPES

    model, notes = applied.model, []
    onnx_dtype = recipe.precision
    if recipe.precision == "bf16":
        # bf16 -> fp32 is exact: the graph keeps the bf16 weight values; ONNX Runtime's CPU provider has no bf16
        # kernels.
        model, onnx_dtype = model.float(), "fp32"
        notes.append("bf16 weights stored as exact fp32 values: ONNX Runtime's CPU provider has no bf16 kernels")
    example = spec.example_inputs(2)
    names, tensors = input_arrays(example)
    dtype = DTYPES[onnx_dtype]
    tensors = [t.to(dtype) if t.is_floating_point() else t for t in tensors]
    wrapper = _exportable(model, spec, names if isinstance(example, dict) else None).eval()
    dynamic = {n: {0: torch.export.Dim("batch", min=1, max=4096)} for n in names}
    if isinstance(example, dict):
        for n in names:
            dynamic[n][1] = torch.export.Dim("sequence", min=2, max=512)
    with quiet(), torch.no_grad():
        program = torch.onnx.export(wrapper, tuple(tensors), dynamo=True, input_names=names,
                                    output_names=["output"], dynamic_shapes=(tuple(dynamic[n] for n in names),),
                                    verbose=False)
    program.save(str(path), external_data=False)
    quantization = None
    if recipe.quantize.bits is not None and SCHEMES.get(recipe.quantize.scheme).int8_activations:
        quantization = _quantize_int8(path, spec)
        if recipe.quantize.bits < 8:
            notes.append(f"{recipe.quantize.bits}-bit grid values re-quantized to int8 by ONNX Runtime's quantizer "
                         "(its integer kernels are 8-bit)")
        if any(o.bits is not None for o in recipe.layers):
            notes.append("ONNX Runtime's quantizer gives every layer int8 weights: the recipe's per-layer bit widths "
                         "(and layers it keeps in float) hold in compressed.bin and the PyTorch model, not in "
                         "model.onnx")
    elif recipe.quantize.bits is not None:
        notes.append(f"{recipe.quantize.bits}-bit {recipe.quantize.scheme} weights stored as their dequantized grid "
                     "values: ONNX Runtime runs them with float kernels")
    opset = next((o.version for o in onnx.load(str(path), load_external_data=False).opset_import
                  if o.domain in ("", "ai.onnx")), None)
    return {"file": path.name, "opset": opset, "dtype": onnx_dtype, "quantization": quantization,
            "float_grid_bits": recipe.quantize.bits if quantization is None else None, "notes": notes,
            "inputs": [{"name": n, "dtype": str(t.dtype).removeprefix("torch."),
                        "shape": ["batch"] + (["sequence"] if isinstance(example, dict) else list(t.shape[1:]))}
                       for n, t in zip(names, tensors)],
            "output": {"name": "output", "dtype": "float32"}}


def _quantize_int8(path: Path, spec: ModelSpec) -> str:
    """Quantize model.onnx in place with ONNX Runtime's quantizer; return which method was used."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        with quiet():
            # Shape inference plus the basic graph fusions (Conv+BatchNorm) the quantizer expects.
            quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
            if "Conv" in ops and spec.calibration_inputs is not None:
                quantize_static(str(prepared), str(path), _Calibration(spec), quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                op_types_to_quantize=["Conv", "MatMul", "Gemm"])
                return "static QDQ int8 (activation ranges calibrated on the training split)"
            quantize_dynamic(str(prepared), str(path), per_channel=True, weight_type=QuantType.QInt8)
    return "dynamic int8 (activations quantized per call)"


class _Calibration:
    """Feeds the model's calibration inputs (training data) to ONNX Runtime's calibrator in batches."""

    def __init__(self, spec: ModelSpec) -> None:
        batches = []
        for x in spec.calibration_inputs():
            names, tensors = input_arrays(x)
            for i in range(0, len(tensors[0]), CALIBRATION_BATCH):
                batches.append({n: t[i:i + CALIBRATION_BATCH].float().numpy() if t.is_floating_point()
                                else t[i:i + CALIBRATION_BATCH].numpy() for n, t in zip(names, tensors)})
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def onnx_session(path: Path, threads: int | None = None, optimized: Path | None = None):
    """A CPU session as ONNX Runtime deploys by default, its thread count fixed; `optimized` receives the graph
    ONNX Runtime really runs (after its fusions).

    Idle pool threads keep ONNX Runtime's default and spin a while before they sleep: turning that off
    (`session.intra_op.allow_spinning=0`) read MiniLM fp32 at batch 1 at 2.84 ms instead of 1.83 ms, a session
    nobody deploys. The paired timer lets the threads go idle before the baseline's blocks instead
    (`Artifact.settle`)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def session_settings(session) -> str:
    """How a measured session ran, read from its options (recorded with the result: its latency depends on them)."""
    opts = session.get_session_options()
    try:
        spinning = opts.get_session_config_entry("session.intra_op.allow_spinning")
    except Exception:  # noqa: BLE001  (onnxruntime raises a bare error for a key that was never set)
        spinning = "1"
    return (f"{opts.intra_op_num_threads} intra-op thread(s), {opts.inter_op_num_threads} inter-op, "
            f"{opts.execution_mode.name.removeprefix('ORT_').lower()} execution, graph optimization "
            f"{opts.graph_optimization_level.name.removeprefix('ORT_ENABLE_').lower()}, intra-op spinning "
            + ("on (ONNX Runtime's default)" if spinning == "1" else "off"))


def onnx_feed(session, inputs: Any) -> dict[str, np.ndarray]:
    import numpy as np

    names, tensors = input_arrays(inputs)
    types = {i.name: i.type for i in session.get_inputs()}
    feed = {}
    for n, t in zip(names, tensors):
        a = t.float().numpy() if t.is_floating_point() else t.numpy()
        if a.dtype.kind == "f":
            a = a.astype(np.float16 if types[n] == "tensor(float16)" else np.float32)
        feed[n] = a
    return feed


def graph_kernels(original: Path, optimized: Path, info: dict[str, Any], recipe_precision: str) -> list[Kernel]:
    """What ONNX Runtime runs, read from the graph it optimized: integer operators, float ones, inserted casts."""
    import onnx

    ran = Counter(n.op_type for n in onnx.load(str(optimized), load_external_data=False).graph.node)
    given = Counter(n.op_type for n in onnx.load(str(original), load_external_data=False).graph.node)
    int8 = {op: c for op, c in ran.items() if op in _INT8_OPS}
    flt = {op: c for op, c in ran.items() if op in _COMPUTE_OPS}
    kernels = []
    if int8:
        kernels.append(Kernel("onnxruntime", "int8: " + _ops(int8), False,
                              {"quantization": info["quantization"], "read from": "the session's optimized graph"}))
    if flt:
        sub8 = info["float_grid_bits"] is not None
        kernels.append(Kernel("onnxruntime", f"{info['dtype']}: " + _ops(flt), sub8,
                              {"read from": "the session's optimized graph"}
                              | ({"weights": "sub-8-bit grid values run as floats"} if sub8 else {})))
    casts = ran["Cast"] - given["Cast"]
    if info["dtype"] == "fp16" and casts > 0:
        kernels.append(Kernel("onnxruntime", f"fp32 behind {casts} inserted Cast node(s)", True,
                              {"why": "ONNX Runtime's CPU provider has no fp16 kernel for these operators: it casts "
                                      "to fp32 and back, so fp16 saves memory but not time"}))
    if recipe_precision == "bf16":
        kernels.append(Kernel("onnxruntime", "fp32 (bf16 values)", True,
                              {"why": "ONNX Runtime's CPU provider has no bf16 kernels"}))
    return kernels


def _ops(counts: dict[str, int]) -> str:
    return ", ".join(f"{op} x{c}" for op, c in sorted(counts.items()))


ARTIFACT_CACHE_SIZE = 8
_ARTIFACTS: dict[str, tuple[bytes, dict, float]] = {}


def artifact(applied: Applied, recipe: Recipe, spec: ModelSpec) -> tuple[bytes, dict, float]:
    """The exported model of a recipe and the seconds exporting took (kept per process: it takes seconds,
    and a re-measurement of the same recipe must not pay it again)."""
    key = recipe.with_(batch_size=1).key  # the exported graph takes any batch size
    if key not in _ARTIFACTS:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="compression-dash-") as tmp:
            info = export_onnx(applied, recipe, spec, Path(tmp) / "model.onnx")
            blob = (Path(tmp) / "model.onnx").read_bytes()
        _ARTIFACTS[key] = blob, info, time.perf_counter() - start
        while len(_ARTIFACTS) > ARTIFACT_CACHE_SIZE:
            _ARTIFACTS.pop(next(iter(_ARTIFACTS)))
    return _ARTIFACTS[key]


class OnnxRuntime(Runtime):
    """The deployable artifact: exported (and quantized) ONNX, run in an ONNX Runtime session with the same
    thread count. Accuracy, latency, memory and energy all come from that session."""

    name = "onnxruntime"
    label = "PyTorch"
    engine_kernels = False  # ONNX Runtime makes its own kernels from the plain float model on the grid
    devices, devices_note = ("cpu",), "the installed ONNX Runtime has the CPU provider only"
    prepares = "ONNX export and quantization"
    outputs_name = "the ONNX model"
    primary = sized = "model.onnx"
    accuracy_key = "onnx_accuracy"
    exported_name = "the exported model.onnx"
    figure_edge, figure_note = "#16a34a", "green outline: measured in ONNX Runtime"

    def prepare(self, applied: Applied, recipe: Recipe, spec: ModelSpec, threads: int) -> Artifact:
        import torch

        from engine.core.axes import PRUNE_METHODS

        with tempfile.TemporaryDirectory(prefix="compression-dash-") as tmp:
            path, optimized = Path(tmp) / "model.onnx", Path(tmp) / "optimized.onnx"
            blob, info, seconds = artifact(applied, recipe, spec)
            path.write_bytes(blob)
            first = "kernels" not in info  # the optimized graph is read once per artifact, then kept with it
            session = onnx_session(path, threads=threads, optimized=optimized if first else None)
            if first:
                info["kernels"] = graph_kernels(path, optimized, info, recipe.precision)
        warnings = list(info["notes"])  # the eager kernel notes do not apply to this runtime
        if PRUNE_METHODS.get(recipe.prune.method).zeros_in_place:
            warnings.append("ONNX Runtime runs the pruned weights densely: the zeros give no speed-up and the "
                            "ONNX file does not shrink")
        feed = onnx_feed(session, spec.example_inputs(recipe.batch_size))
        settings = {"session": session_settings(session)}
        kernels = [Kernel(k.step, k.kernel, k.simulated, k.detail | settings) for k in info["kernels"]]
        return Artifact(outputs=lambda x: torch.from_numpy(session.run(None, onnx_feed(session, x))[0]),
                        call=lambda: session.run(None, feed), held=len(blob), held_as="model.onnx bytes",
                        kernels=[k for k in applied.kernels if k.step == "prune"] + kernels,
                        warnings=warnings, size_bytes=len(blob), prepare_s=seconds, settle=until_idle)


RUNTIMES.register("onnxruntime", OnnxRuntime())
