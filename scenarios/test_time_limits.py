"""Hung tasks and time limits (failure modes 11-13): does anything keep a worker from hanging?

The "no hung task" invariant (``harness.checks.hung``) flags every run that stayed open
longer than ``BOUND`` s: the hard limit plus a margin for the pool's timeout thread and a
busy machine. Measured on Celery 5.7.0 / billiard 4.3.2 (see docs/invariants.md):

- prefork, soft < hard: ``SoftTimeLimitExceeded`` is raised in the task at the soft limit
  (one ``failed`` record from the pool child); at the hard limit the worker's main process
  records ``TimeLimitExceeded`` (task_failure fires twice there), SIGTERMs then SIGKILLs
  the child and forks a new one; the rest of the load keeps running;
- a SIGSTOPped pool child is ended the same way at the hard limit (SIGKILL works on a
  stopped process), its task failed with ``TimeLimitExceeded``;
- without limits, a hung task and a stopped child stay open forever: flagged by id;
- the threads and solo pools ignore both limits, and log nothing about it.

Every scenario runs on a private Redis broker (cheap to start); limits are broker-agnostic.
"""

from __future__ import annotations

import os
from typing import Any

import psutil
import pytest

from harness.checks.hung import no_hung_tasks
from harness.deployment.processes import wait_for
from harness.history.schema import Kind, Record
from harness.scenario import Scenario
from sample_app.chaos_tasks import HANG, NAP

SOFT, HARD = 1, 2
LIMITS = {"task_soft_time_limit": SOFT, "task_time_limit": HARD}
#: A run open longer than this is hung: the hard limit plus 3 s of slack.
BOUND = HARD + 3.0


def stop_child(chaos: Scenario, worker: str, task_id: str) -> int:
    """SIGSTOP the pool child running ``task_id`` (a frozen child); return its pid."""
    w = chaos.worker(worker)
    pid = chaos.child_running(w, task_id)
    with chaos.faults.window("stop_pool_child", w.name, pid=pid, signal="SIGSTOP"):
        os.kill(pid, 19)  # SIGSTOP
    return pid


def records(chaos: Scenario, task_id: str, kind: Kind) -> list[Record]:
    return [r for r in chaos.history() if r.task_id == task_id and r.kind is kind]


def hung_invariant(result: Any) -> Any:
    (inv,) = [i for i in result.invariants if i.name == "no_hung_task"]
    return inv


@pytest.mark.chaos
def test_prefork_time_limits_end_hung_tasks(chaos: Scenario) -> None:
    """Prefork, soft 1 s < hard 2 s: hung tasks and a frozen child end; the load goes on."""
    chaos.deploy("redis", workers=1, concurrency=3, settings=LIMITS)
    w1 = chaos.worker("w1")
    first_children = set(w1.child_pids())
    (soft,) = chaos.publish(HANG, "sleep", "raise")  # ends at the soft limit
    (hard,) = chaos.publish(HANG, "block", "ignore")  # swallows the soft limit: hard only
    (frozen,) = chaos.publish(NAP, 1.5)  # would end at 1.5 s, but its child is stopped
    chaos.wait_running(w1, n=3, min_age=0.2)
    stopped_pid = stop_child(chaos, "w1", frozen)
    killed = wait_for(lambda: all(records(chaos, t, Kind.FAILED) for t in (hard, frozen)), 30)
    assert killed, "the hard time limit never fired"
    after = chaos.publish(NAP, 0.3, count=6)  # after the kills: replacement children run them
    result = chaos.check(drain_timeout=30, invariants=[no_hung_tasks(BOUND)])
    assert result.verdict == "valid", [i.problems for i in result.invariants]

    (soft_fail,) = records(chaos, soft, Kind.FAILED)
    assert soft_fail.exc_type == "SoftTimeLimitExceeded"
    assert soft_fail.pid != soft_fail.worker_pid  # raised inside the pool child
    hard_counts = {}
    for tid in (hard, frozen):
        fails = records(chaos, tid, Kind.FAILED)
        assert {f.exc_type for f in fails} == {"TimeLimitExceeded"}
        assert all(f.pid == w1.pid for f in fails)  # recorded by the main process
        (start,) = records(chaos, tid, Kind.STARTED)
        assert fails[0].mono_ns - start.mono_ns >= HARD * 1e9 * 0.95
        hard_counts[tid] = len(fails)
    assert not psutil.pid_exists(stopped_pid) or psutil.Process(stopped_pid).status() == "zombie"
    # The rest of the load ran, partly on children forked to replace the killed ones.
    for tid in after:
        assert len(records(chaos, tid, Kind.SUCCEEDED)) == 1
    ran_on = {r.pid for tid in after for r in records(chaos, tid, Kind.STARTED)}
    assert ran_on - first_children, "no replacement child ran anything"
    hung = hung_invariant(result).summary
    assert hung["hung"] == {} and hung["longest_run_s"] <= BOUND
    chaos.result.metrics["hard_limit_failure_records"] = hard_counts
    chaos.save()


@pytest.mark.chaos
def test_no_time_limit_leaves_hung_tasks(chaos: Scenario) -> None:
    """Negative control: no limits; a blocked task and a frozen child hang, flagged by id."""
    chaos.deploy("redis", workers=1, concurrency=2, expect="invalid")
    w1 = chaos.worker("w1")
    (blocked,) = chaos.publish(HANG, "block", "ignore")
    (frozen,) = chaos.publish(NAP, 1.0)
    chaos.wait_running(w1, n=2, min_age=0.2)
    stop_child(chaos, "w1", frozen)
    chaos.wait_running(w1, n=2, min_age=BOUND + 0.5, timeout=30)
    result = chaos.check(drain_timeout=1, settle=0.5, invariants=[no_hung_tasks(BOUND)])
    w1.kill()  # a warm shutdown would wait for the hung tasks forever
    assert result.verdict == "invalid"
    inv = hung_invariant(result)
    assert inv.verdict == "invalid"
    assert set(inv.summary["hung"]) == {blocked, frozen}
    assert all(s > BOUND for s in inv.summary["hung"].values())
    assert any(blocked in p for p in inv.problems) and any(frozen in p for p in inv.problems)


@pytest.mark.chaos
@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_time_limits_ignored_on_non_prefork_pools(chaos: Scenario, pool: str) -> None:
    """Negative control: threads/solo pools silently ignore both limits (failure mode 13)."""
    chaos.deploy("redis", workers=1, concurrency=2, pool=pool, settings=LIMITS, expect="invalid")
    w1 = chaos.worker("w1")
    (hung,) = chaos.publish(HANG, "sleep", "raise")  # on prefork: SoftTimeLimitExceeded at 1 s
    chaos.wait_running(w1, n=1, min_age=BOUND + 0.5, timeout=30)
    result = chaos.check(drain_timeout=1, settle=0.5, invariants=[no_hung_tasks(BOUND)])
    w1.kill()
    assert result.verdict == "invalid"
    inv = hung_invariant(result)
    assert list(inv.summary["hung"]) == [hung] and inv.summary["hung"][hung] > BOUND
    fired = records(chaos, hung, Kind.FAILED)
    assert w1.proc is not None
    log = w1.proc.log_path.read_text(errors="replace").lower()
    logged = "time limit" in log or "time_limit" in log
    chaos.result.metrics["time_limits"] = {
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
    }
    chaos.save()
    assert fired == []  # neither limit fired
    assert not logged  # and the worker said nothing about it
