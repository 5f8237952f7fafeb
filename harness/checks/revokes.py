"""The "revoked tasks never run" invariant: a task revoked before it started never starts.

The harness's ``revoke`` action (remote control) writes a ``deployment`` record named
:data:`REVOKE_RECORD` once the workers have replied: ``detail.tasks`` the ids, ``detail.replied``
the nodes that confirmed. From that record on, a ``started`` record of one of those ids is a
violation: a worker ran a task it had been told to discard (Celery keeps revoked ids in
memory, so a worker restarted without ``worker_state_db`` has forgotten them). A worker's own
``revoked`` record after it is the revoke honoured (the task discarded).

A run already open at the revoke is not a violation (a revoke without ``terminate`` leaves a
running task alone); it is listed. Pure function of the history; see ``docs/invariants.md``.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from celery_chaos.checks.verdict import Checker, InvariantResult, Verdict, with_spec
from celery_chaos.history.schema import Kind
from celery_chaos.history.store import History

NAME = "revoked_never_run"
#: The ``name`` of the ``deployment`` record the ``revoke`` action writes.
REVOKE_RECORD = "revoke"
#: How many task ids a problem names one by one.
MAX_LISTED = 5


class RunAfterRevoke(BaseModel):
    """A start of a revoked task after its revoke."""

    host: str
    #: Seconds from the revoke record to the start.
    after_s: float
    redelivered: bool | None = None


class RevokesSummary(BaseModel):
    """The summary of :func:`check_revokes`: ``InvariantResult.summary_as(RevokesSummary)``."""

    #: Every id the harness revoked, in order.
    revoked: list[str] = Field(default_factory=list)
    #: Nodes that confirmed a revoke (its reply).
    replied: list[str] = Field(default_factory=list)
    #: Revoked ids a worker started after the revoke: id -> the first such start.
    ran: dict[str, RunAfterRevoke] = Field(default_factory=dict)
    #: Revoked ids a worker recorded ``revoked`` (discarded) after the revoke: id -> node.
    discarded: dict[str, str] = Field(default_factory=dict)
    #: Revoked ids that were running when revoked (left alone without ``terminate``).
    running_at_revoke: list[str] = Field(default_factory=list)
    #: Revoked ids no worker started or discarded after the revoke.
    unseen: list[str] = Field(default_factory=list)


def _listed(ids: list[str]) -> str:
    more = f", +{len(ids) - MAX_LISTED} more" if len(ids) > MAX_LISTED else ""
    return ", ".join(ids[:MAX_LISTED]) + more


def check_revokes(history: History) -> InvariantResult:
    """Invalid when a worker started a task after the harness revoked it; unknown when the
    history holds no revoke, or a revoke no worker confirmed; valid otherwise."""
    summary = RevokesSummary()
    at: dict[str, int] = {}  # revoked id -> mono_ns of its (first) revoke record
    open_runs: set[str] = set()  # ids whose last run started and has not ended
    unconfirmed: list[str] = []
    for rec in history.records:
        if rec.kind is Kind.DEPLOYMENT and rec.name == REVOKE_RECORD:
            replied = [str(n) for n in rec.detail.get("replied") or []]
            ids = [str(t) for t in rec.detail.get("tasks") or []]
            for node in replied:
                if node not in summary.replied:
                    summary.replied.append(node)
            if not replied:
                unconfirmed.extend(ids)
            for tid in ids:
                if tid not in at:
                    at[tid] = rec.mono_ns
                    summary.revoked.append(tid)
                    if tid in open_runs:
                        summary.running_at_revoke.append(tid)
            continue
        tid = rec.task_id
        if tid is None:
            continue
        if rec.kind is Kind.STARTED:
            open_runs.add(tid)
            if tid in at and tid not in summary.ran:
                summary.ran[tid] = RunAfterRevoke(
                    host=rec.host, after_s=round((rec.mono_ns - at[tid]) / 1e9, 3),
                    redelivered=rec.redelivered)
        elif rec.ends_run:
            open_runs.discard(tid)
            if rec.kind is Kind.REVOKED and tid in at:
                summary.discarded.setdefault(tid, rec.host)
    summary.unseen = [t for t in summary.revoked
                      if t not in summary.ran and t not in summary.discarded]
    problems: list[str] = []
    if summary.ran:
        runs = [f"{t} (on {r.host}, {r.after_s} s after the revoke)"
                for t, r in summary.ran.items()]
        problems.append(f"{len(runs)} revoked tasks ran: {_listed(runs)}")
    if not summary.revoked:
        problems.append("no revoke in the history: nothing was tested")
    if unconfirmed:
        problems.append(f"no worker confirmed the revoke of {_listed(unconfirmed)}: it may "
                        "never have reached one")
    if summary.ran:
        verdict = Verdict.INVALID
    else:
        verdict = Verdict.UNKNOWN if problems else Verdict.VALID
    return InvariantResult(name=NAME, verdict=verdict,
                           summary=summary.model_dump(mode="json"), problems=problems)


def revoked_never_run() -> Checker:
    """The "revoked tasks never run" invariant as a :data:`Checker` for ``Scenario.check``."""

    def checker(history: History) -> InvariantResult:
        return check_revokes(history)

    return with_spec(checker, "revoked_never_run")
