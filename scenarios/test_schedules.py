"""Fault schedules with several faults (``harness/catalog/schedules.yaml``).

The overlapping-windows scenario checks the schedule executor itself: each step runs on its
own trigger, a held fault never delays the next one, and both windows are recorded in the
history (start and end records, as the report draws them) with the times the spec gives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from celery_chaos.history.schema import Kind
from celery_chaos.runner.catalog import specs
from celery_chaos.runner.run import ScenarioRun
from celery_chaos.spec.model import ScenarioSpec

SPECS = specs("schedules")
#: Slack on a window's start or length: a thread's wake-up plus applying the fault.
SLACK_S = 0.35


def _windows(run: ScenarioRun) -> dict[str, tuple[float, float]]:
    """Fault name -> (start, end) in seconds, from the history's fault records."""
    starts: dict[str, int] = {}
    out: dict[str, tuple[float, float]] = {}
    for rec in run.history():
        if rec.kind is not Kind.FAULT or rec.name is None:
            continue
        if rec.phase == "start":
            starts[rec.name] = rec.mono_ns
        elif rec.phase == "end" and rec.name in starts:
            out[rec.name] = (starts[rec.name] / 1e9, rec.mono_ns / 1e9)
    return out


@pytest.mark.chaos
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_schedule(chaos_run: Any, spec: ScenarioSpec) -> None:
    """Both windows recorded with the spec's times; the run ends as declared."""
    run: ScenarioRun = chaos_run(spec)
    result = run.result
    assert result.verdict == spec.expect, [i.problems for i in result.invariants]
    windows = _windows(run)
    pause, cut = windows["pause_worker"], windows["partition_blackhole"]
    assert abs((pause[1] - pause[0]) - 4) <= SLACK_S, pause
    assert abs((cut[1] - cut[0]) - 5) <= SLACK_S, cut
    # The partition began 1 s into the pause, while it was open, and outlived it.
    assert abs((cut[0] - pause[0]) - 1) <= SLACK_S, (pause, cut)
    assert pause[0] < cut[0] < pause[1] < cut[1]
    assert result.queue is not None and result.queue.counts.lost == 0
    resume = run.invariant("workers_resume_consuming")
    assert set(resume.summary["resume_s"]) == set(run.scenario.workers), resume.summary
    # The report lists both faults (the timeline shades their windows).
    assert set(result.faults) >= {"pause_worker", "partition_blackhole"}
    steps = {s["step"]: s for s in result.metrics["schedule"]}
    assert steps["partition"]["start_s"] - steps["pause"]["start_s"] >= 1 - SLACK_S
    assert Path(run.scenario.dir, "spec.json").is_file()
