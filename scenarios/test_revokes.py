"""Revokes are not durable (failure mode 47): a revoked ETA task after every worker restarts.

The specs are in ``harness/catalog/revokes.yaml``; this file runs each one and asserts what is
specific to it. Three naps are published with a 20 s countdown; the two workers receive them
at once and hold them unacknowledged (early ack acknowledges a message when its task starts,
so ``task_acks_late`` is not needed for the restart to give them back). Two are revoked, both
workers confirm, every worker is stopped and started again, and the new workers get the three
messages back, redelivered, before the ETA. Measured on RabbitMQ 3.10.8 with Celery 5.7.0,
kombu 5.7.0 (see ``docs/invariants.md``, "Revoked tasks never run"):

- warm shutdown (SIGTERM), no ``worker_state_db``: the new workers run both revoked naps at
  the ETA (``revoked_never_run`` invalid);
- warm shutdown with ``worker_state_db``: the new workers load the revoke from their file and
  discard both messages as they arrive (``revoked`` records, "Discarding revoked task" in the
  log); only the third nap runs;
- SIGKILL with ``worker_state_db``: the file is written at exit only, so it never got the
  revoke, and the new workers run both revoked naps.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from celery_chaos.checks.revokes import NAME as REVOKES
from celery_chaos.checks.revokes import RevokesSummary
from celery_chaos.history.schema import Kind, Record
from celery_chaos.runner.catalog import specs
from celery_chaos.runner.run import ScenarioRun
from celery_chaos.spec.model import ScenarioSpec

SPECS = specs("revokes")
WORKERS = ["w1@chaos", "w2@chaos"]


def _problems(run: ScenarioRun) -> list[list[str]]:
    return [i.problems for i in run.result.invariants]


def _logs(run: ScenarioRun) -> str:
    return "".join(p.read_text(errors="replace")
                   for p in sorted(Path(run.result.log_dir).glob("worker-*.log")))


def _eta_ns(run: ScenarioRun, records: list[Record]) -> int:
    """The earliest ETA (wall clock, ns), at most each task's: the first ``invoke`` (written
    before ``send_task`` reads the clock) plus the countdown."""
    countdown = run.spec.schedule.steps[0].do.options["countdown"]  # type: ignore[attr-defined]
    ids = set(run.window("eta").task_ids) | set(run.window("keep").task_ids)
    invokes = [r.wall_ns for r in records if r.kind is Kind.INVOKE and r.task_id in ids]
    return min(invokes) + int(countdown * 1e9)


def _restart(run: ScenarioRun) -> tuple[set[int], set[str], int]:
    """Common to every variant: the old workers held the three ETA messages before the revoke,
    both confirmed it, and every worker was restarted, the messages back on the new workers,
    before the ETA. Returns the old workers' pids, the revoked ids and the ETA (wall ns)."""
    records = run.history()
    revoked = set(run.window("revoke").task_ids)
    kept = set(run.window("keep").task_ids)
    assert revoked == set(run.window("eta").task_ids) and len(revoked) == 2 and len(kept) == 1
    assert run.window("revoke").detail["replied"] == WORKERS
    old = {int(run.window(s).detail["pid"]) for s in ("stop1", "stop2")}
    revoke_ns = run.window("revoke").applied_ns
    assert revoke_ns is not None
    first = {r.task_id for r in records if r.kind is Kind.RECEIVED and r.worker_pid in old
             and not r.redelivered and r.mono_ns < revoke_ns}
    assert first == revoked | kept, "the old workers held every ETA message before the revoke"
    eta = _eta_ns(run, records)
    back: dict[str, Record] = {}  # id -> its first record on a new worker
    for r in records:
        if r.task_id in revoked | kept and r.kind in (Kind.RECEIVED, Kind.REVOKED) and \
                r.worker_pid not in old:
            back.setdefault(r.task_id, r)
    assert set(back) == revoked | kept, back
    assert all(r.wall_ns < eta for r in back.values()), "every message came back before the ETA"
    ready = [r.wall_ns for r in records if r.kind is Kind.DEPLOYMENT
             and r.name == "worker_started" and r.mono_ns > revoke_ns]
    assert len(ready) == 2 and max(ready) < eta, "both workers restarted before the ETA"
    kept_run = [r for r in records if r.kind is Kind.SUCCEEDED and r.task_id in kept]
    assert len(kept_run) == 1 and kept_run[0].worker_pid not in old
    assert kept_run[0].wall_ns >= eta, "the kept nap ran at its ETA"
    run.add_metrics(restarted_before_eta_s=round((eta - max(ready)) / 1e9, 2),
                    back_before_eta_s=round((eta - max(r.wall_ns for r in back.values())) / 1e9,
                                            2))
    return old, revoked, eta


def _ran(run: ScenarioRun) -> None:
    """The new workers forgot the revoke: both revoked naps ran, at the ETA, redelivered, on
    a new worker. Nothing was lost from the queue."""
    old, revoked, eta = _restart(run)
    summary = run.invariant(REVOKES).summary_as(RevokesSummary)
    assert run.result.verdict == run.spec.expect == "invalid", _problems(run)
    assert run.invariant(REVOKES).verdict == "invalid"
    assert set(summary.ran) == revoked and not summary.discarded, summary
    starts = [r for r in run.history() if r.kind is Kind.STARTED and r.task_id in revoked]
    assert len(starts) == 2 and all(r.redelivered and r.worker_pid not in old for r in starts)
    assert all(r.wall_ns >= eta for r in starts), "they ran at the ETA"
    assert run.result.queue is not None and run.result.queue.valid == "valid"
    run.add_metrics(ran_after_revoke_s=sorted(r.after_s for r in summary.ran.values()))


def _discarded(run: ScenarioRun) -> None:
    """The state db kept the revoke across the restart: the new workers discarded both
    revoked messages as they arrived, and never started them."""
    _, revoked, _ = _restart(run)
    summary = run.invariant(REVOKES).summary_as(RevokesSummary)
    assert run.result.verdict == run.spec.expect == "valid", _problems(run)
    assert set(summary.discarded) == revoked and not summary.ran, summary
    assert not [r for r in run.history() if r.kind is Kind.STARTED and r.task_id in revoked]
    assert _logs(run).count("Discarding revoked task") == 2


#: Each scenario's own assertions, by its name's variant.
CHECKS: dict[str, Callable[[ScenarioRun], None]] = {
    "no-state-db-invalid": _ran,
    "state-db-valid": _discarded,
    "state-db-sigkill-invalid": _ran,
}


@pytest.mark.chaos
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_revokes(chaos_run, spec: ScenarioSpec) -> None:  # type: ignore[no-untyped-def]
    """Each catalog spec of the family ends as declared, for the reason it claims."""
    run: ScenarioRun = chaos_run(spec)
    CHECKS[spec.name.split("-", 1)[1]](run)
