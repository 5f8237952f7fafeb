"""The queue checker against generated histories with planted ground truth, and by example."""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from celery_chaos.checks import (
    InvariantResult,
    QueueCheckResult,
    Verdict,
    check_history,
    check_queue,
    overall,
    recovery_time,
    task_latencies,
)
from celery_chaos.checks.hung import HungSummary
from celery_chaos.history.schema import Kind, Record
from celery_chaos.history.store import History, read_history
from celery_chaos.results import ScenarioResult
from tests.strategies import Planted, clean_histories, planted_histories

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_matches(result: QueueCheckResult, p: Planted, exactly_once: bool) -> None:
    """Every class of the result equals the planted ground truth."""
    assert result.drain == p.drain
    assert result.lost == sorted(p.lost)
    assert result.lost_worker_lost == sorted(p.lost_worker_lost)
    assert result.rejected_lost == sorted(p.rejected_lost)
    assert result.pending == sorted(p.pending)
    assert result.unexpected == sorted(p.unexpected)
    assert result.duplicated == dict(sorted(p.duplicated.items()))
    assert result.reexecuted == dict(sorted(p.reexecuted.items()))
    assert result.recovered == sorted(p.recovered)
    assert result.indeterminate == sorted(p.indeterminate)
    assert result.publish_failed == sorted(p.publish_failed)
    assert result.failed == sorted(p.failed)
    assert result.revoked == sorted(p.revoked)
    assert result.rejected == sorted(p.rejected)
    c = result.counts
    assert (c.attempted, c.acknowledged, c.completed, c.succeeded, c.failed) == (
        len(p.attempted),
        len(p.acknowledged),
        len(p.completed),
        len(p.succeeded),
        len(p.failed),
    )
    assert (c.lost, c.rejected_lost, c.pending, c.duplicated, c.unexpected, c.recovered) == (
        len(p.lost),
        len(p.rejected_lost),
        len(p.pending),
        len(p.duplicated),
        len(p.unexpected),
        len(p.recovered),
    )
    assert result.torn_lines == p.history.torn_lines
    assert result.valid == p.expected_verdict(exactly_once)
    assert (result.valid == "valid") == (not result.problems)


# -- generated -----------------------------------------------------------------------------


@SETTINGS
@given(planted_histories(), st.booleans())
def test_planted_histories_are_classified_exactly(p: Planted, exactly_once: bool) -> None:
    result = check_queue(p.history, exactly_once=exactly_once)
    assert_matches(result, p, exactly_once)
    json.dumps(result.model_dump(mode="json"))


@SETTINGS
@given(clean_histories(), st.booleans())
def test_clean_histories_are_valid(p: Planted, exactly_once: bool) -> None:
    result = check_queue(p.history, exactly_once=exactly_once)
    if p.attempted and not (p.acknowledged or p.completed):  # tested nothing: never valid
        assert result.valid == "unknown", result.problems
        assert any(x.startswith("nothing was tested") for x in result.problems)
        return
    assert result.valid == "valid", result.problems
    assert result.lost == result.unexpected == result.pending == []
    assert result.duplicated == {}


@SETTINGS
@given(planted_histories(drains=st.lists(st.booleans(), max_size=2).map(lambda f: [*f, False])))
def test_incomplete_drain_is_never_valid(p: Planted) -> None:
    result = check_queue(p.history)
    assert result.drain == "incomplete"
    assert result.valid != "valid"
    assert result.lost == []
    assert result.pending == sorted(p.missing)


@SETTINGS
@given(planted_histories(drains=st.just([])))
def test_missing_drain_is_never_valid(p: Planted) -> None:
    result = check_queue(p.history, exactly_once=True)
    assert result.drain == "missing"
    assert result.valid == ("invalid" if p.unexpected or p.duplicated else "unknown")
    assert any("no drain record" in s for s in result.problems)


def _write_as_files(history: History, directory: Path) -> None:
    """Write records as one JSONL file per (role, host, pid), shuffled across files."""
    by_file: dict[str, list[str]] = defaultdict(list)
    for rec in history.records:
        line = rec.model_dump_json(exclude_none=True)
        by_file[f"{rec.role}-{rec.host}-{rec.pid}.jsonl"].append(line)
    for name, lines in by_file.items():
        (directory / name).write_text("\n".join(lines) + "\n")


