"""The compressed model as ONNX, quantized for and run in ONNX Runtime: the artifact a user would deploy.

Used twice: the `onnxruntime` runtime measures this artifact, and every bundle ships it. int8 uses ONNX
Runtime's own quantizer: static QDQ (activation ranges calibrated on the model's training split) where
the model has convolutions and ships calibration data, so convolutions run QLinearConv; dynamic
quantization (MatMulInteger) otherwise. Weight-only recipes put their Linear weights on ONNX Runtime's
low-bit kernel (MatMulNBits) where it has one for the bit width and group. What actually runs is read
back from ONNX Runtime (the session's optimized graph, the weights it packed), never assumed.
"""
from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from functools import lru_cache
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
_NBITS_OPS = {"MatMulNBits", "GatherBlockQuantized"}  # low-bit weights, float activations (or int8, level 4)
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
    nbits = None
    if recipe.quantize.bits is not None and recipe.quantize.scheme == "weight-only":
        nbits = _quantize_nbits(path, applied, recipe, spec, DTYPES[onnx_dtype])
        notes.extend(nbits.pop("notes"))
        if not nbits["nodes"]:
            nbits = None
    if recipe.quantize.bits is not None and quantization is None and (nbits is None or nbits["float_grid_layers"]):
        notes.append(f"{recipe.quantize.bits}-bit {recipe.quantize.scheme} weights "
                     + ("of the layers MatMulNBits does not run " if nbits else "")
                     + "stored as their dequantized grid values: ONNX Runtime runs them with float kernels")
    opset = next((o.version for o in onnx.load(str(path), load_external_data=False).opset_import
                  if o.domain in ("", "ai.onnx")), None)
    return {"file": path.name, "opset": opset, "dtype": onnx_dtype, "quantization": quantization,
            "float_grid_bits": recipe.quantize.bits if quantization is None and (nbits is None or nbits[
                "float_grid_layers"]) else None,
            "nbits": nbits, "notes": notes,
            "inputs": [{"name": n, "dtype": str(t.dtype).removeprefix("torch."),
                        "shape": ["batch"] + (["sequence"] if isinstance(example, dict) else list(t.shape[1:]))}
                       for n, t in zip(names, tensors)],
            "output": {"name": "output", "dtype": "float32"}}


# Accuracy level 4 (int8 activations, per block) is kept when its outputs differ from level 0's (fp32 compute)
# by at most this relative difference on the evaluation inputs: half the 0.02 agreement a weight-only bundle's
# model.onnx must keep with the PyTorch model, so the faster kernel never costs the export its verification
# (digits-mlp int4 per group 32: 0.005; the 4-bit grid itself moves its outputs 0.03 from fp32).
NBITS_AGREEMENT = 0.01
NBITS_COMPARE_ROWS = 256  # evaluation rows the two accuracy levels are compared on (the check runs per artifact)
_MAX_BLOCK = 256  # the largest MatMulNBits block ONNX Runtime's quantizer (MLAS) takes


@lru_cache(maxsize=1)
def nbits_widths() -> tuple[int, ...]:
    """The bit widths the installed ONNX Runtime's MatMulNBits quantizer accepts (found by trying)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    empty = onnx.helper.make_model(onnx.helper.make_graph([], "probe", [], []))
    widths = []
    for bits in range(2, 9):
        try:
            MatMulNBitsQuantizer(empty, algo_config=DefaultWeightOnlyQuantConfig(bits=bits))
            widths.append(bits)
        except (AssertionError, ValueError, NotImplementedError):
            pass
    return tuple(widths)


def _block_for(bits: int, group: int | None, k: int) -> tuple[int | None, str | None]:
    """The MatMulNBits block size that carries a layer's grid (block None: why there is none)."""
    if bits not in nbits_widths():
        return None, (f"{bits}-bit: the installed ONNX Runtime's MatMulNBits takes "
                      f"{', '.join(map(str, nbits_widths()))} bits")
    if group is not None:
        if group < 16 or group & (group - 1) or group > _MAX_BLOCK:
            return None, f"group {group}: MatMulNBits blocks are powers of two from 16 to {_MAX_BLOCK}"
        return group, None  # one block per group: ONNX Runtime re-derives the same scale and zero point
    # Per channel: a block spanning the whole input row (K <= 256) re-derives the channel's own scale and zero
    # point, so ONNX Runtime's quantizer reproduces the grid exactly. A longer row cannot be one block, and
    # blocks re-quantized on their own ranges land off the grid by up to about one grid step at any block
    # size (MiniLM int4, K=384 and 1536: 0.83 steps at block 16, 0.9 at 32, 1.3 at 128; digits-cnn's
    # per-channel fc moved the outputs 5 % from the PyTorch model's). Such rows keep the channel's scale and
    # zero point in every block instead (`_channel_blocks`), exact at any block: 128, ONNX Runtime's default,
    # whose per-block scale adds 1/32 to 4-bit codes.
    if k <= _MAX_BLOCK:
        return max(16, 1 << (k - 1).bit_length()), None
    return 128, None


