"""Real low-bit weight-only kernels for Linear layers: PyTorch's packed int8 and int4 GEMMs.

A weight-only recipe keeps float activations and stores weights on a b-bit grid. Run as dequantized floats, its
latency is the float model's; PyTorch ships CPU kernels that read the packed weights themselves:
`torch._weight_int8pack_mm` (int8 codes, one scale per output channel) and `torch._weight_int4pack_mm_for_cpu`
(int4 codes, a scale and a zero per group of 32-256 inputs). Both take bf16 activations: their fp32 paths are
reference loops, measured 30x slower than the float layer here, so an fp32 recipe's packed layers compute in bf16,
and the kernel record says so.

The engine's grid is asymmetric with an exact zero (w = (code - zero_point) * scale), which both kernels express
exactly up to their bf16 scales: int4's zero term is (8 - zero_point) * scale; int8 takes code - zero_point when it
fits int8 (bits <= 7) and, at 8 bits, code - 128 plus a per-channel correction (128 - zero_point) * scale times the
row sums of the input. Written here rather than taken from torchao: torchao's int4 CPU path is this same aten
kernel behind tensor subclasses that neither safetensors nor the ONNX exporter can hold, and torchao is not a
dependency. Which of the two kernels a 4-bit (or narrower) per-channel layer runs is chosen by timing both on the
layer's real input, as the sparse kernel is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from engine.compress.sparse import layer_inputs, seconds_per_call

INT4_GROUPS = (128, 64, 32)  # what the int4 kernel takes (256 too; the recipe's groups stop at 128)
AGREEMENT = 0.03  # largest relative difference from the float layer (bf16 activations and scales: ~0.005 seen)


@dataclass(frozen=True)
class Plan:
    """Which packed kernels can run one layer's grid."""

    int4_group: int | None  # the int4 kernel's group size, None: the grid cannot be expressed in int4 groups
    int8: bool  # the int8 kernel (one scale per output channel) can express the grid


def plan(meta: Any, in_features: int, out_features: int) -> Plan:
    """The packed kernels that express `meta`'s grid exactly (up to bf16 scales) and take the layer's shape.

    The shape rules are checked here, not left to the kernels: in this build of PyTorch the int8 kernel crashes
    the process (or returns wrong numbers) when the inputs are not a multiple of 16, and the int4 packer refuses
    outputs that are not."""
    per_channel = meta.group_size is None
    group = None
    if meta.bits <= 4 and out_features % 16 == 0:
        if per_channel:  # a per-channel grid is also a grid of any group size: the largest the kernel takes
            group = next((g for g in INT4_GROUPS if in_features % g == 0), None)
        elif meta.group_size in INT4_GROUPS and in_features % meta.group_size == 0:
            group = meta.group_size
    return Plan(group, per_channel and in_features % 16 == 0)


