"""More of the failure catalog (failure modes 2, 23, 41 and 43).

The specs are in ``harness/catalog/more_modes.yaml``; this file runs each one and asserts
what is specific to it. Measured on RabbitMQ 3.10.8 / Redis 7.0.15 with Celery 5.7.0 and
celery-redbeat:

- acks_late without ``task_reject_on_worker_lost``: the task of a killed pool child ends in
  ``WorkerLostError`` and is acknowledged as failed, never redelivered: lost (mode 2);
- quorum queues (``task_default_queue_type`` and ``task_create_missing_queue_type``): the
  acks_late kills lose nothing, the interrupted tasks run again; early ack loses them as on
  a classic queue. Celery turns global QoS off and declares its 28 native delayed delivery
  queues (``celery_delayed_0..27``); the broker lists every app queue as ``quorum`` (mode 23);
- RedBeat: a SIGTERMed leader releases its lock and the standby serves the next tick on
  time; a SIGKILLed one keeps it until it expires, past a 2 s hand-over bound (mode 43);
- the default scheduler stopped four intervals, then restarted: one catch-up fire stands for
  the missed ticks, no burst; frozen as long, the same fire comes after the thaw and the
  ticks due in the freeze are missing (mode 41).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from celery_chaos.checks.beat import BeatCheckResult
from celery_chaos.runner.catalog import specs
from celery_chaos.runner.run import ScenarioRun
from celery_chaos.spec.model import ScenarioSpec

SPECS = specs("more_modes")
QOS_OFF = "Global QoS is disabled. Prefetch count is now static."
ENTRY = "fast-report"
#: RedBeat's lock (s) and the hand-over bound the beat invariant is given (s).
LOCK_TIMEOUT = 5.0
HANDOVER = 2.0
#: The beat scenarios' entry interval (s).
FAST = 2.0


def _hit(run: ScenarioRun) -> list[str]:
    """The tasks the kill picked that were still running when its signal left."""
    hit = run.hit("kill")
    assert hit, f"every task picked for the kill ended before it landed: {run.window('kill')}"
    return hit


def _logs(run: ScenarioRun) -> str:
    return "".join(p.read_text(errors="replace")
                   for p in sorted(Path(run.result.log_dir).glob("worker-*.log")))


def _queue_types(run: ScenarioRun) -> dict[str, str]:
    """``{queue: type}`` in the scenario's vhost, from ``rabbitmqctl list_queues``."""
    out = run.scenario.broker.rabbitmqctl("list_queues", "-p", run.scenario.vhost,
                                          "--no-table-headers", "name", "type")
    return dict(line.split("\t")[:2] for line in out.splitlines() if "\t" in line)


def _kill(run: ScenarioRun) -> None:
    """The kill hit a running task; acks_late (+ reject_on_worker_lost) ran it again, early
    ack or acks_late alone lost it (``WorkerLostError``, then nothing)."""
    spec = run.spec
    queue = run.result.queue
    assert queue is not None
    hit = _hit(run)
    assert run.result.verdict == spec.expect, run.invariant("queue").problems
    if spec.expect == "valid":
        assert queue.counts.lost == 0
        assert queue.counts.acknowledged == (spec.load.tasks if spec.load else 0)
        # The interrupted tasks really were redelivered and ran again.
        assert set(hit) <= set(queue.reexecuted), (hit, queue.reexecuted)
    else:
        assert set(hit) <= set(queue.lost), (hit, queue.lost)
        assert set(hit) <= set(queue.lost_worker_lost), (hit, queue.lost_worker_lost)
    if spec.deployment.settings.get("task_default_queue_type") == "quorum":
        assert QOS_OFF in _logs(run)  # Celery saw the quorum queues
        # The broker's own word: every queue the app uses is a quorum queue.
        types = _queue_types(run)
        queues = run.scenario.app.queues
        delayed = sorted(q for q in types if q.startswith("celery_delayed_"))
        run.add_metrics(queue_types={q: types.get(q) for q in queues},
                        delayed_delivery_queues=len(delayed))
        assert all(types.get(q) == "quorum" for q in queues), types


