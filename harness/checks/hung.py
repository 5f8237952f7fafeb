"""The "no hung task" invariant: every task run ends within a declared bound.

A *run* is one ``started`` record (task_prerun in the pool child). It ends at the
next record about the same id that closes it:

- an end record: ``succeeded``, ``failed`` (any exception, including
  ``TimeLimitExceeded`` and ``WorkerLostError``), ``retried``, ``revoked``, ``rejected``;
- a ``kill_worker`` / ``kill_pool_child`` fault whose ``detail.pid`` is the run's
  pool child or worker main process (the run died with its process);
- a later ``started`` of the same id (a redelivery superseded it: what happened to the
  first run is unknown, so it ends there).

A run that is still open at the check time (the last ``drain`` record, else the last
record) has been open from its start until then. A run is **hung** when it stayed open
longer than ``bound_s``, whether it ended late or never ended. Pure function of the
history; see ``docs/invariants.md``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from pydantic import BaseModel

from celery_chaos.checks.verdict import Checker, InvariantResult, Verdict, with_spec
from celery_chaos.history.schema import Kind, Record
from celery_chaos.history.store import History

NAME = "no_hung_task"

#: Faults that kill the process (``detail.pid``) a run lives in.
KILL_FAULTS = frozenset({"kill_worker", "kill_pool_child", "terminate_worker"})
#: How many hung runs a problem list names one by one.
MAX_LISTED = 10


class HungSummary(BaseModel):
    """The summary of :func:`check_hung`: ``InvariantResult.summary_as(HungSummary)``."""

    bound_s: float
    runs: int
    #: Every hung task id -> how long its longest run was open, in seconds.
    hung: dict[str, float]
    hung_still_running: list[str]
    #: Runs still open at the check but younger than the bound (they may yet hang).
    open_within_bound: list[str]
    #: How runs ended (``succeeded``, ``died``, ``superseded``, ``open``...) -> how many.
    endings: dict[str, int]
    longest_run_s: float


@dataclass
class Run:
    """One execution of a task: its ``started`` record and how it ended (if it did)."""

    start: Record
    end_ns: int | None = None
    ended_by: str | None = None  # "succeeded", "failed:TimeLimitExceeded", "died", ...

    @property
    def task_id(self) -> str:
        return self.start.task_id or ""

    def open_for_ns(self, check_ns: int) -> int:
        """From the start to the end (or to ``check_ns`` when still open)."""
        return (self.end_ns if self.end_ns is not None else check_ns) - self.start.mono_ns


def _ending(rec: Record) -> str:
    if rec.kind is Kind.FAILED and rec.exc_type:
        return f"failed:{rec.exc_type}"
    return rec.kind.value


def check_time_ns(history: History) -> int:
    """The check time: the last ``drain`` record, else the last record (0 if empty)."""
    drains = [r.mono_ns for r in history.records if r.kind is Kind.DRAIN]
    if drains:
        return drains[-1]
    return history.records[-1].mono_ns if history.records else 0


def task_runs(history: History) -> list[Run]:
    """Every run in the history, in start order, each closed as the module docstring says."""
    runs: list[Run] = []
    open_runs: dict[str, Run] = {}
    for rec in history.records:
        tid = rec.task_id
        if rec.kind is Kind.STARTED and tid is not None:
            prev = open_runs.pop(tid, None)
            if prev is not None:
                prev.end_ns, prev.ended_by = rec.mono_ns, "superseded"
            run = Run(rec)
            runs.append(run)
            open_runs[tid] = run
        elif rec.ends_run and tid is not None:
            run = open_runs.pop(tid, None)
            if run is not None:
                run.end_ns, run.ended_by = rec.mono_ns, _ending(rec)
        elif rec.kind is Kind.FAULT and rec.phase == "start" and rec.name in KILL_FAULTS:
            pid = rec.detail.get("pid")
            for tid_open, run in list(open_runs.items()):
                if pid is not None and pid in (run.start.pid, run.start.worker_pid):
                    run.end_ns, run.ended_by = rec.mono_ns, "died"
                    del open_runs[tid_open]
    return runs


def _describe(run: Run, check_ns: int) -> str:
    s = run.start
    secs = run.open_for_ns(check_ns) / 1e9
    where = f"{s.host} pid {s.pid}"
    if run.end_ns is None:
        how = f"had no end record for {secs:.1f} s (still running at the check)"
    else:
        how = f"ended only after {secs:.1f} s ({run.ended_by})"
    return f"task {run.task_id} ({s.task_name}) on {where} {how}"


def check_hung(history: History, bound_s: float, *, name: str = NAME) -> InvariantResult:
    """``invalid`` if some run stayed open longer than ``bound_s``.

    ``unknown`` if none did but some run is still open and younger than the bound at
    the check time (it may yet hang); ``valid`` otherwise. The summary names every
    hung run by task id with how long it was open (``hung``: id -> seconds, the longest
    run of the id) and counts how runs ended.
    """
    if bound_s <= 0:
        raise ValueError("bound_s must be > 0")
    check_ns = check_time_ns(history)
    bound_ns = int(bound_s * 1e9)
    runs = task_runs(history)
    hung_runs = [r for r in runs if r.open_for_ns(check_ns) > bound_ns]
    young = sorted(
        {r.task_id for r in runs if r.end_ns is None and r.open_for_ns(check_ns) <= bound_ns}
    )
    hung: dict[str, float] = {}
    for r in hung_runs:
        secs = round(r.open_for_ns(check_ns) / 1e9, 3)
        hung[r.task_id] = max(secs, hung.get(r.task_id, 0.0))
    endings = Counter(r.ended_by or "open" for r in runs)
    problems = [_describe(r, check_ns) for r in hung_runs[:MAX_LISTED]]
    if len(hung_runs) > MAX_LISTED:
        problems.append(f"... (+{len(hung_runs) - MAX_LISTED} more hung runs)")
    summary = HungSummary(
        bound_s=bound_s,
        runs=len(runs),
        hung=dict(sorted(hung.items())),
        hung_still_running=sorted({r.task_id for r in hung_runs if r.end_ns is None}),
        open_within_bound=young,
        endings=dict(sorted(endings.items())),
        longest_run_s=round(max((r.open_for_ns(check_ns) for r in runs), default=0) / 1e9, 3),
    )
    if hung_runs:
        verdict = Verdict.INVALID
    elif young:
        verdict = Verdict.UNKNOWN
        problems.append(
            f"{len(young)} run(s) still open but younger than {bound_s:g} s at the check: "
            "observe longer to decide"
        )
    else:
        verdict = Verdict.VALID
    return InvariantResult(
        name=name, verdict=verdict, summary=summary.model_dump(mode="json"), problems=problems
    )


def no_hung_tasks(bound_s: float, *, name: str = NAME) -> Checker:
    """A :data:`~celery_chaos.checks.verdict.Checker` for ``Scenario.check(invariants=[...])``."""

    def checker(history: History) -> InvariantResult:
        return check_hung(history, bound_s, name=name)

    checker.__name__ = name
    return with_spec(checker, "no_hung_tasks", bound_s=bound_s, name=name)
