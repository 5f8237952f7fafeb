"""Result expiry: an expired result reads PENDING (failure mode 31).

The specs are in ``harness/catalog/result_expiry.yaml``; this file runs each one and asserts
what it claims. Four 0.5 s naps end; the schedule waits 6 s after the last, the drain finds
the queue empty, and the runner reads the Redis result backend (a ``result_states`` record
with each key's remaining TTL). Measured with Celery 5.7.0 and Redis 7.0.15, the read
6.05-6.13 s after the tasks ended:

- ``result_expires: 30``: every SUCCESS is stored when read, each key's TTL 24 s: 30 s less
  the time since its store (the backend's SETEX; 6 runs);
- ``result_expires: 3``: nothing is stored for any of the four (Celery reads PENDING, as for an
  id never sent), and ``results_stored`` flags each as expired in 10 of 10 runs; the queue's
  own ledger still has all four completed and none lost.
"""

from __future__ import annotations

import pytest

from celery_chaos.checks.results import NAME as RESULTS
from celery_chaos.checks.results import ResultsSummary
from celery_chaos.history.schema import Kind
from celery_chaos.runner.catalog import specs
from celery_chaos.runner.run import ScenarioRun
from celery_chaos.spec.model import ScenarioSpec

SPECS = specs("result_expiry")
#: The ``read`` checkpoint's delay after the last nap ended (s).
READ_DELAY_S = 6.0


@pytest.mark.chaos
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_result_expiry(chaos_run, spec: ScenarioSpec) -> None:  # type: ignore[no-untyped-def]
    """Results read after the delay: stored under a long expiry, PENDING under a short one,
    while the history (and the queue invariant) has every task completed either way."""
    run: ScenarioRun = chaos_run(spec)
    stored = run.invariant(RESULTS).summary_as(ResultsSummary)
    naps = set(run.window("naps").task_ids)
    queue = run.result.queue
    assert queue is not None
    expires = spec.deployment.settings["result_expires"]
    run.add_metrics(stored=stored.stored, expired=len(stored.expired),
                    read_after_s=stored.read_after_s, ttl_s=stored.ttl_s)
    assert run.result.verdict == spec.expect, [i.problems for i in run.result.invariants]
    # the harness's own ledger: every nap completed once, nothing lost
    assert queue.counts.completed == 4 and queue.counts.lost == 0, queue.problems
    ended = [r for r in run.history() if r.kind is Kind.SUCCEEDED and r.task_id in naps]
    assert len(ended) == 4, ended
    assert stored.expires_s == expires and stored.read_after_s is not None
    assert stored.read_after_s[0] >= READ_DELAY_S, stored  # real waiting before the read
    if spec.expect == "valid":
        assert stored.stored == {"SUCCESS": 4} and not stored.expired, stored
        # each key's TTL is what the expiry leaves after the time since the store
        # (Redis rounds it to whole seconds; the store comes just before the record)
        assert stored.ttl_s is not None, stored
        lo, hi = stored.ttl_s
        assert expires - stored.read_after_s[1] - 1.5 <= lo <= hi <= \
            expires - stored.read_after_s[0] + 0.5, stored
    else:
        assert run.invariant(RESULTS).verdict == "invalid"
        assert set(stored.expired) == naps and not stored.missing, stored
        assert stored.stored == {"none": 4} and stored.ttl_s is None, stored
        problem = run.invariant(RESULTS).problems[0]
        assert "read PENDING" in problem and f"past result_expires ({expires} s)" in problem
