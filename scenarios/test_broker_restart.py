"""Broker restarts and persistence (failure modes 16, 19, 24): do queued tasks survive?

The specs are in ``harness/catalog/broker_restart.yaml``: tasks are queued with no worker
consuming, the broker is SIGKILLed and started again on the same data directory, then a
worker drains whatever survived. Measured on RabbitMQ 3.10 / Redis 7.0 with Celery 5.7.0
(see docs/invariants.md):

- RabbitMQ, durable queues and persistent messages (Celery's defaults), publisher
  confirms: every task survives the crash; transient messages (the negative control) are
  all gone;
- Redis ``--save '' --appendonly no``: everything queued is lost (negative control);
  ``--appendonly yes --appendfsync always``: nothing is;
- RabbitMQ crashed mid-burst with publisher confirms: no confirmed publish is lost
  (publishes during the outage end ``fail``/``info``, never ``ok``, and each within
  ``publish_bounded``'s 3 s, under the 3.9-8.3 s outage: with Celery's default publish
  retry policy the slowest gave up after 0.64-0.79 s in 10 runs);
- RabbitMQ crashed three times under a steady load with two live workers: after each
  return both workers consume again, and nothing confirmed is lost.

The RabbitMQ scenarios share a node of their own (``broker_group: restart``), so
restarting it never disturbs the session's shared node.
"""

from __future__ import annotations

import pytest

from celery_chaos.checks.liveness import PublishSummary, ResumeSummary
from celery_chaos.history.schema import Kind
from celery_chaos.runner.catalog import specs
from celery_chaos.runner.run import ScenarioRun
from celery_chaos.spec.model import ScenarioSpec

SPECS = specs("broker_restart")
BURST = "rabbitmq_crash_during_publish_burst_with_confirms"
FLAPPING = "rabbitmq_flapping_broker_live_workers_resume"


def check_queued_restart(run: ScenarioRun) -> None:
    """Every queued task ran (valid), or every one was lost (the negative controls)."""
    queue = run.result.queue
    assert queue is not None
    ids = run.window("queue").task_ids
    if run.spec.expect == "valid":
        assert queue.counts.succeeded == len(ids) and queue.counts.lost == 0
    else:
        assert queue.counts.lost > 0
        assert sorted(ids) == queue.lost  # measured: every one of them


def check_burst(run: ScenarioRun) -> None:
    """The crash landed inside the burst, and every confirmed publish ran."""
    queue = run.result.queue
    assert queue is not None
    assert queue.counts.lost == 0
    crash = run.window("crash")
    # confirmed publishes before the crash: the crash step's `published` trigger
    confirmed = next(s.when.published for s in run.spec.schedule.steps if s.id == "crash")
    assert confirmed is not None
    assert crash.start_ns is not None and crash.end_ns is not None
    outcomes = [r for r in run.history() if r.kind in (Kind.OK, Kind.FAIL, Kind.INFO)]
    oks = [r.mono_ns for r in outcomes if r.kind is Kind.OK]
    before = sum(1 for t in oks if t < crash.start_ns)
    after = sum(1 for t in oks if t > crash.end_ns)
    not_ok = sum(1 for r in outcomes if r.kind is not Kind.OK)
    bounded = run.invariant("publish_bounded").summary_as(PublishSummary)
    run.add_metrics(burst={"ok_before": before, "ok_after": after, "not_ok": not_ok},
                    longest_publish_s=bounded.longest_s)
    assert before >= confirmed and after >= 1, (before, after)
    assert queue.counts.acknowledged == len(oks)
    # every publish into the outage gave up within the bound instead of waiting it out
    assert not_ok >= 1 and run.invariant("publish_bounded").verdict == "valid", bounded


def check_flapping(run: ScenarioRun) -> None:
    """Three returns of the broker judged, every worker consuming again after each."""
    queue = run.result.queue
    assert queue is not None and queue.counts.lost == 0
    resume = run.invariant("workers_resume_consuming").summary_as(ResumeSummary)
    assert resume.heals == 3, resume
    workers = set(run.spec.deployment.worker_names())
    for report in resume.reports:
        assert report.fault == "crash_broker"
        back = {w.worker for w in report.workers if w.first_activity_s is not None}
        assert back == workers, (report.heal_mono_ns, back)
    run.add_metrics(resume_after_each_restart=[
        {w.worker: w.first_activity_s for w in r.workers} for r in resume.reports
    ])


@pytest.mark.chaos
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_broker_restart(chaos_run, spec: ScenarioSpec) -> None:  # type: ignore[no-untyped-def]
    """Each catalog spec of the family ends as declared, for the reason it claims."""
    run: ScenarioRun = chaos_run(spec)
    assert run.result.verdict == spec.expect, run.invariant("queue").problems
    if spec.name == BURST:
        check_burst(run)
    elif spec.name == FLAPPING:
        check_flapping(run)
    else:
        check_queued_restart(run)
