"""The report's run-level charts as interactive plotly figures (``normctl[interactive]``).

Zoom into the last tenth of a run to see whether the gradient norm rises, hover over a curve to
read a step's value, click a legend entry to hide a method. The same series as the static
figures of :mod:`.plots` (each group's mean over its seeds, ±1 std as a band); plotly.js is
written into the page once, so the report stays one file that opens offline.
"""

from __future__ import annotations

from .runs import Run, by_label, mean_std


def require_plotly():
    try:
        import plotly.graph_objects as go
    except ImportError as error:
        raise ImportError("an interactive report needs plotly: pip install 'normctl[interactive]'") from error
    return go


def curves(runs: list[Run], key: str, ylabel: str, *, log: bool = False, include_plotlyjs: bool = False) -> str:
    """One line per group of seeds with a ±1 std band, as an HTML ``<div>`` (with plotly.js
    itself when ``include_plotlyjs``: the first figure of a page)."""
    go = require_plotly()
    from plotly.colors import qualitative

    palette = qualitative.Plotly
    figure = go.Figure()
    for i, (label, group) in enumerate(by_label(runs).items()):
        steps, mean, std = mean_std(group, key)
        if not steps:
            continue
        name = label + (f" ({len(group)} seeds)" if len(group) > 1 else "")
        colour = palette[i % len(palette)]
        figure.add_trace(
            go.Scatter(x=steps, y=mean, mode="lines", name=name, legendgroup=label, line={"color": colour})
        )
        if any(std):
            upper = [m + s for m, s in zip(mean, std)]
            lower = [m - s for m, s in zip(mean, std)]
            figure.add_trace(
                go.Scatter(
                    x=steps + steps[::-1],
                    y=upper + lower[::-1],
                    fill="toself",
                    line={"width": 0, "color": colour},
                    opacity=0.2,
                    hoverinfo="skip",
                    showlegend=False,
                    legendgroup=label,
                )
            )
    figure.update_layout(
        xaxis_title="step",
        yaxis_title=ylabel,
        yaxis_type="log" if log else "linear",
        height=380,
        width=620,
        margin={"l": 60, "r": 10, "t": 10, "b": 40},
        template="plotly_white",
    )
    return figure.to_html(full_html=False, include_plotlyjs=include_plotlyjs)
