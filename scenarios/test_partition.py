"""Network partitions (failure modes 16, 17, 19, 22, 26) through the per-link proxies.

Every link of the deployment goes through its own proxy (``deploy(proxied=True)``) and a
partition is a ``timeout`` toxic (blackhole: data dropped, connections left open). Healing
removes the toxic, which closes the links it held (Toxiproxy's behaviour), so clients see
the connection drop at the heal at the latest. Measured on RabbitMQ 3.10 / Redis 7.0 with
Celery 5.7.0, kombu 5.7.0, py-amqp 5.4.2 (docs/network.md):

- RabbitMQ, ``broker_heartbeat=4``: workers notice a blackhole after ~9 s (missed
  heartbeats, then RabbitMQ closes the link), retry, and consume again within ~1 s of the
  heal; acks_late tasks lose nothing (a few run twice);
- Redis, workers' links: the message a pending BRPOP pops while the link is blackholed is
  lost (one per consuming connection), with or without socket timeouts: acks_late cannot
  help, kombu records the unacked entry only when the reply arrives. Workers notice nothing
  during the partition (socket timeouts do not apply to the event loop) and resume at once;
- Redis, the publisher's link: without socket timeouts every publish blocks until the heal
  (forever on a link that never closes); with them it fails in 1-3 s (``info``);
- RabbitMQ, the publisher's link: without confirms every publish "succeeds" into the dead
  link and is lost; with confirms, a per-publish ``confirm_timeout`` and a short retry
  policy, publishes fail in 1-3 s (``info``), none is lost.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from celery import Celery

from harness.checks.liveness import heal_to_full_throughput, publish_bounded, resume_consuming
from harness.deployment.app_loader import merge_settings
from harness.deployment.processes import wait_for
from harness.history.schema import Kind
from harness.history.store import read_history
from harness.load.publisher import PUBLISH_OPTIONS_ENV
from harness.scenario import Scenario

RATE = 10.0
#: How long a live worker may leave ready messages alone after a heal. RabbitMQ workers
#: retry every 2, 4, 6... s (4 s connect timeout each); measured resume <= 1 s.
RESUME_BOUND_S = 10.0
#: RabbitMQ: heartbeats every 4 s, so a dead link is noticed in ~8-10 s.
HEARTBEAT = {"broker_heartbeat": 4}
CONFIRMS = {"broker_transport_options": {"confirm_publish": True}}
ACKS_LATE = {"task_acks_late": True}
#: Redis socket timeouts (failure mode 26), at a timing knob's scale (production: ~5 s).
REDIS_TIMEOUTS = {
    "broker_transport_options": {
        "socket_timeout": 1,
        "socket_connect_timeout": 1,
        "socket_keepalive": True,
    }
}
#: Redis: messages left in ``unacked`` by a cut link come back after 6 s, not an hour.
REDIS_FAST_RESTORE = {
    "broker_transport_options": {
        "visibility_timeout": 6,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }
}
#: One quick retry per publish (Celery's default: 3 retries, each a timeout long).
SHORT_PUBLISH_RETRY = {
    "task_publish_retry_policy": {
        "max_retries": 1,
        "interval_start": 0,
        "interval_step": 0.2,
        "interval_max": 0.2,
    }
}
#: A publish (including its retries) must end within this, partition or not.
PUBLISH_BOUND_S = 6.0


def _wait_for_a_gap(chaos: Scenario, quiet_s: float = 0.1) -> None:
    """Wait until no publisher or worker has written for ``quiet_s``: between two bursts of
    the load (the users publish together every 1/RATE x users s), workers are idle and each
    has a BRPOP pending at the broker."""

    def quiet() -> bool:
        recs = chaos.history()
        last = max(r.mono_ns for r in recs if r.role in ("worker", "publisher"))
        return time.monotonic_ns() - last >= quiet_s * 1e9

    assert wait_for(quiet, 10, interval=0.01), "the load never paused"


def _partition_under_load(
    chaos: Scenario,
    targets: str,
    *,
    before: float,
    during: float,
    after: float,
    in_a_gap: bool = False,
) -> None:
    """Load at RATE for the whole window; blackhole ``targets`` after ``before`` s (then at
    the next gap in the load, with ``in_a_gap``)."""
    chaos.load(tasks=int((before + during + after) * RATE), rate=RATE)
    time.sleep(before)
    if in_a_gap:
        _wait_for_a_gap(chaos)
    assert chaos.net is not None
    chaos.net.partition(targets, "blackhole")
    time.sleep(during)
    chaos.net.heal()


def _invariant(result: Any, name: str) -> Any:
    return next(i for i in result.invariants if i.name == name)


def _publishes_in_fault(chaos: Scenario) -> dict[str, int]:
    """Publish outcomes recorded between the fault's start and its end (+1 s)."""
    recs = chaos.history()
    start = next(r.mono_ns for r in recs if r.kind is Kind.FAULT and r.phase == "start")
    end = next(r.mono_ns for r in recs if r.kind is Kind.FAULT and r.phase == "end")
    out: dict[str, int] = {}
    for r in recs:
        if r.kind in (Kind.OK, Kind.FAIL, Kind.INFO) and start <= r.mono_ns <= end + 10**9:
            out[r.kind.value] = out.get(r.kind.value, 0) + 1
    return out


