"""The queue checker: "what goes in must come out", per Celery task id.

A pure function over a :class:`~celery_chaos.history.store.History`, modelled on
Jepsen's ``total-queue`` checker but classifying by task id (a Celery retry
republishes with the same id) and stricter about worker-lost failures. See
``docs/checker.md`` for the semantics in prose.

Everything here is one pass over the records plus sorting: O(n log n). The records may be
a list or a :class:`~celery_chaos.history.store.RecordStream` (read from disk as they are
iterated); the checker keeps one int of state a task id, so its memory grows with the ids,
not with the records.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, Field, computed_field

from celery_chaos.history.schema import Kind
from celery_chaos.history.store import AnyRecord, History

VerdictStr = Literal["valid", "invalid", "unknown"]
DrainState = Literal["complete", "incomplete", "missing"]

#: How many ids a problem string names before "... (+N more)".
MAX_IDS_IN_MESSAGE = 10

# The state of one task id in check_queue, packed into one int: flags in the low bits, then
# four counters of _WIDTH bits (more records of one id than 2**32 cannot be read anyway).
_PUB, _OK, _INFO, _SUCCEEDED, _DROPPED, _REVOKED, _REJECTED = (1 << i for i in range(7))
_WIDTH = 32
_MASK = (1 << _WIDTH) - 1
_INVOKES, _OUTCOMES_N, _COMPLETIONS, _STARTS = (8 + i * _WIDTH for i in range(4))
_ONE_INVOKE, _ONE_OUTCOME, _ONE_COMPLETION, _ONE_START = (
    1 << _INVOKES, 1 << _OUTCOMES_N, 1 << _COMPLETIONS, 1 << _STARTS
)


class QueueCounts(BaseModel):
    """Sizes of every class of task id (each id counts once per class)."""

    attempted: int = 0
    acknowledged: int = 0
    indeterminate: int = 0
    publish_failed: int = 0
    completed: int = 0
    succeeded: int = 0
    failed: int = 0
    lost: int = 0
    lost_worker_lost: int = 0
    rejected_lost: int = 0
    duplicated: int = 0
    reexecuted: int = 0
    unexpected: int = 0
    recovered: int = 0
    pending: int = 0
    revoked: int = 0
    rejected: int = 0


class QueueCheckResult(BaseModel):
    """The queue checker's verdict, counts, and the ids behind each anomaly.

    Id lists are sorted. ``duplicated`` maps id -> number of completed
    executions (> 1); ``reexecuted`` maps id -> number of ``started`` records (> 1).
    ``failed`` lists completed ids none of whose completions succeeded (an
    application exception); every other completed id counts as ``succeeded``.
    """

    valid: VerdictStr
    exactly_once: bool = False
    drain: DrainState = "missing"
    counts: QueueCounts = Field(default_factory=QueueCounts)
    lost: list[str] = Field(default_factory=list)
    lost_worker_lost: list[str] = Field(default_factory=list)
    #: Lost ids a worker rejected without requeue (unregistered, undecodable, ``Reject``).
    rejected_lost: list[str] = Field(default_factory=list)
    pending: list[str] = Field(default_factory=list)
    unexpected: list[str] = Field(default_factory=list)
    duplicated: dict[str, int] = Field(default_factory=dict)
    reexecuted: dict[str, int] = Field(default_factory=dict)
    recovered: list[str] = Field(default_factory=list)
    indeterminate: list[str] = Field(default_factory=list)
    publish_failed: list[str] = Field(default_factory=list)
    failed: list[str] = Field(default_factory=list)
    revoked: list[str] = Field(default_factory=list)
    rejected: list[str] = Field(default_factory=list)
    torn_lines: int = 0
    problems: list[str] = Field(default_factory=list)  # why the verdict is not valid
    notes: list[str] = Field(default_factory=list)  # informational: not failures


def is_completion(rec: AnyRecord) -> bool:
    """A terminal execution: :attr:`Record.is_completion`."""
    return rec.is_completion


def _drain_of(last: AnyRecord | None) -> DrainState:
    if last is None:
        return "missing"
    return "complete" if last.detail.get("complete") is True else "incomplete"


def drain_state(history: History) -> DrainState:
    """State of the last ``drain`` record: complete, incomplete, or missing."""
    last: AnyRecord | None = None
    for rec in history.records:
        if rec.kind is Kind.DRAIN:
            last = rec
    return _drain_of(last)


def _ids_message(n: int, what: str, ids: Iterable[str]) -> str:
    ids = list(ids)
    shown = ", ".join(ids[:MAX_IDS_IN_MESSAGE])
    more = f" ... (+{len(ids) - MAX_IDS_IN_MESSAGE} more)" if len(ids) > MAX_IDS_IN_MESSAGE else ""
    return f"{n} {what}: {shown}{more}"


def _rejection_why(rec: AnyRecord) -> str:
    """Why a worker dropped a message, from its rejection record (the middle of a problem)."""
    name = rec.task_name or "unnamed"
    if rec.reason == "unknown task":
        return (
            f"were received by {rec.host} but not registered there ({name}: a rolling "
            "deploy?), so rejected without requeue"
        )
    if rec.kind is Kind.FAILED:
        what = f"{name} raised Reject(requeue=False)"
    else:
        what = f"{name}: {rec.exc_type or 'not a task message'}"
    if rec.exc_message:
        what = f"{what}: {rec.exc_message}"
    return f"were rejected by {rec.host} without requeue ({what})"


def _rejection_problems(ids: list[str], rejections: dict[str, AnyRecord]) -> list[str]:
    """One problem line per reason, naming the lost ids a worker rejected without requeue."""
    by_why: dict[str, list[str]] = {}
    for t in ids:
        by_why.setdefault(_rejection_why(rejections[t]), []).append(t)
    return [
        _ids_message(len(group), f"of the lost tasks {why}", group)
        for why, group in sorted(by_why.items())
    ]


def check_queue(history: History, *, exactly_once: bool = False) -> QueueCheckResult:
    """Classify every task id in ``history`` and decide the queue verdict.

    - attempted: any publish record (``invoke``, or a publish outcome) for the id.
    - acknowledged: some publish ended ``ok``; else indeterminate: some publish
      ended ``info``, or more ``invoke`` records than outcomes (a publish that never
      completed: a crashed publisher, as in Jepsen); else publish_failed (only ``fail``).
    - completed: ``succeeded`` or non-worker-lost ``failed``; lost: acknowledged,
      not completed, not revoked; lost_worker_lost: lost ids that saw a
      ``WorkerLostError`` (or ``Reject``); rejected_lost: lost ids a worker rejected
      without requeue (a ``rejected`` record, or ``failed: Reject``), each problem line
      saying why; duplicated: > 1 completion; unexpected: completed, never
      attempted; recovered: completed, attempted, not acknowledged.
    - Without a complete final drain, would-be lost ids are ``pending`` and the
      verdict is at best ``unknown``.
    - ``invalid`` on lost, unexpected, or (with ``exactly_once``) duplicated ids.
    """
    state: dict[str, int] = {}  # id -> flags and counters, packed (see _PUB ... _STARTS)
    get = state.get
    rejections: dict[str, AnyRecord] = {}  # id -> its last rejection without requeue
    last_drain: AnyRecord | None = None
    # id -> pid of its last failure since its last start: Celery 5.7 fires task_failure twice
    # for one hard time limit (Request.on_timeout, then on_failure), from the same process.
    failed_by: dict[str, int] = {}
    repeated = 0

    for rec in history.records:
        kind = rec.kind
        if kind is Kind.DRAIN:
            last_drain = rec
            continue
        tid = rec.task_id
        if tid is None:
            continue
        if kind is Kind.INVOKE:
            state[tid] = (get(tid, 0) | _PUB) + _ONE_INVOKE
        elif kind is Kind.OK:
            state[tid] = (get(tid, 0) | _PUB | _OK) + _ONE_OUTCOME
        elif kind is Kind.INFO:
            state[tid] = (get(tid, 0) | _PUB | _INFO) + _ONE_OUTCOME
        elif kind is Kind.FAIL:
            state[tid] = (get(tid, 0) | _PUB) + _ONE_OUTCOME
        elif kind is Kind.SUCCEEDED:
            state[tid] = (get(tid, 0) | _SUCCEEDED) + _ONE_COMPLETION
        elif kind is Kind.FAILED:
            if rec.is_dropped:
                state[tid] = get(tid, 0) | _DROPPED
                if rec.exc_type == "Reject":  # Reject(requeue=False): a requeue sends none
                    rejections[tid] = rec
            elif failed_by.get(tid) == rec.pid:
                repeated += 1  # the same run's failure reported twice: one completion
            else:
                state[tid] = get(tid, 0) + _ONE_COMPLETION
                failed_by[tid] = rec.pid
        elif kind is Kind.STARTED:
            state[tid] = get(tid, 0) + _ONE_START
            if failed_by:
                failed_by.pop(tid, None)
        elif kind is Kind.REVOKED:
            state[tid] = get(tid, 0) | _REVOKED
        elif kind is Kind.REJECTED:
            state[tid] = get(tid, 0) | _REJECTED
            rejections[tid] = rec

    drain = _drain_of(last_drain)
    # Per id: any ok -> acknowledged; else any info, or an invoke left open -> indeterminate;
    # else (only fails) -> publish failed. A rejection is not an outcome: Celery rejects
    # without requeue (the message is gone).
    n_publish = n_acknowledged = n_completed = n_succeeded = 0
    indeterminate: list[str] = []
    publish_failed: list[str] = []
    missing: list[str] = []  # acknowledged, not completed, not revoked
    unexpected: list[str] = []
    recovered: list[str] = []
    failed: list[str] = []
    revoked: list[str] = []
    rejected: list[str] = []
    duplicated_n: list[tuple[str, int]] = []
    reexecuted_n: list[tuple[str, int]] = []
    for t, st in state.items():
        published = st & _PUB
        acked = st & _OK
        if published:
            n_publish += 1
            if acked:
                n_acknowledged += 1
            elif st & _INFO or (st >> _INVOKES) & _MASK > (st >> _OUTCOMES_N) & _MASK:
                indeterminate.append(t)
            else:
                publish_failed.append(t)
        done = (st >> _COMPLETIONS) & _MASK
        if done:
            n_completed += 1
            if st & _SUCCEEDED:
                n_succeeded += 1
            else:
                failed.append(t)
            if not published:
                unexpected.append(t)
            elif not acked:
                recovered.append(t)
            if done > 1:
                duplicated_n.append((t, done))
        elif acked and not st & _REVOKED:
            missing.append(t)
        if st >> _STARTS > 1:
            reexecuted_n.append((t, st >> _STARTS))
        if st & _REVOKED:
            revoked.append(t)
        if st & _REJECTED:
            rejected.append(t)
    for ids in (indeterminate, publish_failed, missing, unexpected, recovered, failed, revoked,
                rejected):
        ids.sort()
    if drain == "complete":
        lost, pending = missing, []
    else:
        lost, pending = [], missing
    lost_wl = [t for t in lost if state[t] & _DROPPED]
    lost_rej = [t for t in lost if t in rejections]
    duplicated = dict(sorted(duplicated_n))
    reexecuted = dict(sorted(reexecuted_n))

    problems: list[str] = []
    notes: list[str] = []
    if lost:
        problems.append(_ids_message(len(lost), "acknowledged tasks never completed", lost))
    if lost_wl:
        problems.append(
            _ids_message(len(lost_wl), "of the lost tasks ended only in WorkerLostError", lost_wl)
        )
    problems.extend(_rejection_problems(lost_rej, rejections))
    if unexpected:
        problems.append(
            _ids_message(len(unexpected), "tasks completed but were never published", unexpected)
        )
    if duplicated:
        msg = _ids_message(
            len(duplicated),
            "tasks completed more than once",
            (f"{t} (x{n})" for t, n in duplicated.items()),
        )
        (problems if exactly_once else notes).append(msg)
    if drain != "complete":
        why = "no drain record" if drain == "missing" else "the final drain was incomplete"
        problems.append(f"verdict cannot be valid: {why}")
        if pending:
            problems.append(
                _ids_message(len(pending), "acknowledged tasks not completed (pending)", pending)
            )
    if recovered:
        notes.append(
            _ids_message(
                len(recovered),
                "tasks completed although their publish was not acknowledged",
                recovered,
            )
        )
    if reexecuted:
        notes.append(
            _ids_message(
                len(reexecuted),
                "tasks started more than once (retries or redeliveries)",
                (f"{t} (x{n})" for t, n in reexecuted.items()),
            )
        )
    if revoked:
        notes.append(_ids_message(len(revoked), "tasks revoked", revoked))
    rejected_other = sorted(set(rejected).difference(lost_rej))  # republished, or unacked
    if rejected_other:
        notes.append(_ids_message(len(rejected_other), "tasks rejected by a worker",
                                  rejected_other))
    if repeated:
        notes.append(
            f"{repeated} failure records repeated by the same process for one run "
            "(a hard time limit fires task_failure twice): counted once"
        )
    if history.torn_lines:
        notes.append(f"{history.torn_lines} torn history lines skipped")

    definite = bool(unexpected) or (exactly_once and bool(duplicated))
    if drain == "complete":
        verdict: VerdictStr = "invalid" if (definite or lost) else "valid"
    else:
        verdict = "invalid" if definite else "unknown"
    if n_publish and not n_acknowledged and not n_completed:
        # Every publish failed or is indeterminate and no task ran: a run that tested
        # nothing is never valid (a broker the publisher could not use, say).
        problems.append(
            f"nothing was tested: {n_publish} publishes attempted, none acknowledged and no "
            "task completed"
        )
        if verdict == "valid":
            verdict = "unknown"

    counts = QueueCounts(
        attempted=n_publish,
        acknowledged=n_acknowledged,
        indeterminate=len(indeterminate),
        publish_failed=len(publish_failed),
        completed=n_completed,
        succeeded=n_succeeded,
        failed=len(failed),
        lost=len(lost),
        lost_worker_lost=len(lost_wl),
        rejected_lost=len(lost_rej),
        duplicated=len(duplicated),
        reexecuted=len(reexecuted),
        unexpected=len(unexpected),
        recovered=len(recovered),
        pending=len(pending),
        revoked=len(revoked),
        rejected=len(rejected),
    )
    return QueueCheckResult(
        valid=verdict,
        exactly_once=exactly_once,
        drain=drain,
        counts=counts,
        lost=lost,
        lost_worker_lost=lost_wl,
        rejected_lost=lost_rej,
        pending=pending,
        unexpected=unexpected,
        duplicated=duplicated,
        reexecuted=reexecuted,
        recovered=recovered,
        indeterminate=indeterminate,
        publish_failed=publish_failed,
        failed=failed,
        revoked=revoked,
        rejected=rejected,
        torn_lines=history.torn_lines,
        problems=problems,
        notes=notes,
    )


# -- latency and recovery time -------------------------------------------------------------


class RecoveryTime(BaseModel):
    """Recovery after one fault, measured on ``mono_ns``.

    ``in_flight``: ids received or started before the fault and not terminal by
    then. ``recovered``: those that completed after it. ``recovery_ns``: fault
    to the last such completion (``None`` if none completed). ``not_completed``:
    in-flight ids with no completion after the fault (lost, or still pending).
    ``first_redelivery_ns``: fault to the first redelivery of an in-flight task (a
    ``received``, or a ``started`` marked redelivered, after the fault): the bound a
    "nothing comes back before the visibility timeout" claim is judged by, which the last
    completion cannot show.
    """

    fault_mono_ns: int
    in_flight: list[str] = Field(default_factory=list)
    recovered: list[str] = Field(default_factory=list)
    not_completed: list[str] = Field(default_factory=list)
    recovery_ns: int | None = None
    first_redelivery_ns: int | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def recovery_s(self) -> float | None:
        """``recovery_ns`` in seconds."""
        return None if self.recovery_ns is None else self.recovery_ns / 1e9


def recovery_time(history: History, fault: AnyRecord | int) -> RecoveryTime:
    """Time from ``fault`` (a record, or a ``mono_ns``) to the last completion of a task in flight.

    A task is in flight at the fault if it had a ``received`` or ``started``
    record at or before the fault time and no terminal record (completion,
    ``revoked``, ``rejected``) by then. This measures e.g. redelivery latency
    after a worker kill.
    """
    t0 = int(fault) if isinstance(fault, int) else fault.mono_ns
    seen: set[str] = set()
    done_before: set[str] = set()
    last_after: dict[str, int] = {}
    first_again: dict[str, int] = {}
    for rec in history.records:
        tid = rec.task_id
        if tid is None:
            continue
        terminal = rec.is_terminal
        if rec.mono_ns <= t0:
            if rec.kind in (Kind.RECEIVED, Kind.STARTED):
                seen.add(tid)
            elif terminal:
                done_before.add(tid)
            continue
        if is_completion(rec):
            last_after[tid] = max(rec.mono_ns, last_after.get(tid, rec.mono_ns))
        elif rec.kind is Kind.RECEIVED or (rec.kind is Kind.STARTED and rec.redelivered):
            first_again.setdefault(tid, rec.mono_ns)
    in_flight = sorted(seen - done_before)
    recovered = [t for t in in_flight if t in last_after]
    not_completed = [t for t in in_flight if t not in last_after]
    end = max((last_after[t] for t in recovered), default=None)
    again = min((first_again[t] for t in in_flight if t in first_again), default=None)
    return RecoveryTime(
        fault_mono_ns=t0,
        in_flight=in_flight,
        recovered=recovered,
        not_completed=not_completed,
        recovery_ns=None if end is None else end - t0,
        first_redelivery_ns=None if again is None else again - t0,
    )


def task_latencies(history: History) -> dict[str, int]:
    """Per id: first ``started`` to final completion, in ns (completed ids with a start only)."""
    first_start: dict[str, int] = {}
    last_done: dict[str, int] = {}
    for rec in history.records:
        tid = rec.task_id
        if tid is None:
            continue
        if rec.kind is Kind.STARTED:
            if tid not in first_start or rec.mono_ns < first_start[tid]:
                first_start[tid] = rec.mono_ns
        elif is_completion(rec):
            if tid not in last_done or rec.mono_ns > last_done[tid]:
                last_done[tid] = rec.mono_ns
    return {t: last_done[t] - first_start[t] for t in sorted(last_done) if t in first_start}
