"""The compressed model as OpenVINO IR, quantized by NNCF and run by OpenVINO's CPU plugin: what users deploy
on Intel CPUs (it runs on any x86-64 CPU; bf16 where the CPU has AVX512_BF16 or AMX).

The model goes from PyTorch straight into OpenVINO (`openvino.convert_model`), is quantized by NNCF
(post-training int8 for `dynamic`, int8/int4 weight compression for `weight-only`), saved as IR and compiled
with OpenVINO's deployment settings (the LATENCY hint, the recipe's thread count, the inference precision
from the recipe). What runs, and the settings it ran with, are read back from the compiled model, never assumed.

OpenVINO's and NNCF's usage telemetry is off in every process that loads the engine's runtimes: both treat the
`openvino-telemetry` package as optional and send nothing where it cannot be imported, so the engine makes it
unimportable before either loads (its documented opt-out, `opt_in_out --opt_out`, itself sends an event).
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.core.axes import PRUNE_METHODS, RUNTIMES, SCHEMES
from engine.core.errors import UserError, VerificationError
from engine.core.result import Kernel
from engine.runtimes.base import Artifact, Runtime

if TYPE_CHECKING:  # torch, numpy and OpenVINO load when a model is converted, not when the runtime registers
    import numpy as np
    import torch
    from torch import nn

    from engine.compress.pipeline import Applied
    from engine.core.recipe import Recipe
    from engine.models import ModelSpec

NOT_INSTALLED = ("OpenVINO is not installed here: pip install openvino==2026.4.1 nncf==3.4.0 "
                 "(or pip install -e .), or choose another runtime")
CALIBRATION_SAMPLES = 300  # NNCF's default subset size: activation ranges for post-training int8
MIN_GROUP = 8  # NNCF may shrink a group that does not divide a layer's inputs down to this (the recipe's smallest)
PRECISION_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
CAPABILITY = {"bf16": "BF16", "fp16": "FP16"}  # the CPU plugin's OPTIMIZATION_CAPABILITIES entry each needs
# Layers of the CPU plugin's runtime graph that do the arithmetic (the rest is reorders, reshapes, element-wise
# glue); a "Subgraph" (a fused snippet) counts where it holds a MatMul (the attention block).
_COMPUTE = {"FullyConnected", "Convolution", "Deconvolution", "MatMul", "ScaledAttn", "Gather", "RNNSeq", "RNNCell"}
_LOW_BITS = {"u8", "i8", "u4", "i4"}


def telemetry_off() -> None:
    """Keep OpenVINO's and NNCF's telemetry from ever starting: `openvino_telemetry` becomes unimportable, so
    model conversion uses OpenVINO's built-in stub and NNCF its no-op object. Where the package was loaded before
    the engine (a user's own script imported it), the modules holding it are switched to those stubs too."""
    loaded = sys.modules.get("openvino_telemetry")
    sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  (an import of it now raises ImportError)
    if loaded is None:
        return
    for name in ("openvino.tools.ovc.convert_impl", "openvino.tools.ovc.telemetry_utils", "openvino.tools.ovc.utils",
                 "openvino.tools.ovc.main"):
        if name in sys.modules:
            from openvino.tools.ovc import telemetry_stub

            sys.modules[name].tm = telemetry_stub  # type: ignore[attr-defined]
    if "nncf.telemetry.decorator" in sys.modules:
        from nncf.telemetry.wrapper import NNCFTelemetryStub

        sys.modules["nncf.telemetry.decorator"].telemetry = NNCFTelemetryStub()  # type: ignore[attr-defined]


telemetry_off()  # before anything in this process can import OpenVINO or NNCF


def libraries() -> tuple[Any, Any]:
    """(openvino, nncf), telemetry off; a UserError that says how to install them where they are missing."""
    telemetry_off()
    try:
        import nncf
        import openvino
    except ImportError:
        raise UserError(NOT_INSTALLED) from None
    nncf.set_log_level(logging.ERROR)
    return openvino, nncf


@contextlib.contextmanager
def _quiet() -> Any:
    """NNCF draws progress bars and tables on stdout (which `--json` output owns) and the converter's tracer warns."""
    from engine.runtimes.onnx import quiet

    with quiet(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


# --- conversion and quantization ------------------------------------------------------------------------------
def _convert(applied: Applied, recipe: Recipe, spec: ModelSpec) -> Any:
    """The stored model (float weights on the grid) as an OpenVINO model with the spec's input names and a
    dynamic batch (and sequence) dimension; bf16/fp16 weights become their exact fp32 values."""
    import torch

    from engine.runtimes.onnx import _exportable, input_arrays

    ov, _ = libraries()
    model = copy.deepcopy(applied.model).float().eval()
    example = spec.example_inputs(2)
    names, tensors = input_arrays(example)
    tensors = [t.float() if t.is_floating_point() else t for t in tensors]
    wrapper = _exportable(model, spec, names if isinstance(example, dict) else None).eval()
    with _quiet(), torch.no_grad():
        converted = ov.convert_model(wrapper, example_input=tuple(tensors))
    shapes = {}
    for port, name, t in zip(converted.inputs, names, tensors):
        port.get_tensor().set_names({name})
        shapes[name] = ov.PartialShape([-1, -1] if isinstance(example, dict) else [-1, *t.shape[1:]])
    converted.outputs[0].get_tensor().set_names({"output"})
    converted.reshape(shapes)
    return converted


def _is_transformer(model: nn.Module) -> bool:
    return any("attention" in type(m).__name__.lower() for m in model.modules())


def _calibration(spec: ModelSpec) -> tuple[list[dict[str, np.ndarray]], str]:
    """Single-sample feeds for NNCF's statistics and where they come from: the model's calibration split, or its
    training corpus (never the evaluation data); a model with neither cannot be calibrated."""
    from engine.runtimes.onnx import input_arrays

    if spec.calibration_inputs is not None:
        batches, source = spec.calibration_inputs(), "the model's calibration split (training data)"
    elif spec.train_batches is not None:
        batches, source = (b[0] for b in spec.train_batches(0)), "the model's training corpus (not the evaluation data)"
    else:
        raise UserError(f"{spec.name} ships no calibration or training data, which NNCF's post-training int8 needs "
                        "for activation ranges: use quantize.scheme weight-only with runtime openvino")
    items: list[dict[str, np.ndarray]] = []
    for batch in batches:
        names, tensors = input_arrays(batch)
        for i in range(len(tensors[0])):
            items.append({n: (t[i:i + 1].float() if t.is_floating_point() else t[i:i + 1]).numpy()
                          for n, t in zip(names, tensors)})
            if len(items) == CALIBRATION_SAMPLES:
                return items, source
    return items, source


def _quantize(model: Any, applied: Applied, recipe: Recipe, spec: ModelSpec) -> tuple[Any, str | None, list[str]]:
    """NNCF on the converted model: (model, how it was quantized or None, notes)."""
    _, nncf = libraries()
    step, notes = recipe.quantize, []
    scheme = SCHEMES.get(step.scheme)
    if any(o.bits is not None for o in recipe.layers):
        notes.append("NNCF gives every layer the recipe's scheme: the per-layer bit widths (and layers kept in float) "
                     "hold in compressed.bin and the PyTorch model, not in the OpenVINO IR")
    if scheme.int8_activations:
        items, source = _calibration(spec)
        kind = nncf.ModelType.TRANSFORMER if _is_transformer(applied.model) else None
        with _quiet():
            model = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items), model_type=kind)
        if step.bits < 8:
            notes.append(f"{step.bits}-bit grid values re-quantized to int8 by NNCF (OpenVINO's integer kernels are "
                         "8-bit)")
        return model, (f"NNCF post-training int8 (activation ranges from {len(items)} samples of {source}"
                       + (", transformer preset" if kind else "") + ")"), notes
    if step.scheme == "weight-only" and step.bits in (4, 8):
        from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

        if step.bits == 8:
            args = {"mode": nncf.CompressWeightsMode.INT8_ASYM}
            if step.granularity == "per-group":
                notes.append(f"NNCF's int8 weight compression is per-channel: the recipe's group of {step.group_size} "
                             "holds in compressed.bin, not in the OpenVINO IR")
            how = "NNCF weight compression int8_asym per-channel"
        else:
            group = step.group_size if step.granularity == "per-group" else -1
            args = {"mode": nncf.CompressWeightsMode.INT4_ASYM, "group_size": group, "ratio": 1.0, "all_layers": True,
                    "advanced_parameters": AdvancedCompressionParameters(
                        group_size_fallback_mode=GroupSizeFallbackMode.ADJUST, min_adjusted_group_size=MIN_GROUP)}
            how = "NNCF weight compression int4_asym " + (f"group {group}" if group > 0 else "per-channel") + \
                  ", ratio 1.0, every layer"
        with _quiet():
            model = nncf.compress_weights(model, **args)
        if step.bits == 4:
            wanted = f"u4 group {group}" if group > 0 else "u4 per-channel"
            other = {f: n for f, n in weight_formats(model).items() if f != wanted}
            if other:
                notes.append(f"NNCF stored {sum(other.values())} weight(s) as {_ops(other)}: the recipe's group does "
                             f"not divide their inputs (it takes a smaller group of at least {MIN_GROUP}, else 8 bits)")
        return model, how, notes
    notes.append(f"{step.bits}-bit {step.scheme} weights stored as their dequantized grid values: OpenVINO runs them "
                 "with float kernels (NNCF compresses weights to 8 or 4 bits only)")
    return model, None, notes


