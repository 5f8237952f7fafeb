"""The "results stored" invariant: the result backend agrees with the history.

A task whose history ends in a completion (``succeeded``, or ``failed`` other than a drop) must
have that outcome in the result backend (``SUCCESS``, ``FAILURE``); a task that started and
whose history has no end of its last run (Celery's "Exception raised outside body": the store
failed after the body ran, and the message was acknowledged) must have an outcome stored
all the same. Either one missing is what a caller's ``AsyncResult.get()`` never sees.

The backend's states come from the history too: a ``deployment`` record named
:data:`RESULT_STATES` that the runner writes after the final drain (``detail.states``: task id
-> stored state, or None when the backend holds nothing for it), so that the check is a pure
function of the history and ``celery-chaos analyze`` re-judges it without servers. Tasks
that do not store results (``ignore_result``) do not belong in a scenario that runs this
check. See ``docs/checker.md``.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from celery_chaos.checks.verdict import Checker, InvariantResult, Verdict, spec_of, with_spec
from celery_chaos.history.schema import WORKER_KINDS, Kind, Record
from celery_chaos.history.store import History

NAME = "results_stored"
#: The ``name`` of the ``deployment`` record holding the backend's stored states.
RESULT_STATES = "result_states"
#: How many task ids a problem names one by one.
MAX_LISTED = 5


class ResultsSummary(BaseModel):
    """The summary of :func:`check_results_stored`:
    ``InvariantResult.summary_as(ResultsSummary)``."""

    #: Tasks judged: a completion, or a start with no end of its last run.
    tasks: int
    #: Stored state -> how many judged tasks have it (``none``: nothing stored).
    stored: dict[str, int] = Field(default_factory=dict)
    #: History says succeeded/failed, the backend holds another state or none: id -> state.
    missing: dict[str, str] = Field(default_factory=dict)
    #: Started, no end of its last run in the history, no outcome stored: id -> state.
    unstored: dict[str, str] = Field(default_factory=dict)


#: The state a completion record must find stored.
_EXPECTED = {Kind.SUCCEEDED: "SUCCESS", Kind.FAILED: "FAILURE"}
#: States after which nothing more is stored for a task.
_OUTCOMES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


def stored_states(history: History) -> dict[str, str | None] | None:
    """The last :data:`RESULT_STATES` record's states (None: no record, or a read error)."""
    recs = [r for r in history.records
            if r.kind is Kind.DEPLOYMENT and r.name == RESULT_STATES]
    if not recs:
        return None
    states = recs[-1].detail.get("states")
    return dict(states) if isinstance(states, dict) else None


def _last_worker_record(history: History) -> dict[str, Record]:
    """Each task id -> its last worker record that started or ended a run."""
    last: dict[str, Record] = {}
    for rec in history.records:
        if rec.task_id is not None and rec.kind in WORKER_KINDS and \
                (rec.kind is Kind.STARTED or rec.ends_run):
            last[rec.task_id] = rec
    return last


def _listed(ids: dict[str, str]) -> str:
    more = f", +{len(ids) - MAX_LISTED} more" if len(ids) > MAX_LISTED else ""
    return ", ".join(f"{t} ({s})" for t, s in list(ids.items())[:MAX_LISTED]) + more


def check_results_stored(history: History) -> InvariantResult:
    """Invalid when a completed (or started and never ended) task has no outcome stored in
    the result backend; unknown without a readable :data:`RESULT_STATES` record."""
    states = stored_states(history)
    if states is None:
        recs = [r for r in history.records
                if r.kind is Kind.DEPLOYMENT and r.name == RESULT_STATES]
        why = (f"the result backend could not be read: {recs[-1].detail.get('error')}" if recs
               else f"no {RESULT_STATES} record in the history: the backend was not read")
        return InvariantResult(name=NAME, verdict=Verdict.UNKNOWN,
                               summary=ResultsSummary(tasks=0).model_dump(mode="json"),
                               problems=[why])
    summary = ResultsSummary(tasks=0)
    for tid, rec in _last_worker_record(history).items():
        state = states.get(tid)
        shown = state or "none"
        if rec.is_completion:
            expected = _EXPECTED[rec.kind]
            if state != expected:
                summary.missing[tid] = shown
        elif rec.kind is Kind.STARTED:
            if state not in _OUTCOMES:
                summary.unstored[tid] = shown
        else:
            continue  # retried, revoked, rejected, dropped: no outcome to compare
        summary.tasks += 1
        summary.stored[shown] = summary.stored.get(shown, 0) + 1
    problems = []
    if summary.missing:
        problems.append(f"{len(summary.missing)} tasks completed in the history have no such "
                        f"outcome in the result backend: {_listed(summary.missing)}")
    if summary.unstored:
        problems.append(f"{len(summary.unstored)} tasks started and never ended in the history "
                        "(the outcome's store failed after the body ran?) have no outcome "
                        f"stored: {_listed(summary.unstored)}")
    return InvariantResult(name=NAME, verdict=Verdict.INVALID if problems else Verdict.VALID,
                           summary=summary.model_dump(mode="json"), problems=problems)


def results_stored() -> Checker:
    """The "results stored" invariant as a :data:`Checker` for ``Scenario.check``."""

    def checker(history: History) -> InvariantResult:
        return check_results_stored(history)

    return with_spec(checker, "results_stored")


def needs_result_states(checker: Checker) -> bool:
    """Whether ``checker`` reads the backend's states (the runner then records them)."""
    return (spec_of(checker) or {}).get("checker") == "results_stored"


def task_ids(history: History) -> list[str]:
    """The ids of every task a worker recorded, in order of first record (what to read)."""
    seen: dict[str, None] = {}
    for rec in history.records:
        if rec.task_id is not None and rec.kind in WORKER_KINDS:
            seen.setdefault(rec.task_id, None)
    return list(seen)