@settings(max_examples=25, deadline=None)
@given(planted_histories(max_tasks=25))
def test_same_verdict_after_writing_and_reading_files(p: Planted) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _write_as_files(p.history, Path(tmp))
        read = read_history(tmp)
    assert len(read) == len(p.history)
    read.torn_lines = p.history.torn_lines
    assert check_queue(read) == check_queue(p.history)


# -- by example ----------------------------------------------------------------------------

_mono = iter(range(1_000, 10**12, 1_000))


def rec(kind: Kind, task_id: str | None = None, **fields: Any) -> Record:
    role = "worker" if kind not in (Kind.INVOKE, Kind.OK, Kind.FAIL, Kind.INFO) else "publisher"
    fields.setdefault("host", role)
    return Record(
        kind=kind, wall_ns=0, mono_ns=next(_mono), pid=1, role=role, task_id=task_id, **fields
    )


def drained(*records: Record, complete: bool = True) -> History:
    return History(records=[*records, rec(Kind.DRAIN, detail={"complete": complete})])


def published(tid: str) -> list[Record]:
    return [rec(Kind.INVOKE, tid), rec(Kind.OK, tid)]


def test_retry_with_same_id_is_not_a_duplicate() -> None:
    h = drained(
        *published("a"),
        rec(Kind.STARTED, "a"),
        rec(Kind.RETRIED, "a", exc_type="Retry"),
        *published("a"),  # the worker republishes the same id
        rec(Kind.STARTED, "a"),
        rec(Kind.SUCCEEDED, "a"),
    )
    r = check_queue(h, exactly_once=True)
    assert r.valid == "valid"
    assert r.duplicated == {}
    assert r.reexecuted == {"a": 2}
    assert r.counts.succeeded == 1


def test_worker_lost_only_is_lost() -> None:
    h = drained(
        *published("a"), rec(Kind.STARTED, "a"), rec(Kind.FAILED, "a", exc_type="WorkerLostError")
    )
    r = check_queue(h)
    assert r.valid == "invalid"
    assert r.lost == r.lost_worker_lost == ["a"]
    assert r.counts.completed == 0
    assert r.problems[0] == "1 acknowledged tasks never completed: a"


def test_redelivered_after_worker_lost_is_not_lost() -> None:
    h = drained(
        *published("a"),
        rec(Kind.STARTED, "a"),
        rec(Kind.FAILED, "a", exc_type="WorkerLostError"),
        rec(Kind.STARTED, "a", redelivered=True),
        rec(Kind.SUCCEEDED, "a"),
    )
    r = check_queue(h, exactly_once=True)
    assert r.valid == "valid"
    assert r.lost == [] and r.duplicated == {}


def test_application_failure_is_a_completion() -> None:
    h = drained(
        *published("a"), rec(Kind.STARTED, "a"), rec(Kind.FAILED, "a", exc_type="ValueError")
    )
    r = check_queue(h)
    assert r.valid == "valid"
    assert r.failed == ["a"] and r.counts.succeeded == 0 and r.counts.completed == 1


def test_duplicates_fail_only_with_exactly_once() -> None:
    runs = [rec(Kind.STARTED, "a"), rec(Kind.SUCCEEDED, "a")] * 2
    h = drained(*published("a"), *runs)
    assert check_queue(h).valid == "valid"
    assert check_queue(h).notes[0] == "1 tasks completed more than once: a (x2)"
    r = check_queue(h, exactly_once=True)
    assert r.valid == "invalid"
    assert r.duplicated == {"a": 2}


def test_unexpected_is_invalid_even_without_drain() -> None:
    h = History(records=[rec(Kind.STARTED, "x"), rec(Kind.SUCCEEDED, "x")])
    r = check_queue(h)
    assert r.valid == "invalid" and r.unexpected == ["x"] and r.drain == "missing"


def test_last_drain_record_decides() -> None:
    base = [*published("a"), rec(Kind.SUCCEEDED, "a")]
    late = drained(rec(Kind.DRAIN, detail={"complete": True}), *base, complete=False)
    assert check_queue(late).valid == "unknown"
    assert check_queue(drained(rec(Kind.DRAIN, detail={}), *base)).valid == "valid"
    # a drain that does not say complete=True is not trusted
    unsure = History(records=[*base, rec(Kind.DRAIN, detail={"remaining": 0})])
    assert check_queue(unsure).drain == "incomplete"


