"""Plotly figures shared by the dashboard and the exported report: data in, Figure out (no UI code)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

AXIS_LABELS = {
    "accuracy": "accuracy (metric of the model)",
    "latency_p50_ms": "latency p50 (ms)",
    "size_bytes": "stored size (KiB)",
    "peak_memory_bytes": "peak memory (KiB)",
    "energy_j": "energy per inference (mJ)",
    "params_nonzero": "non-zero parameters",
}
SCALE = {"size_bytes": 1 / 1024, "peak_memory_bytes": 1 / 1024, "energy_j": 1e3}
FRONT, DOMINATED, CURRENT = "#2563eb", "#c7cdd6", "#f97316"


def _col(df: pd.DataFrame, c: str) -> pd.Series:
    return df[c].astype(float) * SCALE.get(c, 1.0)


def pareto_figure(rows: list[dict], x: str, y: str, current_key: str | None = None,
                  color: str | None = None, height: int = 460) -> go.Figure:
    """Every eligible configuration: frontier points joined and emphasised, dominated ones grey,
    estimated-energy points drawn hollow, the current recipe ringed."""
    fig = go.Figure()
    df = pd.DataFrame([r for r in rows if r.get("eligible")])
    if df.empty:
        fig.add_annotation(text="No measured configurations yet", showarrow=False, font=dict(size=16))
        fig.update_layout(height=height, xaxis=dict(visible=False), yaxis=dict(visible=False))
        return fig
    df["_x"], df["_y"] = _col(df, x), _col(df, y)
    estimated = df["energy_source"].fillna("").str.startswith("estimated")
    hover = ("<b>%{customdata[1]}</b><br>" + AXIS_LABELS.get(x, x) + ": %{x:.4g}<br>" + AXIS_LABELS.get(y, y)
             + ": %{y:.4g}<br>energy: %{customdata[2]}<br>row #%{customdata[0]}<extra></extra>")
    df["_energy"] = [f"{e * 1e3:.3g} mJ ({s})" if e == e and e is not None else "n/a"
                     for e, s in zip(df["energy_j"], df["energy_source"].fillna(""))]
    custom = np.stack([df["id"], df["label"], df["_energy"]], axis=1)
    marker_color: object = DOMINATED
    colorbar = None
    if color and color in df:
        marker_color, colorbar = _col(df, color), dict(title=AXIS_LABELS.get(color, color))
    dom = ~df["on_frontier"].astype(bool)
    fig.add_trace(go.Scatter(
        x=df["_x"][dom], y=df["_y"][dom], mode="markers", name="dominated",
        customdata=custom[dom.to_numpy()], hovertemplate=hover,
        marker=dict(size=9, color=marker_color if colorbar is None else marker_color[dom], opacity=0.75,
                    symbol=np.where(estimated[dom], "circle-open", "circle"),
                    colorscale="Viridis" if colorbar else None, line=dict(width=1.2, color="#94a3b8"))))
    front = df[~dom].sort_values("_x")
    fig.add_trace(go.Scatter(
        x=front["_x"], y=front["_y"], mode="lines+markers", name="Pareto frontier",
        customdata=custom[(~dom).to_numpy()][np.argsort(df["_x"][~dom].to_numpy(), kind="stable")],
        hovertemplate=hover, line=dict(color=FRONT, width=2, shape="hv" if x != "accuracy" else "linear"),
        marker=dict(size=12, color=FRONT if colorbar is None else _col(front, color), colorbar=colorbar,
                    colorscale="Viridis" if colorbar else None,
                    symbol=np.where(estimated[~dom].reindex(front.index), "diamond-open", "diamond"),
                    line=dict(width=1.5, color=FRONT))))
    if current_key is not None and (df["recipe_key"] == current_key).any():
        cur = df[df["recipe_key"] == current_key].iloc[0]
        fig.add_trace(go.Scatter(x=[cur["_x"]], y=[cur["_y"]], mode="markers", name="this configuration",
                                 hoverinfo="skip",
                                 marker=dict(size=22, color="rgba(0,0,0,0)", line=dict(width=3, color=CURRENT))))
    fig.update_layout(
        height=height, margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", y=1.08, x=0),
        xaxis_title=AXIS_LABELS.get(x, x), yaxis_title=AXIS_LABELS.get(y, y), template="plotly_white",
        clickmode="event+select")
    if estimated.any():
        fig.add_annotation(text="hollow markers: energy estimated, not measured", xref="paper", yref="paper",
                           x=1, y=-0.12, showarrow=False, font=dict(size=11, color="#64748b"), xanchor="right")
    return fig
