"""The "no hung task" invariant on synthetic histories (no servers)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_chaos.checks.hung import HungSummary, check_hung, no_hung_tasks, task_runs
from celery_chaos.checks.queue import check_queue
from celery_chaos.checks.verdict import Verdict, check_history
from celery_chaos.history.schema import Kind, Record
from celery_chaos.history.store import History

S = 1_000_000_000  # one second in ns
MAIN, CHILD = 100, 101


def rec(kind: Kind, t: float, tid: str | None = None, **kw: Any) -> Record:
    """A record at ``t`` seconds; worker records default to w1's child / main process."""
    fields: dict[str, Any] = {"pid": CHILD, "host": "w1@chaos", "role": "worker"}
    if kind in (Kind.FAULT, Kind.DRAIN):
        fields = {"pid": 1, "host": "harness", "role": "harness"}
    fields.update(kw)
    if tid is not None:
        fields.setdefault("task_name", "celery_chaos.sample_app.chaos_tasks.hang")
        fields.setdefault("worker_pid", MAIN)
    mono = round(t * S)  # int() would cut 2.05 s to 2049999999 ns
    return Record(kind=kind, wall_ns=mono, mono_ns=mono, task_id=tid, **fields)


def hist(*records: Record) -> History:
    return History(records=sorted(records, key=lambda r: r.mono_ns))


def drain(t: float, complete: bool = True) -> Record:
    return rec(Kind.DRAIN, t, name="drain", detail={"complete": complete})


def test_runs_ending_within_the_bound_are_valid() -> None:
    h = hist(
        rec(Kind.STARTED, 0, "a"),
        rec(Kind.SUCCEEDED, 0.2, "a"),
        rec(Kind.STARTED, 0, "b"),
        rec(Kind.FAILED, 1.0, "b", exc_type="SoftTimeLimitExceeded"),
        rec(Kind.STARTED, 0, "c"),
        rec(Kind.FAILED, 2.1, "c", exc_type="TimeLimitExceeded", pid=MAIN),
        drain(10),
    )
    res = check_hung(h, bound_s=5)
    assert res.verdict is Verdict.VALID, res.problems
    s = res.summary_as(HungSummary)
    assert s.hung == {}
    assert s.endings == {
        "failed:SoftTimeLimitExceeded": 1,
        "failed:TimeLimitExceeded": 1,
        "succeeded": 1,
    }


def test_a_task_still_running_past_the_bound_is_flagged_by_id_with_its_duration() -> None:
    pub = {"pid": 1, "host": "publisher", "role": "publisher"}
    h = hist(
        *(rec(k, 0.5, tid, **pub) for k in (Kind.INVOKE, Kind.OK) for tid in ("stuck", "ok")),
        rec(Kind.STARTED, 1, "stuck"),
        rec(Kind.STARTED, 1, "ok", pid=CHILD + 1),
        rec(Kind.SUCCEEDED, 1.5, "ok", pid=CHILD + 1),
        drain(7.5, complete=False),
    )
    res = check_hung(h, bound_s=5)
    assert res.verdict is Verdict.INVALID
    s = res.summary_as(HungSummary)
    assert s.hung == {"stuck": 6.5}
    assert s.hung_still_running == ["stuck"]
    assert "stuck" in res.problems[0] and "6.5 s" in res.problems[0]
    # invalid beats the queue's unknown (incomplete drain): the negative control is flagged
    results = check_history(h, extra=[no_hung_tasks(5)])
    assert [r.verdict for r in results] == [Verdict.UNKNOWN, Verdict.INVALID]
    assert Verdict.combine(r.verdict for r in results) is Verdict.INVALID


def test_a_run_that_ended_after_the_bound_is_hung_too() -> None:
    h = hist(rec(Kind.STARTED, 0, "slow"), rec(Kind.SUCCEEDED, 30, "slow"), drain(31))
    res = check_hung(h, bound_s=5)
    assert res.verdict is Verdict.INVALID
    assert res.summary_as(HungSummary).hung == {"slow": 30.0}
    assert "ended only after 30.0 s (succeeded)" in res.problems[0]


def test_an_open_run_younger_than_the_bound_is_unknown() -> None:
    res = check_hung(hist(rec(Kind.STARTED, 0, "young"), drain(2)), bound_s=5)
    assert res.verdict is Verdict.UNKNOWN
    assert res.summary_as(HungSummary).open_within_bound == ["young"]


