"""Duplicate execution (failure modes 27, 28, 34): does a task run twice though nothing failed?

The specs are in ``harness/catalog/duplicates.yaml``; each requires exactly once
(``checks.exactly_once``), so a second completion of one id makes the queue invariant
``invalid`` and names the id. Measured on Celery 5.7.0 / kombu 5.7.0 with Redis, a 2 s
visibility timeout and kombu's restore sweep every 1 s (docs/invariants.md, "Duplicates"):

- a message is restored to the queue (``redelivered``) 2.0-2.4 s after its delivery while
  its first run is still going: another pool child starts it again, and both runs succeed;
  nothing fails and no worker logs anything;
- a message held for its ETA (countdown 5 s) is restored 2.0-2.9 s after its delivery, then
  again 2.0-2.1 s later: each copy is held, and every copy starts at the ETA (3 runs of each
  id in 10 of 10 runs), with Celery's default ack too (an ETA message is acknowledged only
  when its run starts);
- with a visibility timeout above the run and the countdown, each task is delivered once.
"""

from __future__ import annotations

from itertools import pairwise

import pytest

from celery_chaos.history.schema import Kind, Record
from celery_chaos.runner.catalog import specs
from celery_chaos.runner.run import ScenarioRun
from celery_chaos.spec.model import ScenarioSpec

SPECS = specs("duplicates")
#: The specs' numbers: the short visibility timeout and the countdown (s).
VT, COUNTDOWN = 2.0, 5.0
#: Slack on lower bounds only: records are written a few ms after the events they record.
SLACK = 0.25


def _ids(run: ScenarioRun, step: str) -> list[str]:
    ids = run.window(step).task_ids
    assert ids, f"step {step} published nothing"
    return ids


def _records(run: ScenarioRun, task_id: str, kind: Kind) -> list[Record]:
    return sorted((r for r in run.history() if r.task_id == task_id and r.kind is kind),
                  key=lambda r: r.mono_ns)


def _published_ns(run: ScenarioRun, task_id: str) -> int:
    return _records(run, task_id, Kind.OK)[0].mono_ns


def _deliveries(run: ScenarioRun, ids: list[str]) -> dict[str, list[float]]:
    """Per id: each delivery (``received``), in seconds after its publish was acknowledged."""
    return {t: [round((r.mono_ns - _published_ns(run, t)) / 1e9, 3)
                for r in _records(run, t, Kind.RECEIVED)] for t in ids}


def _nothing_failed(run: ScenarioRun) -> None:
    """No fault was injected and no task failed: the duplicates come from the settings."""
    queue = run.result.queue
    assert queue is not None
    assert not any(r.kind in (Kind.FAULT, Kind.FAILED) for r in run.history())
    assert queue.counts.lost == 0 and queue.counts.failed == 0, queue.problems


def _redelivered_while_running(run: ScenarioRun) -> None:
    """Each nap ran twice or more: a redelivery no sooner than the visibility timeout after
    the first delivery, started while the first run was still going."""
    queue = run.result.queue
    assert queue is not None
    naps = _ids(run, "naps")
    assert set(naps) <= set(queue.duplicated), (naps, queue.duplicated)
    for t in naps:
        received = _records(run, t, Kind.RECEIVED)
        started = _records(run, t, Kind.STARTED)
        done = _records(run, t, Kind.SUCCEEDED)
        assert len(done) == queue.duplicated[t] >= 2 and len(started) == len(done)
        assert received[0].redelivered is False and all(r.redelivered for r in received[1:])
        assert (received[1].mono_ns - received[0].mono_ns) / 1e9 >= VT - SLACK, received
        assert started[1].mono_ns < done[0].mono_ns, "the second run began after the first ended"
        assert len({r.pid for r in started}) == len(started)  # different pool children
    run.add_metrics(deliveries_s=_deliveries(run, naps))


def _restored_while_held(run: ScenarioRun) -> None:
    """Each countdown task was delivered again while its worker held it for the ETA, and
    every copy ran at the ETA."""
    queue = run.result.queue
    assert queue is not None
    later = _ids(run, "later")
    assert set(later) <= set(queue.duplicated), (later, queue.duplicated)
    for t in later:
        received = _records(run, t, Kind.RECEIVED)
        started = _records(run, t, Kind.STARTED)
        assert len(started) == queue.duplicated[t] >= 2
        assert len(received) == len(started)
        # a copy came back while the first was held for its ETA, restored by the sweep
        assert received[1].mono_ns < started[0].mono_ns, (received, started)
        assert received[0].redelivered is False and all(r.redelivered for r in received[1:])
        gaps = [(b.mono_ns - a.mono_ns) / 1e9 for a, b in pairwise(received)]
        assert min(gaps) >= VT - SLACK, gaps
        first_start = (started[0].mono_ns - _published_ns(run, t)) / 1e9
        assert first_start >= COUNTDOWN - SLACK, first_start  # the countdown held
    run.add_metrics(deliveries_s=_deliveries(run, later))