def _handover(run: ScenarioRun) -> None:
    """SIGTERM: the standby's first fire comes within the hand-over bound, no tick missed or
    fired twice. SIGKILL: the first fire waits for the lock to expire, and the beat invariant
    flags the ticks due meanwhile (missing or late), never a double fire."""
    inv = run.invariant("beat")
    beat = inv.summary_as(BeatCheckResult)
    assert run.result.verdict == run.spec.expect, inv.problems
    entry = beat.entries[ENTRY]
    leader = run.window("kill").output_target
    standby = "beat2" if leader == "beat1" else "beat1"
    (dis,) = [d for d in beat.disruptions if d.kind == "kill"]
    assert dis.first_fire_by == standby, dis
    gap = dis.first_fire_s
    assert gap is not None
    run.add_metrics(handover_gap_s=round(gap, 3))
    assert (entry.extra, entry.early) == (0, 0), beat.problems
    if run.spec.expect == "valid":
        assert entry.missing == entry.late == 0, beat.problems
        assert gap <= HANDOVER + 1, dis  # the next tick (<= 1.7 s) plus a loop
        assert "beat: Releasing lock" in _beat_log(run, leader)
    else:
        assert entry.missing + entry.late >= 1, beat.problems
        assert LOCK_TIMEOUT - 1 - 1 <= gap <= LOCK_TIMEOUT + 1 + 1, dis


def _downtime(run: ScenarioRun) -> None:
    """One catch-up fire after the downtime, never a burst: after a restart it stands for
    the ticks due meanwhile (valid); after a freeze those ticks are missing (invalid)."""
    inv = run.invariant("beat")
    beat = inv.summary_as(BeatCheckResult)
    assert run.result.verdict == run.spec.expect, inv.problems
    entry = beat.entries[ENTRY]
    assert (entry.extra, entry.early) == (0, 0), beat.problems  # no burst
    run.add_metrics(coalesced=entry.coalesced, missing=entry.missing, late=entry.late)
    if run.spec.expect == "valid":
        (dis,) = beat.disruptions
        run.add_metrics(catch_up_stands_for=dis.coalesced, first_fire_s=dis.first_fire_s)
        assert entry.missing == entry.late == 0, beat.problems
        assert dis.coalesced >= 3, dis  # ~8 s of a 2 s entry, served by one fire
    else:
        (fault,) = [f for f in beat.faults if f.name == "pause_beat"]
        assert entry.missing >= 2, beat.problems
        # Every missing tick was due in the freeze (plus the late bound), none outside it.
        for tick in beat.ticks:
            if tick.status in ("missing", "late"):
                assert fault.start - entry.late_s <= tick.due <= fault.end + entry.late_s, tick
        # beat fires again within an interval of the thaw (measured 0-2.0 s)
        assert fault.resumed_s is not None and fault.resumed_s <= FAST + 1, fault


def _beat_log(run: ScenarioRun, name: str) -> str:
    return "".join(p.read_text(errors="replace")
                   for p in sorted(Path(run.result.log_dir).glob(f"beat-{name}-*.log")))


#: Each scenario's own assertions, by its name without the variant.
CHECKS: dict[str, Callable[[ScenarioRun], None]] = {
    "rabbitmq_acks_late_without_reject_on_worker_lost_loses_child_task": _kill,
    "rabbitmq_quorum_acks_late_survives_kill": _kill,
    "rabbitmq_quorum_early_ack_loses_tasks": _kill,
    "redbeat_leader_terminated_hands_over_within_a_loop": _handover,
    "redbeat_leader_killed_misses_the_handover_bound": _handover,
    "beat_stopped_several_intervals_coalesces_missed_ticks": _downtime,
    "beat_frozen_several_intervals_misses_ticks": _downtime,
}


@pytest.mark.chaos
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_more_modes(chaos_run, spec: ScenarioSpec) -> None:  # type: ignore[no-untyped-def]
    """Each catalog spec of the family ends as declared, for the reason it claims."""
    run: ScenarioRun = chaos_run(spec)
    CHECKS[spec.name.split("-")[0]](run)
