"""Plotly figures shared by the dashboard and the exported report: data in, Figure out (no UI code)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from engine.core.axes import RUNTIMES
from engine.core.measurement import Source

AXIS_LABELS = {
    "accuracy": "accuracy",
    "latency_p50_ms": "latency p50 (ms)",
    "size_bytes": "stored size (KiB)",
    "peak_memory_bytes": "peak memory (KiB)",
    "energy_j": "energy per inference (mJ)",
    "params_nonzero": "non-zero parameters",
    "speedup": "speed-up vs uncompressed (×, paired)",
}
SCALE = {"size_bytes": 1 / 1024, "peak_memory_bytes": 1 / 1024, "energy_j": 1e3}
# Error bars: the spread of the per-block medians (latency), of the per-pair ratios (speed-up).
ERRORS = {"latency_p50_ms": ("latency_block_q25_ms", "latency_block_q75_ms")}
FRONT, DOMINATED, CURRENT = "#2563eb", "#94a3b8", "#f97316"
# Outline colour of points measured in another runtime than eager, and what the legend calls it.
RUNTIME_EDGE = {name: rt.figure_edge for name, rt in RUNTIMES.items() if rt.figure_edge}
RUNTIME_NOTE = {name: rt.figure_note for name, rt in RUNTIMES.items() if rt.figure_note}
OVERLAY_COLOURS = ("#dc2626", "#0891b2", "#ca8a04", "#7c3aed", "#db2777")  # other machines' frontiers
LOG_SPAN = 10.0  # an axis whose values span more than this factor is drawn logarithmic


def axis_label(column: str, metric_kind: str = "accuracy") -> str:
    if column == "accuracy" and metric_kind == "fidelity":
        return "fidelity to fp32 (cosine)"
    return AXIS_LABELS.get(column, column)


def _col(df: pd.DataFrame, c: str) -> pd.Series:
    return pd.to_numeric(df[c], errors="coerce").astype(float) * SCALE.get(c, 1.0)


def _log_axis(values: pd.Series) -> bool:
    v = values[values > 0]
    return len(v) > 1 and v.max() / v.min() > LOG_SPAN


def _errors(df: pd.DataFrame, column: str, values: pd.Series) -> dict | None:
    if column == "speedup" and "speedup_spread" in df:
        half = values * pd.to_numeric(df["speedup_spread"], errors="coerce").fillna(0) / 2
        return dict(type="data", array=half, arrayminus=half, visible=True, thickness=1, width=0, color="#cbd5e1")
    if column not in ERRORS or not set(ERRORS[column]) <= set(df):
        return None
    lo, hi = (_col(df, c) for c in ERRORS[column])
    return dict(type="data", array=(hi - values).clip(lower=0).fillna(0), arrayminus=(values - lo).clip(lower=0).fillna(0),
                visible=True, thickness=1, width=0, color="#cbd5e1")


def _estimated(source: object) -> bool:
    """A flat row's energy_source says the figure is an estimate, not a counter's reading."""
    return Source.kind_of(source) == "estimated"


def _symbols(base: str, df: pd.DataFrame, energy_plotted: bool) -> np.ndarray:
    """Hollow: measured while the machine was busy (or by an older engine): not trusted, off the frontier.
    With a dot: energy estimated, not measured (only marked where energy is plotted)."""
    hollow = ~df["trusted"].astype(bool)
    dotted = df["energy_source"].map(_estimated).astype(bool) & energy_plotted
    return np.array([base + ("-open" if h else "") + ("-dot" if d else "") for h, d in zip(hollow, dotted)])


def pareto_figure(rows: list[dict], x: str, y: str, current_key: str | None = None, color: str | None = None,
                  height: int = 460, metric_kind: str = "accuracy",
                  overlays: list[tuple[str, list[dict]]] | None = None) -> go.Figure:
    """Every configuration that ran and meets the constraint: frontier points joined and emphasised,
    dominated ones grey, untrusted (contended) ones hollow, estimated-energy ones dotted, the current one ringed.
    `overlays`: (machine name, its rows) of other machines, whose own frontiers are drawn dashed beside this
    one's (each machine's points compete only with its own)."""
    fig = go.Figure()
    df = pd.DataFrame([r for r in rows if r.get("shown", r.get("eligible"))])
    if df.empty:
        fig.add_annotation(text="No measured configurations yet", showarrow=False, font=dict(size=16))
        fig.update_layout(height=height, xaxis=dict(visible=False), yaxis=dict(visible=False))
        return fig
    if "trusted" not in df:
        df["trusted"] = True
    df["runtime"] = df["runtime"].fillna("eager") if "runtime" in df else "eager"
    df["_x"], df["_y"] = _col(df, x), _col(df, y)
    energy_plotted = "energy_j" in (x, y, color)
    hover = ("<b>%{customdata[1]}</b><br>" + axis_label(x, metric_kind) + ": %{x:.4g}<br>" + axis_label(y, metric_kind)
             + ": %{y:.4g}<br>%{customdata[2]}<br>row #%{customdata[0]}<extra></extra>")
    df["_note"] = [("energy " + (f"{e * 1e3:.3g} mJ ({s})" if e == e and e is not None else "n/a"))
                   + ("" if t else "<br><i>measured while the machine was busy: re-measure</i>")
                   for e, s, t in zip(df["energy_j"], df["energy_source"].fillna(""), df["trusted"])]
    custom = np.stack([df["id"], df["label"], df["_note"]], axis=1)
    colorbar = dict(title=axis_label(color, metric_kind)) if color and color in df else None
    on_front = df["on_frontier"].astype(bool)
    compared = df["eligible"].astype(bool) if "eligible" in df else pd.Series(True, index=df.index)
    groups = (("Pareto frontier", on_front, "diamond", 12, FRONT),
              ("dominated", compared & ~on_front, "circle", 9, DOMINATED),
              ("busy machine: not compared", ~compared, "circle", 9, DOMINATED))
    extents: list[tuple[str, float, float]] = []  # (axis, lowest, highest) of what each trace draws
    for name, mask, symbol, size, edge in groups:
        part = df[mask].sort_values("_x")
        if part.empty:
            continue
        front = name == "Pareto frontier"
        marker = dict(size=size, symbol=_symbols(symbol, part, energy_plotted),
                      color=(_col(part, color) if colorbar else edge),
                      colorscale="Viridis" if colorbar else None, colorbar=colorbar if front else None,
                      cmin=_col(df, color).min() if colorbar else None, cmax=_col(df, color).max() if colorbar else None,
                      line=dict(width=[2.5 if rt in RUNTIME_EDGE else 1.5 for rt in part["runtime"]],
                                color=[RUNTIME_EDGE.get(rt, edge) for rt in part["runtime"]]),
                      opacity=1.0 if front else 0.8)
        # A busy machine's spread says how busy it was, not how the configuration behaves: no error bars there
        # (a contended row's block quartiles can reach 100x its median and would set the whole axis).
        bars = name != "busy machine: not compared"
        error_x, error_y = (_errors(part, x, part["_x"]), _errors(part, y, part["_y"])) if bars else (None, None)
        extents += [_extent(part["_x"], error_x), _extent(part["_y"], error_y, axis="y")]
        fig.add_trace(go.Scatter(
            x=part["_x"], y=part["_y"], mode="lines+markers" if front and not colorbar else "markers", name=name,
            customdata=custom[df.index.get_indexer(part.index)], hovertemplate=hover, marker=marker,
            error_x=error_x, error_y=error_y,
            line=dict(color=FRONT, width=2, shape="hv" if "accuracy" not in (x, y) else "linear")))
    for i, (machine, other) in enumerate(overlays or []):
        part = pd.DataFrame([r for r in other if r.get("on_frontier")])
        if part.empty:
            continue
        part["_x"], part["_y"] = _col(part, x), _col(part, y)
        part = part.sort_values("_x")
        colour = OVERLAY_COLOURS[i % len(OVERLAY_COLOURS)]
        extents += [_extent(part["_x"], None), _extent(part["_y"], None, axis="y")]
        part["_note"] = f"measured on {machine}"
        fig.add_trace(go.Scatter(
            x=part["_x"], y=part["_y"], mode="lines+markers", name=f"frontier on {machine}",
            customdata=np.stack([part["id"], part["label"], part["_note"]], axis=1), hovertemplate=hover,
            marker=dict(size=10, symbol="triangle-up", color=colour),
            line=dict(color=colour, width=1.5, dash="dash", shape="hv" if "accuracy" not in (x, y) else "linear")))
    if current_key is not None and (df["recipe_key"] == current_key).any():
        cur = df[df["recipe_key"] == current_key].iloc[0]
        fig.add_trace(go.Scatter(x=[cur["_x"]], y=[cur["_y"]], mode="markers", name="this configuration",
                                 hoverinfo="skip",
                                 marker=dict(size=22, color="rgba(0,0,0,0)", line=dict(width=3, color=CURRENT))))
    fig.update_layout(
        height=height, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=1.02, x=0, yanchor="bottom"),
        xaxis_title=axis_label(x, metric_kind), yaxis_title=axis_label(y, metric_kind), template="plotly_white",
        clickmode="event+select")
    for axis, values in (("x", df["_x"]), ("y", df["_y"])):
        log = _log_axis(values)
        span = _fitted(extents, axis, log)
        (fig.update_xaxes if axis == "x" else fig.update_yaxes)(range=span, **({"type": "log"} if log else {}))
    return fig


def _extent(values: pd.Series, errors: dict | None, axis: str = "x") -> tuple[str, float, float]:
    """The lowest and highest value a trace draws on one axis, its error bars included."""
    lo, hi = values, values
    if errors is not None:
        lo = values - pd.Series(np.asarray(errors["arrayminus"], dtype=float), index=values.index)
        hi = values + pd.Series(np.asarray(errors["array"], dtype=float), index=values.index)
        lo = lo.where(lo > 0, values)  # a bar reaching zero or below: the axis fits its point (a log axis has no 0)
    return axis, float(lo.min()), float(hi.max())


def _fitted(extents: list[tuple[str, float, float]], axis: str, log: bool) -> list[float] | None:
    """An axis range that fits exactly what is drawn, 6 % padding either side (in log10 units on a log axis):
    Plotly's own autorange also counts what it does not show (hidden traces' error bars), so a few sub-millisecond
    points could sit against the edge of a 0-20 ms axis. None (autorange) when nothing finite is drawn."""
    lows = [lo for a, lo, _ in extents if a == axis and np.isfinite(lo) and (lo > 0 or not log)]
    highs = [hi for a, _, hi in extents if a == axis and np.isfinite(hi) and (hi > 0 or not log)]
    if not lows or not highs:
        return None
    lo, hi = min(lows), max(highs)
    if log:
        lo, hi = np.log10(lo), np.log10(hi)
    pad = (hi - lo) * 0.06 or (abs(hi) * 0.06 if hi else 0.5)
    return [lo - pad, hi + pad]


def legend_note(rows: list[dict], energy_plotted: bool) -> str:
    """One line under a Pareto plot saying what the marker styles mean, for the styles present."""
    shown = [r for r in rows if r.get("shown")]
    notes = ["diamonds joined: the frontier", "grey circles: dominated"]
    if any(not r.get("trusted", True) for r in shown):
        notes.append("hollow: measured while the machine was busy, so not compared until re-measured")
    notes += [note for rt, note in RUNTIME_NOTE.items() if any(r.get("runtime") == rt for r in shown)]
    if energy_plotted and any(_estimated(r.get("energy_source")) for r in shown):
        notes.append("dot inside: energy estimated from CPU time, not measured")
    notes.append("bars: spread between timing blocks")
    return " · ".join(notes)


def batch_figure(rows: list[dict]) -> go.Figure:
    """Speed-up against batch size, one line per configuration (technique and runtime) measured at two or
    more batch sizes: where compression pays off. The speed-up is paired, so a row measured on a busy machine
    still compares like with like; it is drawn hollow, as on the frontier."""
    fig = go.Figure()
    df = pd.DataFrame([r for r in rows if r.get("error") is None and r.get("speedup") is not None])
    if not df.empty:
        for config, part in df.groupby("label", sort=True):
            part = part.sort_values("batch_size")
            if part["batch_size"].nunique() < 2:
                continue
            hollow = ["circle-open" if c else "circle" for c in part["latency_contended"].fillna(0).astype(bool)]
            fig.add_trace(go.Scatter(x=part["batch_size"], y=part["speedup"], mode="lines+markers", name=config,
                                     marker=dict(symbol=hollow, size=8),
                                     hovertemplate=config + "<br>batch %{x}: %{y:.2f}×<extra></extra>"))
    if not fig.data:
        fig.add_annotation(text="No configuration measured at two or more batch sizes yet", showarrow=False)
    fig.add_hline(y=1.0, line=dict(color=DOMINATED, dash="dot"))
    fig.update_layout(height=380, margin=dict(l=10, r=10, t=30, b=10), template="plotly_white",
                      xaxis=dict(title="batch size", type="log"), yaxis_title=AXIS_LABELS["speedup"],
                      legend=dict(orientation="h", y=-0.25))
    return fig
