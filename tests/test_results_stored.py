"""``results_stored``: the history against the result backend's stored states."""

from __future__ import annotations

from typing import Any

from celery import Celery

from celery_chaos.checks.registry import rebuild
from celery_chaos.checks.results import (
    RESULT_STATES,
    ResultsSummary,
    check_results_stored,
    needs_result_states,
    results_stored,
    task_ids,
)
from celery_chaos.checks.verdict import Verdict, spec_of
from celery_chaos.history.schema import Kind, Record
from celery_chaos.history.store import History
from tests.test_checks_liveness import rec, task


def states(t: float, **detail: Any) -> Record:
    return rec(Kind.DEPLOYMENT, t, name=RESULT_STATES, target="redis://x/1", detail=detail)


def started(tid: str, t: float) -> Record:
    return rec(Kind.STARTED, t, tid, pid=101)


def hist(*records: Record) -> History:
    return History(records=sorted(records, key=lambda r: r.mono_ns))


def test_every_completion_stored_is_valid() -> None:
    failed = rec(Kind.FAILED, 2.5, "c", pid=101, exc_type="ValueError")
    h = hist(*task("a", 1), *task("b", 2), started("c", 2), failed,
             states(9, states={"a": "SUCCESS", "b": "SUCCESS", "c": "FAILURE"}))
    res = check_results_stored(h)
    assert res.verdict is Verdict.VALID, res.problems
    assert res.summary_as(ResultsSummary).stored == {"SUCCESS": 2, "FAILURE": 1}


def test_a_completion_without_its_outcome_stored_is_flagged() -> None:
    h = hist(*task("a", 1), *task("b", 2), states(9, states={"a": "SUCCESS", "b": None}))
    res = check_results_stored(h)
    assert res.verdict is Verdict.INVALID
    assert res.summary_as(ResultsSummary).missing == {"b": "none"}
    assert "completed in the history" in res.problems[0] and "b (none)" in res.problems[0]


def test_a_started_task_that_never_ended_and_stored_nothing_is_flagged() -> None:
    """The store failed after the body ran ("Exception raised outside body"): no end record,
    nothing stored. A task stored as SUCCESS without an end record is not flagged."""
    h = hist(started("a", 1), started("b", 1), states(9, states={"a": None, "b": "SUCCESS"}))
    res = check_results_stored(h)
    assert res.verdict is Verdict.INVALID
    assert res.summary_as(ResultsSummary).unstored == {"a": "none"}
    assert "never ended" in res.problems[0]


def test_runs_without_an_outcome_are_not_judged() -> None:
    """A retried, revoked or dropped run has no outcome to compare; a later run does."""
    retried = rec(Kind.RETRIED, 1.5, "a", pid=101)
    lost = rec(Kind.FAILED, 1.5, "b", pid=101, exc_type="WorkerLostError")
    h = hist(started("a", 1), retried, started("b", 1), lost, states(9, states={}))
    summary = check_results_stored(h).summary_as(ResultsSummary)
    assert summary.tasks == 0
    h2 = hist(started("a", 1), retried, *task("a", 3), states(9, states={"a": "SUCCESS"}))
    assert check_results_stored(h2).verdict is Verdict.VALID


def test_without_the_backend_states_the_verdict_is_unknown() -> None:
    res = check_results_stored(hist(*task("a", 1)))
    assert res.verdict is Verdict.UNKNOWN and "no result_states record" in res.problems[0]
    res = check_results_stored(hist(*task("a", 1), states(9, error="ConnectionError: down")))
    assert res.verdict is Verdict.UNKNOWN and "ConnectionError: down" in res.problems[0]


def test_the_checker_is_rebuilt_from_its_spec_and_asks_for_the_states() -> None:
    checker = results_stored()
    assert spec_of(checker) == {"checker": "results_stored", "params": {}}
    again = rebuild({"checker": "results_stored"})
    assert needs_result_states(checker) and needs_result_states(again)
    assert not needs_result_states(rebuild({"checker": "publish_bounded",
                                            "params": {"bound_s": 1}}))
    h = hist(*task("a", 1), states(9, states={"a": "SUCCESS"}))
    assert again(h).verdict is Verdict.VALID


def test_the_ids_read_are_the_tasks_workers_recorded() -> None:
    h = hist(*task("a", 1), started("b", 2), rec(Kind.INVOKE, 0.5, "p", role="publisher"))
    assert task_ids(h) == ["a", "b"]


def test_nothing_stored_past_the_expiry_is_an_expired_result() -> None:
    """Read at 9 s, 8 s after ``a`` ended, with ``result_expires`` 3 s: expired (Celery reads
    PENDING); ``b`` ended at 2 s, nothing stored, 7 s later under an expiry of 3 s too."""
    h = hist(*task("a", 1, run_s=0), *task("b", 2, run_s=0),
             states(9, states={"a": None, "b": None}, expires_s=3, ttls={"a": None, "b": None}))
    res = check_results_stored(h)
    summary = res.summary_as(ResultsSummary)
    assert res.verdict is Verdict.INVALID and not summary.missing
    assert summary.expired == {"a": 8.0, "b": 7.0} and summary.expires_s == 3
    assert summary.read_after_s == [7.0, 8.0] and summary.ttl_s is None
    assert res.problems == ["2 tasks completed in the history read PENDING 7-8 s later, past "
                            "result_expires (3 s): expired, and a caller cannot tell them from "
                            "tasks never sent: a, b"]


def test_nothing_stored_before_the_expiry_is_missing_not_expired() -> None:
    """A result absent sooner than ``result_expires`` after its task ended, or with no
    expiry recorded (or 0: never expires), did not expire: it is missing."""
    for detail in ({"expires_s": 30}, {}, {"expires_s": None}, {"expires_s": 0}):
        h = hist(*task("a", 1), states(9, states={"a": None}, **detail))
        summary = check_results_stored(h).summary_as(ResultsSummary)
        assert summary.missing == {"a": "none"} and not summary.expired, detail


def test_stored_outcomes_report_their_remaining_ttls_and_the_reads_delay() -> None:
    h = hist(*task("a", 1, run_s=0), *task("b", 2, run_s=0),
             states(8, states={"a": "SUCCESS", "b": "SUCCESS"}, expires_s=30,
                    ttls={"a": 23, "b": 24}))
    res = check_results_stored(h)
    summary = res.summary_as(ResultsSummary)
    assert res.verdict is Verdict.VALID, res.problems
    assert summary.ttl_s == [23, 24] and summary.read_after_s == [6.0, 7.0]


def test_a_malformed_states_record_is_unknown() -> None:
    res = check_results_stored(hist(*task("a", 1), states(9, states={"a": 5})))
    assert res.verdict is Verdict.UNKNOWN and "record is malformed" in res.problems[0]


def test_celery_reads_nothing_stored_as_pending() -> None:
    """What the checker's wording rests on: for an id with no stored result (expired, or
    never sent) Celery's key-value backends answer PENDING."""
    app = Celery("pending", backend="cache+memory://", set_as_current=False)
    try:
        app.backend.store_result("stored", 42, "SUCCESS")
        assert app.AsyncResult("stored").state == "SUCCESS"
        assert app.AsyncResult("never-sent").state == "PENDING"
    finally:
        app.close()