def weight_formats(model: Any) -> dict[str, int]:
    """{"u4 group 32": n, "i8 per-channel": n, ...}: the compressed weights the IR holds, read from its
    constants (a low-bit constant decompressed by a Convert whose output is the weight, not its zero point)."""
    found: Counter[str] = Counter()
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant" or op.get_element_type().get_type_name() not in _LOW_BITS:
            continue
        targets = [t for out in op.outputs() for t in out.get_target_inputs()]
        convert = targets[0].get_node() if len(targets) == 1 else None
        if convert is None or convert.get_type_name() != "Convert":
            continue
        uses = [t for out in convert.outputs() for t in out.get_target_inputs()]
        if any(t.get_node().get_type_name() == "Subtract" and t.get_index() == 1 for t in uses):
            continue  # a zero point
        shape = op.get_output_partial_shape(0).to_shape()
        grouped = len(shape) == 3  # (out, groups, group size)
        found[f"{op.get_element_type().get_type_name()} " + (f"group {shape[-1]}" if grouped else "per-channel")] += 1
    return dict(sorted(found.items()))


def build_ir(applied: Applied, recipe: Recipe, spec: ModelSpec, folder: Path) -> dict[str, Any]:
    """Write model.xml + model.bin into `folder`; return how they were made (their precision, quantization, notes)."""
    ov, nncf = libraries()
    model = _convert(applied, recipe, spec)
    model, quantization, notes = _quantize(model, applied, recipe, spec) if recipe.quantize.bits is not None \
        else (model, None, [])
    if recipe.precision == "bf16":
        notes.append("bf16 weights stored as their exact f32 values in the IR (OpenVINO's IR has no bf16 weights "
                     "from PyTorch): OpenVINO computes in bf16 by its inference precision")
    ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=recipe.precision == "fp16")
    return {"files": ["model.xml", "model.bin"], "precision": recipe.precision, "quantization": quantization,
            "weights": weight_formats(model), "notes": notes, "openvino": ov.get_version(), "nncf": nncf.__version__,
            "inputs": [{"name": p.get_any_name(), "dtype": p.get_element_type().get_type_name(),
                        "shape": str(p.get_partial_shape())} for p in model.inputs]}


