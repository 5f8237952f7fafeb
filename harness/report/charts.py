"""Plotly figures of a scenario's timeline, with every fault window shaded and labelled.

Figures are built with plotly's Python API and embedded as JSON; the page draws them with
the plotly.js bundled in the plotly package, written once next to the reports
(:func:`plotly_asset`). Text that comes from tasks or targets is HTML-escaped before it
reaches plotly (whose labels understand a few tags).
"""

from __future__ import annotations

import html
import importlib.resources
import os
import secrets
from pathlib import Path
from typing import Any

import plotly
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from celery_chaos.report.timeline import PERCENTILES, Timeline

FAULT_COLOURS = (
    "#d62728", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
)
ROWS = (
    "Throughput (tasks/s)",
    "Publish latency (ms), by publish time",
    "End-to-end latency (s): first publish to completion, by publish time",
    "Queue depth (messages)",
    "Active workers",
)
#: Each chart's y-axis unit, in the order of ROWS.
UNITS = ("tasks/s", "ms", "s", "messages", "workers")
_PCT_COLOURS = {"p50": "#1f77b4", "p95": "#ff7f0e", "p99": "#d62728", "max": "#7f7f7f"}
_RATE_STYLE = {
    "published": ("published (broker ok)", "#1f77b4"),
    "publish_errors": ("publish errors (fail/info)", "#ff7f0e"),
    "succeeded": ("completed: succeeded", "#2ca02c"),
    "failed": ("completed: failed (task raised)", "#d62728"),
    "lost": ("WorkerLostError", "#9467bd"),
}


def plotly_asset(reports_root: Path) -> str:
    """Write plotly.js once under ``<reports>/_assets/``; return its file name."""
    name = f"plotly-{plotly.__version__}.min.js"
    out = reports_root / "_assets" / name
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        src = importlib.resources.files("plotly") / "package_data" / "plotly.min.js"
        tmp = out.with_name(f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(src.read_bytes())
        tmp.replace(out)
    return name


def fault_colour(name: str, names: list[str]) -> str:
    """A stable colour per fault name."""
    return FAULT_COLOURS[names.index(name) % len(FAULT_COLOURS)] if name in names else "#999"


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _legend_per_chart(fig: go.Figure) -> None:
    """A legend beside each chart, holding only that chart's series (units never mix)."""
    for trace in fig.data:
        axis = getattr(trace, "yaxis", None) or "y"
        n = axis[1:]  # "y" -> "", "y2" -> "2"
        trace.legend = f"legend{n}"
    for row in range(1, len(ROWS) + 1):
        n = "" if row == 1 else str(row)
        top = fig.layout[f"yaxis{n}"].domain[1]
        fig.update_layout({f"legend{n}": {"x": 1.01, "y": top, "yanchor": "top",
                                          "orientation": "v", "font": {"size": 11}}})


def timeline_figure(tl: Timeline, *, title: str = "") -> go.Figure:
    """One figure, five rows sharing the time axis; fault windows shaded over all rows."""
    fig = make_subplots(
        rows=len(ROWS), cols=1, shared_xaxes=True, vertical_spacing=0.045,
        subplot_titles=ROWS, row_heights=[1.0, 0.8, 1.0, 0.8, 0.5],
    )
    x = tl.bins
    for key, values in tl.rates.items():
        label, colour = _RATE_STYLE[key]
        fig.add_trace(
            go.Scatter(x=x, y=values, name=label, mode="lines", line={"color": colour,
                       "width": 1.5}, legendgroup="rates", hovertemplate="%{y:.1f}/s"),
            row=1, col=1,
        )
    for row, series, unit, fmt in ((2, tl.publish_ms, "ms", ".3f"), (3, tl.e2e_s, "s", ".4f")):
        for key in [f"p{q}" for q in PERCENTILES] + ["max"]:
            fig.add_trace(
                go.Scatter(
                    x=x, y=series.get(key, []), name=f"{key} ({unit})", mode="lines+markers",
                    marker={"size": 3},
                    connectgaps=False, legendgroup=f"lat{row}", showlegend=True,
                    line={"color": _PCT_COLOURS[key], "width": 1.2,
                          "dash": "dot" if key == "max" else "solid"},
                    hovertemplate=f"{key} %{{y:{fmt}}} {unit}",
                ),
                row=row, col=1,
            )
    if tl.raw_e2e:
        fig.add_trace(
            go.Scattergl(
                x=[p[0] for p in tl.raw_e2e], y=[p[1] for p in tl.raw_e2e],
                text=[_esc(p[2]) for p in tl.raw_e2e], mode="markers", name="each task",
                marker={"size": 3, "color": "rgba(31,119,180,0.35)"},
                hovertemplate="task %{text}<br>published at %{x:.3f} s<br>"
                "end to end %{y:.4f} s<extra></extra>",
            ),
            row=3, col=1,
        )
    for queue, points in sorted(tl.depth.items()):
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in points], y=[p[1] for p in points], name=f"ready: {_esc(queue)}",
                mode="lines", line_shape="hv", connectgaps=False,
                hovertemplate="%{y} ready",
            ),
            row=4, col=1,
        )
    fig.add_trace(
        go.Scatter(
            x=[p[0] for p in tl.in_flight], y=[p[1] for p in tl.in_flight],
            name="held by workers (from history)", mode="lines", line_shape="hv",
            line={"color": "#8c564b", "dash": "dash"}, hovertemplate="%{y} held",
        ),
        row=4, col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=[p[0] for p in tl.workers], y=[p[1] for p in tl.workers], name="active workers",
            mode="lines+markers", line_shape="hv", line={"color": "#2ca02c"},
            hovertemplate="%{y} worker(s)",
        ),
        row=5, col=1,
    )
    _add_faults(fig, tl)
    fig.update_layout(
        title={"text": _esc(title)} if title else None,
        height=1100, margin={"l": 60, "r": 20, "t": 60 if title else 40, "b": 40},
        hovermode="x", template="plotly_white",
    )
    _legend_per_chart(fig)
    for row, unit in enumerate(UNITS, 1):
        fig.update_yaxes(title_text=unit, row=row, col=1)
    fig.update_xaxes(title_text="seconds since the scenario started", row=len(ROWS), col=1)
    fig.update_xaxes(showspikes=True, spikemode="across", spikethickness=1)
    fig.update_yaxes(rangemode="tozero")
    return fig


