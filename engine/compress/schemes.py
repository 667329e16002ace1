"""The quantization schemes a recipe can name, registered in `engine.core.axes.SCHEMES`.

A scheme decides how a weight is put on its b-bit grid and which kernels then run it; the grid math is in
`engine.compress.quantize` and `engine.compress.codebook`, imported when a model is quantized (this module
loads no torch: the registry is filled when a recipe is validated, also where torch never loads).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.core.axes import SCHEMES

if TYPE_CHECKING:
    import torch
    from torch import nn

    from engine.compress.quantize import Layers
    from engine.core.recipe import Quantize
    from engine.core.result import Kernel


class Scheme:
    """One way of quantizing weights."""

    name: str = ""
    # Activations are quantized to int8 too: Linear layers run a real int8 kernel, and ONNX export lets ONNX
    # Runtime's own int8 quantizer make its integer kernels (whose outputs differ more from the float model's).
    int8_activations: bool = False
    tunes_centroids: bool = False  # recovery spends part of its steps training the shared values (codebook)

    def to_grid(self, weight: "torch.Tensor", bits: int, group_size: int | None) -> tuple[Any, "torch.Tensor"]:
        """(what storage keeps, the float weight on the grid)."""
        from engine.compress.quantize import dequantize, quantize_tensor

        meta = quantize_tensor(weight, bits, group_size)
        return meta, dequantize(meta)

    def select_kernels(self, model: "nn.Module", step: "Quantize", device: str, layers: "Layers"
                       ) -> tuple[list["Kernel"], list[str]]:
        """The kernels that run the grid weights, and what the user should know about them."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class WeightOnly(Scheme):
    """Float activations; Linear weights on PyTorch's packed int8/int4 kernels where they express the grid, the
    rest dequantized (latency simulated, size real)."""

    name = "weight-only"

    def select_kernels(self, model, step, device, layers):
        from engine.compress.quantize import packed_kernels

        return packed_kernels(model, step, device, layers)


class Dynamic(Scheme):
    """Activations quantized to int8 per call: Linear layers on torch.ao's int8 GEMM."""

    name = "dynamic"
    int8_activations = True

    def select_kernels(self, model, step, device, layers):
        from engine.compress.quantize import int8_dynamic_kernels

        return int8_dynamic_kernels(model, step, layers)


class Codebook(Scheme):
    """Deep Compression's weight sharing: 2**bits k-means centroids per layer (stored as indices + codebook)."""

    name = "codebook"
    tunes_centroids = True

    def to_grid(self, weight, bits, group_size):
        from engine.compress import codebook

        meta = codebook.share(weight.detach().float(), bits)
        return meta, codebook.dense(meta)

    def select_kernels(self, model, step, device, layers):
        from engine.compress.quantize import codebook_kernels

        return codebook_kernels(step, device, layers)


for _scheme in (WeightOnly(), Dynamic(), Codebook()):
    SCHEMES.register(_scheme.name, _scheme)
