"""Retries (failure modes 32-33): count, spacing and outcome, and a broker outage mid-retry.

The specs are in ``harness/catalog/retries.yaml``. The "retry policy" invariant
(``celery_chaos.checks.retries``) reads the retry publishes (``invoke`` records with ``retries``
and ``eta``), the attempts (``started``) and the final outcome from the history. Measured
on Celery 5.7.0 (see docs/invariants.md):

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

from collections import Counter
from collections.abc import Callable

import pytest

from celery_chaos.checks.retries import RetrySummary
from celery_chaos.runner.catalog import specs
from celery_chaos.runner.run import ScenarioRun
from celery_chaos.sample_app.chaos_tasks import FETCH_WITH_BACKOFF
from celery_chaos.spec.model import ScenarioSpec

SPECS = specs("retries")


def retries(run: ScenarioRun) -> RetrySummary:
    """The retry_policy invariant's summary, typed."""
    return run.invariant("retry_policy").summary_as(RetrySummary)


def check_policies_hold(run: ScenarioRun) -> None:
    """Backoff countdowns 1, 2, 2 s, and one request per attempt at the flaky server."""
    summary = retries(run)
    backoff = summary.tasks[run.window("backoff").task_ids[0]]
    assert backoff.task_name == FETCH_WITH_BACKOFF
    assert backoff.countdowns_s == pytest.approx([1, 2, 2], abs=0.25)
    assert all(
        g is not None and g >= c - 0.25 for g, c in zip(backoff.gaps_s, [1, 2, 2], strict=True)
    ), backoff.gaps_s
    # The flaky server saw exactly one request per attempt.
    http = run.scenario.http
    assert http is not None
    seen = Counter(req["path"] for req in http.requests_log())
    assert seen == {
        "/flaky/k0": 1,
        "/flaky/k1": 2,
        "/flaky/k2": 3,
        "/flaky/k3": 4,
        "/flaky/k5": 4,
        "/flaky/backoff": 4,
        "/flaky/jitter": 4,
    }


def check_no_countdown_flagged(run: ScenarioRun) -> None:
    """Both retries of the storm task are flagged: countdown 0, started at once."""
    inv = run.invariant("retry_policy")
    assert inv.verdict == "invalid"
    tid = run.window("storm").task_ids[0]
    assert retries(run).tasks[tid].countdowns_s == [0.0, 0.0]
    assert any(f"{tid}: retry 1 has a countdown of 0.000 s" in p for p in inv.problems)
    assert any(f"{tid}: retry 2 started" in p for p in inv.problems)


def check_outage_drops(run: ScenarioRun) -> None:
    """The retry publish failed, the task ended ``failed:Reject``, and it is lost."""
    tid = run.window("fetch").task_ids[0]
    inv = run.invariant("retry_policy")
    assert inv.verdict == "invalid"
    summary = retries(run)
    assert summary.lost_retries == 1
    assert summary.tasks[tid].outcome == "failed:Reject"
    assert inv.problems == [
        f"lost retry: {tid}: retry 1 never started; its publish was never acknowledged "
        "(publish failed); the task ended failed:Reject"
    ]
    # The queue invariant sees it too: a Reject without requeue drops the message, so the
    # acknowledged task never completed.
    queue = run.result.queue
    assert queue is not None and run.invariant("queue").verdict == "invalid"
    assert queue.lost == [tid]
    assert queue.lost_worker_lost == [tid]


CHECKS: dict[str, Callable[[ScenarioRun], None]] = {
    "retry_policies_hold": check_policies_hold,
    "retry_without_countdown_is_flagged": check_no_countdown_flagged,
    "broker_outage_during_retry_drops_the_task": check_outage_drops,
}


@pytest.mark.chaos
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_retries(chaos_run, spec: ScenarioSpec) -> None:  # type: ignore[no-untyped-def]
    """Each catalog spec of the family ends as declared, for the reason it claims."""
    check = CHECKS[spec.name]  # every spec of the family has its own assertions
    run: ScenarioRun = chaos_run(spec)
    assert run.result.verdict == spec.expect, [i.problems for i in run.result.invariants]
    check(run)
