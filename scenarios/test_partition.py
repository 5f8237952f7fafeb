"""Network partitions (failure modes 16, 17, 19, 26) through the per-link proxies.

The specs are in ``harness/catalog/partition.yaml``; this file runs each one and asserts
what is specific to it. Every link of the deployment goes through its own proxy and a
partition is a ``timeout`` toxic (blackhole: data dropped, connections left open). Healing
removes the toxic, which closes the links it held (Toxiproxy's behaviour), so clients see
the connection drop at the heal at the latest. Measured on RabbitMQ 3.10 / Redis 7.0 with
Celery 5.7.0, kombu 5.7.0, py-amqp 5.4.2 (docs/network.md):

- RabbitMQ, ``broker_heartbeat=4``: workers notice a blackhole after ~9 s (missed
  heartbeats, then RabbitMQ closes the link), retry, and consume again 0.4-4.4 s after
  the heal (docs/network.md); acks_late tasks lose nothing (a few run twice);
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

from collections.abc import Callable

import pytest

from celery_chaos.checks.liveness import PublishSummary, ResumeSummary, heal_to_full_throughput
from celery_chaos.history.schema import Kind
from celery_chaos.runner.catalog import specs
from celery_chaos.runner.run import ScenarioRun
from celery_chaos.spec.model import ScenarioSpec

SPECS = specs("partition")
RESUME = "workers_resume_consuming"


def _problems(run: ScenarioRun) -> list[list[str]]:
    return [i.problems for i in run.result.invariants]


def _publishes_in_fault(run: ScenarioRun) -> dict[str, int]:
    """Publish outcomes recorded between the partition's start and its end (+1 s)."""
    win = run.window("partition")
    assert win.start_ns is not None and win.end_ns is not None, win
    lo, hi = win.start_ns, win.end_ns + 10**9
    out: dict[str, int] = {}
    for r in run.history():
        if r.kind in (Kind.OK, Kind.FAIL, Kind.INFO) and lo <= r.mono_ns <= hi:
            out[r.kind.value] = out.get(r.kind.value, 0) + 1
    return out


# -- workers' links ------------------------------------------------------------------------


def _workers_resume(run: ScenarioRun) -> None:
    """Nothing lost, every task acknowledged, every worker consuming again within the bound."""
    recovery = heal_to_full_throughput(run.scenario.tail.history())
    run.add_metrics(throughput_recovery=recovery.model_dump(mode="json"))
    queue = run.result.queue
    assert queue is not None
    assert run.result.verdict == "valid", _problems(run)
    assert queue.counts.lost == 0
    assert run.spec.load is not None
    assert queue.counts.acknowledged == run.spec.load.tasks
    resume = run.invariant(RESUME).summary_as(ResumeSummary)
    # The history shows every worker consuming again after the heal.
    assert set(resume.resume_s) == set(run.spec.deployment.worker_names()), resume.resume_s
    assert all(s is not None and s <= resume.bound_s for s in resume.resume_s.values())
    assert recovery.heal_to_full_s is not None, recovery


def _brpop_lost(run: ScenarioRun) -> None:
    """Workers resume at once (that invariant holds); the queue invariant flags the loss of
    the message each pending BRPOP popped, which neither socket timeouts (failure mode 26:
    measured both ways, every run) nor acks_late prevent."""
    queue = run.result.queue
    assert queue is not None
    resume = run.invariant(RESUME)
    assert resume.verdict == "valid", resume.problems
    # Consuming again: every worker as a rule; a worker whose socket timeout fired in the cut
    # (a synchronous command caught in it: seen once) reconnects 2 s after the heal and may
    # find the backlog drained by the other, which the invariant (no stall) still covers.
    assert any(s is not None for s in resume.summary_as(ResumeSummary).resume_s.values())
    assert run.result.verdict == "invalid"
    assert 1 <= queue.counts.lost <= run.spec.deployment.workers, queue.lost
    # Each lost message was popped by Redis and never reached a worker.
    received = {r.task_id for r in run.history() if r.kind is Kind.RECEIVED}
    assert not set(queue.lost) & received


def _never_resumes(run: ScenarioRun) -> None:
    """Negative control: flagged by the resume bound, for the idle worker."""
    resume = run.invariant(RESUME)
    assert run.result.verdict == "invalid"
    assert resume.verdict == "invalid", resume.summary
    assert any("w1@chaos idle for" in p for p in resume.problems), resume.problems


# -- the publisher's link ------------------------------------------------------------------


def _redis_publisher(run: ScenarioRun) -> None:
    """With socket timeouts publishes fail fast (``info``); without, they block to the heal."""
    run.add_metrics(publishes_in_fault=_publishes_in_fault(run))
    queue = run.result.queue
    assert queue is not None
    bounded = run.invariant("publish_bounded").summary_as(PublishSummary)
    assert queue.counts.lost == 0  # measured: a blackholed LPUSH never runs
    assert run.result.verdict == run.spec.expect, _problems(run)
    if run.spec.expect == "valid":
        assert bounded.outcomes.get("info", 0) >= 1  # failed fast, not "ok"
    else:  # every publisher blocked until the heal closed its link
        assert bounded.longest_s >= 7, bounded


def _rabbit_publisher(run: ScenarioRun) -> None:
    """Confirms: publishes fail (indeterminate), none lost; without: publishes vanish."""
    run.add_metrics(publishes_in_fault=_publishes_in_fault(run))
    queue = run.result.queue
    assert queue is not None
    assert run.result.verdict == run.spec.expect, _problems(run)
    if run.spec.expect == "valid":
        assert queue.counts.lost == 0
        assert queue.counts.indeterminate + queue.counts.publish_failed >= 1
        assert run.invariant("publish_bounded").verdict == "valid"
    else:  # measured: the publishes of the window are lost (8 to ~50: the load's pace varies)
        assert queue.counts.lost >= 1, queue.counts
        assert queue.counts.indeterminate == 0


#: Each scenario's own assertions, by its name without the parametrize id.
CHECKS: dict[str, Callable[[ScenarioRun], None]] = {
    "rabbitmq_partition_workers_resume": _workers_resume,
    "redis_worker_partition_loses_the_brpop_in_flight": _brpop_lost,
    "worker_that_never_resumes_is_flagged": _never_resumes,
    "redis_publisher_partition": _redis_publisher,
    "rabbitmq_publisher_partition": _rabbit_publisher,
}


@pytest.mark.chaos
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_partition(chaos_run, spec: ScenarioSpec) -> None:  # type: ignore[no-untyped-def]
    """Each catalog spec of the family ends as declared, for the reason it claims."""
    run: ScenarioRun = chaos_run(spec)
    CHECKS[spec.name.split("-")[0]](run)
