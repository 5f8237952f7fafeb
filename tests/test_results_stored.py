"""``results_stored``: the history against the result backend's stored states."""

from __future__ import annotations

from typing import Any

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
