"""Shared page pieces: number formatting, metric cards, provenance, the seeded frontier."""
from __future__ import annotations

import streamlit as st

from engine import service
from engine.runner import Result
from engine.units import fmt_bytes


def _pct(new: float | None, old: float | None) -> str | None:
    if new is None or old in (None, 0):
        return None
    return f"{(new - old) / old:+.0%}"


def metric_cards(r: Result, base: Result | None) -> None:
    """Accuracy, latency, size, memory, energy with their deltas vs the uncompressed model and their sources."""
    c = st.columns(5)
    b = base if base is not None and base.error is None else None
    acc_delta = None if b is None else f"{(r.accuracy - b.accuracy) * 100:+.1f} pts"
    c[0].metric("Accuracy", f"{r.accuracy:.3f}", acc_delta, help=f"{r.metric}. Baseline {r.baseline_accuracy:.4f}. "
                + " · ".join(f"{k}: {v:.3f}" for k, v in r.extra_metrics.items()))
    lat = r.latency_ms or {}
    c[1].metric("Latency p50", f"{lat.get('p50', 0):.3f} ms",
                _pct(lat.get("p50"), b.latency_ms["p50"] if b else None), delta_color="inverse",
                help=f"p90 {lat.get('p90', 0):.3f} ms · p99 {lat.get('p99', 0):.3f} ms"
                     f"{'' if lat.get('p99_reliable') else ' (p99 from < 100 calls)'} · IQR/median "
                     f"{lat.get('iqr_ratio', 0):.0%} · {lat.get('calls')} calls, batch {lat.get('batch_size')}, "
                     f"{lat.get('threads')} threads · {lat.get('method')}")
    c[2].metric("Stored size", fmt_bytes(r.size_bytes), _pct(r.size_bytes, r.baseline_size_bytes),
                delta_color="inverse",
                help="Bytes of the compressed storage format: packed b-bit codes + scales, sparse tensors as "
                     f"bitmap + values, DEFLATE where it helps. {r.params_nonzero:,} non-zero of "
                     f"{r.params_total:,} parameters.")
    c[3].metric("Peak memory", fmt_bytes(r.peak_memory_bytes),
                _pct(r.peak_memory_bytes, b.peak_memory_bytes if b else None), delta_color="inverse",
                help=r.memory_source)
    src = r.energy_source or "n/a"
    c[4].metric(f"Energy ({'estimated' if src.startswith('estimated') else 'measured'})",
                f"{(r.energy_j or 0) * 1e3:.3g} mJ", _pct(r.energy_j, b.energy_j if b else None),
                delta_color="inverse", help=f"per inference · {src} · {r.energy_note}")


def provenance(r: Result) -> None:
    for w in r.warnings:
        st.warning(w, icon=":material/info:")
    with st.expander("How this ran (kernels, device, timing)"):
        st.table([{"step": k["step"], "kernel": k["kernel"],
                   "detail": ", ".join(f"{a}={b}" for a, b in k.items() if a not in ("step", "kernel"))}
                  for k in r.kernels])
        d = r.device
        st.caption(f"{d.get('cpu')} · {d.get('logical_cores')} cores · flags {', '.join(d.get('cpu_flags', []))} · "
                   f"GPU {d.get('gpu') or 'none'} · torch {d.get('torch')} · profile {r.profile} · "
                   f"measured in {r.wall_s or 0:.2f} s")


def ensure_seeded(model: str, db: str) -> None:
    """First visit: measure a small grid so the frontier is not empty (progress shown; resumable)."""
    todo = service.missing(service.seed_grid(model), db)
    if len(todo) <= 0:
        return
    bar = st.progress(0.0, text=f"Measuring {len(todo)} starter configurations for the frontier…")

    def progress(done, total, recipe, result, eta):
        bar.progress(done / total, text=f"Starter frontier: {done}/{total} · {recipe.label()} · ETA {eta:.0f} s")

    service.sweep(todo, db, profile="quick", on_progress=progress)
    bar.empty()
