"""A generated report opened in headless Chromium: no console error, verdict and charts
present, hostile task text inert, a fault click lists the tasks it touched, a screenshot.

Chromium is the Debian ``chromium`` package (``scripts/setup.sh`` installs it); the test
skips only when no Chromium binary can be found, and never with ``CI=true``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from celery_chaos.report.browser import Chromium, find_chromium
from celery_chaos.report.synthetic import SyntheticSpec, make_run

# In CI the set-up installs Chromium, so a missing one there is a failure, not a skip.
pytestmark = pytest.mark.skipif(
    find_chromium() is None and os.environ.get("CI") != "true",
    reason="chromium is not installed (scripts/setup.sh installs the Debian package)",
)


@pytest.fixture(scope="module")
def browser() -> Chromium:
    with Chromium(height=1100, timeout=60) as chromium:
        yield chromium


def test_report_renders_without_errors(browser: Chromium, tmp_path: Path) -> None:
    run_dir, run = make_run(
        tmp_path,
        {"acks_late_kill": SyntheticSpec(acks_late=True),
         "early_ack_kill": SyntheticSpec(acks_late=False, seed=3)},
    )
    early = next(s for s in run.scenarios if s.name == "early_ack_kill")
    assert early.queue is not None
    lost = early.queue.lost
    shot = tmp_path / "report.png"
    page = browser.open(
        (run_dir / "index.html").as_uri(),
        screenshot=shot,
        probes={
            "verdict": "document.querySelector('h1[data-verdict]').dataset.verdict",
            "headline": "document.querySelector('h1').textContent",
            "first_chart": "document.querySelectorAll('.js-plotly-plot').length",
            "charts": "window.__drawAllCharts().then(() =>"
                      " document.querySelectorAll('.js-plotly-plot').length)",
            "fault_shapes": "document.querySelectorAll('.js-plotly-plot .shapelayer path')"
                            ".length",
            "pwned": "typeof window.__pwned",
            "hostile_text": "document.body.textContent.includes('<script>window.__pwned')",
            "panel": """(() => {
                const gd = document.getElementById('s2-early_ack_kill-chart');
                gd.emit('plotly_click', {points: [{data: {meta: 'faults'}, customdata: 0}]});
                const p = document.getElementById('s2-early_ack_kill-fault-panel');
                return p.hidden ? '' : p.innerText; })()""",
        },
    )
    assert page.ready, "the page never signalled that its charts were drawn"
    assert page.errors == []
    v = page.values
    assert v["verdict"] == "invalid" and v["headline"].startswith("PASS")
    assert v["first_chart"] >= 1 and v["charts"] == 2 and v["fault_shapes"] >= 2
    assert v["pwned"] == "undefined" and v["hostile_text"] is True
    assert "kill_worker on w1@chaos" in v["panel"]
    assert all(t in v["panel"] for t in lost)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_the_console_check_catches_errors(browser: Chromium, tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!doctype html><html><body><p>broken</p>"
        "<script src='missing.js'></script>"
        "<script>console.error('boom'); undefinedFunction();</script></body></html>"
    )
    page = browser.open(bad.as_uri(), ready_expression="true")
    text = " | ".join(page.errors)
    assert "boom" in text and "undefinedFunction" in text and "missing.js" in text