def test_revoked_is_reported_not_lost() -> None:
    r = check_queue(drained(*published("a"), rec(Kind.REVOKED, "a")))
    assert r.valid == "valid" and r.revoked == ["a"] and r.lost == []
    assert r.notes == ["1 tasks revoked: a"]


def test_a_rejected_task_is_lost_to_the_sender() -> None:
    """Celery rejects without requeue: the message is gone; each line says why, by worker."""
    h = drained(
        *published("a"), rec(Kind.REJECTED, "a", host="w1@chaos", task_name="app.new",
                             reason="unknown task", exc_type="KeyError"),
        *published("b"), rec(Kind.REJECTED, "b", host="w1@chaos", task_name="app.new",
                             reason="unknown task", exc_type="KeyError"),
        *published("c"), rec(Kind.REJECTED, "c", host="w2@chaos", task_name="app.add",
                             reason="rejected", exc_type="ContentDisallowed",
                             exc_message="Refusing to deserialize untrusted content"),
        *published("d"), rec(Kind.REJECTED, "d", host="w2@chaos", reason="rejected"),
    )
    r = check_queue(h)
    assert r.valid == "invalid"
    assert r.lost == r.rejected_lost == r.rejected == ["a", "b", "c", "d"]
    assert r.counts.rejected_lost == 4 and r.lost_worker_lost == []
    assert r.problems == [
        "4 acknowledged tasks never completed: a, b, c, d",
        "2 of the lost tasks were received by w1@chaos but not registered there "
        "(app.new: a rolling deploy?), so rejected without requeue: a, b",
        "1 of the lost tasks were rejected by w2@chaos without requeue (app.add: "
        "ContentDisallowed: Refusing to deserialize untrusted content): c",
        "1 of the lost tasks were rejected by w2@chaos without requeue (unnamed: "
        "not a task message): d",
    ]
    assert not any("rejected" in n for n in r.notes)


def test_reject_raised_in_a_task_is_lost_worker_lost_and_rejected_lost() -> None:
    h = drained(*published("a"), rec(Kind.STARTED, "a"),
                rec(Kind.FAILED, "a", host="w1@chaos", task_name="app.fetch", exc_type="Reject",
                    exc_message="ConnectionError()"))
    r = check_queue(h)
    assert r.lost == r.lost_worker_lost == r.rejected_lost == ["a"] and r.rejected == []
    assert r.problems[-1] == (
        "1 of the lost tasks were rejected by w1@chaos without requeue "
        "(app.fetch raised Reject(requeue=False): ConnectionError()): a"
    )


def test_a_rejected_task_published_again_and_completed_is_not_lost() -> None:
    """Deploy the workers, then send again: the second message completes the id."""
    h = drained(*published("a"), rec(Kind.REJECTED, "a", reason="unknown task"),
                *published("a"), rec(Kind.STARTED, "a"), rec(Kind.SUCCEEDED, "a"))
    r = check_queue(h, exactly_once=True)
    assert r.valid == "valid" and r.rejected == ["a"] and r.rejected_lost == []
    assert r.notes == ["1 tasks rejected by a worker: a"]


def test_a_rejection_without_a_complete_drain_is_pending() -> None:
    h = drained(*published("a"), rec(Kind.REJECTED, "a", reason="unknown task"), complete=False)
    r = check_queue(h)
    assert r.valid == "unknown" and r.pending == ["a"] and r.rejected_lost == []


def test_problem_lists_are_truncated() -> None:
    recs = [r for i in range(15) for r in published(f"t{i:02d}")]
    r = check_queue(drained(*recs))
    assert r.counts.lost == 15 and len(r.lost) == 15
    assert r.problems[0].endswith("t09 ... (+5 more)")


def test_check_history_and_verdict_combine() -> None:
    results = check_history(drained(*published("a")))
    assert [x.name for x in results] == ["queue"]
    assert results[0].verdict is Verdict.INVALID
    assert results[0].summary_as(QueueCheckResult).lost == ["a"]
    assert overall(results) is Verdict.INVALID
    json.dumps([x.model_dump(mode="json") for x in results])
    assert InvariantResult(name="x", verdict="unknown").verdict is Verdict.UNKNOWN


