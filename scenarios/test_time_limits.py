"""Hung tasks and time limits (failure modes 11-13): does anything keep a worker from hanging?

The specs are in ``harness/catalog/time_limits.yaml``; this file runs each one and asserts
what is specific to it. The "no hung task" invariant (``celery_chaos.checks.hung``) flags every run
that stayed open longer than ``BOUND`` s: the hard limit plus a margin for the pool's timeout
thread and a busy machine. Measured on Celery 5.7.0 / billiard 4.3.2 (see docs/invariants.md):

- prefork, soft < hard: ``SoftTimeLimitExceeded`` is raised in the task at the soft limit
  (one ``failed`` record from the pool child); at the hard limit the worker's main process
  records ``TimeLimitExceeded`` (task_failure fires twice there), SIGTERMs then SIGKILLs
  the child and forks a new one; the rest of the load keeps running;
- a SIGSTOPped pool child is ended the same way at the hard limit (SIGKILL works on a
  stopped process), its task failed with ``TimeLimitExceeded``;
- without limits, a hung task and a stopped child stay open forever: flagged by id;
- the threads and solo pools ignore both limits, and log nothing about it.

Every scenario runs on a private Redis broker (cheap to start); limits are broker-agnostic.
The negative controls need no kill after the check: teardown stops workers with a short
grace, then kills them.
"""

from __future__ import annotations

import psutil
import pytest

from celery_chaos.checks.hung import HungSummary
from celery_chaos.history.schema import Kind, Record
from celery_chaos.runner.catalog import specs
from celery_chaos.runner.run import ScenarioRun
from celery_chaos.spec.model import ScenarioSpec

SPECS = specs("time_limits")
SOFT, HARD = 1, 2
#: A run open longer than this is hung: the hard limit plus 3 s of slack (the specs' bound_s).
BOUND = HARD + 3.0


def _records(run: ScenarioRun, task_id: str, kind: Kind) -> list[Record]:
    return [r for r in run.history() if r.task_id == task_id and r.kind is kind]


def _task(run: ScenarioRun, step: str) -> str:
    """The one task a ``publish`` step published."""
    (task_id,) = run.window(step).task_ids
    return task_id


def _hung(run: ScenarioRun) -> HungSummary:
    return run.invariant("no_hung_task").summary_as(HungSummary)


def _prefork_limits_end_hung_tasks(run: ScenarioRun) -> None:
    """Soft, hard and frozen runs end as measured; replacement children run the rest."""
    result = run.result
    assert result.verdict == "valid", [i.problems for i in result.invariants]
    started = next(r for r in run.history()
                   if r.kind is Kind.DEPLOYMENT and r.name == "worker_started")
    worker_pid, first_children = started.detail["pid"], set(started.detail["children"])
    soft, hard, frozen = (_task(run, s) for s in ("soft", "hard", "frozen"))
    (soft_fail,) = _records(run, soft, Kind.FAILED)
    assert soft_fail.exc_type == "SoftTimeLimitExceeded"
    assert soft_fail.pid != soft_fail.worker_pid  # raised inside the pool child
    hard_counts = {}
    for tid in (hard, frozen):
        fails = _records(run, tid, Kind.FAILED)
        assert {f.exc_type for f in fails} == {"TimeLimitExceeded"}
        assert all(f.pid == worker_pid for f in fails)  # recorded by the main process
        (start,) = _records(run, tid, Kind.STARTED)
        assert fails[0].mono_ns - start.mono_ns >= HARD * 1e9 * 0.95
        hard_counts[tid] = len(fails)
    run.add_metrics(hard_limit_failure_records=hard_counts)
    stopped_pid = run.window("freeze").detail["pid"]
    assert not psutil.pid_exists(stopped_pid) or psutil.Process(stopped_pid).status() == "zombie"
    # The rest of the load ran, partly on children forked to replace the killed ones.
    after = run.window("after").task_ids
    for tid in after:
        assert len(_records(run, tid, Kind.SUCCEEDED)) == 1
    ran_on = {r.pid for tid in after for r in _records(run, tid, Kind.STARTED)}
    assert ran_on - first_children, "no replacement child ran anything"
    hung = _hung(run)
    assert hung.hung == {} and hung.longest_run_s <= BOUND


def _no_limit_leaves_hung_tasks(run: ScenarioRun) -> None:
    """The blocked task and the frozen child's task are flagged, by id."""
    assert run.result.verdict == "invalid"
    inv = run.invariant("no_hung_task")
    assert inv.verdict == "invalid"
    blocked, frozen = _task(run, "blocked"), _task(run, "frozen")
    hung = _hung(run)
    assert set(hung.hung) == {blocked, frozen}
    assert all(s > BOUND for s in hung.hung.values())
    assert any(blocked in p for p in inv.problems) and any(frozen in p for p in inv.problems)


def _limits_ignored(run: ScenarioRun) -> None:
    """Neither limit fires on threads/solo, and the worker log says nothing about them."""
    pool = run.spec.deployment.pool
    assert run.result.verdict == "invalid"
    hung_id = _task(run, "hung")
    hung = _hung(run)
    assert list(hung.hung) == [hung_id] and hung.hung[hung_id] > BOUND
    fired = _records(run, hung_id, Kind.FAILED)
    log = run.scenario.worker_log("w1@chaos").lower()
    logged = "time limit" in log or "time_limit" in log
    run.add_metrics(time_limits={
        "pool": pool,
        "soft_s": SOFT,
        "hard_s": HARD,
        "fired": bool(fired),
        "worker_log_mentions_limits": logged,
        "finding": (
            f"task_time_limit and task_soft_time_limit are silently ignored by -P {pool}"
            if not fired and not logged
            else f"a time limit fired or was logged on -P {pool}"
        ),
    })
    assert fired == []  # neither limit fired
    assert not logged  # and the worker said nothing about it


@pytest.mark.chaos
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_time_limits(chaos_run, spec: ScenarioSpec) -> None:  # type: ignore[no-untyped-def]
    """Each catalog spec of the family ends as declared, for the reason it claims."""
    run: ScenarioRun = chaos_run(spec)
    assert run.result.verdict == spec.expect, [i.problems for i in run.result.invariants]
    if spec.name == "prefork_time_limits_end_hung_tasks":
        _prefork_limits_end_hung_tasks(run)
    elif spec.name == "no_time_limit_leaves_hung_tasks":
        _no_limit_leaves_hung_tasks(run)
    else:
        _limits_ignored(run)
