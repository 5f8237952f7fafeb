"""The explorer page: ``<out>/index.html`` of ``celery-chaos explore``.

It opens with the outcome in words (a violation found and shrunk, or none within the
budget), then the exploration's figures, the minimal failing schedule on a timeline with
its runs and replays, and every example tried, linked to its run's ``result.json``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from celery_chaos.faults.schedule import describe_steps
from celery_chaos.results import ExplorationResult

_env = Environment(
    loader=PackageLoader("celery_chaos.report", "templates"),
    autoescape=select_autoescape(["html", "j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_PX_PER_S, _LEFT, _ROW = 60, 10, 24


def _timeline(steps: list[dict[str, Any]]) -> dict[str, Any]:
    bars, end = [], 1.0
    for i, s in enumerate(steps):
        at = float(s["when"].get("at", 0.0))
        dur = float(s.get("duration", 0.0))
        end = max(end, at + dur)
        bars.append({"x": _LEFT + at * _PX_PER_S, "y": 6 + i * _ROW,
                     "w": max(4.0, dur * _PX_PER_S),
                     "label": f"{s['do']['op']} {s['do'].get('worker') or ''}".strip()})
    width = int(_LEFT * 2 + (end + 1) * _PX_PER_S + 160)
    ticks = [{"x": _LEFT + t * _PX_PER_S, "label": f"{t} s"} for t in range(int(end) + 2)]
    return {"bars": bars, "ticks": ticks, "width": width, "height": 6 + len(steps) * _ROW + 20}


def write_explorer_page(out: Path, result: ExplorationResult, minimal_file: str) -> Path:
    """Write ``out/index.html`` atomically; return its path."""
    page = out / "index.html"

    def rel(path: str) -> str:
        return os.path.relpath(path, out)

    minimal = result.minimal
    html = _env.get_template("explorer.html.j2").render(
        r=result,
        words=describe_steps,
        rel=rel,
        minimal_file=minimal_file,
        minimal_words=describe_steps(minimal.schedule) if minimal else "",
        replay_fails=sum(run.verdict.value == "invalid" for run in result.replays),
        tl=_timeline(minimal.schedule) if minimal else {},
    )
    tmp = page.with_name(page.name + ".tmp")
    tmp.write_text(html)
    tmp.replace(page)
    return page
