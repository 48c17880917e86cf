"""The report's charts, built with Plotly (its JavaScript is bundled in the wheel and written next to
the report, so the page works offline). Each function returns an HTML fragment (a div and the
script that draws it) or "" when there is nothing to draw."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

OURS, PAPER = "#d9480f", "#868e96"


def _fragment(fig, div_id: str) -> str:
    fig.update_layout(margin={"l": 50, "r": 20, "t": 50, "b": 60}, template="plotly_white",
                      legend={"orientation": "h", "y": -0.25})
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"chart-{div_id}",
                       config={"displaylogo": False, "responsive": True})


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def ablation_chart(rows: Sequence[dict[str, Any]], div_id: str, title: str) -> str:
    """Grouped bars per grid row: our J and the paper's J (where the paper has the setting); one
    group per (row, split) for datasets with several test splits."""
    import plotly.graph_objects as go

    rows = [r for r in rows if _finite(r.get("J"))]
    if not rows:
        return ""
    splits = sorted({r["split"] for r in rows})
    label = [r["row"] if len(splits) == 1 else f"{r['row']} ({r['split']})" for r in rows]
    fig = go.Figure()
    fig.add_bar(name="ours J", x=label, y=[r["J"] for r in rows], marker_color=OURS)
    paper = [r.get("paper_J") if _finite(r.get("paper_J")) else None for r in rows]
    if any(p is not None for p in paper):
        fig.add_bar(name="paper J (real data; setting in the table)", x=label, y=paper, marker_color=PAPER)
    fig.update_layout(title=title, barmode="group", yaxis_title="J", yaxis_range=[0, 1], height=380)
    return _fragment(fig, div_id)


def curves_chart(curves: dict[str, dict[str, list[tuple[int, float]]]], metric: str, div_id: str,
                 title: str, names: dict[str, str]) -> str:
    """One line per run of `metric` against the training step."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for run_id, per_metric in curves.items():
        points = per_metric.get(metric) or []
        if points:
            fig.add_scatter(x=[s for s, _ in points], y=[v for _, v in points], mode="lines+markers",
                            name=names.get(run_id, run_id[:8]))
    if not fig.data:
        return ""
    fig.update_layout(title=title, xaxis_title="step", yaxis_title=metric, height=360)
    return _fragment(fig, div_id)


def runs_chart(rows: Sequence[dict[str, Any]], div_id: str, title: str) -> str:
    """Bars of each run's headline J (one colour per experiment)."""
    import plotly.graph_objects as go

    rows = [r for r in rows if _finite(r.get("J"))]
    if not rows:
        return ""
    fig = go.Figure()
    for experiment in sorted({r["experiment"] for r in rows}):
        mine = [r for r in rows if r["experiment"] == experiment]
        fig.add_bar(name=experiment, x=[r["label"] for r in mine], y=[r["J"] for r in mine])
    fig.update_layout(title=title, yaxis_title="J", yaxis_range=[0, 1], height=380)
    return _fragment(fig, div_id)


def prompts_chart(rows: Sequence[dict[str, Any]], div_id: str, title: str) -> str:
    """Bars of J per (method, prompts), ours beside the paper's Tables 6-7."""
    import plotly.graph_objects as go

    rows = [r for r in rows if _finite(r.get("J"))]
    if not rows:
        return ""
    label = [f"{r['method']} · {r['prompts']}" for r in rows]
    fig = go.Figure()
    fig.add_bar(name="ours J", x=label, y=[r["J"] for r in rows], marker_color=OURS)
    paper = [r["paper_J"] if _finite(r.get("paper_J")) else None for r in rows]
    if any(p is not None for p in paper):
        fig.add_bar(name="paper J (V1m, Hiera-B+)", x=label, y=paper, marker_color=PAPER)
    fig.update_layout(title=title, barmode="group", yaxis_title="J", yaxis_range=[0, 1], height=380)
    return _fragment(fig, div_id)
