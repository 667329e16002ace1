"""Memory: bytes the model's tensors hold, plus the peak resident-memory growth while it runs inference.

On Linux the kernel's peak-RSS counter (VmHWM) is reset through /proc/self/clear_refs before the pass,
so the peak belongs to that pass alone, in this process, without paying a child process's start-up on
every interactive toggle. Elsewhere, RSS is sampled by a thread. On CUDA, the allocator's peak is used.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import psutil
import torch
from torch import nn

from engine.core.measurement import Source


@dataclass(frozen=True)
class Memory:
    peak_bytes: int
    model_bytes: int
    run_peak_bytes: int
    source: Source


def model_tensor_bytes(model: nn.Module) -> int:
    """Bytes held by parameters, buffers and packed int8 weights (which hide in module state)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    for mod in model.modules():
        packed = getattr(mod, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):
            w, b = packed._weight_bias()
            total += w.numel() * w.element_size() + (b.numel() * b.element_size() if b is not None else 0)
    return total


def _read_hwm() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure_run(model: nn.Module | int, run: Callable[[], object], device: str, calls: int = 3,
                held_as: str = "model tensor bytes") -> Memory:
    """Peak memory of running `run` a few times: the bytes the model holds (its tensors, or the size given
    for a runtime that holds its own copy) + measured peak growth of the pass."""
    model_bytes = model if isinstance(model, int) else model_tensor_bytes(model)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(calls):
            run()
        torch.cuda.synchronize()
        grow = max(0, torch.cuda.max_memory_allocated() - base)
        return Memory(model_bytes + grow, model_bytes, grow, Source("measured", f"cuda-allocator-peak + {held_as}"))
    proc = psutil.Process()
    if _reset_hwm():
        base = proc.memory_info().rss
        for _ in range(calls):
            run()
        hwm = _read_hwm()
        if hwm is not None:
            grow = max(0, hwm - base)
            return Memory(model_bytes + grow, model_bytes, grow,
                          Source("measured", f"VmHWM growth during inference + {held_as}"))
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            stop.wait(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    for _ in range(calls):
        run()
    stop.set()
    t.join()
    grow = max(0, peak[0] - base)
    return Memory(model_bytes + grow, model_bytes, grow,
                  Source("measured", f"sampled RSS growth during inference + {held_as}"))