ARTIFACT_CACHE_SIZE = 8
_ARTIFACTS: dict[str, tuple[bytes, bytes, dict, float]] = {}


def artifact(applied: Applied, recipe: Recipe, spec: ModelSpec) -> tuple[bytes, bytes, dict, float]:
    """(model.xml, model.bin, how they were made, seconds converting and quantizing took), kept per recipe for
    the process: NNCF takes seconds, and a re-measurement or the bundle of the same recipe must get this IR."""
    key = recipe.with_(batch_size=1, threads=None).key  # the IR takes any batch size and thread count
    if key not in _ARTIFACTS:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="compression-dash-") as tmp:
            info = build_ir(applied, recipe, spec, Path(tmp))
            xml, weights = (Path(tmp) / "model.xml").read_bytes(), (Path(tmp) / "model.bin").read_bytes()
        _ARTIFACTS[key] = xml, weights, info, time.perf_counter() - start
        while len(_ARTIFACTS) > ARTIFACT_CACHE_SIZE:
            _ARTIFACTS.pop(next(iter(_ARTIFACTS)))
    return _ARTIFACTS[key]


# --- compiling and reading back what runs ---------------------------------------------------------------------
def compile_ir(xml: Path, precision: str, threads: int | None = None) -> tuple[Any, list[str]]:
    """The IR compiled for the CPU as OpenVINO deploys it: the LATENCY hint, `threads` inference threads, the
    recipe's precision where the CPU plugin has kernels for it (f32 and a note otherwise)."""
    ov, _ = libraries()
    core = ov.Core()
    notes = []
    hint = PRECISION_HINT[precision]
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if precision in CAPABILITY and CAPABILITY[precision] not in capabilities:
        notes.append(f"this CPU has no {precision} kernels in OpenVINO (its CPU plugin lists "
                     f"{', '.join(capabilities)}): the {precision} weights run in f32")
        hint = "f32"
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return core.compile_model(core.read_model(str(xml)), "CPU", config), notes


