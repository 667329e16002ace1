"""Numeric precision: cast floating parameters and buffers to fp16 / bf16 (or keep fp32)."""
from __future__ import annotations

import torch
from torch import nn

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def cast(model: nn.Module, precision: str) -> nn.Module:
    return model.to(DTYPES[precision])


def cast_inputs(inputs, precision: str, device: str):
    """Move inputs to the device; floating tensors take the model's dtype, integer ids stay as they are."""
    dtype = DTYPES[precision]

    def one(t):
        if isinstance(t, torch.Tensor):
            t = t.to(device)
            return t.to(dtype) if t.is_floating_point() else t
        return t

    if isinstance(inputs, dict):
        return {k: one(v) for k, v in inputs.items()}
    return one(inputs)