def _channel_blocks(w: np.ndarray, bits: int, block: int, scale_dtype) -> tuple[np.ndarray, ...]:
    """MatMulNBits (codes, scales, zero points) of a (K, N) weight whose columns each lie on one asymmetric
    grid: the column's scale and zero point (recovered from its grid values) repeated in every block."""
    import numpy as np

    qmax = 2 ** bits - 1
    k, n = w.shape
    blocks = -(-k // block)
    lo, hi = np.minimum(w.min(0), 0), np.maximum(w.max(0), 0)
    scale = np.maximum((hi - lo) / qmax, np.finfo(np.float32).tiny).astype(np.float32)
    zp = np.clip(np.round(-lo / scale), 0, qmax)
    codes = np.clip(np.round(w / scale) + zp, 0, qmax).T  # (N, K)
    codes = np.concatenate([codes, np.repeat(zp[:, None], blocks * block - k, 1)], 1)  # padding reads as 0
    zps = np.repeat(zp[:, None], blocks, 1)
    per = 8 // bits
    zps = np.concatenate([zps, np.zeros((n, -blocks % per))], 1)

    def pack(c: np.ndarray) -> np.ndarray:
        c = c.astype(np.uint8).reshape(*c.shape[:-1], -1, per)
        return np.bitwise_or.reduce([c[..., i] << (bits * i) for i in range(per)], axis=0).astype(np.uint8)

    return (pack(codes.reshape(n, blocks, block)), np.repeat(scale[:, None], blocks, 1).astype(scale_dtype),
            pack(zps))


def _as_matmuls(model) -> None:
    """Rewrite Gemm nodes with a constant weight as MatMul (+ Add of the bias): MatMulNBits replaces MatMul."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes = []
    for n in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if (n.op_type != "Gemm" or n.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(n)
            continue
        b = n.input[1]
        if attrs.get("transB", 0):
            t = numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(inits[b]).T), f"{b}_kn")
            graph.initializer.append(t)
            b = t.name
        bias = len(n.input) > 2 and n.input[2]
        out = f"{n.output[0]}_matmul" if bias else n.output[0]
        nodes.append(helper.make_node("MatMul", [n.input[0], b], [out], name=f"{n.name or b}_matmul"))
        if bias:
            nodes.append(helper.make_node("Add", [out, n.input[2]], [n.output[0]], name=f"{n.name or b}_bias"))
    del graph.node[:]
    graph.node.extend(nodes)


def _unpack(a: np.ndarray, bits: int, count: int) -> np.ndarray:
    """uint8 bytes holding 8/bits codes each (lowest bits first) -> the codes, `count` along the last axis."""
    import numpy as np

    per = 8 // bits
    codes = np.stack([(a >> (bits * i)) & ((1 << bits) - 1) for i in range(per)], -1)
    return codes.reshape(*a.shape[:-1], -1)[..., :count]


def _nbits_weight(node, inits: dict) -> np.ndarray:
    """The float (K, N) weight a MatMulNBits node computes with, decoded from its packed codes."""
    import numpy as np
    from onnx import helper, numpy_helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    k, n, bits, block = attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]
    blocks = -(-k // block)
    codes = _unpack(numpy_helper.to_array(inits[node.input[1]]), bits, block).astype(np.float32)
    scales = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32).reshape(n, blocks)
    zp = _unpack(numpy_helper.to_array(inits[node.input[3]]).reshape(n, -1), bits, blocks).astype(np.float32)
    return ((codes.reshape(n, blocks, block) - zp[..., None]) * scales[..., None]).reshape(n, -1)[:, :k].T


def _packed(path: Path, model) -> tuple[list[str], Any]:
    """(names of the MatMulNBits weights ONNX Runtime packed for its low-bit kernel, a session on the model).

    A weight it cannot pack (no MLAS kernel for that bit width, block and accuracy level on this CPU) runs
    through its fallback, which dequantizes the whole matrix to float at every call. Which ones it packed is
    read from the optimized model saved with its prepacked weights."""
    import onnx
    import onnxruntime as ort

    onnx.save(model, str(path))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
    for key, value in (("session.optimized_model_external_initializers_file_name", path.stem + ".weights"),
                       ("session.optimized_model_external_initializers_min_size_in_bytes", "1"),
                       ("session.save_external_prepacked_constant_initializers", "1")):
        opts.add_session_config_entry(key, value)
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    saved = onnx.load(opts.optimized_model_filepath, load_external_data=False)
    weights = {n.input[1] for n in saved.graph.node if n.op_type == "MatMulNBits"}
    return [t.name for t in saved.graph.initializer
            if t.name in weights and any(e.key.startswith("prepacked") for e in t.external_data)], session


def _compare_inputs(spec: ModelSpec) -> list:
    out, rows = [], 0
    for x in spec.eval_inputs():
        out.append(x)
        rows += len(input_arrays(x)[1][0])
        if rows >= NBITS_COMPARE_ROWS:
            break
    return out


def _quantize_nbits(path: Path, applied: Applied, recipe: Recipe, spec: ModelSpec, dtype: torch.dtype
                    ) -> dict[str, Any]:
    """Put the Linear weights of model.onnx (already on the recipe's grid) on MatMulNBits with ONNX Runtime's own
    quantizer (round to nearest, asymmetric like the grid), in place where a layer's bits and group have a
    kernel; choose the accuracy level by the outputs' agreement. Returns what was done, for the artifact."""
    import hashlib

    import numpy as np
    import onnx
    import torch
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
    from torch import nn

    mods = dict(applied.model.named_modules())
    layers, float_grid, notes = {}, [], []  # sha256 of the (K, N) weight -> (bits, group)
    for name, meta in applied.quant.items():
        mod = mods.get(name.removesuffix(".weight"))
        if isinstance(mod, nn.Linear):
            kn = mod.weight.detach().to(dtype).T.contiguous().cpu().numpy()
            layers[hashlib.sha256(kn.tobytes()).hexdigest()] = meta.bits, meta.group_size
        elif not isinstance(mod, nn.Embedding):  # lookups do no arithmetic: their float grid values cost no time
            float_grid.append(name.removesuffix(".weight"))
    model = onnx.load(str(path), load_external_data=False)
    _as_matmuls(model)
    inits = {i.name: i for i in model.graph.initializer}
    groups: dict[tuple[int, int], list[str]] = {}
    originals, refused, rows = {}, Counter(), set()
    for i, node in enumerate(model.graph.node):
        b = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        if b is None or len(b.dims) != 2:
            continue
        weight = onnx.numpy_helper.to_array(b)
        found = layers.get(hashlib.sha256(np.ascontiguousarray(weight).tobytes()).hexdigest())
        if found is None:
            continue  # a layer the recipe keeps in float
        node.name = node.name or f"matmul_{i}"
        block, why = _block_for(found[0], found[1], int(b.dims[0]))
        if block is None:
            refused[why] += 1
            continue
        groups.setdefault((found[0], block), []).append(node.name)
        originals[node.name] = weight
        if found[1] is None and b.dims[0] > _MAX_BLOCK:
            rows.add(node.name)
    for why, count in refused.items():
        notes.append(f"{count} Linear layer(s) stay float grid values, flagged simulated: {why}")
        float_grid.append(why)
    if not groups:
        return {"nodes": 0, "float_grid_layers": float_grid, "notes": notes}
    if dtype == torch.float16:
        notes.append("MatMulNBits takes fp16 activations but computes in fp32 on this CPU provider (it converts "
                     "them per call)")
    with quiet():
        for (bits, block), names in sorted(groups.items()):
            config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=False, bits=bits)
            # nodes_to_include only adds to the MatMul op type the quantizer takes anyway: exclude the others
            others = [n.name for n in model.graph.node if n.name not in names]
            quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=False,
                                             nodes_to_exclude=others, algo_config=config)
            quantizer.process()
            model = quantizer.model.model
    inits = {i.name: i for i in model.graph.initializer}
    nbits_nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    for n in nbits_nodes:
        source = n.name.rsplit("_Q", 1)[0]  # the quantizer names each node <MatMul name>_Q<bits>
        if source in rows:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            scale_dtype = onnx.numpy_helper.to_array(inits[n.input[2]]).dtype
            for name, array in zip(n.input[1:4], _channel_blocks(originals[source], attrs["bits"],
                                                                 attrs["block_size"], scale_dtype)):
                inits[name].CopyFrom(onnx.numpy_helper.from_array(array.reshape(inits[name].dims), name))
    # How far the weights MatMulNBits computes with lie from the recipe's grid values.
    diff = max(float(np.abs(_nbits_weight(n, inits) - originals[n.name.rsplit("_Q", 1)[0]]).max())
               for n in nbits_nodes)
    level, why, packed = _accuracy_level(model, nbits_nodes, spec, path.parent)
    if not packed:  # its fallback dequantizes every weight at every call: slower than the float MatMul it replaces
        notes.append(f"ONNX Runtime packs none of the {len(nbits_nodes)} {'/'.join(map(str, sorted({b for b, _ in groups})))}"
                     "-bit MatMulNBits weights for a kernel on this CPU (its fallback dequantizes them at every "
                     "call): the float grid values run instead")
        return {"nodes": 0, "float_grid_layers": float_grid + ["no packed MatMulNBits kernel here"], "notes": notes}
    _set_level(nbits_nodes, level)
    onnx.save(model, str(path))
    return {"nodes": len(nbits_nodes), "bits": sorted({b for b, _ in groups}),
            "block_size": sorted({k for _, k in groups}), "accuracy_level": level, "accuracy_level_why": why,
            "packed": packed, "unpacked": len(nbits_nodes) - packed, "max_abs_diff_vs_grid": diff,
            "float_grid_layers": float_grid, "notes": notes}


