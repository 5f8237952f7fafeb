"""Retries (failure modes 32-33): count, spacing and outcome, and a broker outage mid-retry.

The "retry policy" invariant (``harness.checks.retries``) reads the retry publishes
(``invoke`` records with ``retries`` and ``eta``), the attempts (``started``) and the
final outcome from the history. Measured on Celery 5.7.0 (see docs/invariants.md):

- ``fetch_url`` against ``/flaky/<key>`` failing K times: K <= 3 ends ``succeeded`` after
  exactly K retries, each started no sooner than its 1 s countdown; K > 3 ends after 3
  retries in ``HTTPError``, not ``MaxRetriesExceededError``: ``self.retry(exc=...)``
  re-raises the given exception once the retries run out;
- ``autoretry_for`` + ``retry_backoff=1``, ``retry_backoff_max=2``: countdowns 1, 2, 2 s
  without jitter; with jitter whole seconds in [0, 1], [0, 2], [0, 2] (0 means no ETA);
- broker down when ``self.retry`` publishes: Celery raises ``Reject(requeue=False)``, the
  worker records ``failed: Reject`` and the task is dropped. Both the queue invariant
  (a dropped, acknowledged task: lost) and the retry invariant (a lost retry) flag it.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from harness.checks.retries import Backoff, Expected, Fixed, RetryPolicy, retry_policy
from harness.deployment.processes import wait_for
from harness.history.schema import Kind
from harness.scenario import Scenario
from sample_app.chaos_tasks import (
    AUTORETRY_MAX_RETRIES,
    BACKOFF_FACTOR,
    BACKOFF_MAX,
    FETCH_WITH_BACKOFF,
    FETCH_WITH_JITTER,
)
from sample_app.config import FETCH_URL

#: fetch_url's policy under the harness's timing knob SAMPLE_FETCH_RETRY_COUNTDOWN=1.
FETCH_POLICY = RetryPolicy(FETCH_URL, Fixed(1.0), max_retries=3)
BACKOFF_POLICY = RetryPolicy(
    FETCH_WITH_BACKOFF, Backoff(BACKOFF_FACTOR, BACKOFF_MAX, jitter=False), AUTORETRY_MAX_RETRIES
)
JITTER_POLICY = RetryPolicy(
    FETCH_WITH_JITTER, Backoff(BACKOFF_FACTOR, BACKOFF_MAX, jitter=True), AUTORETRY_MAX_RETRIES
)


def flaky(chaos: Scenario, name: str, key: str, failures: int) -> str:
    """Publish ``name(<http>/flaky/<key>)`` with the key failing ``failures`` times."""
    assert chaos.http is not None
    chaos.http.set_failures(key, failures)
    (tid,) = chaos.publish(name, f"{chaos.http.base_url}/flaky/{key}")
    return tid


def failures(chaos: Scenario, task_id: str) -> list[Any]:
    return [r for r in chaos.history() if r.task_id == task_id and r.kind is Kind.FAILED]


def invariant(result: Any, name: str) -> Any:
    (inv,) = [i for i in result.invariants if i.name == name]
    return inv


@pytest.mark.chaos
def test_retry_policies_hold(chaos: Scenario) -> None:
    """fetch_url fails K times (K = 0..3, 5); auto-retry with backoff, with and without jitter."""
    chaos.deploy("redis", workers=1, concurrency=4)
    expect: dict[str, Expected] = {}
    for k in (0, 1, 2, 3, 5):
        outcome = "succeeded" if k <= 3 else "failed:HTTPError"
        expect[flaky(chaos, FETCH_URL, f"k{k}", k)] = Expected(min(k, 3), outcome)
    for name, key in ((FETCH_WITH_BACKOFF, "backoff"), (FETCH_WITH_JITTER, "jitter")):
        expect[flaky(chaos, name, key, 9)] = Expected(3, "failed:HTTPError")
    checker = retry_policy(FETCH_POLICY, BACKOFF_POLICY, JITTER_POLICY, expect=expect)
    result = chaos.check(drain_timeout=40, invariants=[checker])
    inv = invariant(result, "retry_policy")
    assert result.verdict == "valid", [i.problems for i in result.invariants]
    tasks = inv.summary["tasks"]
    backoff = next(v for v in tasks.values() if v["task_name"] == FETCH_WITH_BACKOFF)
    assert backoff["countdowns_s"] == pytest.approx([1, 2, 2], abs=0.25)
    assert all(g >= c - 0.25 for g, c in zip(backoff["gaps_s"], [1, 2, 2], strict=True))
    # The flaky server saw exactly one request per attempt.
    assert chaos.http is not None
    seen: dict[str, int] = {}
    for req in chaos.http.requests_log():
        seen[req["path"]] = seen.get(req["path"], 0) + 1
    assert seen == {
        "/flaky/k0": 1,
        "/flaky/k1": 2,
        "/flaky/k2": 3,
        "/flaky/k3": 4,
        "/flaky/k5": 4,
        "/flaky/backoff": 4,
        "/flaky/jitter": 4,
    }


@pytest.mark.chaos
def test_retry_without_countdown_is_flagged(chaos: Scenario) -> None:
    """Negative control: the worker retries at once (countdown 0); the policy wants 1 s."""
    chaos.deploy(
        "redis",
        workers=1,
        concurrency=2,
        env={"SAMPLE_FETCH_RETRY_COUNTDOWN": "0"},
        expect="invalid",
    )
    tid = flaky(chaos, FETCH_URL, "storm", 2)
    result = chaos.check(drain_timeout=20, invariants=[retry_policy(FETCH_POLICY)])
    inv = invariant(result, "retry_policy")
    assert result.verdict == "invalid" and inv.verdict == "invalid"
    assert inv.summary["tasks"][tid]["countdowns_s"] == [0.0, 0.0]
    assert any(f"{tid}: retry 1 has a countdown of 0.000 s" in p for p in inv.problems)
    assert any(f"{tid}: retry 2 started" in p for p in inv.problems)


@pytest.mark.chaos
def test_broker_outage_during_retry_drops_the_task(chaos: Scenario) -> None:
    """Negative control: the broker is down when fetch_url retries; the task is dropped."""
    chaos.deploy(
        "redis",
        workers=1,
        concurrency=2,
        redis_persistence="aof-always",
        env={"SAMPLE_FETCH_TIMEOUT": "2"},
        expect="invalid",
    )
    assert chaos.http is not None
    (tid,) = chaos.publish(FETCH_URL, f"{chaos.http.base_url}/slow?seconds=6")  # times out at 2 s
    w1 = chaos.worker("w1")
    chaos.wait_running(w1, n=1, min_age=0.1)
    assert w1.proc is not None
    log = w1.proc.log_path

    def retry_published() -> bool:
        return any(
            r.kind is Kind.INVOKE and r.task_id == tid and (r.retries or 0) >= 1
            for r in chaos.history()
        )

    with chaos.faults.window("crash_broker", "redis", during="retry publish") as info:
        chaos.broker.crash()
        assert wait_for(retry_published, 20), "the task never tried to retry"
        # Celery logs this once its publish retries are exhausted and it rejects the task.
        info["rejected"] = wait_for(lambda: "reject requeue=False" in log.read_text(), 15)
        t0 = time.monotonic()
        chaos.broker.start()
        info["restart_s"] = round(time.monotonic() - t0, 2)
    # The main process records the Reject only once it has reconnected (its reconnect backoff
    # is 2, 4, 6... s): wait for it, or the drain could end first and the queue call it lost.
    assert wait_for(lambda: failures(chaos, tid), 30), "no failure recorded after the outage"
    result = chaos.check(drain_timeout=30, invariants=[retry_policy(FETCH_POLICY)])
    inv = invariant(result, "retry_policy")
    assert result.verdict == "invalid" and inv.verdict == "invalid"
    assert inv.summary["lost_retries"] == 1
    assert inv.summary["tasks"][tid]["outcome"] == "failed:Reject"
    assert inv.problems == [
        f"lost retry: {tid}: retry 1 never started; its publish was never acknowledged "
        "(publish failed); the task ended failed:Reject"
    ]
    # The queue invariant sees it too: a Reject without requeue drops the message, so the
    # acknowledged task never completed.
    queue = invariant(result, "queue")
    assert queue.verdict == "invalid" and queue.summary["lost"] == [tid]
    assert queue.summary["lost_worker_lost"] == [tid]
