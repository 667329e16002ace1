"""Test parameters read from the registries: a registered prune method, scheme or runtime is tested without
editing a hand list (the amounts and bit widths below are the cheap, representative defaults)."""
from __future__ import annotations

from typing import Any

from engine.core.axes import PRUNE_METHODS, SCHEMES
from engine.core.recipe import PRECISIONS, Prune, Quantize

# Structured pruning removes channels, a coarser cut than magnitude's single weights: a smaller amount.
PRUNE_AMOUNT = {"structured": 0.3}
# weight-only at 4 bits per group (the sub-8-bit storage path); a scheme whose point is int8 kernels at 8.
QUANTIZE = {"weight-only": Quantize(4, "weight-only", "per-group", 32)}


def prune_case(method: str) -> Prune:
    return Prune(method, PRUNE_AMOUNT.get(method, 0.5))


def quantize_case(scheme: str) -> Quantize:
    if scheme in QUANTIZE:
        return QUANTIZE[scheme]
    return Quantize(8, scheme) if SCHEMES.get(scheme).int8_activations else Quantize(4, scheme)


def techniques() -> dict[str, dict[str, Any]]:
    """{name: Recipe keyword arguments}: every prune method that prunes, every scheme, every reduced precision."""
    out = {m: dict(prune=prune_case(m)) for m, e in PRUNE_METHODS.items() if e.prunes}
    out |= {f"quantize-{s}": dict(quantize=quantize_case(s)) for s in SCHEMES.names()}
    out |= {p: dict(precision=p) for p in PRECISIONS if p != "fp32"}
    return out
