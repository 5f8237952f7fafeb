"""A frozen broker (failure modes 16, 17, 26): the broker process SIGSTOPped, then SIGCONT.

The specs are in ``harness/catalog/broker_freeze.yaml``; this file runs each one and asserts
what is specific to it. The broker's connections stay open and nothing answers (no FIN, no
RST: the silent peer a proxy cannot produce). Measured on Redis 7.0.15 / RabbitMQ 3.10.8 with
Celery 5.7.0, kombu 5.7.0:

- Redis frozen 8 s after a quiet second, publishes into it: without socket timeouts the
  publisher blocks until the thaw (``publish_bounded`` flags it); with ``socket_timeout`` 1 s
  the publishes into the freeze end ``info`` in about 3 s. The workers consume again at
  once after the thaw; nothing is lost either way (a delivery in flight as the freeze lands
  can be, with socket timeouts: see the spec's comment);
- RabbitMQ frozen 10 s with ``broker_heartbeat=2``: the workers drop their connections
  ("Too many heartbeats missed", ~5 s in) and reconnect after the thaw; the acks of the 8 s
  acks_late naps running across the drop fail ("Couldn't ack") and the thawed node requeues
  them: each runs twice (``exactly_once``). With ``broker_heartbeat=30`` each runs once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from celery_chaos.checks.liveness import PublishSummary, ResumeSummary
from celery_chaos.history.schema import Kind
from celery_chaos.runner.catalog import specs
from celery_chaos.runner.run import ScenarioRun
from celery_chaos.spec.model import ScenarioSpec

SPECS = specs("broker_freeze")
RESUME = "workers_resume_consuming"
PUBLISH = "publish_bounded"


def _problems(run: ScenarioRun) -> list[list[str]]:
    return [i.problems for i in run.result.invariants]


def _outcomes_in_freeze(run: ScenarioRun) -> dict[str, int]:
    """Publish outcomes recorded between the freeze's start and its end (+1 s)."""
    win = run.window("freeze")
    assert win.start_ns is not None and win.end_ns is not None, win
    lo, hi = win.start_ns, win.end_ns + 10**9
    out: dict[str, int] = {}
    for r in run.history():
        if r.kind in (Kind.OK, Kind.FAIL, Kind.INFO) and lo <= r.mono_ns <= hi:
            out[r.kind.value] = out.get(r.kind.value, 0) + 1
    return out


def _redis_frozen(run: ScenarioRun) -> None:
    """Socket timeouts bound the publishes (``info`` within the bound); without them every
    publish blocks until the thaw. Either way every worker consumes again after it."""
    run.add_metrics(publishes_in_freeze=_outcomes_in_freeze(run))
    queue = run.result.queue
    assert queue is not None
    bounded = run.invariant(PUBLISH).summary_as(PublishSummary)
    resume = run.invariant(RESUME)
    run.add_metrics(longest_publish_s=bounded.longest_s,
                    resume_s=resume.summary_as(ResumeSummary).resume_s)
    assert resume.verdict == "valid", resume.problems
    resumed = resume.summary_as(ResumeSummary).resume_s
    assert set(resumed) == set(run.spec.deployment.worker_names()), resumed
    assert run.result.verdict == run.spec.expect, _problems(run)
    if run.spec.expect == "valid":
        assert bounded.outcomes.get("info", 0) >= 1, bounded  # failed fast, not "ok"
    else:  # the publisher blocked until the thaw (7.45-7.50 s: publishes 0.5 s into 8 s)
        assert run.invariant(PUBLISH).verdict == "invalid"
        assert bounded.longest_s >= 6, bounded


def _rabbit_frozen(run: ScenarioRun) -> None:
    """Past the heartbeat window the running tasks run twice (``exactly_once`` flags them);
    within it each runs once. Nothing is lost, and the workers consume again."""
    queue = run.result.queue
    assert queue is not None
    run.add_metrics(duplicated=queue.duplicated, hit=run.window("freeze").picked)
    assert run.result.verdict == run.spec.expect, _problems(run)
    assert queue.counts.lost == 0
    assert run.invariant(RESUME).verdict == "valid", run.invariant(RESUME).problems
    if run.spec.expect == "valid":
        assert queue.counts.duplicated == 0
    else:
        # measured: every nap running at the freeze ran twice
        assert set(run.window("freeze").picked) <= set(queue.duplicated), queue.duplicated
        logs = _logs(run)
        assert "Too many heartbeats missed" in logs and "Couldn't ack" in logs


def _logs(run: ScenarioRun) -> str:
    return "".join(p.read_text(errors="replace")
                   for p in sorted(Path(run.result.log_dir).glob("worker-*.log")))


#: Each scenario's own assertions, by its name without the variant.
CHECKS: dict[str, Callable[[ScenarioRun], None]] = {
    "redis_frozen_broker": _redis_frozen,
    "rabbitmq_frozen_broker_past_heartbeat_runs_tasks_twice": _rabbit_frozen,
    "rabbitmq_frozen_broker_within_heartbeat_runs_each_task_once": _rabbit_frozen,
}


@pytest.mark.chaos
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_broker_freeze(chaos_run, spec: ScenarioSpec) -> None:  # type: ignore[no-untyped-def]
    """Each catalog spec of the family ends as declared, for the reason it claims."""
    run: ScenarioRun = chaos_run(spec)
    CHECKS[spec.name.split("-")[0]](run)
