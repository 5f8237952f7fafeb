"""The "results stored" invariant: the result backend agrees with the history.

A task whose history ends in a completion (``succeeded``, or ``failed`` other than a drop) must
have that outcome in the result backend (``SUCCESS``, ``FAILURE``); a task that started and
whose history has no end of its last run (Celery's "Exception raised outside body": the store
failed after the body ran, and the message was acknowledged) must have an outcome stored
all the same. Either one missing is what a caller's ``AsyncResult.get()`` never sees.

The backend's states come from the history too: a ``deployment`` record named
:data:`RESULT_STATES` that the runner writes after the final drain (``detail.states``: task id
-> stored state, or None when the backend holds nothing for it, which Celery reads as
PENDING; ``detail.expires_s``: the reading app's ``result_expires``; ``detail.ttls``, Redis
only: each key's remaining TTL), so that the check is a pure function of the history and
``celery-chaos analyze`` re-judges it without servers. The record's time is the read's: a
completion read as nothing no sooner than ``expires_s`` after it is *expired*, the rest
*missing*; both are invalid, as a caller's PENDING cannot tell them from a task never sent.
Tasks that do not store results (``ignore_result``) do not belong in a scenario that runs
this check. See ``docs/checker.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydantic import BaseModel, Field, ValidationError

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
    #: Completed, nothing stored at a read no sooner than ``expires_s`` after the completion
    #: (the result expired; a caller reads PENDING): id -> seconds from completion to read.
    expired: dict[str, float] = Field(default_factory=dict)
    #: The reading app's ``result_expires`` (s), as recorded; None: not recorded, or never.
    expires_s: float | None = None
    #: Seconds from the judged completions to the read: [earliest, latest].
    read_after_s: list[float] | None = None
    #: Remaining TTLs (s) of the stored outcomes at the read (Redis): [least, most].
    ttl_s: list[int] | None = None


class StoredRead(BaseModel):
    """A :data:`RESULT_STATES` record: what the backend held for each task at ``read_ns``."""

    #: The record's ``mono_ns``: when the backend was read.
    read_ns: int
    #: Task id -> stored state; None: nothing stored (Celery reads it as PENDING).
    states: dict[str, str | None]
    #: The reading app's ``result_expires`` (s); None: results never expire, or not recorded.
    expires_s: float | None = None
    #: Redis only: task id -> the key's remaining TTL (s); None: no key, or no expiry.
    ttls: dict[str, int | None] = Field(default_factory=dict)


#: The state a completion record must find stored.
_EXPECTED = {Kind.SUCCEEDED: "SUCCESS", Kind.FAILED: "FAILURE"}
#: States after which nothing more is stored for a task.
_OUTCOMES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


def stored_read(history: History) -> StoredRead | None:
    """The last :data:`RESULT_STATES` record (None: no record, or a read error)."""
    recs = [r for r in history.records
            if r.kind is Kind.DEPLOYMENT and r.name == RESULT_STATES]
    if not recs or not isinstance(recs[-1].detail.get("states"), dict):
        return None
    detail = recs[-1].detail
    try:
        return StoredRead(read_ns=recs[-1].mono_ns, states=detail["states"],
                          expires_s=detail.get("expires_s"), ttls=detail.get("ttls") or {})
    except ValidationError:
        return None


def stored_states(history: History) -> dict[str, str | None] | None:
    """The last :data:`RESULT_STATES` record's states (None: no record, or a read error)."""
    read = stored_read(history)
    return None if read is None else dict(read.states)


def _last_worker_record(history: History) -> dict[str, Record]:
    """Each task id -> its last worker record that started or ended a run."""
    last: dict[str, Record] = {}
    for rec in history.records:
        if rec.task_id is not None and rec.kind in WORKER_KINDS and \
                (rec.kind is Kind.STARTED or rec.ends_run):
            last[rec.task_id] = rec
    return last


def _listed(ids: Mapping[str, object], shown: bool = True) -> str:
    """The first :data:`MAX_LISTED` ids (with their value when ``shown``), +N more."""
    more = f", +{len(ids) - MAX_LISTED} more" if len(ids) > MAX_LISTED else ""
    return ", ".join(f"{t} ({s})" if shown else t
                     for t, s in list(ids.items())[:MAX_LISTED]) + more


def _span(values: Iterable[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"


def check_results_stored(history: History) -> InvariantResult:
    """Invalid when a completed (or started and never ended) task has no outcome stored in
    the result backend; unknown without a readable :data:`RESULT_STATES` record."""
    read = stored_read(history)
    if read is None:
        recs = [r for r in history.records
                if r.kind is Kind.DEPLOYMENT and r.name == RESULT_STATES]
        error = recs[-1].detail.get("error") if recs else None
        why = (f"the result backend could not be read: {error}" if error
               else f"the {RESULT_STATES} record is malformed: {recs[-1].detail}"[:300] if recs
               else f"no {RESULT_STATES} record in the history: the backend was not read")
        return InvariantResult(name=NAME, verdict=Verdict.UNKNOWN,
                               summary=ResultsSummary(tasks=0).model_dump(mode="json"),
                               problems=[why])
    summary = ResultsSummary(tasks=0, expires_s=read.expires_s)
    ages: list[float] = []
    ttls: list[int] = []
    for tid, rec in _last_worker_record(history).items():
        state = read.states.get(tid)
        shown = state or "none"
        if rec.is_completion:
            expected = _EXPECTED[rec.kind]
            age = round((read.read_ns - rec.mono_ns) / 1e9, 2)
            ages.append(age)
            if state is None and read.expires_s and age >= read.expires_s:
                summary.expired[tid] = age
            elif state != expected:
                summary.missing[tid] = shown
            elif (ttl := read.ttls.get(tid)) is not None:
                ttls.append(ttl)
        elif rec.kind is Kind.STARTED:
            if state not in _OUTCOMES:
                summary.unstored[tid] = shown
        else:
            continue  # retried, revoked, rejected, dropped: no outcome to compare
        summary.tasks += 1
        summary.stored[shown] = summary.stored.get(shown, 0) + 1
    summary.read_after_s = [min(ages), max(ages)] if ages else None
    summary.ttl_s = [min(ttls), max(ttls)] if ttls else None
    problems = []
    if summary.expired:
        problems.append(f"{len(summary.expired)} tasks completed in the history read PENDING "
                        f"{_span(summary.expired.values())} s later, past result_expires "
                        f"({read.expires_s:g} s): expired, and a caller cannot tell them from "
                        f"tasks never sent: {_listed(summary.expired, shown=False)}")
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