def test_killed_processes_and_redeliveries_end_runs() -> None:
    h = hist(
        rec(Kind.STARTED, 0, "child-killed", pid=201),
        rec(Kind.FAULT, 1, name="kill_pool_child", phase="start", detail={"pid": 201}),
        rec(Kind.STARTED, 0, "main-killed", pid=301, worker_pid=300),
        rec(Kind.FAULT, 1, name="kill_worker", phase="start", detail={"pid": 300}),
        rec(Kind.STARTED, 0, "redelivered"),
        rec(Kind.STARTED, 2, "redelivered", pid=202),
        rec(Kind.SUCCEEDED, 3, "redelivered", pid=202),
        # a paused (SIGSTOP) child is not a kill: its run stays open
        rec(Kind.STARTED, 0, "paused", pid=401),
        rec(Kind.FAULT, 1, name="stop_pool_child", phase="start", detail={"pid": 401}),
        drain(20),
    )
    res = check_hung(h, bound_s=5)
    s = res.summary_as(HungSummary)
    assert s.hung == {"paused": 20.0}
    assert s.endings == {"died": 2, "open": 1, "succeeded": 1, "superseded": 1}


def test_no_records_is_valid_and_the_bound_must_be_positive() -> None:
    assert check_hung(History(records=[]), bound_s=1).verdict is Verdict.VALID
    with pytest.raises(ValueError):
        check_hung(History(records=[]), bound_s=0)


def test_hard_time_limit_double_failure_is_one_completion() -> None:
    """Celery 5.7 fires task_failure twice (on_timeout, on_failure) for one hard limit."""
    h = hist(
        rec(Kind.INVOKE, 0, "t", pid=1, host="publisher", role="publisher"),
        rec(Kind.OK, 0, "t", pid=1, host="publisher", role="publisher"),
        rec(Kind.STARTED, 0.1, "t"),
        rec(Kind.FAILED, 2.1, "t", pid=MAIN, exc_type="TimeLimitExceeded"),
        rec(Kind.FAILED, 2.103, "t", pid=MAIN, exc_type="TimeLimitExceeded"),
        drain(3),
    )
    q = check_queue(h, exactly_once=True)
    assert q.valid == "valid", q.problems
    assert q.duplicated == {}
    assert q.counts.completed == 1


# -- property: the hung set is exactly the runs open longer than the bound ---------------

ENDINGS = ("succeeded", "failed", "retried", "revoked", "open", "died")


@st.composite
def runs_and_truth(draw: st.DrawFn) -> tuple[History, float, dict[str, float], int]:
    bound = draw(st.sampled_from([1.0, 2.5, 5.0]))
    check_at = 100.0
    records: list[Record] = []
    truth: dict[str, float] = {}
    n = draw(st.integers(0, 25))
    for i in range(n):
        tid = f"t{i:03d}"
        start = draw(st.integers(0, 9000)) / 100  # 0 .. 90 s, on a 10 ms grid
        ending = draw(st.sampled_from(ENDINGS))
        pid = 1000 + i
        records.append(rec(Kind.STARTED, start, tid, pid=pid))
        if ending == "open":
            dur = check_at - start
        else:
            dur = draw(st.integers(1, int((check_at - start) * 100) - 1)) / 100
            if ending == "died":
                records.append(rec(Kind.FAULT, start + dur, name="kill_pool_child",
                                   phase="start", detail={"pid": pid}))
            else:
                kind = Kind(ending)
                records.append(rec(kind, start + dur, tid, pid=pid,
                                   exc_type="TimeLimitExceeded" if ending == "failed" else None))
        if dur > bound:
            truth[tid] = round(dur, 3)
    records.append(drain(check_at))
    return hist(*records), bound, truth, n


@settings(max_examples=200, deadline=None)
@given(runs_and_truth())
def test_hung_runs_match_the_planted_durations(case: tuple[History, float, dict, int]) -> None:
    h, bound, truth, n = case
    res = check_hung(h, bound_s=bound)
    s = res.summary_as(HungSummary)
    assert s.runs == n == len(task_runs(h))
    assert set(s.hung) == set(truth)
    for tid, secs in truth.items():
        assert s.hung[tid] == pytest.approx(secs, abs=0.002)
    assert res.verdict is (Verdict.INVALID if truth else Verdict.VALID)
