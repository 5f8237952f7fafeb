"""Packet-level partitions in network namespaces (failure modes 16, 19, 26).

The specs are in ``harness/catalog/packets.yaml``; this file runs each one and asserts what
is specific to it. Every node runs in a network namespace of its own and a
``packet_partition`` drops packets with iptables: TCP connections stay open on both ends
(no FIN or RST crosses), which the proxy's partitions (``test_partition.py``) cannot do.
Measured on RabbitMQ 3.10 / Redis 7.0 with Celery 5.7.0, kombu 5.7.0 (docs/network.md):

- A cut that outlasts the broker's TCP retransmissions (``tcp_retries2=4`` in its
  namespace): the broker drops the connections; with heartbeats (RabbitMQ) or a socket
  timeout and health checks (Redis) each worker notices, reconnects after the heal and
  consumes again; without, an idle worker sits on the dead connection for good.
- Redis, a 4 s cut while each worker has a BRPOP pending: nothing is lost and no worker
  reconnects: the reply comes by TCP retransmission after the heal, on the same
  connection. Through the proxy the same cut loses one message per worker.
- RabbitMQ, the publisher not heard (one way): with confirms publishes fail within the
  confirm timeout and none is lost; without, publishes into the cut succeed and vanish when
  the publisher's kernel gives up on the connection (its ``tcp_retries2=4``: Celery's
  publisher connections have no heartbeat, so the broker never notices).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from celery_chaos.checks.liveness import PublishSummary, ResumeSummary
from celery_chaos.runner.catalog import specs
from celery_chaos.runner.run import ScenarioRun
from celery_chaos.spec.model import ScenarioSpec

SPECS = specs("packets")
RESUME = "workers_resume_consuming"


def _connects(run: ScenarioRun, worker: str) -> int:
    """How many times a worker's log says it connected to the broker."""
    return run.scenario.worker_log(worker).count("Connected to ")


def _problems(run: ScenarioRun) -> list[list[str]]:
    return [i.problems for i in run.result.invariants]


def _dead_peer(run: ScenarioRun) -> None:
    """Safe: every worker reconnected and consumed again, nothing lost. Unsafe: every worker
    idle past the bound with messages ready, never having reconnected."""
    resume = run.invariant(RESUME)
    summary = resume.summary_as(ResumeSummary)
    workers = run.spec.deployment.worker_names()
    assert run.result.verdict == run.spec.expect, _problems(run)
    if run.spec.expect == "valid":
        queue = run.result.queue
        assert queue is not None and queue.counts.lost == 0
        assert all(_connects(run, w) >= 2 for w in workers)  # noticed, reconnected
        assert all(s is not None and s <= summary.bound_s for s in summary.resume_s.values())
    else:
        assert resume.verdict == "invalid", resume.summary
        assert all(f"{w} idle for" in " ".join(resume.problems) for w in workers)
        assert all(_connects(run, w) == 1 for w in workers)  # never noticed


def _brpop_survives(run: ScenarioRun) -> None:
    """With or without socket timeouts: nothing lost, the same connection throughout, every
    worker consuming again after the heal (the proxy's twin loses a message per worker)."""
    queue = run.result.queue
    assert queue is not None
    assert run.result.verdict == "valid", _problems(run)
    assert queue.counts.lost == 0
    resume = run.invariant(RESUME).summary_as(ResumeSummary)
    for w in run.spec.deployment.worker_names():
        assert _connects(run, w) == 1
        assert resume.resume_s[w] is not None and resume.resume_s[w] <= resume.bound_s


def _publisher_one_way(run: ScenarioRun) -> None:
    """Confirms: publishes fail (indeterminate) within the bound, none lost. Without: lost."""
    queue = run.result.queue
    assert queue is not None
    assert run.result.verdict == run.spec.expect, _problems(run)
    bounded = run.invariant("publish_bounded").summary_as(PublishSummary)
    if run.spec.expect == "valid":
        assert queue.counts.lost == 0
        assert queue.counts.indeterminate + queue.counts.publish_failed >= 1
        assert run.invariant("publish_bounded").verdict == "valid", bounded
    else:
        assert queue.counts.lost >= 1, queue.counts


def _loss(run: ScenarioRun) -> None:
    """Random loss costs time, not tasks: valid, nothing lost, every task acknowledged."""
    queue = run.result.queue
    assert queue is not None and run.spec.load is not None
    assert run.result.verdict == "valid", _problems(run)
    assert queue.counts.lost == 0
    assert queue.counts.completed >= queue.counts.acknowledged == run.spec.load.tasks
    win = run.window("loss")
    assert win.detail["loss_percent"] == 30 and win.detail["links"] == ["w1-broker", "w2-broker"]


#: Each scenario's own assertions, by its name without the variant.
CHECKS: dict[str, Callable[[ScenarioRun], None]] = {
    "rabbitmq_packet_partition_outlasts_the_broker": _dead_peer,
    "redis_packet_partition_outlasts_the_broker": _dead_peer,
    "redis_packet_partition_brpop": _brpop_survives,
    "rabbitmq_publisher_one_way_partition": _publisher_one_way,
    "rabbitmq_packet_loss_loses_nothing": _loss,
}


@pytest.mark.chaos
@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_packets(chaos_run, spec: ScenarioSpec) -> None:  # type: ignore[no-untyped-def]
    """Each catalog spec of the family ends as declared, for the reason it claims."""
    run: ScenarioRun = chaos_run(spec)
    CHECKS[spec.name.split("-")[0]](run)
