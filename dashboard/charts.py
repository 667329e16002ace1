"""Pure functions: data -> plotly Figure. No Streamlit here, so they are testable on their own."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from engine.results.figures import AXIS_LABELS, CURRENT, FRONT, axis_label, batch_figure, legend_note, pareto_figure  # noqa: F401


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


# Accuracy lost, in points: white at no change, red for a loss, pale blue where compressing a layer helped.
DROP_SCALE = [[0.0, "#2563eb"], [0.5, "#ffffff"], [0.75, "#f87171"], [1.0, "#7f1d1d"]]
MIN_DROP_RANGE = 1.0  # points: the colour range never spans less, so noise of a few tenths stays near white


def level_label(technique: str, level: float | int) -> str:
    """A probed level as a column header: '30 %' for a pruning amount, '8-bit' for a bit width."""
    return f"{float(level) * 100:.0f} %" if technique == "prune" else f"{int(level)}-bit"


def sensitivity_heatmap(result: dict) -> go.Figure:
    """Accuracy lost when one layer alone is compressed, per layer (most sensitive on top) and level.

    Takes the dict of `api.stored_sensitivity`; a failed probe (None) is a blank cell whose hover says why."""
    layers = {row["layer"]: row for row in result["layers"]}
    order = [n for n in result.get("ranking", []) if n in layers] + [n for n in layers
                                                                     if n not in result.get("ranking", [])]
    technique, levels = result["technique"], result["levels"]
    metric = "fidelity" if result.get("metric_kind") == "fidelity" else "accuracy"
    columns = [level_label(technique, v) for v in levels]
    z, text, hover = [], [], []
    for name in order:
        row = layers[name]
        share = (f"size share {row.get('size_share', 0) * 100:.1f} % of the parameters<br>"
                 f"time share {row.get('latency_share', 0) * 100:.1f} % of the forward time")
        z.append([]), text.append([]), hover.append([])
        for level, column in zip(levels, columns):
            drop = row["drops"].get(str(level), row["drops"].get(str(float(level))))
            head = f"<b>{name}</b> at {column}<br>"
            if drop is None:
                why = row.get("errors", {}).get(str(level), "not measured")
                z[-1].append(None), text[-1].append("")
                hover[-1].append(f"{head}failed: {why[:120]}<br>{share}")
            else:
                pts = drop * 100
                z[-1].append(pts), text[-1].append(f"{pts:.1f}")
                said = f"{metric} lost {pts:.1f} pts" if pts >= 0 else f"{metric} gained {-pts:.1f} pts"
                hover[-1].append(f"{head}{said}<br>{share}")
    known = [abs(v) for r in z for v in r if v is not None]
    top = max([MIN_DROP_RANGE, *known])
    fig = go.Figure(go.Heatmap(z=z, x=columns, y=order, text=text, texttemplate="%{text}", hovertext=hover,
                               hovertemplate="%{hovertext}<extra></extra>", hoverongaps=True, zmin=-top, zmax=top,
                               colorscale=DROP_SCALE, xgap=2, ygap=2,
                               colorbar=dict(title=dict(text="pts lost", side="right"), thickness=12)))
    what = "pruned" if technique == "prune" else "quantized"
    how = f" ({result.get('method')})" if technique == "prune" and result.get("method") else ""
    fig.update_layout(title=f"{metric.capitalize()} lost when one layer alone is {what}{how}",
                      height=max(240, 110 + 28 * len(order)), margin=dict(l=10, r=10, t=40, b=10),
                      template="plotly_white", plot_bgcolor="#f1f5f9",
                      xaxis_title="pruning amount" if technique == "prune" else "bit width")
    fig.update_xaxes(type="category", side="bottom", showgrid=False)
    fig.update_yaxes(type="category", autorange="reversed", automargin=True, showgrid=False)
    return fig