def test_typed_summaries_round_trip_through_json() -> None:
    """A stored result reads back as the checker's own model, verdict and problems included."""
    h = drained(*published("a"), *published("b"), rec(Kind.SUCCEEDED, "b"))
    stored = ScenarioResult.model_validate_json(
        ScenarioResult(name="s", checked=True, invariants=check_history(h)).model_dump_json()
    )
    queue = stored.queue
    assert queue == check_queue(h)
    assert queue is not None and queue.valid == "invalid" and queue.counts.lost == 1
    assert stored.invariant("queue") is stored.invariants[0] and stored.invariant("x") is None
    assert ScenarioResult(name="unchecked").queue is None
    assert stored.invariants[0].summary_if(HungSummary) is None  # another checker's shape
    with pytest.raises(ValidationError):
        stored.invariants[0].summary_as(HungSummary)


@given(st.lists(st.sampled_from(list(Verdict))))
def test_combine_is_the_worst(verdicts: list[Verdict]) -> None:
    order = [Verdict.VALID, Verdict.UNKNOWN, Verdict.INVALID]
    expected = max(verdicts, key=order.index, default=Verdict.VALID)
    assert Verdict.combine(verdicts) is expected
    assert Verdict.combine(v.value for v in verdicts) is expected


# -- recovery time and latency -------------------------------------------------------------


def test_recovery_time_after_a_fault() -> None:
    records = [
        *published("a"), *published("b"), *published("c"), *published("d"),
        rec(Kind.STARTED, "a"),
        rec(Kind.SUCCEEDED, "a"),  # done before the fault: not in flight
        rec(Kind.STARTED, "b"),
        rec(Kind.RECEIVED, "c"),  # reserved, not started
        rec(Kind.STARTED, "d"),
    ]
    fault = rec(Kind.FAULT, name="kill_worker", phase="start")
    after = [
        rec(Kind.FAILED, "b", exc_type="WorkerLostError"),
        rec(Kind.STARTED, "c"),
        rec(Kind.SUCCEEDED, "c"),
        rec(Kind.STARTED, "b", redelivered=True),
        rec(Kind.SUCCEEDED, "b"),
        rec(Kind.STARTED, "e"),
        rec(Kind.SUCCEEDED, "e"),  # started after the fault: not counted
    ]
    h = History(records=[*records, fault, *after])
    r = recovery_time(h, fault)
    assert r.in_flight == ["b", "c", "d"]
    assert r.recovered == ["b", "c"] and r.not_completed == ["d"]
    assert r.recovery_ns == after[4].mono_ns - fault.mono_ns
    # c was only reserved, then started: not a redelivery; b's second start is one.
    assert r.first_redelivery_ns == after[3].mono_ns - fault.mono_ns
    assert r.recovery_s == pytest.approx(r.recovery_ns / 1e9)
    assert r.model_dump(mode="json")["recovery_s"] == r.recovery_s
    assert recovery_time(h, fault.mono_ns) == r
    assert recovery_time(h, after[-1].mono_ns).recovery_ns is None


def test_an_early_redelivery_shows_though_the_last_completion_is_late() -> None:
    """The first redelivery bounds "nothing comes back before X", not the last completion."""
    before = [*published("a"), *published("b"), rec(Kind.STARTED, "a"), rec(Kind.STARTED, "b")]
    fault = rec(Kind.FAULT, name="kill_worker", phase="start")
    h = History(records=[
        *before,
        fault,
        rec(Kind.RECEIVED, "a"),  # back at once: an early redelivery
        rec(Kind.SUCCEEDED, "a"),
        rec(Kind.RECEIVED, "b"),
        rec(Kind.SUCCEEDED, "b"),
    ])
    r = recovery_time(h, fault)
    assert r.first_redelivery_ns is not None and r.recovery_ns is not None
    assert r.first_redelivery_ns < r.recovery_ns


def test_task_latencies() -> None:
    s1, s2, done = rec(Kind.STARTED, "a"), rec(Kind.STARTED, "a"), rec(Kind.SUCCEEDED, "a")
    h = History(records=[s1, rec(Kind.FAILED, "a", exc_type="WorkerLostError"), s2, done,
                         rec(Kind.STARTED, "b")])
    assert task_latencies(h) == {"a": done.mono_ns - s1.mono_ns}


# -- scale (timed in bench/bench_checker.py) ----------------------------------------------


def test_a_large_history_is_classified_exactly() -> None:
    from bench.bench_checker import big_history

    n = 5_000
    history, ids = big_history(n)
    r = check_queue(history)
    assert r.counts.attempted == n and r.counts.completed == n - 1
    assert r.lost_worker_lost == [ids[-1]] and r.valid == "invalid"
