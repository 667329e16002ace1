"""Weight quantization to a b-bit grid, and real int8 kernels where the platform has them.

The grid math (asymmetric affine, per channel or per group, exact zero kept so pruned weights stay
zero) is written here rather than taken from torchao: torchao's 2-7 bit paths run dequantized in
eager mode anyway and their tensor subclasses cannot be saved as safetensors or exported to ONNX,
whereas plain float weights that lie on the grid can be, and the codes can be bit-packed for storage.
For 8-bit `dynamic`, Linear layers are converted with torch.ao's quantize_dynamic (fbgemm/x86 int8
GEMM), measured here ~5x faster than fp32 on Linear-heavy models.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from engine.core.axes import SCHEMES
from engine.core.hardware import detect
from engine.core.recipe import LayerOverride, Quantize
from engine.core.result import Kernel

QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _dynamic_linear() -> type:
    import torch.ao.nn.quantized.dynamic as nnqd

    return nnqd.Linear


class FullRangeDynamicLinear(_dynamic_linear()):
    """torch.ao's dynamic int8 Linear with activations quantized over the full 8-bit range.

    torch.ao passes `reduce_range=True` (7-bit activations), a guard against int16 saturation in AVX2's
    u8 x s8 pair instruction. On MiniLM that guard costs fidelity: 0.977 with it, 0.993 without (weights
    alone on the int8 grid: 0.9997), measured on an AVX2-only CPU, where saturation would show first.
    ONNX Runtime's dynamic int8 uses the full range too (0.992). Fidelity is measured for every recipe, so
    saturation, were it to happen, shows in the number rather than hiding in the kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params,
                                                  reduce_range=False).to(x.dtype)


@dataclass(frozen=True)
class QuantMeta:
    """How one weight tensor was quantized: enough to store b-bit codes and rebuild the weight exactly."""

    bits: int
    group_size: int | None  # None: one group per output channel
    shape: tuple[int, ...]
    scale: torch.Tensor  # fp32, one per channel or group
    zero_point: torch.Tensor  # uint8, one per channel or group
    codes: torch.Tensor  # uint8 in [0, 2**bits), shape (channels, groups, group) or (channels, 1, n)