# -- workers' links ------------------------------------------------------------------------


@pytest.mark.chaos
def test_rabbitmq_partition_workers_resume(chaos: Scenario) -> None:
    """RabbitMQ, short heartbeat: a 15 s blackhole of every worker's link loses nothing."""
    chaos.deploy("rabbitmq", proxied=True, settings=merge_settings(ACKS_LATE, HEARTBEAT, CONFIRMS))
    # 15 s: well past the ~9 s a heartbeat needs to notice. The load goes on for the resume bound
    # after the heal: a worker whose reconnect back-off (2, 4, 6... s) ends after the others
    # drained the backlog still gets work, so the history shows every worker resume.
    before, during, after = 2, 15, RESUME_BOUND_S
    _partition_under_load(chaos, "w*-broker", before=before, during=during, after=after)
    result = chaos.check(invariants=[resume_consuming(RESUME_BOUND_S)])
    recovery = heal_to_full_throughput(read_history(chaos.history_dir))
    chaos.result.metrics["throughput_recovery"] = recovery.model_dump(mode="json")
    chaos.save()
    queue = result.invariants[0].summary
    assert result.verdict == "valid", [i.problems for i in result.invariants]
    assert queue["counts"]["lost"] == 0
    assert queue["counts"]["acknowledged"] == int((before + during + after) * RATE)
    resume = _invariant(result, "workers_resume_consuming").summary
    # The history shows every worker consuming again after the heal.
    assert set(resume["resume_s"]) == set(chaos.workers), resume["resume_s"]
    assert all(s is not None and s <= RESUME_BOUND_S for s in resume["resume_s"].values())
    assert recovery.heal_to_full_s is not None, recovery


@pytest.mark.chaos
@pytest.mark.parametrize("timeouts", ["socket-timeouts", "no-timeouts"])
def test_redis_worker_partition_loses_the_brpop_in_flight(chaos: Scenario, timeouts: str) -> None:
    """Redis: a blackhole of the workers' links loses the message each pending BRPOP popped.

    Workers resume right after the heal (the invariant holds); the queue invariant flags
    the loss, which neither socket timeouts (failure mode 26: measured both ways, every run)
    nor acks_late prevent. The cut is timed from the history, in a gap of the load, so that
    every worker has a BRPOP pending: cut right after a burst, a worker's next BRPOP is
    dropped before reaching Redis and nothing is lost.
    """
    settings = merge_settings(ACKS_LATE, REDIS_FAST_RESTORE)
    if timeouts == "socket-timeouts":
        settings = merge_settings(settings, REDIS_TIMEOUTS)
    chaos.deploy("redis", proxied=True, settings=settings, expect="invalid")
    _partition_under_load(chaos, "w*-broker", before=2, during=4, after=2, in_a_gap=True)
    result = chaos.check(invariants=[resume_consuming(RESUME_BOUND_S)], drain_timeout=20)
    queue = result.invariants[0].summary
    resume = _invariant(result, "workers_resume_consuming")
    assert resume.verdict == "valid", resume.problems
    assert all(s is not None for s in resume.summary["resume_s"].values())
    assert result.verdict == "invalid"
    assert 1 <= queue["counts"]["lost"] <= len(chaos.workers), queue["lost"]
    # Each lost message was popped by Redis and never reached a worker.
    received = {r.task_id for r in chaos.history() if r.kind is Kind.RECEIVED}
    assert not set(queue["lost"]) & received


def _cancel_consumers(chaos: Scenario) -> None:
    """Make every worker stop consuming, as a worker that reconnects but never consumes
    again (celery/celery#8030, #10205) does; the harness talks to the broker directly."""
    app = Celery("chaos-control", broker=chaos.broker_url, set_as_current=False)
    try:
        names = list(chaos.workers)
        for queue in chaos.app.queues:
            app.control.cancel_consumer(queue, destination=names, reply=True, timeout=2)
    finally:
        app.close()