def _each_once(run: ScenarioRun) -> None:
    """Every task was delivered, started and completed exactly once; the countdown held."""
    queue = run.result.queue
    assert queue is not None
    ids = _ids(run, "naps") + _ids(run, "later")
    assert queue.duplicated == {} and queue.reexecuted == {}, queue.notes
    assert queue.counts.completed == queue.counts.acknowledged == len(ids)
    for t in ids:
        assert len(_records(run, t, Kind.RECEIVED)) == 1, t
    for t in _ids(run, "later"):
        (start,) = _records(run, t, Kind.STARTED)
        assert (start.mono_ns - _published_ns(run, t)) / 1e9 >= COUNTDOWN - SLACK
    run.add_metrics(deliveries_s=_deliveries(run, ids))


def _frozen_worker_ran_them_again(run: ScenarioRun) -> None:
    """Tasks the frozen w1 held ran on w2 once restored and on w1 once thawed. (Measured too:
    w2, doing all the work meanwhile, holds prefetched tasks past the timeout, and some of
    those run twice on w2 alone.)"""
    queue = run.result.queue
    assert queue is not None and queue.duplicated, queue.notes
    both = [
        t for t in queue.duplicated
        if {r.host for r in run.history() if r.task_id == t and r.kind is Kind.SUCCEEDED}
        == {"w1@chaos", "w2@chaos"}
    ]
    assert both, queue.duplicated
    run.add_metrics(duplicated_on_both_workers=len(both), duplicated=len(queue.duplicated))


def _load_once(run: ScenarioRun) -> None:
    """Without the freeze, every task of the load completed exactly once."""
    queue = run.result.queue
    assert queue is not None and queue.duplicated == {}, queue.notes
    assert queue.counts.completed == queue.counts.acknowledged == 15


def _rabbit_frozen(run: ScenarioRun) -> None:
    """Past the heartbeat window: tasks w1 held ran on w2 after the requeue and on w1's pool
    as well. Within it: every task once, and the broker never closed w1's connection."""
    queue = run.result.queue
    assert queue is not None and queue.counts.lost == 0
    log = run.scenario.worker_log("w1@chaos")
    if run.spec.expect == "invalid":
        both = [
            t for t in queue.duplicated
            if {r.host for r in run.history() if r.task_id == t and r.kind is Kind.SUCCEEDED}
            == {"w1@chaos", "w2@chaos"}
        ]
        assert both, queue.duplicated
        assert "Connection to broker lost" in log
        run.add_metrics(duplicated_on_both_workers=len(both))
    else:
        assert not queue.duplicated and queue.counts.succeeded == 4
        assert "Connection to broker lost" not in log


def _consumer_timeout(run: ScenarioRun) -> None:
    """Too short: RabbitMQ timed the delivery out and the task ran again. Long enough: once,
    and no channel error."""
    queue = run.result.queue
    assert queue is not None
    log = run.scenario.worker_log("w1@chaos")
    if run.spec.expect == "invalid":
        assert "PRECONDITION_FAILED" in log and "delivery acknowledgement" in log
        assert queue.duplicated or queue.reexecuted, queue.notes
        starts = [r for r in run.history() if r.kind is Kind.STARTED]
        assert len(starts) >= 2, starts
    else:
        assert "PRECONDITION_FAILED" not in log
        assert queue.counts.succeeded == 1 and not queue.reexecuted


CHECKS = {
    "redis_visibility_timeout_shorter_than_task_runs_it_twice": _redelivered_while_running,
    "redis_countdown_longer_than_visibility_timeout_runs_it_again": _restored_while_held,
    "redis_visibility_timeout_above_run_and_countdown_runs_once": _each_once,
    "redis_worker_frozen_past_visibility_timeout_runs_tasks_twice": _frozen_worker_ran_them_again,
    "redis_same_load_unfrozen_runs_each_task_once": _load_once,
    "rabbitmq_worker_frozen_past_heartbeat_runs_tasks_twice": _rabbit_frozen,
    "rabbitmq_worker_frozen_within_heartbeat_runs_each_task_once": _rabbit_frozen,
    "rabbitmq_consumer_timeout_shorter_than_task_runs_it_again": _consumer_timeout,
    "rabbitmq_consumer_timeout_above_task_runs_it_once": _consumer_timeout,
}


@pytest.mark.chaos
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_duplicates(chaos_run, spec: ScenarioSpec) -> None:  # type: ignore[no-untyped-def]
    """Each catalog spec of the family ends as declared, for the reason it claims."""
    run: ScenarioRun = chaos_run(spec)
    queue = run.result.queue
    assert queue is not None and queue.exactly_once
    assert run.result.verdict == spec.expect, run.invariant("queue").problems
    if not any(step.do.category == "fault" for step in spec.schedule.steps):
        _nothing_failed(run)
    if spec.expect == "invalid":
        # the problem is the duplicates, and it names every duplicated id; besides, only a
        # drain that never ended (a task that keeps coming back: the consumer timeout loop)
        problem, *rest = run.invariant("queue").problems
        assert all(p.startswith("verdict cannot be valid") for p in rest), rest
        assert "completed more than once" in problem
        named = [t for t, n in queue.duplicated.items() if f"{t} (x{n})" in problem]
        assert len(named) == min(len(queue.duplicated), 10), problem  # 10 named, then "+N"
    CHECKS[spec.name](run)
