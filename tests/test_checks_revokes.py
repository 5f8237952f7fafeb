"""The "revoked tasks never run" invariant on synthetic histories, and the ``revoke`` action's
record (no servers: an in-memory broker that no worker answers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from celery_chaos.backends.local import revoke_tasks
from celery_chaos.checks.registry import rebuild
from celery_chaos.checks.revokes import (
    NAME,
    REVOKE_RECORD,
    RevokesSummary,
    check_revokes,
    revoked_never_run,
)
from celery_chaos.checks.verdict import Verdict, check_history, overall, spec_of
from celery_chaos.faults.context import Window
from celery_chaos.faults.vocabulary import Revoke, parse_op
from celery_chaos.history.schema import Kind, Record
from celery_chaos.history.store import History, HistoryWriter, read_history

S = 1_000_000_000  # one second in ns
OLD, NEW = 100, 200  # worker main pids before and after the restart


def rec(kind: Kind, t: float, tid: str | None = None, **kw: Any) -> Record:
    """A record at ``t`` seconds; worker records default to w1's main process."""
    fields: dict[str, Any] = {"pid": OLD, "host": "w1@chaos", "role": "worker"}
    if kind in (Kind.INVOKE, Kind.OK):
        fields = {"pid": 1, "host": "publisher", "role": "publisher"}
    elif kind in (Kind.DEPLOYMENT, Kind.DRAIN):
        fields = {"pid": 1, "host": "harness", "role": "harness"}
    fields.update(kw)
    if tid is not None and kind not in (Kind.INVOKE, Kind.OK):
        fields.setdefault("worker_pid", fields["pid"])
    mono = round(t * S)
    return Record(kind=kind, wall_ns=mono, mono_ns=mono, task_id=tid, **fields)


def revoke(t: float, *ids: str, replied: tuple[str, ...] = ("w1@chaos", "w2@chaos")) -> Record:
    return rec(Kind.DEPLOYMENT, t, name=REVOKE_RECORD, target="workers",
               detail={"tasks": list(ids), "replied": list(replied)})


def published(t: float, *ids: str) -> list[Record]:
    return [rec(k, t, tid) for tid in ids for k in (Kind.INVOKE, Kind.OK)]


def hist(*records: Record) -> History:
    return History(records=sorted(records, key=lambda r: r.mono_ns))


def drain(t: float) -> Record:
    return rec(Kind.DRAIN, t, name="drain", detail={"complete": True})


def test_a_revoked_task_started_after_the_revoke_is_flagged() -> None:
    """The negative control's history: the restarted worker forgot the revoke and ran it."""
    h = hist(
        *published(0, "a", "b", "keep"),
        *(rec(Kind.RECEIVED, 0.1, t) for t in ("a", "b", "keep")),
        revoke(0.2, "a", "b"),
        *(rec(Kind.RECEIVED, 8, t, pid=NEW, redelivered=True) for t in ("a", "b", "keep")),
        *(rec(Kind.STARTED, 15, t, pid=NEW + 1, worker_pid=NEW, redelivered=True)
          for t in ("a", "b", "keep")),
        *(rec(Kind.SUCCEEDED, 15.1, t, pid=NEW + 1, worker_pid=NEW) for t in ("a", "b", "keep")),
        drain(17),
    )
    res = check_revokes(h)
    assert res.name == NAME and res.verdict is Verdict.INVALID
    s = res.summary_as(RevokesSummary)
    assert s.revoked == ["a", "b"] and s.replied == ["w1@chaos", "w2@chaos"]
    assert set(s.ran) == {"a", "b"} and s.ran["a"].after_s == 14.8 and s.ran["a"].redelivered
    assert not s.discarded and not s.unseen
    assert "2 revoked tasks ran" in res.problems[0] and "a (on w1@chaos" in res.problems[0]
    # the queue is valid (nothing lost): the run is invalid for the revoke alone
    results = check_history(h, extra=[revoked_never_run()])
    assert [r.verdict for r in results] == [Verdict.VALID, Verdict.INVALID]
    assert overall(results) is Verdict.INVALID


