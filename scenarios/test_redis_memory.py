"""Redis maxmemory and eviction (failure mode 25): a backlog that outgrows the broker's memory.

The specs are in ``harness/catalog/redis_memory.yaml``: 1200 naps (~1 KB each in Redis) are
published while no worker runs, then w1 starts and drains what is left, on a Redis of the
scenario's own started with ``broker_config`` (``maxmemory``, ``maxmemory-policy``).
Measured on Redis 7.0.15 with Celery 5.7.0, kombu 5.7.0, redis-py 8.1.0:

- ``maxmemory 2mb`` with ``allkeys-lru`` or ``allkeys-random``: every publish returns ok;
  at 874-948 messages Redis evicts the queue's list (one key), and every task queued by
  then is lost at once, the oldest first. The list can go again later (the rest of the
  backlog, while the worker drains and stores results in the same server);
- ``maxmemory 4mb`` with ``noeviction``: the backlog fits, every task runs.

``noeviction`` at the limit is not a scenario here: no op frees memory, and Celery cannot
drain a full noeviction server (tried outside the catalog, docs/failure-modes.md, mode 25).
"""

from __future__ import annotations

import pytest

from celery_chaos.runner.catalog import specs
from celery_chaos.runner.run import ScenarioRun
from celery_chaos.spec.model import ScenarioSpec

SPECS = specs("redis_memory")


@pytest.mark.chaos
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_redis_memory(chaos_run, spec: ScenarioSpec) -> None:  # type: ignore[no-untyped-def]
    """Every publish is accepted; past maxmemory an evicting policy loses the oldest tasks
    at once (the whole list), within it nothing is lost."""
    run: ScenarioRun = chaos_run(spec)
    queue = run.result.queue
    assert queue is not None
    published = run.window("fill").task_ids  # in publish order
    run.add_metrics(accepted=queue.counts.acknowledged, lost=queue.counts.lost,
                    succeeded=queue.counts.succeeded)
    assert run.result.verdict == spec.expect, queue.problems
    assert queue.counts.acknowledged == len(published)  # no publish was refused
    if spec.expect == "valid":
        assert queue.counts.succeeded == len(published) and queue.counts.lost == 0
        return
    # The list went at once: the oldest tasks, every one published before the eviction, are
    # lost together (874-948 of them, measured); the list a later eviction takes goes too.
    lost = set(queue.lost)
    at_once = next((i for i, t in enumerate(published) if t not in lost), len(published))
    run.add_metrics(lost_at_once=at_once)
    assert at_once >= len(published) // 2, at_once