def settings(compiled: Any) -> str:
    """How the compiled model runs, read from its properties (recorded with the result: latency depends on them)."""
    def get(name: str) -> Any:
        return compiled.get_property(name)

    precision = get("INFERENCE_PRECISION_HINT")
    return (f"{get('PERFORMANCE_HINT')} hint, {get('INFERENCE_NUM_THREADS')} inference thread(s), "
            f"{get('NUM_STREAMS')} stream(s), inference precision {precision.get_type_name()}, execution mode "
            f"{str(get('EXECUTION_MODE_HINT')).split('.')[-1].lower()}, CPU pinning "
            f"{'on' if get('ENABLE_CPU_PINNING') else 'off'}, dynamic quantization group "
            f"{get('DYNAMIC_QUANTIZATION_GROUP_SIZE')}")


def _precision(port: Any) -> str:
    return port.get_element_type().get_type_name()


def runtime_layers(compiled: Any) -> Counter:
    """(layer type, activation precision, weight precision or "", primitive) of every compute layer the CPU plugin
    runs, read from its runtime graph (rt_info layerType / runtimePrecision / primitiveType)."""
    found: Counter[tuple[str, str, str, str]] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str)
        names = info["originalLayersNames"].astype(str).lower()
        fused = layer == "Subgraph" and ("matmul" in names or "scaled_dot_product_attention" in names)
        if layer not in _COMPUTE and not fused:
            continue
        consts = [i for i in op.inputs()
                  if i.get_source_output().get_node().get_rt_info()["layerType"].astype(str) == "Const"]
        if layer == "Gather" and not (consts and consts[0].get_index() == 0):
            continue  # an index lookup, not an embedding table
        weight = next((_precision(i) for i in consts if _precision(i) in _LOW_BITS), "")
        if not weight and consts and layer in ("FullyConnected", "Convolution", "Deconvolution", "Gather"):
            weight = _precision(consts[0])
        primitive = info["primitiveType"].astype(str)
        act = _precision(op.input(0))
        if fused:  # a snippet's inputs include the mask; its primitive names the precision it computes in
            act = primitive.rsplit("_", 1)[-1].lower()
        elif layer == "Gather":  # a lookup: no activations, only its table's precision
            act = "" if weight in _LOW_BITS else info["runtimePrecision"].astype(str)
        found["attention (fused subgraph)" if fused else layer, act, weight, primitive] += 1
    return found


def graph_kernels(compiled: Any, info: dict[str, Any], recipe: Recipe, notes: list[str]) -> list[Kernel]:
    """What ran, grouped by the precisions it computed in: integer and compressed-weight layers are real
    low-precision kernels; float layers are flagged simulated where they stand in for a precision or a bit width
    the CPU plugin does not run."""
    # (name, low precision, holds weights): a float layer without weights (attention's activation x activation
    # products) runs as it would in any recipe, so only weight-holding float layers can stand in for a grid.
    groups: dict[tuple[str, bool, bool], Counter] = {}
    primitives: dict[tuple[str, bool, bool], Counter] = {}
    for (layer, act, weight, primitive), n in runtime_layers(compiled).items():
        low = act in _LOW_BITS or weight in _LOW_BITS
        name = act if not low else f"{act} activations x {weight} weights" if act and weight else act or f"{weight} weights"
        key = (name, low, bool(weight))
        groups.setdefault(key, Counter())[layer] += n
        primitives.setdefault(key, Counter())[primitive] += n
    detail = {"read from": "the compiled model's runtime graph (rt_info layerType / runtimePrecision)",
              "settings": settings(compiled)}
    ran = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    float_grid = recipe.quantize.bits is not None and info["quantization"] is None
    # Weight-only: a layer whose compressed weights the CPU plugin decompresses when it compiles (convolutions)
    # computes as the float model does.
    decompressed = info["quantization"] is not None and not SCHEMES.get(recipe.quantize.scheme).int8_activations
    stand_in = ran != PRECISION_HINT[recipe.precision]  # fp16/bf16 without kernels on this CPU
    kernels = []
    for (name, low, weighted), counts in sorted(groups.items(), key=lambda g: (not g[0][1], not g[0][2])):
        extra: dict[str, Any] = {"primitives": _ops(primitives[name, low, weighted])}
        if low:
            extra |= {"quantization": info["quantization"], "weights": _ops(info["weights"]) or "none compressed"}
        simulated = not low and ((weighted and (float_grid or decompressed)) or stand_in)
        if simulated:
            extra["why"] = "; ".join(
                ([f"{recipe.quantize.bits}-bit grid values run as floats"] if float_grid else [])
                + (["the CPU plugin decompresses these layers' compressed weights to float when it compiles (it "
                    "runs compressed weights in fully connected layers and embedding lookups)"] if decompressed else [])
                + (notes if stand_in else []))
        kernels.append(Kernel("openvino", f"{name}: " + _ops(counts), simulated, detail | extra))
    return kernels


