"""Worker death mid-load (failure modes 1-6): is any acknowledged task lost?

The specs are in ``harness/catalog/worker_kill.yaml``; this file runs each one and asserts
what is specific to it: the kill hit at least one running task, and each hit task was run
again (acks_late) or lost (early ack, the negative controls).
"""

from __future__ import annotations

import pytest

from harness.runner.catalog import specs
from harness.runner.run import ScenarioRun
from harness.spec.model import ScenarioSpec

SPECS = specs("worker_kill")


def _hit(run: ScenarioRun) -> list[str]:
    """The tasks the kill picked that were still running when its signal left."""
    hit = run.window("kill").detail.get("hit", [])
    assert hit, f"every task picked for the kill ended before it landed: {run.window('kill')}"
    return hit


@pytest.mark.chaos
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_worker_kill(chaos_run, spec: ScenarioSpec) -> None:  # type: ignore[no-untyped-def]
    """Each catalog spec of the family ends as declared, for the reason it claims."""
    run: ScenarioRun = chaos_run(spec)
    result = run.result
    queue = result.queue
    hit = _hit(run)
    assert result.verdict == spec.expect, run.invariant("queue").problems
    if spec.expect == "valid":
        assert queue.counts.lost == 0
        tasks = spec.load.tasks if spec.load else 0
        if spec.deployment.broker == "rabbitmq":
            assert queue.counts.acknowledged == tasks
        # The interrupted tasks really were redelivered and ran again.
        assert set(hit) <= set(queue.reexecuted), (hit, queue.reexecuted)
    else:
        assert queue.counts.lost >= 1
        assert set(hit) <= set(queue.lost), (hit, queue.lost)
        if spec.schedule.steps[0].do.op == "kill_pool_child":
            # the parent saw the child die: WorkerLostError, then nothing
            assert set(hit) <= set(queue.lost_worker_lost)
    if spec.name == "redis_acks_late_recovers_after_visibility_timeout":
        # Nothing comes back before the visibility timeout: this pins the documented delay.
        # The first redelivery, not the last completion: an early one must fail this.
        recovery = result.metrics["recovery"]
        assert recovery["first_redelivery_ns"] is not None, recovery
        assert recovery["first_redelivery_ns"] / 1e9 >= 6 - 0.5, recovery
