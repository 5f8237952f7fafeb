"""Latency on every broker link (200 ms ± 50 ms): slower, but nothing is lost.

The spec is in ``harness/catalog/latency.yaml``: one RabbitMQ deployment runs a baseline
load with no toxic, then the same load with a ``latency`` toxic on every ``*-broker`` link
(workers' and publisher's, both directions). This file adds throughput and end-to-end
latency (publish ``invoke`` to completion) for both phases to the result, and publish
latency (confirms wait a round trip), then asserts the toxic really was on the path.
Measured figures are in docs/network.md.
"""

from __future__ import annotations

from typing import Any

import pytest

from celery_chaos.checks.liveness import end_to_end_latencies, percentiles
from celery_chaos.faults.vocabulary import Latency, Load
from celery_chaos.history.schema import Kind, Record
from celery_chaos.history.store import History
from celery_chaos.runner.catalog import specs
from celery_chaos.runner.run import ScenarioRun
from celery_chaos.spec.model import ScenarioSpec

SPECS = specs("latency")


def _phase(records: list[Record], since: int, until: int) -> dict[str, Any]:
    """Throughput and latencies of the tasks published in ``[since, until)``."""
    e2e = [ns / 1e6 for ns in end_to_end_latencies(History(records=records), since, until)]
    ids = {r.task_id for r in records if r.kind is Kind.INVOKE and since <= r.mono_ns < until}
    done = sorted(r.mono_ns for r in records if r.kind is Kind.SUCCEEDED and r.task_id in ids)
    publish = [
        r.latency_ns / 1e6
        for r in records
        if r.kind is Kind.OK and r.task_id in ids and r.latency_ns is not None
    ]
    span = (done[-1] - done[0]) / 1e9 if len(done) > 1 else 0.0
    return {
        "tasks": len(ids),
        "completed": len(done),
        "throughput_per_s": round((len(done) - 1) / span, 2) if span else None,
        "end_to_end_ms": {k: round(v, 1) for k, v in percentiles(e2e).items()},
        "publish_ms": {k: round(v, 1) for k, v in percentiles(publish).items()},
    }


@pytest.mark.chaos
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_latency(chaos_run, spec: ScenarioSpec) -> None:  # type: ignore[no-untyped-def]
    """200 ± 50 ms on every broker link: valid, nothing lost; figures in the result."""
    run: ScenarioRun = chaos_run(spec)
    steps = {s.id: s.do for s in spec.schedule.steps}
    toxic, baseline_load, slow_load = steps["toxic"], steps["baseline"], steps["slow_load"]
    assert isinstance(toxic, Latency)
    assert isinstance(baseline_load, Load) and isinstance(slow_load, Load)
    latency_ms, jitter_ms = toxic.ms, toxic.jitter
    records = run.history()
    win = run.window("toxic")
    assert win.start_ns is not None and win.end_ns is not None, win
    base = _phase(records, records[0].mono_ns, win.start_ns)
    slow = _phase(records, win.start_ns, win.end_ns)
    run.add_metrics(
        latency={
            "toxic": {"latency_ms": latency_ms, "jitter_ms": jitter_ms, "links": toxic.target()},
            "baseline": base,
            "under_toxic": slow,
        }
    )
    queue = run.result.queue
    assert queue is not None
    assert run.result.verdict == "valid", run.invariant("queue").problems
    assert queue.counts.lost == 0
    assert queue.counts.acknowledged == (baseline_load.tasks or 0) + (slow_load.tasks or 0)
    assert slow["completed"] == slow_load.tasks
    # The toxic really was on the path: publisher -> broker -> worker is two one-way trips,
    # and a confirm waits a round trip, each one-way at least latency - jitter. Bounds, not
    # a difference from the baseline: on a loaded machine the baseline's own p50 (queueing
    # behind running tasks) reached 163 ms, against ~30 ms on a quiet one.
    floor = 2 * (latency_ms - jitter_ms)
    assert slow["end_to_end_ms"]["p50"] >= floor, (base, slow)
    assert slow["publish_ms"]["p50"] >= floor, (base, slow)
    assert base["publish_ms"]["p50"] < latency_ms - jitter_ms, (base, slow)