def _set_level(nodes: list, level: int) -> None:
    from onnx import helper

    for n in nodes:
        kept = [a for a in n.attribute if a.name != "accuracy_level"]
        del n.attribute[:]
        n.attribute.extend(kept + [helper.make_attribute("accuracy_level", level)])


def _accuracy_level(model, nodes: list, spec: ModelSpec, folder: Path) -> tuple[int, str, int]:
    """(accuracy level, why, how many weights ONNX Runtime packed at it): 4 (int8 activations) where it has
    that kernel and its outputs agree with level 0's (fp32 compute) within NBITS_AGREEMENT, else 0."""
    import numpy as np

    inputs = _compare_inputs(spec)
    runs = {}
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        for level in (0, 4):
            _set_level(nodes, level)
            packed, session = _packed(Path(tmp) / f"level{level}.onnx", model)
            outs = np.concatenate([session.run(None, onnx_feed(session, x))[0] for x in inputs]).astype(np.float64)
            runs[level] = len(packed), outs
            del session
    (packed0, out0), (packed4, out4) = runs[0], runs[4]
    rel = float(np.linalg.norm(out4 - out0) / max(np.linalg.norm(out0), 1e-12))
    if rel == 0.0:
        return 0, "level 4 runs the same fp32-compute kernel as level 0 here (no int8 kernel for it)", packed0
    if rel <= NBITS_AGREEMENT and packed4 >= packed0:
        return 4, (f"int8-activation kernel: outputs within {rel:.4f} relative difference of level 0's (fp32 "
                   f"compute) on {len(out0)} evaluation rows (limit {NBITS_AGREEMENT})"), packed4
    return 0, (f"level 4 (int8 activations) moved the outputs {rel:.4f} from level 0's on {len(out0)} evaluation "
               f"rows (limit {NBITS_AGREEMENT})" if rel > NBITS_AGREEMENT else
               f"level 4 packed fewer weights ({packed4}) than level 0 ({packed0})"), packed0


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
    nbit = {op: c for op, c in ran.items() if op in _NBITS_OPS}
    flt = {op: c for op, c in ran.items() if op in _COMPUTE_OPS}
    kernels = []
    if nbit:
        nb = info.get("nbits") or {}
        unpacked = nb.get("unpacked", 0)
        detail = {k: nb[k] for k in ("bits", "block_size", "accuracy_level", "accuracy_level_why", "packed",
                                    "max_abs_diff_vs_grid") if k in nb}
        if unpacked:
            detail["why"] = (f"ONNX Runtime packed {nb['packed']} of the weight matrices for its low-bit kernel: "
                             f"the other {unpacked} it dequantizes to float at every call")
        compute = "int8 activations" if nb.get("accuracy_level") == 4 else f"{info['dtype']} activations"
        kernels.append(Kernel("onnxruntime", "int" + "/".join(map(str, nb.get("bits", []))) + f" weights, {compute}: "
                              + _ops(nbit), bool(unpacked), detail | {"read from": "the session's optimized graph"}))
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