def test_a_revoke_honoured_after_the_restart_is_valid() -> None:
    """The safe side's history: the restarted worker loaded the revoke and discarded both."""
    h = hist(
        *published(0, "a", "b", "keep"),
        *(rec(Kind.RECEIVED, 0.1, t) for t in ("a", "b", "keep")),
        revoke(0.2, "a", "b"),
        rec(Kind.REVOKED, 8, "a", pid=NEW), rec(Kind.REVOKED, 8, "b", pid=NEW),
        rec(Kind.RECEIVED, 8, "keep", pid=NEW, redelivered=True),
        rec(Kind.STARTED, 15, "keep", pid=NEW + 1, worker_pid=NEW),
        rec(Kind.SUCCEEDED, 15.1, "keep", pid=NEW + 1, worker_pid=NEW),
        drain(17),
    )
    res = check_revokes(h)
    assert res.verdict is Verdict.VALID, res.problems
    s = res.summary_as(RevokesSummary)
    assert s.discarded == {"a": "w1@chaos", "b": "w1@chaos"} and not s.ran
    assert overall(check_history(h, extra=[revoked_never_run()])) is Verdict.VALID


def test_a_run_open_at_the_revoke_is_not_a_violation_but_a_later_start_is() -> None:
    """A revoke without terminate leaves a running task alone; a redelivery after it (the
    worker died) must not run it again."""
    h = hist(
        *published(0, "a", "b"),
        rec(Kind.STARTED, 0.5, "a", pid=OLD + 1, worker_pid=OLD),
        rec(Kind.STARTED, 0.5, "b", pid=OLD + 2, worker_pid=OLD),
        revoke(1, "a", "b"),
        rec(Kind.SUCCEEDED, 2, "a", pid=OLD + 1, worker_pid=OLD),
        rec(Kind.STARTED, 5, "b", pid=NEW + 1, worker_pid=NEW, redelivered=True),
        rec(Kind.SUCCEEDED, 6, "b", pid=NEW + 1, worker_pid=NEW),
    )
    s = check_revokes(h).summary_as(RevokesSummary)
    assert s.running_at_revoke == ["a", "b"]
    assert set(s.ran) == {"b"} and s.ran["b"].after_s == 4.0


def test_nothing_revoked_or_unconfirmed_is_unknown() -> None:
    assert check_revokes(hist(*published(0, "a"))).verdict is Verdict.UNKNOWN
    unheard = hist(*published(0, "a"), revoke(1, "a", replied=()))
    res = check_revokes(unheard)
    assert res.verdict is Verdict.UNKNOWN and "no worker confirmed" in res.problems[0]
    # a start after it is still a violation
    ran = hist(*published(0, "a"), revoke(1, "a", replied=()), rec(Kind.STARTED, 2, "a"))
    assert check_revokes(ran).verdict is Verdict.INVALID


def test_the_checker_is_rebuilt_from_its_stored_spec() -> None:
    checker = revoked_never_run()
    spec = spec_of(checker)
    assert spec == {"checker": "revoked_never_run", "params": {}}
    h = hist(*published(0, "a"), revoke(1, "a"), rec(Kind.STARTED, 2, "a"))
    assert spec is not None and rebuild(spec)(h).verdict is Verdict.INVALID


def test_the_revoke_op_parses_ids_or_a_step_reference() -> None:
    assert parse_op({"op": "revoke", "tasks": "${eta.tasks}"}) == Revoke(tasks=["${eta.tasks}"])
    with pytest.raises(ValueError, match="^op 'revoke': tasks: List should have at least 1"):
        parse_op({"op": "revoke", "tasks": []})
    with pytest.raises(ValueError, match="^op 'revoke': timeout"):
        parse_op({"op": "revoke", "tasks": ["a"], "timeout": 0})


class _Dep:
    """What ``revoke`` uses of a deployment: the broadcast and the history writer."""

    def __init__(self, tmp_path: Path) -> None:
        self.writer = HistoryWriter(tmp_path, "harness", "harness")

    def revoke(self, task_ids: list[str], *, timeout: float) -> list[str]:
        return revoke_tasks("memory://", task_ids, timeout=timeout, workers=1)


def test_the_revoke_op_records_the_ids_and_who_confirmed(tmp_path: Path) -> None:
    """No worker listens on the in-memory broker: the broadcast goes out, nobody confirms,
    and the record says so (the checker then calls the run unknown, not valid)."""
    dep = _Dep(tmp_path)
    win = Window(step="revoke", seq=1)
    Revoke(tasks=["a", "b"], timeout=0.1).apply(dep, win)  # type: ignore[arg-type]
    assert win.task_ids == ["a", "b"] and win.detail["replied"] == []
    recs = [r for r in read_history(tmp_path).records if r.kind is Kind.DEPLOYMENT]
    assert [(r.name, r.detail) for r in recs] == [
        (REVOKE_RECORD, {"tasks": ["a", "b"], "replied": []})
    ]
    assert check_revokes(read_history(tmp_path)).verdict is Verdict.UNKNOWN
