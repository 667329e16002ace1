"""Pure functions: data -> plotly Figure. No Streamlit here, so they are testable on their own."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from engine.figures import (AXIS_LABELS, CURRENT, FRONT, axis_label, batch_figure, legend_note,  # noqa: F401
                            pareto_figure)


def histogram_before_after(before: np.ndarray, after: np.ndarray, title: str, pinned: np.ndarray | None = None
                           ) -> go.Figure:
    """Weight values of the original layer and the compressed one (and of the pinned configuration A)."""
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=before, name="original", opacity=0.55, nbinsx=80, marker_color="#94a3b8"))
    if pinned is not None:
        fig.add_trace(go.Histogram(x=pinned, name="A (pinned)", opacity=0.55, nbinsx=80, marker_color=CURRENT))
    fig.add_trace(go.Histogram(x=after, name="B (controls)" if pinned is not None else "compressed", opacity=0.65,
                               nbinsx=80, marker_color=FRONT))
    fig.update_layout(barmode="overlay", title=title, height=300, margin=dict(l=10, r=10, t=40, b=10),
                      template="plotly_white", xaxis_title="weight value", yaxis_title="count",
                      legend=dict(orientation="h", y=1.12, x=1, xanchor="right"))
    return fig


def error_histogram(error: np.ndarray, title: str) -> go.Figure:
    fig = go.Figure(go.Histogram(x=error, nbinsx=80, marker_color=CURRENT))
    fig.update_layout(title=title, height=300, margin=dict(l=10, r=10, t=40, b=10), template="plotly_white",
                      xaxis_title="E = W - Q(W)", yaxis_title="count")
    return fig


def sparsity_heatmap(fraction: np.ndarray, title: str) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=fraction, zmin=0, zmax=1, colorscale="Blues",
                               colorbar=dict(title="zeros")))
    fig.update_layout(title=title, height=300, margin=dict(l=10, r=10, t=40, b=10), template="plotly_white",
                      xaxis_title="inputs (blocks)", yaxis_title="output channels (blocks)")
    fig.update_yaxes(autorange="reversed")
    return fig