def _grouped(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    flat = w.detach().float().reshape(w.shape[0], -1)
    if group_size is None:
        return flat.unsqueeze(1)
    pad = (-flat.shape[1]) % group_size
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    return flat.reshape(flat.shape[0], -1, group_size)


def quantize_tensor(w: torch.Tensor, bits: int, group_size: int | None) -> QuantMeta:
    g = _grouped(w, group_size)
    lo = g.amin(-1, keepdim=True).clamp(max=0.0)
    hi = g.amax(-1, keepdim=True).clamp(min=0.0)
    qmax = 2 ** bits - 1
    scale = ((hi - lo) / qmax).clamp(min=torch.finfo(torch.float32).tiny)
    zp = torch.round(-lo / scale).clamp(0, qmax)
    codes = torch.clamp(torch.round(g / scale) + zp, 0, qmax)
    return QuantMeta(bits, group_size, tuple(w.shape), scale.squeeze(-1), zp.squeeze(-1).to(torch.uint8),
                     codes.to(torch.uint8))


def dequantize(meta: QuantMeta) -> torch.Tensor:
    """fp32 weight whose values lie on the grid; the storage loader calls this too, so round trips are exact."""
    g = (meta.codes.float() - meta.zero_point.float().unsqueeze(-1)) * meta.scale.unsqueeze(-1)
    flat = g.reshape(meta.shape[0], -1)
    n = 1
    for d in meta.shape[1:]:
        n *= d
    return flat[:, :n].reshape(meta.shape)


def layer_bits(model: nn.Module, step: Quantize, overrides: dict[str, LayerOverride] | None = None
               ) -> dict[str, int]:
    """{module name: its bit width} for every weight to quantize (an override's "none" leaves its layer out)."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, QUANTIZABLE + (nn.Embedding,)):
            o = (overrides or {}).get(name)
            bits = step.bits if o is None or o.bits is None else o.bits
            if bits != "none":
                out[name] = bits
    return out


def fake_quantize(w: torch.Tensor, bits: int, group_size: int | None) -> torch.Tensor:
    """`w` on its b-bit grid in the forward pass, gradients passed straight through (quantization-aware
    training; the grid is the same function `to_grid` applies afterwards)."""
    return w + (dequantize(quantize_tensor(w, bits, group_size)).to(w.dtype) - w).detach()


def to_grid(model: nn.Module, step: Quantize, overrides: dict[str, LayerOverride] | None = None) -> dict[str, Any]:
    """Put every Linear/Conv weight and every embedding table (one grid per row) on the b-bit grid (or, for the
    codebook scheme, on its layer's k-means codebook), in place; return the codes for storage. Embeddings are
    half of a small transformer's parameters: left in float, an int8 MiniLM would store only 1.6x smaller
    than fp32."""
    scheme = SCHEMES.get(step.scheme)
    group = step.group_size if step.granularity == "per-group" else None
    metas: dict[str, Any] = {}
    mods = dict(model.named_modules())
    for name, bits in layer_bits(model, step, overrides).items():
        mod = mods[name]
        meta, grid = scheme.to_grid(mod.weight, bits, group)
        with torch.no_grad():
            mod.weight.copy_(grid.to(mod.weight.dtype))
        metas[f"{name}.weight"] = meta
    return metas


@dataclass(frozen=True)
class Layers:
    """The layers a scheme's kernels are chosen for, counted once for every scheme."""

    linears: list[str]  # Linear layers the recipe quantizes
    quantized: set[str] | None  # None: every quantizable layer (no override keeps one in float)
    n_conv: int
    lookup: list[Kernel]  # the embedding tables' note, empty without embeddings
    grid: str  # e.g. "4-bit per-group (group 32)"
    codes: Callable[[], dict[str, Any]]  # {Linear name: its grid (QuantMeta)}, derived only for kernels that read them
    run: Callable[[], Any] | None  # one forward pass on the measured inputs (timing-chosen kernels), or None
    chosen: dict[str, str] | None  # a recorded per-layer kernel choice to re-create (a bundle's), or None


def select_kernels(model: nn.Module, step: Quantize, device: str,
                   overrides: dict[str, LayerOverride] | None = None, quant: dict[str, Any] | None = None,
                   run: Callable[[], Any] | None = None, chosen: dict[str, str] | None = None
                   ) -> tuple[list[Kernel], list[str]]:
    """Run the grid weights on the fastest real path the scheme has (int8 GEMM for `dynamic` Linear layers,
    packed int8/int4 GEMMs for `weight-only`); everything else runs dequantized, and says so. A layer an override
    keeps in float stays on the float kernel. `quant` holds the grids `to_grid` made (re-derived from the weights
    when absent, as for a bundle's loaded weights); `run` is a forward pass for kernels chosen by timing, and
    `chosen` a choice recorded when the recipe was measured (`recorded_choice`), re-created without timing."""
    bits = layer_bits(model, step, overrides)
    quantized = set(bits) if overrides else None
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
               and (quantized is None or n in quantized)]
    group = step.group_size if step.granularity == "per-group" else None

    def codes() -> dict[str, Any]:
        found = {n: (quant or {}).get(f"{n}.weight") for n in linears}
        return {n: meta if isinstance(meta, QuantMeta) else quantize_tensor(model.get_submodule(n).weight, bits[n], group)
                for n, meta in found.items()}
    n_conv = sum(isinstance(m, QUANTIZABLE) and not isinstance(m, nn.Linear) and (quantized is None or n in quantized)
                 for n, m in model.named_modules())
    n_emb = sum(isinstance(m, nn.Embedding) for m in model.modules())
    lookup = [Kernel("quantize", "embedding rows on the grid, looked up as float", detail={
        "layers": n_emb, "why": "a lookup reads one row per token: float or int8 rows cost the same time; the "
                                "stored size counts the packed codes"})] if n_emb else []
    grid = f"{step.bits}-bit {step.granularity}" + (
        f" (group {step.group_size})" if step.granularity == "per-group" else "")
    layers = Layers(linears, quantized, n_conv, lookup, grid, codes, run, chosen)
    return SCHEMES.get(step.scheme).select_kernels(model, step, device, layers)


def codebook_kernels(step: Quantize, device: str, layers: Layers) -> tuple[list[Kernel], list[str]]:
    return ([Kernel("quantize", "codebook weights decoded to float (no lookup kernel)", simulated=True,
                    detail={"layers": len(layers.linears) + layers.n_conv, "centroids": 2 ** step.bits})]
            + layers.lookup,
            [f"{step.bits}-bit codebook (k-means weight sharing) runs decoded to float on {device}: latency is "
             "that of the float model; size counts entropy-coded indices and codebooks"])


def dequantized_kernels(step: Quantize, device: str, layers: Layers) -> tuple[list[Kernel], list[str]]:
    return ([Kernel("quantize", "dequantized float weights", simulated=True,
                    detail={"layers": len(layers.linears) + layers.n_conv, "grid": layers.grid})] + layers.lookup,
            [f"{step.bits}-bit weight-only quantization runs dequantized on {device}: latency is simulated "
             "(that of the float model); size counts the packed codes"])


CHOICE = "per_layer_kernel"  # the kernels record's key for the per-layer packed/float choice


def recorded_choice(kernels: list[Any]) -> dict[str, str] | None:
    """The per-layer kernel choice a measured result recorded (Kernel objects or their dicts), or None."""
    for k in kernels:
        detail = k if isinstance(k, dict) else k.detail  # a stored kernel dict holds its detail's keys flat
        if isinstance(detail, dict) and isinstance(detail.get(CHOICE), dict):
            return {str(n): str(c) for n, c in detail[CHOICE].items()}
    return None


def packed_kernels(model: nn.Module, step: Quantize, device: str, layers: Layers) -> tuple[list[Kernel], list[str]]:
    """Weight-only Linear layers onto PyTorch's packed int8/int4 GEMMs (CPU); what no packed kernel expresses
    (groups of 8 or 16, 5-8-bit groups, convolutions, any layer on CUDA) runs dequantized, and says so."""
    from engine.compress import packed

    if device != "cpu" or not layers.linears:
        return dequantized_kernels(step, device, layers)
    ran = packed.pack(model, layers.codes(), layers.run, layers.chosen)
    kernels, warns = [], []
    n_packed = sum(ran["counts"].values())
    if n_packed:
        detail = {"layers": n_packed, "grid": layers.grid,
                  "activations": "bf16 (the packed kernels' input type)",
                  "chosen by": "timing both kernels on each layer's input" if layers.run else "the grid"}
        if ran["speedups"]:
            detail["speedup_vs_float_layer"] = [min(ran["speedups"]), max(ran["speedups"])]
        detail[CHOICE] = ran["chosen"]
        kernels.append(Kernel("quantize", "packed weight-only GEMM (torch _weight_int4pack_mm_for_cpu / "
                              "_weight_int8pack_mm): " + ", ".join(f"{k} x{c}" for k, c in sorted(ran["counts"].items())),
                              detail=detail))
    if ran["slower"]:  # a real kernel was measured, and the float layer beat it: the latency is real
        kernels.append(Kernel("quantize", "dequantized float weights, chosen by timing", detail={
            "layers": len(ran["slower"]), "grid": layers.grid, CHOICE: ran["chosen"],
            "why": "the packed kernel measured slower than the float layer on its input here (as with the sparse "
                   "kernel, the faster one runs); the weights are held dequantized, as the memory figure counts"}))
        warns.append(f"{len(ran['slower'])} layer(s) run their dequantized float weights: the packed {step.bits}-bit "
                     "kernel measured slower than the float layer there")
    dequantized = len(ran["left"]) + layers.n_conv
    if dequantized:
        kernels.append(Kernel("quantize", "dequantized float weights", simulated=True,
                              detail={"layers": dequantized, "grid": layers.grid,
                                      "why": "no packed kernel takes this grid (int4 needs groups of 32-128 that "
                                             "divide the inputs, int8 one scale per channel) or layer type"}))
        warns.append(f"{dequantized} layer(s) have no packed {step.bits}-bit kernel here and run dequantized: their "
                     "share of the latency is simulated")
    if n_packed and step.bits not in (4, 8):
        warns.append(f"{step.bits}-bit codes run on the next wider packed kernel (int4 or int8): latency is that "
                     f"kernel's, size counts packed {step.bits}-bit codes")
    return kernels + layers.lookup, warns


def int8_dynamic_kernels(model: nn.Module, step: Quantize, layers: Layers) -> tuple[list[Kernel], list[str]]:
    """Linear layers onto torch.ao's int8 dynamic GEMM, in place; convolutions stay dequantized."""
    import torch.ao.nn.quantized.dynamic as nnqd
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice; its kernel is still the fastest here
        spec = {nn.Linear: per_channel_dynamic_qconfig} if layers.quantized is None else \
            {n: per_channel_dynamic_qconfig for n in layers.linears}
        quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)
    for m in model.modules():
        if type(m) is nnqd.Linear:
            m.__class__ = FullRangeDynamicLinear
    isa = "VNNI" if detect().cpu_int8_vnni else "AVX2"
    kernels = [Kernel("quantize", f"int8 dynamic GEMM (torch.ao quantize_dynamic, {torch.backends.quantized.engine}, "
                      f"{isa})", detail={"layers": len(layers.linears), "grid": layers.grid})]
    kernels += layers.lookup
    warns = []
    if step.bits < 8:
        warns.append(f"{step.bits}-bit weights are unpacked to int8 for the int8 kernel: latency is that of int8, "
                     f"size counts packed {step.bits}-bit codes")
    if layers.n_conv:
        kernels.append(Kernel("quantize", "dequantized float conv", simulated=True,
                              detail={"layers": layers.n_conv, "grid": layers.grid}))
        warns.append(f"{layers.n_conv} conv layer(s) have no dynamic int8 kernel: they run dequantized "
                     "(their share of the latency is simulated)")
    return kernels, warns


def distinct_levels(weight: torch.Tensor, group_size: int | None = None) -> int:
    """Largest number of distinct values in any channel (or group) of a weight; used to verify grids."""
    g = _grouped(weight, group_size)
    return max(len(torch.unique(row)) for row in g.reshape(-1, g.shape[-1]))
