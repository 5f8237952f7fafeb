"""Rejected messages (failure mode 35): a task the worker cannot run is lost to the sender.

The specs are in ``harness/catalog/rejections.yaml``; this file runs each one and asserts
what is specific to it. Measured on Celery 5.7.0 / kombu 5.7.0 (Redis broker): a worker that
does not register a task name logs "Received unregistered task", rejects the message without
requeue and fires ``task_unknown`` (recorded ``rejected``, reason ``unknown task``, with no
``received`` first); a body in a serializer outside ``accept_content`` is rejected the same
way with ``task_rejected`` (``ContentDisallowed``). Neither comes back: the queue invariant
counts them ``rejected_lost`` and names them. Published by a worker-first deploy, the same
tasks run and the scenario is valid.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from celery_chaos.history.schema import Kind, Record
from celery_chaos.runner.catalog import specs
from celery_chaos.runner.run import ScenarioRun
from celery_chaos.spec.model import ScenarioSpec

SPECS = specs("rejections")
#: What Celery 5.7 logs after it rejects a message it cannot run.
DISCARDED = "The message has been ignored and discarded."


def _records(run: ScenarioRun, ids: set[str]) -> list[Record]:
    return [r for r in run.history() if r.task_id in ids and r.role == "worker"]


def _rejected_and_lost(run: ScenarioRun, step: str) -> tuple[list[str], list[Record]]:
    """The step's tasks: each rejected once, never run, lost; the rest of the load is not."""
    ids = run.window(step).task_ids
    assert len(ids) == 3
    queue = run.result.queue
    assert queue is not None and run.invariant("queue").verdict == "invalid"
    assert run.result.verdict == "invalid"
    assert queue.drain == "complete"
    # Exactly the published ones are lost, as rejected: the load around them lost nothing.
    assert queue.rejected_lost == queue.lost == queue.rejected == sorted(ids)
    assert queue.lost_worker_lost == [] and queue.counts.completed == queue.counts.acknowledged - 3
    recs = _records(run, set(ids))
    assert [r.kind for r in recs] == [Kind.REJECTED] * 3, recs  # no start, no redelivery
    assert {r.task_id for r in recs} == set(ids)
    return sorted(ids), recs


def _unregistered(run: ScenarioRun) -> None:
    ids, recs = _rejected_and_lost(run, "new_task")
    assert {r.reason for r in recs} == {"unknown task"}
    assert {r.task_name for r in recs} == {"celery_chaos.sample_app.tasks.not_deployed_yet"}
    problems = run.invariant("queue").problems
    hosts = sorted({r.host for r in recs})
    for host in hosts:  # one line per worker that received some: "not registered there"
        mine = sorted(r.task_id for r in recs if r.host == host)
        line = (f"{len(mine)} of the lost tasks were received by {host} but not registered there "
                f"(celery_chaos.sample_app.tasks.not_deployed_yet: a rolling deploy?), so rejected "
                f"without requeue: {', '.join(mine)}")
        assert line in problems, problems
    for host in hosts:
        log = run.scenario.worker_log(host)
        assert ("Received unregistered task of type "
                "'celery_chaos.sample_app.tasks.not_deployed_yet'.\n"
                f"{DISCARDED}") in log, host


def _undecodable(run: ScenarioRun) -> None:
    ids, recs = _rejected_and_lost(run, "pickled")
    assert {r.exc_type for r in recs} == {"ContentDisallowed"}
    assert all("application/x-python-serialize" in (r.exc_message or "") for r in recs), recs
    lines = [p for p in run.invariant("queue").problems
             if "without requeue (celery_chaos.sample_app.chaos_tasks.nap: ContentDisallowed" in p]
    assert all(any(t in line for line in lines) for t in ids), lines
    for host in sorted({r.host for r in recs}):
        log = run.scenario.worker_log(host)
        assert ("Received invalid task message: Refusing to deserialize untrusted content of "
                f"type pickle (application/x-python-serialize)\n{DISCARDED}") in log, host


def _workers_first(run: ScenarioRun) -> None:
    queue = run.result.queue
    assert run.result.verdict == "valid", run.invariant("queue").problems
    assert queue is not None and queue.counts.lost == 0 and queue.rejected == []
    ids = set(run.window("new_task").task_ids)
    assert len(ids) == 3
    done = {r.task_id for r in _records(run, ids) if r.kind is Kind.SUCCEEDED}
    assert done == ids


CHECKS: dict[str, Callable[[ScenarioRun], None]] = {
    "rolling_deploy_unregistered_task_is_lost": _unregistered,
    "rolling_deploy_workers_first_loses_nothing": _workers_first,
    "undecodable_message_is_lost": _undecodable,
}


@pytest.mark.chaos
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_rejections(chaos_run, spec: ScenarioSpec) -> None:  # type: ignore[no-untyped-def]
    """Each catalog spec of the family ends as declared, for the reason it claims."""
    run: ScenarioRun = chaos_run(spec)
    assert run.result.verdict == spec.expect, [i.problems for i in run.result.invariants]
    CHECKS[spec.name](run)
