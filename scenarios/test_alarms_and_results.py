"""A RabbitMQ resource alarm (failure mode 20) and a result backend down when tasks finish
(mode 29).

The specs are in ``harness/catalog/alarms_and_results.yaml``; this file runs each one and
asserts what is specific to it. Measured on RabbitMQ 3.10.8 and Redis 7.0.15 with Celery 5.7.0,
kombu 5.7.0, py-amqp 5.4.2 (10 runs each):

- the memory alarm held 10 s: with confirms alone, or with a per-publish ``confirm_timeout``
  (it fires, then kombu waits for the channel's CloseOk), ``apply_async`` blocks until the
  alarm clears (9.46-9.50 s); with py-amqp's ``read_timeout``/``write_timeout`` (1 s) each
  publish into the alarm ends ``info`` in 4.08-4.11 s. Nothing confirmed is lost;
- the result backend refused 8 s while four 3 s acks_late naps finish: with Celery's
  defaults each store fails at once ("Exception raised outside body"), the message is
  acknowledged and neither the history nor the backend holds an outcome
  (``results_stored``); with ``result_backend_always_retry`` (30 tries at most 1 s apart)
  every SUCCESS is stored 0.33-0.95 s after the backend is back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from celery_chaos.checks.liveness import PublishSummary
from celery_chaos.checks.results import NAME as RESULTS
from celery_chaos.checks.results import ResultsSummary
from celery_chaos.history.schema import Kind
from celery_chaos.runner.catalog import specs
from celery_chaos.runner.run import ScenarioRun
from celery_chaos.spec.model import ScenarioSpec

SPECS = specs("alarms_and_results")
PUBLISH = "publish_bounded"


def _problems(run: ScenarioRun) -> list[list[str]]:
    return [i.problems for i in run.result.invariants]


def _outcomes(run: ScenarioRun, step: str) -> list[tuple[str, float]]:
    """How each publish of a ``publish`` step ended, and how long it took (s)."""
    ids = set(run.window(step).task_ids)
    return [(r.kind.value, round((r.latency_ns or 0) / 1e9, 2)) for r in run.history()
            if r.role == "publisher" and r.task_id in ids
            and r.kind in (Kind.OK, Kind.FAIL, Kind.INFO)]


def _alarm(run: ScenarioRun) -> None:
    """A confirm timeout bounds the publishes into the alarm (``info``); without one the
    publisher waits for its confirm until the alarm clears. Nothing confirmed is lost."""
    bounded = run.invariant(PUBLISH).summary_as(PublishSummary)
    queue = run.result.queue
    assert queue is not None
    during = _outcomes(run, "during")
    run.add_metrics(publishes_in_alarm=during, longest_publish_s=bounded.longest_s,
                    lost=queue.counts.lost)
    assert run.result.verdict == run.spec.expect, _problems(run)
    assert queue.counts.lost == 0, queue.problems
    assert all(how == "ok" for how, _ in _outcomes(run, "before") + _outcomes(run, "after"))
    if run.spec.expect == "valid":  # each publish into the alarm ended, unconfirmed, in time
        assert [how for how, _ in during] == ["info", "info"], during
    else:  # the first publish waited for the alarm to clear (10 s, less the 0.5 s delay)
        assert run.invariant(PUBLISH).verdict == "invalid"
        assert during[0][1] >= 8, during


def _results(run: ScenarioRun) -> None:
    """With always_retry every nap's SUCCESS is stored once the backend is back; with the
    defaults each nap ran, the store failed, and neither the history nor the backend holds
    an outcome. The broker was never touched: nothing is lost from the queue."""
    stored = run.invariant(RESULTS).summary_as(ResultsSummary)
    naps = set(run.window("naps").task_ids)
    queue = run.result.queue
    assert queue is not None
    run.add_metrics(stored=stored.stored, unstored=len(stored.unstored),
                    missing=len(stored.missing), hit=len(run.window("down").picked))
    assert run.result.verdict == run.spec.expect, _problems(run)
    assert queue.counts.lost == 0, queue.problems
    if run.spec.expect == "valid":
        assert stored.stored == {"SUCCESS": 4}, stored
        ended = [r for r in run.history() if r.kind is Kind.SUCCEEDED and r.task_id in naps]
        down = run.window("down")
        assert down.end_ns is not None
        # each outcome stored (and its task_success sent) only once the backend was back
        assert len(ended) == 4 and all(r.mono_ns >= down.end_ns for r in ended), ended
        run.add_metrics(stored_after_back_s=round(
            max(r.mono_ns - down.end_ns for r in ended) / 1e9, 2))
    else:
        assert run.invariant(RESULTS).verdict == "invalid"
        assert set(stored.unstored) == naps, stored
        assert "Exception raised outside body" in _logs(run)


def _logs(run: ScenarioRun) -> str:
    return "".join(p.read_text(errors="replace")
                   for p in sorted(Path(run.result.log_dir).glob("worker-*.log")))


#: Each scenario's own assertions, by its name without the variant.
CHECKS: dict[str, Callable[[ScenarioRun], None]] = {
    "rabbitmq_memory_alarm_publishes": _alarm,
    "result_backend_down_at_finish": _results,
}


@pytest.mark.chaos
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_alarms_and_results(chaos_run, spec: ScenarioSpec) -> None:  # type: ignore[no-untyped-def]
    """Each catalog spec of the family ends as declared, for the reason it claims."""
    run: ScenarioRun = chaos_run(spec)
    CHECKS[spec.name.split("-")[0]](run)
