"""Broker restarts and persistence (failure modes 16, 19, 24): do queued tasks survive?

Tasks are queued with no worker consuming, the broker is SIGKILLed and started again on
the same data directory, then a worker drains whatever survived. Measured on RabbitMQ
3.10 / Redis 7.0 with Celery 5.7.0 (see docs/invariants.md):

- RabbitMQ, durable queues and persistent messages (Celery's defaults), publisher
  confirms: every task survives the crash; transient messages (the negative control) are
  all gone;
- Redis ``--save '' --appendonly no``: everything queued is lost (negative control);
  ``--appendonly yes --appendfsync always``: nothing is;
- RabbitMQ crashed mid-burst with publisher confirms: no confirmed publish is lost
  (publishes during the outage end ``fail``/``info``, never ``ok``).

The RabbitMQ scenarios use a node private to this module (one start for all of them), so
restarting it never disturbs the session's shared node.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from harness.deployment.processes import wait_for
from harness.history.schema import Kind
from harness.load.workload import parse_workload
from harness.scenario import Scenario, SharedBrokers
from sample_app.chaos_tasks import NAP

QUEUED = 50
CONFIRMS = {"broker_transport_options": {"confirm_publish": True}}


@pytest.fixture(scope="module")
def private_brokers(chaos_session: Any) -> Iterator[SharedBrokers]:
    """A RabbitMQ node (and result Redis) for this module only, stopped after its last test."""
    brokers = SharedBrokers(chaos_session.ensure_run_dir() / "private-brokers")
    try:
        yield brokers
    finally:
        brokers.close()


def queue_then_restart(chaos: Scenario) -> list[str]:
    """Queue QUEUED naps with no worker, crash and restart the broker, then start w1."""
    ids = chaos.publish(NAP, 0, count=QUEUED)
    ready, _ = chaos.queue_depths()["default"]
    assert ready == QUEUED, f"{ready} of {QUEUED} tasks queued before the crash"
    chaos.faults.restart_broker(chaos.broker, crash=True)
    chaos.add_worker("w1@chaos")
    return ids


@pytest.mark.chaos
@pytest.mark.parametrize(
    ("delivery", "expect"), [("persistent", "valid"), ("transient", "invalid")]
)
def test_rabbitmq_restart_with_queued_tasks(
    chaos: Scenario, private_brokers: SharedBrokers, delivery: str, expect: str
) -> None:
    """Durable queue, persistent messages: a RabbitMQ crash loses nothing; transient: all."""
    chaos.brokers = private_brokers
    settings = {**CONFIRMS, "task_default_delivery_mode": delivery}
    chaos.deploy("rabbitmq", workers=0, settings=settings, expect=expect)  # type: ignore[arg-type]
    ids = queue_then_restart(chaos)
    result = chaos.check(drain_timeout=30, settle=1.0)
    queue = result.invariants[0].summary
    assert result.verdict == expect, result.invariants[0].problems
    if expect == "valid":
        assert queue["counts"]["succeeded"] == QUEUED and queue["counts"]["lost"] == 0
    else:
        assert sorted(ids) == queue["lost"]  # measured: every transient message is gone


@pytest.mark.chaos
@pytest.mark.parametrize(("persistence", "expect"), [("none", "invalid"), ("aof-always", "valid")])
def test_redis_restart_with_queued_tasks(chaos: Scenario, persistence: str, expect: str) -> None:
    """Redis without persistence loses every queued task on a crash; AOF always, none."""
    chaos.deploy("redis", workers=0, redis_persistence=persistence, expect=expect)  # type: ignore[arg-type]
    ids = queue_then_restart(chaos)
    result = chaos.check(drain_timeout=30, settle=1.0)
    queue = result.invariants[0].summary
    assert result.verdict == expect, result.invariants[0].problems
    if expect == "valid":
        assert queue["counts"]["succeeded"] == QUEUED and queue["counts"]["lost"] == 0
    else:
        assert queue["counts"]["lost"] > 0
        assert sorted(ids) == queue["lost"]  # measured: all of them


@pytest.mark.chaos
def test_rabbitmq_crash_during_publish_burst_with_confirms(
    chaos: Scenario, private_brokers: SharedBrokers
) -> None:
    """Publisher confirms: a broker crash mid-burst loses no confirmed publish."""
    chaos.brokers = private_brokers
    chaos.deploy("rabbitmq", workers=0, settings=CONFIRMS)
    workload = parse_workload([{"name": NAP, "args": [0]}])
    load = chaos.load(tasks=400, rate=100, users=4, workload=workload)

    def oks() -> int:
        return sum(1 for r in chaos.history() if r.kind is Kind.OK)

    assert wait_for(lambda: oks() >= 60, 60), "the burst never started"
    chaos.faults.restart_broker(chaos.broker, crash=True)
    load.wait()
    chaos.add_worker("w1@chaos")
    result = chaos.check(drain_timeout=60)
    queue = result.invariants[0].summary
    assert result.verdict == "valid", result.invariants[0].problems
    assert queue["counts"]["lost"] == 0
    fault = next(r for r in chaos.history() if r.kind is Kind.FAULT and r.phase == "start")
    end = next(r for r in chaos.history() if r.kind is Kind.FAULT and r.phase == "end")
    outcomes = [r for r in chaos.history() if r.kind in (Kind.OK, Kind.FAIL, Kind.INFO)]
    before = sum(1 for r in outcomes if r.kind is Kind.OK and r.mono_ns < fault.mono_ns)
    after = sum(1 for r in outcomes if r.kind is Kind.OK and r.mono_ns > end.mono_ns)
    failed = sum(1 for r in outcomes if r.kind is not Kind.OK)
    chaos.result.metrics["burst"] = {"ok_before": before, "ok_after": after, "not_ok": failed}
    chaos.save()
    assert before >= 60 and after >= 1  # the crash landed inside the burst
    assert queue["counts"]["acknowledged"] == before + after + sum(
        1 for r in outcomes if r.kind is Kind.OK and fault.mono_ns <= r.mono_ns <= end.mono_ns
    )