@pytest.mark.chaos
def test_worker_that_never_resumes_is_flagged(chaos: Scenario) -> None:
    """Negative control: workers that stop consuming after a heal are flagged by the bound."""
    chaos.deploy(
        "rabbitmq",
        proxied=True,
        workers=1,
        settings=merge_settings(ACKS_LATE, HEARTBEAT, CONFIRMS),
        expect="invalid",
    )
    chaos.load(tasks=int(RATE * 9), rate=RATE)
    time.sleep(2)
    assert chaos.net is not None
    with chaos.net.partitioned("w*-broker"):
        time.sleep(2)

    def consumed_since_heal() -> bool:
        recs = chaos.history()
        heal = max(r.mono_ns for r in recs if r.kind is Kind.FAULT)
        return any(r.kind is Kind.RECEIVED and r.mono_ns > heal for r in recs)

    assert wait_for(consumed_since_heal, 15), "the worker never consumed after the heal"
    _cancel_consumers(chaos)
    # Observe past the bound: the drain waits for the queue to empty, which never happens.
    result = chaos.check(
        invariants=[resume_consuming(RESUME_BOUND_S)], drain_timeout=RESUME_BOUND_S + 1
    )
    resume = _invariant(result, "workers_resume_consuming")
    assert result.verdict == "invalid"
    assert resume.verdict == "invalid", resume.summary
    assert any("w1@chaos idle for" in p for p in resume.problems), resume.problems


# -- the publisher's link ------------------------------------------------------------------


@pytest.mark.chaos
@pytest.mark.parametrize(
    ("timeouts", "expect"), [("socket-timeouts", "valid"), ("no-timeouts", "invalid")]
)
def test_redis_publisher_partition(chaos: Scenario, timeouts: str, expect: str) -> None:
    """Redis: with socket timeouts a blackholed publisher fails fast; without, it hangs."""
    settings = merge_settings(ACKS_LATE, SHORT_PUBLISH_RETRY)
    if timeouts == "socket-timeouts":
        settings = merge_settings(settings, REDIS_TIMEOUTS)
    chaos.deploy("redis", proxied=True, workers=1, settings=settings, expect=expect)  # type: ignore[arg-type]
    _partition_under_load(chaos, "publisher-broker", before=2, during=8, after=2)
    result = chaos.check(invariants=[publish_bounded(PUBLISH_BOUND_S)], drain_timeout=20)
    queue = result.invariants[0].summary
    bounded = _invariant(result, "publish_bounded")
    chaos.result.metrics["publishes_in_fault"] = _publishes_in_fault(chaos)
    chaos.save()
    assert queue["counts"]["lost"] == 0  # measured: a blackholed LPUSH never runs
    assert result.verdict == expect, [i.problems for i in result.invariants]
    if expect == "valid":
        assert bounded.summary["outcomes"].get("info", 0) >= 1  # failed fast, not "ok"
    else:  # every publisher blocked until the heal closed its link
        assert bounded.summary["longest_s"] >= 7, bounded.summary


@pytest.mark.chaos
@pytest.mark.parametrize(("confirms", "expect"), [("confirms", "valid"), ("none", "invalid")])
def test_rabbitmq_publisher_partition(chaos: Scenario, confirms: str, expect: str) -> None:
    """RabbitMQ: confirms + confirm_timeout fail fast and lose nothing; without, publishes
    into the blackholed link "succeed" and vanish."""
    settings = merge_settings(ACKS_LATE, SHORT_PUBLISH_RETRY, {"broker_connection_timeout": 1})
    env: dict[str, str] = {}
    if confirms == "confirms":
        settings = merge_settings(settings, CONFIRMS)
        env[PUBLISH_OPTIONS_ENV] = json.dumps({"confirm_timeout": 1})
    chaos.deploy(
        "rabbitmq",
        proxied=True,
        workers=1,
        settings=settings,
        env=env,
        expect=expect,  # type: ignore[arg-type]
    )
    _partition_under_load(chaos, "publisher-broker", before=2, during=5, after=2)
    result = chaos.check(invariants=[publish_bounded(PUBLISH_BOUND_S)], drain_timeout=20)
    queue = result.invariants[0].summary
    chaos.result.metrics["publishes_in_fault"] = _publishes_in_fault(chaos)
    chaos.save()
    assert result.verdict == expect, [i.problems for i in result.invariants]
    if expect == "valid":
        assert queue["counts"]["lost"] == 0
        assert queue["counts"]["indeterminate"] + queue["counts"]["publish_failed"] >= 1
        assert _invariant(result, "publish_bounded").verdict == "valid"
    else:  # measured: the publishes of the window are lost (8 to ~50: the load's pace varies)
        assert queue["counts"]["lost"] >= 1, queue["counts"]
        assert queue["counts"]["indeterminate"] == 0
