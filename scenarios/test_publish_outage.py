"""``apply_async`` while the broker is down (failure mode 18), on Redis.

The specs are in ``harness/catalog/publish_outage.yaml``: Redis stopped 10 s, two publishes
0.5 s into the outage, two before and two after it (each step a fresh Celery app whose
connection comes from kombu's process-wide pool: warm once ``before`` has published); w1
starts once the publishes are over. Measured on Redis 7.0.15 with Celery 5.7.0, kombu 5.7.0,
redis-py 8.1.0 (the control in 14 runs, the other two in 4):

- a bounded publish retry policy (two retries 0.2 s apart): each publish into the outage
  ends ``fail`` (connection refused) in 0.21-0.22 s;
- ``max_retries: null`` on a warm producer: the first publish into the outage blocks until
  Redis is back (9.53-9.68 s), then returns ok; ``publish_bounded`` (6 s) flags it;
- ``max_retries: null`` on a cold producer (no publish before the outage): each publish ends
  ``fail`` at the 4 s connect deadline (Celery's ``broker_connection_timeout``): 4.05-4.12 s.

Nothing accepted is lost: every publish that ended ok runs once w1 starts, and no publish
that ended ``fail`` runs (no ghost message).
"""

from __future__ import annotations

import pytest

from celery_chaos.checks.liveness import PublishSummary
from celery_chaos.history.schema import Kind
from celery_chaos.runner.catalog import specs
from celery_chaos.runner.run import ScenarioRun
from celery_chaos.spec.model import ScenarioSpec

SPECS = specs("publish_outage")
PUBLISH = "publish_bounded"
COLD = "redis_publish_during_outage-retry-forever-cold-valid"
#: A cold producer's publishes end at Celery's default connect deadline (4 s).
CONNECT_DEADLINE_S = 4.0


def _outcomes(run: ScenarioRun, step: str) -> list[tuple[str, float]]:
    """How each publish of a ``publish`` step ended, and how long it took (s)."""
    ids = set(run.window(step).task_ids)
    return [(r.kind.value, round((r.latency_ns or 0) / 1e9, 2)) for r in run.history()
            if r.role == "publisher" and r.task_id in ids
            and r.kind in (Kind.OK, Kind.FAIL, Kind.INFO)]


@pytest.mark.chaos
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_publish_outage(chaos_run, spec: ScenarioSpec) -> None:  # type: ignore[no-untyped-def]
    """Publishes into the outage end within the bound (valid) or block until the broker is
    back (the control); every publish that ended ok runs."""
    run: ScenarioRun = chaos_run(spec)
    bounded = run.invariant(PUBLISH).summary_as(PublishSummary)
    queue = run.result.queue
    assert queue is not None
    during = _outcomes(run, "during")
    run.add_metrics(publishes_in_outage=during, longest_publish_s=bounded.longest_s,
                    restart_s=run.window("outage").detail.get("restart_s"))
    assert run.result.verdict == spec.expect, [i.problems for i in run.result.invariants]
    before = _outcomes(run, "before") if "before" in run.windows else []
    assert all(how == "ok" for how, _ in before + _outcomes(run, "after"))
    oks = sum(1 for r in run.history() if r.role == "publisher" and r.kind is Kind.OK)
    assert queue.counts.lost == 0 and queue.counts.succeeded == oks, queue.problems
    assert queue.counts.recovered == 0, queue.recovered  # no refused publish ran (no ghost)
    if spec.expect == "valid":  # each publish into the outage refused, in time
        assert [how for how, _ in during] == ["fail", "fail"], during
        if spec.name == COLD:  # retried until the connect deadline
            assert all(took >= CONNECT_DEADLINE_S for _, took in during), during
    else:  # the first waited for the broker (10 s, less the 0.5 s delay), then ok
        assert run.invariant(PUBLISH).verdict == "invalid"
        assert during[0][0] == "ok" and during[0][1] >= 8, during