def _ops(counts: dict[str, int]) -> str:
    return ", ".join(f"{op} x{c}" for op, c in sorted(counts.items()))


def feed(compiled: Any, inputs: Any) -> dict[str, np.ndarray]:
    """Numpy inputs by name, floats as f32 (the IR's input type)."""
    from engine.runtimes.onnx import input_arrays

    names, tensors = input_arrays(inputs)
    wanted = {p.get_any_name() for p in compiled.inputs}
    return {n: (t.float() if t.is_floating_point() else t).numpy() for n, t in zip(names, tensors) if n in wanted}


def run_outputs(compiled: Any, inputs: Any) -> torch.Tensor:
    import torch

    request = compiled.create_infer_request()
    return torch.from_numpy(request.infer(feed(compiled, inputs))[0].copy())


class OpenVino(Runtime):
    """The OpenVINO IR a user would deploy on an Intel CPU, compiled with OpenVINO's deployment settings and the
    same thread count. Accuracy, latency, memory and energy all come from the compiled model."""

    name = "openvino"
    label = "PyTorch"
    engine_kernels = False  # NNCF and the CPU plugin make their own kernels from the plain float model on the grid
    devices, devices_note = ("cpu",), "the engine runs OpenVINO's CPU plugin only"
    prepares = "OpenVINO conversion, NNCF quantization and compilation"
    outputs_name = "the OpenVINO model"
    primary, sized = "model.xml", "model.bin"
    files = ("model.xml", "model.bin")
    accuracy_key = "openvino_accuracy"
    exported_name = "the exported OpenVINO IR (model.xml)"
    deploy_note = (" with `model.bin` (OpenVINO IR): `openvino.Core().compile_model('model.xml', 'CPU', "
                   "{'PERFORMANCE_HINT': 'LATENCY'})`")
    figure_edge, figure_note = "#0284c7", "blue outline: measured in OpenVINO"

    def prepare(self, applied: Applied, recipe: Recipe, spec: ModelSpec, threads: int) -> Artifact:
        xml, weights, info, seconds = artifact(applied, recipe, spec)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="compression-dash-") as tmp:
            (Path(tmp) / "model.xml").write_bytes(xml)
            (Path(tmp) / "model.bin").write_bytes(weights)
            compiled, notes = compile_ir(Path(tmp) / "model.xml", recipe.precision, threads)
        request = compiled.create_infer_request()
        inputs = feed(compiled, spec.example_inputs(recipe.batch_size))
        request.infer(inputs)  # the runtime graph names its primitives once it has run
        seconds += time.perf_counter() - start
        warnings = list(info["notes"]) + notes
        if PRUNE_METHODS.get(recipe.prune.method).zeros_in_place:
            warnings.append("OpenVINO runs the pruned weights densely: the zeros give no speed-up and model.bin does "
                            "not shrink")
        kernels = graph_kernels(compiled, info, recipe, notes)
        return Artifact(outputs=lambda x: run_outputs(compiled, x),
                        call=lambda: request.infer(inputs, share_inputs=True),
                        held=len(xml) + len(weights), held_as="OpenVINO IR bytes (model.xml + model.bin)",
                        kernels=[k for k in applied.kernels if k.step == "prune"] + kernels, warnings=warnings,
                        size_bytes=len(weights), prepare_s=seconds)

    def write_files(self, applied: Applied, recipe: Recipe, spec: ModelSpec, folder: Path) -> dict[str, Any]:
        xml, weights, info, _ = artifact(applied, recipe, spec)  # the IR that was measured
        (folder / "model.xml").write_bytes(xml)
        (folder / "model.bin").write_bytes(weights)
        return dict(info)

    def files_outputs(self, folder: Path, recipe: Recipe, spec: ModelSpec) -> torch.Tensor:
        import torch

        try:
            compiled, _ = compile_ir(folder / "model.xml", recipe.precision)
            return torch.cat([run_outputs(compiled, x) for x in spec.eval_inputs()]).float()
        except RuntimeError as exc:  # OpenVINO raises RuntimeError on a malformed or mismatched IR
            raise VerificationError(f"model.xml: does not run in OpenVINO: {str(exc).splitlines()[0][:160]}") from None


RUNTIMES.register("openvino", OpenVino())