class PackedLinear(nn.Module):
    """A Linear layer whose weight lives as packed int8 or int4 codes, multiplied by PyTorch's packed kernel."""

    def __init__(self, linear: nn.Linear, meta: Any, kind: str, group: int | None = None) -> None:
        super().__init__()
        n, k = linear.out_features, linear.in_features
        self.in_features, self.out_features, self.kind, self.group = k, n, kind, group
        codes = meta.codes.reshape(n, -1)[:, :k].to(torch.int32)
        scale = meta.scale.reshape(n, -1).float()
        zp = meta.zero_point.reshape(n, -1).float()
        self.correction = None
        if kind == "int4":
            if scale.shape[1] == 1:  # per channel: the same scale for every group
                scale, zp = scale.expand(n, k // group), zp.expand(n, k // group)
            zeros = (8 - zp) * scale
            self.register_buffer("weight_packed", torch._convert_weight_to_int4pack_for_cpu(codes, 1))
            self.register_buffer("scales_zeros", torch.stack([scale, zeros], -1).transpose(0, 1).contiguous()
                                 .to(torch.bfloat16))
        else:
            shift = zp[:, 0] if meta.bits <= 7 else torch.full((n,), 128.0)
            self.register_buffer("weight_packed", (codes - shift[:, None].to(torch.int32)).to(torch.int8))
            self.register_buffer("scales", scale[:, 0].to(torch.bfloat16).contiguous())
            if meta.bits > 7:
                self.correction = ((shift - zp[:, 0]) * scale[:, 0]).contiguous()
        self.bias = None if linear.bias is None else linear.bias.detach().float().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        xb = flat.to(torch.bfloat16).contiguous()
        if self.kind == "int4":
            out = torch._weight_int4pack_mm_for_cpu(xb, self.weight_packed, self.group, self.scales_zeros)
        else:
            out = torch._weight_int8pack_mm(xb, self.weight_packed, self.scales)
        out = out.float()
        if self.correction is not None:
            out = out + flat.float().sum(-1, keepdim=True) * self.correction
        if self.bias is not None:
            out = out + self.bias
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


def _time(layer: nn.Module, x: torch.Tensor) -> float:
    """Seconds per call of `layer` on `x` (after warm-up)."""
    return seconds_per_call(lambda: layer(x))


def pack(model: nn.Module, metas: dict[str, Any], run: Callable[[], Any] | None,
         chosen: dict[str, str] | None = None) -> dict[str, Any]:
    """Swap every Linear layer of `metas` ({module name: its grid}) whose grid a packed kernel expresses for a
    PackedLinear, in place. Where both kernels can, each is timed on the layer's input from `run()` and the faster
    kept, and only where it beats the float layer (int4 without a pass to time). Returns what ran: layer counts
    per kernel, the layers no packed kernel takes, those left in float because it measured slower and, where timed,
    each packed layer's speed-up over its float layer, and `chosen` ({layer: "int4/<group>" | "int8" | "float"}).
    Given `chosen` (recorded when the recipe was measured), each layer takes that kernel, untimed: a bundle's
    model runs what was measured."""
    plans = {n: plan(m, model.get_submodule(n).in_features, model.get_submodule(n).out_features)
             for n, m in metas.items()}
    inputs = layer_inputs(model, list(plans), run) if run is not None else {}
    counts: dict[str, int] = {}
    left, slower, speedups = [], [], []
    picked: dict[str, str] = {}
    with torch.inference_mode():
        for name, p in plans.items():
            lin, meta = model.get_submodule(name), metas[name]
            options = ([("int4", p.int4_group)] if p.int4_group else []) + ([("int8", None)] if p.int8 else [])
            wanted = (chosen or {}).get(name)
            if wanted == "float":
                slower.append(name)
                picked[name] = "float"
                continue
            if wanted:
                options = [o for o in options if _tag(*o) == wanted]
            x = None if wanted else inputs.get(name)
            probe = x if x is not None else torch.randn(4, lin.in_features, dtype=lin.weight.dtype)
            want = lin(probe).float()
            built = []
            for kind, group in options:
                try:
                    layer = PackedLinear(lin, meta, kind, group)
                    got = layer(probe).float()
                except RuntimeError:  # a shape or build of torch this kernel does not take: the other, or float
                    continue
                # The same layer, so the same numbers up to bf16 rounding: anything else is a kernel that does
                # not compute this grid on this build, and is not used.
                if float((got - want).norm() / want.norm().clamp(min=1e-12)) <= AGREEMENT:
                    built.append(layer)
            if not built:
                left.append(name)
                continue
            best = built[0]
            if x is not None:
                times = [_time(layer, x) for layer in built]
                best = built[times.index(min(times))]
                speedup = _time(lin, x) / min(times)
                if speedup < 1.0:  # as with the sparse kernel: a kernel measured slower than float is not used
                    slower.append(name)
                    picked[name] = "float"
                    continue
                speedups.append(round(speedup, 2))
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, best)
            label = f"int4 (group {best.group})" if best.kind == "int4" else "int8"
            counts[label] = counts.get(label, 0) + 1
            picked[name] = _tag(best.kind, best.group)
    return {"counts": counts, "left": left, "slower": slower, "speedups": speedups, "chosen": picked}


def _tag(kind: str, group: int | None) -> str:
    return f"int4/{group}" if kind == "int4" else "int8"
