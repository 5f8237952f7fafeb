"""The "retry policy" invariant: how often, how far apart, and how a retried task ended.

For every task id whose name has a declared :class:`RetryPolicy`, from the history:

- **retry publishes**: ``invoke`` records with ``retries >= 1`` (Celery republishes the
  same id; the recorder stores the message's ``retries`` and ``eta`` headers). The retry
  numbered ``m`` is published by attempt ``m - 1``;
- **countdown** of retry ``m``: its ``eta`` minus the publish's ``wall_ns`` (no ``eta``
  means 0: Celery sends no ETA for a zero countdown). It must lie within the policy's
  bounds for ``n = m - 1``, give or take ``tolerance_s`` (the time between Celery
  computing the ETA and the recorder writing the record);
- **spacing**: the first ``started`` with ``retries == m`` comes no sooner than the
  countdown after the publish (``mono_ns``), nor before the ``eta`` (``wall_ns``); only
  ``tolerance_s`` of slack downward, any amount upward (scheduling is never early);
- **lost retry**: a retry that never started once the deployment is quiet (complete
  drain). Its publish may have been acknowledged (``ok``) or not: when the broker is down
  during ``self.retry``, Celery raises ``Reject(requeue=False)`` and drops the task;
- **count**: no more than ``max_retries`` retries;
- **outcome**: the final end record (``succeeded`` or ``failed:<exc_type>``) and the
  number of retries, compared with ``expect`` when given.

Without a complete drain an unresolved retry is pending and the verdict is at best
``unknown``. Pure function of the history; see ``docs/invariants.md``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from celery_chaos.checks.queue import drain_state
from celery_chaos.checks.verdict import Checker, InvariantResult, Verdict, with_spec
from celery_chaos.history.schema import Kind, Record
from celery_chaos.history.store import History

NAME = "retry_policy"
#: Seconds a retry may start before its countdown (clock reads, scheduling).
DEFAULT_TOLERANCE_S = 0.25


@dataclass(frozen=True)
class Fixed:
    """``self.retry(countdown=seconds)``: every retry waits exactly ``seconds``."""

    seconds: float

    def bounds(self, n: int) -> tuple[float, float]:
        """(lowest, highest) countdown of the retry published by attempt ``n``."""
        return (self.seconds, self.seconds)

    def describe(self) -> str:
        return f"fixed {self.seconds:g} s"


@dataclass(frozen=True)
class Backoff:
    """``retry_backoff=factor, retry_backoff_max=maximum, retry_jitter=jitter``.

    Celery's ``get_exponential_backoff_interval``: ``d = min(maximum, factor * 2**n)``;
    with jitter the countdown is ``randrange(d + 1)``, i.e. a whole number in ``[0, d]``.
    """

    factor: int = 1
    maximum: int = 600
    jitter: bool = True

    def bounds(self, n: int) -> tuple[float, float]:
        d = float(min(self.maximum, self.factor * 2**n))
        return (0.0, d) if self.jitter else (d, d)

    def describe(self) -> str:
        j = "jitter" if self.jitter else "no jitter"
        return f"min({self.maximum}, {self.factor}*2^n) s, {j}"


@dataclass(frozen=True)
class RetryPolicy:
    """What a task promises about its retries."""

    task_name: str
    countdown: Fixed | Backoff
    max_retries: int | None = 3


@dataclass(frozen=True)
class Expected:
    """The exact retries and final outcome one task id must show."""

    retries: int
    outcome: str  # "succeeded" or "failed:<ExcType>"


class PolicySummary(BaseModel):
    """A declared policy, in words."""

    countdown: str
    max_retries: int | None


class RetriedTask(BaseModel):
    """One task id under a policy: its retries, their countdowns and spacing, its outcome."""

    task_name: str | None
    retries: int
    retried_records: int
    #: ``succeeded``, ``failed:<exc_type>``, or ``none`` (no final outcome).
    outcome: str
    countdowns_s: list[float]
    #: Per retry: publish -> first start, in seconds (None: the retry never started).
    gaps_s: list[float | None]
    lost_retries: list[int]


class RetrySummary(BaseModel):
    """The summary of :func:`check_retries`: ``InvariantResult.summary_as(RetrySummary)``."""

    policies: dict[str, PolicySummary]
    tolerance_s: float
    tasks: dict[str, RetriedTask]
    lost_retries: int
    notes: list[str]


@dataclass
class _Task:
    name: str | None = None
    publishes: dict[int, Record] = field(default_factory=dict)  # retry number -> first invoke
    acked: set[int] = field(default_factory=set)  # retry numbers whose publish got an ok
    starts: dict[int, list[Record]] = field(default_factory=lambda: defaultdict(list))
    retried: int = 0
    end: Record | None = None


def _eta_ns(eta: str | None) -> int | None:
    if not eta:
        return None
    try:
        return int(datetime.fromisoformat(eta).timestamp() * 1e9)
    except ValueError:
        return None


def _outcome(rec: Record | None) -> str:
    if rec is None:
        return "none"
    if rec.kind is Kind.FAILED:
        return f"failed:{rec.exc_type}"
    return rec.kind.value


def _collect(history: History) -> dict[str, _Task]:
    tasks: dict[str, _Task] = defaultdict(_Task)
    last_invoke: dict[tuple[str, int], int] = {}  # (id, pid) -> retry number of its last invoke
    for rec in history.records:
        tid = rec.task_id
        if tid is None:
            continue
        t = tasks[tid]
        t.name = t.name or rec.task_name
        if rec.kind is Kind.INVOKE:
            m = rec.retries or 0
            last_invoke[(tid, rec.pid)] = m
            if m >= 1:
                t.publishes.setdefault(m, rec)
        elif rec.kind is Kind.OK:
            m = last_invoke.get((tid, rec.pid), 0)
            if m >= 1:
                t.acked.add(m)
        elif rec.kind is Kind.STARTED:
            t.starts[rec.retries or 0].append(rec)
        elif rec.kind is Kind.RETRIED:
            t.retried += 1
        elif rec.kind in (Kind.SUCCEEDED, Kind.FAILED) and not rec.is_worker_lost:
            t.end = rec
    return tasks


def check_retries(
    history: History,
    policies: Iterable[RetryPolicy],
    *,
    expect: Mapping[str, Expected] | None = None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    name: str = NAME,
) -> InvariantResult:
    """Check every task id of a declared task name against its policy (see module doc)."""
    by_name = {p.task_name: p for p in policies}
    expect = dict(expect or {})
    complete = drain_state(history) == "complete"
    tol = int(tolerance_s * 1e9)
    problems: list[str] = []
    pending: list[str] = []
    notes: list[str] = []
    per_id: dict[str, RetriedTask] = {}
    for tid, t in sorted(_collect(history).items()):
        policy = by_name.get(t.name or "")
        if policy is None:
            continue
        countdowns: list[float] = []
        gaps: list[float | None] = []
        lost: list[int] = []
        for m in sorted(t.publishes):
            pub = t.publishes[m]
            lo, hi = policy.countdown.bounds(m - 1)
            eta = _eta_ns(pub.eta)
            c_ns = eta - pub.wall_ns if eta is not None else 0
            countdowns.append(round(c_ns / 1e9, 3))
            if not (lo * 1e9 - tol <= c_ns <= hi * 1e9 + tol):
                problems.append(
                    f"{tid}: retry {m} has a countdown of {c_ns / 1e9:.3f} s, outside "
                    f"[{lo:g}, {hi:g}] s ({policy.countdown.describe()})"
                )
            later = [s for s in t.starts.get(m, []) if s.mono_ns >= pub.mono_ns]
            if not later:
                gaps.append(None)
                lost.append(m)
                continue
            start = later[0]
            gap_ns = start.mono_ns - pub.mono_ns
            gaps.append(round(gap_ns / 1e9, 3))
            need_ns = max(lo * 1e9, c_ns)
            early_eta = eta is not None and start.wall_ns < eta - tol
            if gap_ns < need_ns - tol or early_eta:
                problems.append(
                    f"{tid}: retry {m} started {gap_ns / 1e9:.3f} s after it was published, "
                    f"sooner than its countdown ({need_ns / 1e9:.3f} s)"
                )
            if len(t.starts.get(m, [])) > 1:
                notes.append(f"{tid}: attempt {m} started {len(t.starts[m])} times")
        n_retries = len(t.publishes)
        for m in lost:
            acked = "acknowledged" if m in t.acked else "never acknowledged (publish failed)"
            msg = (
                f"{tid}: retry {m} never started; its publish was {acked}; "
                f"the task ended {_outcome(t.end)}"
            )
            if complete:
                problems.append(f"lost retry: {msg}")
            else:
                pending.append(msg)
        if policy.max_retries is not None and n_retries > policy.max_retries:
            problems.append(
                f"{tid}: retried {n_retries} times, more than max_retries={policy.max_retries}"
            )
        if t.end is None and not lost:
            msg = f"{tid}: no final outcome after {n_retries} retries"
            (problems if complete else pending).append(msg)
        outcome = _outcome(t.end)
        want = expect.pop(tid, None)
        if want is not None and (want.retries, want.outcome) != (n_retries, outcome):
            problems.append(
                f"{tid}: expected {want.retries} retries then {want.outcome}, "
                f"saw {n_retries} retries then {outcome}"
            )
        per_id[tid] = RetriedTask(
            task_name=t.name,
            retries=n_retries,
            retried_records=t.retried,
            outcome=outcome,
            countdowns_s=countdowns,
            gaps_s=gaps,
            lost_retries=lost,
        )
    for tid in sorted(expect):
        problems.append(f"{tid}: expected by the scenario but absent from the history")
    if problems:
        verdict = Verdict.INVALID
    elif pending:
        verdict = Verdict.UNKNOWN
        problems.append("verdict cannot be valid: the final drain was missing or incomplete")
        problems.extend(pending)
    else:
        verdict = Verdict.VALID
    summary = RetrySummary(
        policies={
            p.task_name: PolicySummary(countdown=p.countdown.describe(), max_retries=p.max_retries)
            for p in by_name.values()
        },
        tolerance_s=tolerance_s,
        tasks=per_id,
        lost_retries=sum(len(v.lost_retries) for v in per_id.values()),
        notes=notes,
    )
    return InvariantResult(
        name=name, verdict=verdict, summary=summary.model_dump(mode="json"), problems=problems
    )


def retry_policy(
    *policies: RetryPolicy,
    expect: Mapping[str, Expected] | None = None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    name: str = NAME,
) -> Checker:
    """A :data:`~celery_chaos.checks.verdict.Checker` for ``Scenario.check(invariants=[...])``."""

    def checker(history: History) -> InvariantResult:
        return check_retries(
            history, policies, expect=expect, tolerance_s=tolerance_s, name=name
        )

    checker.__name__ = name
    return with_spec(
        checker,
        NAME,
        policies=[policy_to_json(p) for p in policies],
        expect={k: asdict(v) for k, v in (expect or {}).items()},
        tolerance_s=tolerance_s,
        name=name,
    )


def policy_to_json(policy: RetryPolicy) -> dict[str, Any]:
    """A policy as JSON, for the scenario's stored checker spec."""
    kind = "fixed" if isinstance(policy.countdown, Fixed) else "backoff"
    return {**asdict(policy), "countdown": {"kind": kind, **asdict(policy.countdown)}}


def policy_from_json(data: dict[str, Any]) -> RetryPolicy:
    """The inverse of :func:`policy_to_json`."""
    countdown = dict(data["countdown"])
    kind = countdown.pop("kind")
    cd: Fixed | Backoff = Fixed(**countdown) if kind == "fixed" else Backoff(**countdown)
    # A missing max_retries is the dataclass's default (3), as in Python; null is no limit.
    return RetryPolicy(data["task_name"], cd, data.get("max_retries", 3))
