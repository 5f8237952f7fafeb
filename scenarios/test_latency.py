"""Latency on every broker link (200 ms ± 50 ms): slower, but nothing is lost.

One RabbitMQ deployment runs a baseline load with no toxic, then the same load with a
``latency`` toxic on every ``*-broker`` link (workers' and publisher's, both directions).
The result carries throughput and end-to-end latency (publish ``invoke`` to completion)
for both phases, and publish latency (confirms wait a round trip). Measured figures are in
docs/network.md.
"""

from __future__ import annotations

from typing import Any

import pytest

from harness.checks.liveness import end_to_end_latencies, percentiles
from harness.checks.queue import is_completion
from harness.deployment.processes import wait_for
from harness.history.schema import Kind, Record
from harness.history.store import History, read_history
from harness.scenario import Scenario

LATENCY_MS, JITTER_MS = 200, 50
RATE, BASELINE_TASKS, TOXIC_TASKS = 10.0, 30, 60
SETTINGS = {"task_acks_late": True, "broker_transport_options": {"confirm_publish": True}}
#: Confirms wait a round trip (~400 ms): enough users to keep the rate.
USERS = 8


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


def _all_completed(chaos: Scenario) -> bool:
    records = chaos.history()
    acked = {r.task_id for r in records if r.kind is Kind.OK}
    return acked <= {r.task_id for r in records if is_completion(r)}


@pytest.mark.chaos
def test_rabbitmq_latency_on_broker_links(chaos: Scenario) -> None:
    """200 ± 50 ms on every broker link: valid, nothing lost; figures in the result."""
    chaos.deploy("rabbitmq", proxied=True, settings=SETTINGS)
    chaos.load(tasks=BASELINE_TASKS, rate=RATE, users=USERS).wait()
    assert chaos.net is not None
    chaos.net.latency("*-broker", LATENCY_MS, JITTER_MS)
    chaos.load(tasks=TOXIC_TASKS, rate=RATE, users=USERS, seed=1).wait()
    wait_for(lambda: _all_completed(chaos), 30)  # every task ran under the toxic
    chaos.net.heal()
    result = chaos.check()
    records = read_history(chaos.history_dir).records
    start, end = (r.mono_ns for r in records if r.kind is Kind.FAULT)
    base = _phase(records, records[0].mono_ns, start)
    slow = _phase(records, start, end)
    chaos.result.metrics["latency"] = {
        "toxic": {"latency_ms": LATENCY_MS, "jitter_ms": JITTER_MS, "links": "*-broker"},
        "baseline": base,
        "under_toxic": slow,
    }
    chaos.save()
    queue = result.invariants[0].summary
    assert result.verdict == "valid", result.invariants[0].problems
    assert queue["counts"]["lost"] == 0
    assert queue["counts"]["acknowledged"] == BASELINE_TASKS + TOXIC_TASKS
    assert slow["completed"] == TOXIC_TASKS
    # The toxic really was on the path: publisher -> broker -> worker is two one-way trips,
    # and a confirm waits a round trip, each one-way at least LATENCY_MS - JITTER_MS. Bounds,
    # not a difference from the baseline: on a loaded machine the baseline's own p50 (queueing
    # behind running tasks) reached 163 ms, against ~30 ms on a quiet one.
    floor = 2 * (LATENCY_MS - JITTER_MS)
    assert slow["end_to_end_ms"]["p50"] >= floor, (base, slow)
    assert slow["publish_ms"]["p50"] >= floor, (base, slow)
    assert base["publish_ms"]["p50"] < LATENCY_MS - JITTER_MS, (base, slow)