def _add_faults(fig: go.Figure, tl: Timeline) -> None:
    names = list(dict.fromkeys(f.name for f in tl.faults))
    min_width = max(tl.span / 250, 0.02)
    top = max([max(v) for v in tl.rates.values() if v] + [1.0]) * 1.1
    xs, ys, texts, idx, colours = [], [], [], [], []
    for fw in tl.faults:
        colour = fault_colour(fw.name, names)
        x1 = max(fw.end, fw.start + min_width)
        fig.add_vrect(
            x0=fw.start, x1=x1, fillcolor=colour, opacity=0.22, line_width=0, layer="below",
            row="all", col=1,
        )
        fig.add_annotation(
            x=x1, y=top, xref="x", yref="y", yanchor="middle", xanchor="left", xshift=8,
            text=f"{_esc(fw.name)} {_esc(fw.target)}", showarrow=False,
            font={"size": 10, "color": colour}, bgcolor="rgba(255,255,255,0.7)",
        )
        xs.append((fw.start + x1) / 2)
        ys.append(top)
        texts.append(
            f"{_esc(fw.name)} on {_esc(fw.target)}<br>{fw.start:.3f} s to {fw.end:.3f} s"
            f"<br>{len(fw.touched)} task(s) touched: click for the list"
        )
        idx.append(fw.index)
        colours.append(colour)
    if xs:
        fig.add_trace(
            go.Scatter(
                x=xs, y=ys, customdata=idx, text=texts, mode="markers", name="faults (click)",
                marker={"symbol": "triangle-down", "size": 14, "color": colours},
                hovertemplate="%{text}<extra></extra>", meta="faults",
            ),
            row=1, col=1,
        )


def figure_json(fig: go.Figure) -> str:
    """The figure as JSON that is safe inside a ``<script>`` element."""
    out = fig.to_json(validate=False, remove_uids=True)
    for raw, safe in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        out = out.replace(raw, safe)
    return out
