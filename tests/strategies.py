"""Hypothesis strategies for histories with planted ground truth, reusable by checkers' tests.

Each task id gets a *fate* (a short script of records: publish, deliveries,
executions) whose classification is known by construction. The per-task
scripts are interleaved at random and stamped with increasing ``mono_ns``,
harness records (scenario, faults, drains) are added, and the result is a
:class:`Planted`: the :class:`History` plus the expected id sets.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from celery_chaos.history.schema import Kind, Record
from celery_chaos.history.store import History

APP_EXCEPTIONS = ("ValueError", "MaxRetriesExceededError", "TimeLimitExceeded", "KeyError")
PUBLISHERS = (("publisher", "publisher"), ("beat", "beat"), ("worker", "w1@chaos"))
WORKERS = ("w1@chaos", "w2@chaos")

Event = tuple[Kind, dict[str, Any]]


@dataclass
class Planted:
    """A generated history and what a correct checker must say about it."""

    history: History
    drain: str  # "complete" | "incomplete" | "missing"
    fates: dict[str, str] = field(default_factory=dict)  # id -> fate name
    attempted: set[str] = field(default_factory=set)
    acknowledged: set[str] = field(default_factory=set)
    indeterminate: set[str] = field(default_factory=set)
    publish_failed: set[str] = field(default_factory=set)
    succeeded: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)  # completed, every completion an app failure
    missing: set[str] = field(default_factory=set)  # acknowledged, never completed
    missing_worker_lost: set[str] = field(default_factory=set)
    missing_rejected: set[str] = field(default_factory=set)  # missing, rejected without requeue
    duplicated: dict[str, int] = field(default_factory=dict)
    reexecuted: dict[str, int] = field(default_factory=dict)
    unexpected: set[str] = field(default_factory=set)
    recovered: set[str] = field(default_factory=set)
    revoked: set[str] = field(default_factory=set)
    rejected: set[str] = field(default_factory=set)

    @property
    def completed(self) -> set[str]:
        return self.succeeded | self.failed

    @property
    def lost(self) -> set[str]:
        return self.missing if self.drain == "complete" else set()

    @property
    def lost_worker_lost(self) -> set[str]:
        return self.missing_worker_lost if self.drain == "complete" else set()

    @property
    def rejected_lost(self) -> set[str]:
        return self.missing_rejected if self.drain == "complete" else set()

    @property
    def pending(self) -> set[str]:
        return set() if self.drain == "complete" else self.missing

    def expected_verdict(self, exactly_once: bool = False) -> str:
        definite = bool(self.unexpected) or (exactly_once and bool(self.duplicated))
        if self.drain != "complete":
            return "invalid" if definite else "unknown"
        if definite or self.missing:
            return "invalid"
        # a run that tested nothing (publishes attempted, none acknowledged, none completed)
        return "unknown" if self.attempted and not (self.acknowledged or self.completed) \
            else "valid"


# -- fates: (draw, id) -> (events, truth updates) ------------------------------------------


def _pub(draw: st.DrawFn, outcome: Kind | None) -> list[Event]:
    role, host = draw(st.sampled_from(PUBLISHERS))
    who = {"role": role, "host": host}
    events: list[Event] = [(Kind.INVOKE, who)]
    if outcome is not None:
        events.append((outcome, who))
    return events


def _run(draw: st.DrawFn, end: Kind | None, exc: str | None = None, **extra: Any) -> list[Event]:
    w = {"role": "worker", "host": draw(st.sampled_from(WORKERS)), **extra}
    events: list[Event] = []
    if draw(st.booleans()):
        events.append((Kind.RECEIVED, w))
    events.append((Kind.STARTED, w))
    if end is not None:
        events.append((end, {**w, "exc_type": exc} if exc else w))
    return events


def _done(draw: st.DrawFn) -> tuple[list[Event], bool]:
    """One completed execution: (events, succeeded?)."""
    if draw(st.integers(0, 3)) == 0:
        return _run(draw, Kind.FAILED, draw(st.sampled_from(APP_EXCEPTIONS))), False
    return _run(draw, Kind.SUCCEEDED), True


Truth = dict[str, Any]
FateFn = Callable[[st.DrawFn], tuple[list[Event], Truth]]


def _clean(draw: st.DrawFn) -> tuple[list[Event], Truth]:
    run, ok = _done(draw)
    return _pub(draw, Kind.OK) + run, {"ack": True, "outcome": ok}


def _retried(draw: st.DrawFn) -> tuple[list[Event], Truth]:
    k = draw(st.integers(1, 3))
    events = _pub(draw, Kind.OK)
    for i in range(k):
        events += _run(draw, Kind.RETRIED, "Retry", retries=i)
        # the retry republishes the same id from the worker
        events += [(Kind.INVOKE, {"role": "worker", "host": "w1@chaos"})]
        events += [(Kind.OK, {"role": "worker", "host": "w1@chaos"})]
    run, ok = _done(draw)
    return events + run, {"ack": True, "outcome": ok, "starts": k + 1}


def _redelivered_after_worker_lost(draw: st.DrawFn) -> tuple[list[Event], Truth]:
    k = draw(st.integers(1, 3))
    events = _pub(draw, Kind.OK)
    for _ in range(k):
        events += _run(draw, Kind.FAILED, "WorkerLostError")
    run, ok = _done(draw)
    return events + run, {"ack": True, "outcome": ok, "starts": k + 1}


def _redelivered_silently(draw: st.DrawFn) -> tuple[list[Event], Truth]:
    # acks_late + reject_on_worker_lost: the lost attempt leaves only a start
    events = _pub(draw, Kind.OK) + _run(draw, None)
    run, ok = _done(draw)
    return events + run, {"ack": True, "outcome": ok, "starts": 2}


def _lost_unstarted(draw: st.DrawFn) -> tuple[list[Event], Truth]:
    events = _pub(draw, Kind.OK)
    if draw(st.booleans()):
        events.append((Kind.RECEIVED, {"role": "worker", "host": "w1@chaos"}))
    return events, {"ack": True, "missing": True}


def _lost_worker_lost(draw: st.DrawFn) -> tuple[list[Event], Truth]:
    k = draw(st.integers(1, 3))
    events = _pub(draw, Kind.OK)
    for _ in range(k):
        events += _run(draw, Kind.FAILED, "WorkerLostError")
    return events, {"ack": True, "missing": True, "worker_lost": True, "starts": k}


def _lost_started(draw: st.DrawFn) -> tuple[list[Event], Truth]:
    return _pub(draw, Kind.OK) + _run(draw, None), {"ack": True, "missing": True, "starts": 1}


def _duplicated(draw: st.DrawFn) -> tuple[list[Event], Truth]:
    n = draw(st.integers(2, 3))
    events = _pub(draw, Kind.OK)
    any_ok = False
    for _ in range(n):
        run, ok = _done(draw)
        events += run
        any_ok |= ok
    return events, {"ack": True, "outcome": any_ok, "completions": n, "starts": n}


def _unexpected(draw: st.DrawFn) -> tuple[list[Event], Truth]:
    n = draw(st.integers(1, 2))
    events: list[Event] = []
    any_ok = False
    for _ in range(n):
        run, ok = _done(draw)
        events += run
        any_ok |= ok
    return events, {"attempted": False, "outcome": any_ok, "completions": n, "starts": n}


def _unacked(kind: Kind | None, completes: bool) -> FateFn:
    def fate(draw: st.DrawFn) -> tuple[list[Event], Truth]:
        events = _pub(draw, kind)
        truth: Truth = {"publish": kind}
        if completes:
            run, ok = _done(draw)
            events += run
            truth["outcome"] = ok
        elif draw(st.booleans()):  # ran and was lost: still not "lost" (never acknowledged)
            events += _run(draw, Kind.FAILED, "WorkerLostError")
            truth["starts"] = 1
        return events, truth

    return fate


def _republished(draw: st.DrawFn) -> tuple[list[Event], Truth]:
    # the same id published several times (a client retrying its publish), then run once
    results = draw(st.lists(st.sampled_from([Kind.OK, Kind.INFO, Kind.FAIL, None]), min_size=2,
                            max_size=3))
    events = [e for r in results for e in _pub(draw, r)]
    run, ok = _done(draw)
    truth: Truth = {"outcome": ok}
    if Kind.OK in results:
        truth["ack"] = True
    else:
        truth["publish"] = Kind.INFO if (Kind.INFO in results or None in results) else Kind.FAIL
    return events + run, truth


def _revoked(draw: st.DrawFn) -> tuple[list[Event], Truth]:
    events = _pub(draw, Kind.OK) + [(Kind.REVOKED, {"role": "worker", "host": "w1@chaos"})]
    return events, {"ack": True, "revoked": True}


#: How Celery 5.7 records a rejection without requeue: task_unknown (an unregistered name: no
#: ``received`` first), task_rejected (a content type not accepted; a message not a task).
REJECTIONS: tuple[dict[str, Any], ...] = (
    {"reason": "unknown task", "exc_type": "KeyError"},
    {"reason": "rejected", "exc_type": "ContentDisallowed",
     "exc_message": "Refusing to deserialize untrusted content of type pickle"},
    {"reason": "rejected"},
)


def _rejection(draw: st.DrawFn) -> list[Event]:
    w = {"role": "worker", "host": draw(st.sampled_from(WORKERS))}
    how = draw(st.sampled_from(REJECTIONS))
    return [(Kind.REJECTED, {**w, **how})]


def _rejected(draw: st.DrawFn) -> tuple[list[Event], Truth]:
    # acknowledged, then dropped by a worker (a redelivery may come first): lost to the sender
    events = _pub(draw, Kind.OK)
    starts = 0
    if draw(st.booleans()):
        events += _run(draw, Kind.FAILED, "WorkerLostError")
        starts = 1
    events += _rejection(draw)
    truth: Truth = {"ack": True, "rejected": True, "missing": True, "rejected_lost": True}
    if starts:
        truth["worker_lost"] = True
    return events, truth


def _rejected_in_task(draw: st.DrawFn) -> tuple[list[Event], Truth]:
    # the task raised Reject(requeue=False) (e.g. its retry could not be published)
    events = _pub(draw, Kind.OK) + _run(draw, Kind.FAILED, "Reject")
    return events, {"ack": True, "missing": True, "worker_lost": True, "rejected_lost": True}


def _rejected_then_republished(draw: st.DrawFn) -> tuple[list[Event], Truth]:
    # the sender saw the rejection and published the same id again, once the workers knew it
    events = _pub(draw, Kind.OK) + _rejection(draw) + _pub(draw, Kind.OK)
    run, ok = _done(draw)
    return events + run, {"ack": True, "outcome": ok, "rejected": True}


def _rejected_unacknowledged(draw: st.DrawFn) -> tuple[list[Event], Truth]:
    # the publish outcome is unknown: the sender was never told it was accepted
    kind = draw(st.sampled_from([Kind.INFO, None]))
    return _pub(draw, kind) + _rejection(draw), {"publish": Kind.INFO, "rejected": True}


#: Fates after which every acknowledged id has completed exactly once.
CLEAN_FATES: dict[str, FateFn] = {
    "clean": _clean,
    "retried": _retried,
    "redelivered_after_worker_lost": _redelivered_after_worker_lost,
    "redelivered_silently": _redelivered_silently,
    "info_completed": _unacked(Kind.INFO, True),
    "info_not_completed": _unacked(Kind.INFO, False),
    "fail_completed": _unacked(Kind.FAIL, True),
    "fail_not_completed": _unacked(Kind.FAIL, False),
    "open_completed": _unacked(None, True),
    "open_not_completed": _unacked(None, False),
    "republished": _republished,
    "rejected_then_republished": _rejected_then_republished,
    "rejected_unacknowledged": _rejected_unacknowledged,
}
#: Every fate, including the anomalies.
ALL_FATES: dict[str, FateFn] = {
    **CLEAN_FATES,
    "lost_unstarted": _lost_unstarted,
    "lost_started": _lost_started,
    "lost_worker_lost": _lost_worker_lost,
    "duplicated": _duplicated,
    "unexpected": _unexpected,
    "revoked": _revoked,
    "rejected": _rejected,
    "rejected_in_task": _rejected_in_task,
}


def _apply_truth(p: Planted, tid: str, truth: Truth) -> None:
    if truth.get("attempted", True):
        p.attempted.add(tid)
    if truth.get("ack"):
        p.acknowledged.add(tid)
    elif "publish" in truth:
        (p.publish_failed if truth["publish"] is Kind.FAIL else p.indeterminate).add(tid)
    if "outcome" in truth:
        (p.succeeded if truth["outcome"] else p.failed).add(tid)
        if truth.get("attempted", True) and not truth.get("ack"):
            p.recovered.add(tid)
    if truth.get("missing"):
        p.missing.add(tid)
    if truth.get("worker_lost"):
        p.missing_worker_lost.add(tid)
    if truth.get("rejected_lost"):
        p.missing_rejected.add(tid)
    if truth.get("completions", 1) > 1:
        p.duplicated[tid] = truth["completions"]
    if truth.get("starts", 1) > 1:
        p.reexecuted[tid] = truth["starts"]
    if not truth.get("attempted", True):
        p.unexpected.add(tid)
    if truth.get("revoked"):
        p.revoked.add(tid)
    if truth.get("rejected"):
        p.rejected.add(tid)


def _record(kind: Kind, mono: int, task_id: str | None, fields: dict[str, Any]) -> Record:
    role = fields.get("role", "harness")
    host = fields.get("host", role)
    pid = 1000 + zlib.crc32(f"{role}/{host}".encode()) % 1000
    extra = {k: v for k, v in fields.items() if k not in ("role", "host")}
    return Record(
        kind=kind,
        wall_ns=1_700_000_000_000_000_000 + mono,
        mono_ns=mono,
        pid=pid,
        host=host,
        role=role,
        task_id=task_id,
        task_name="celery_chaos.sample_app.tasks.work" if task_id else None,
        **extra,
    )


@st.composite
def planted_histories(
    draw: st.DrawFn,
    fates: dict[str, FateFn] | None = None,
    max_tasks: int = 40,
    drains: st.SearchStrategy[list[bool]] | None = None,
) -> Planted:
    """A history whose tasks follow randomly drawn ``fates``, with the ground truth.

    ``drains`` draws the drain records' ``complete`` flags in order (the last
    one decides); by default anything, including none.
    """
    fates = ALL_FATES if fates is None else fates
    names = sorted(fates)
    chosen = draw(st.lists(st.sampled_from(names), min_size=0, max_size=max_tasks))
    flags = draw(drains if drains is not None else st.lists(st.booleans(), max_size=2))
    drain = "missing" if not flags else ("complete" if flags[-1] else "incomplete")
    planted = Planted(history=History(records=[]), drain=drain)

    scripts: list[tuple[str | None, list[Event]]] = []
    for i, name in enumerate(chosen):
        tid = f"task-{i:04d}"
        planted.fates[tid] = name
        events, truth = fates[name](draw)
        _apply_truth(planted, tid, truth)
        scripts.append((tid, events))
    n_faults = draw(st.integers(0, 2))
    for _ in range(n_faults):
        scripts.append(
            (None, [(Kind.FAULT, {"name": "kill_worker", "phase": p}) for p in ("start", "end")])
        )

    # Interleave the scripts at random, keeping each one's order.
    rnd: random.Random = draw(st.randoms(use_true_random=False))
    queues = [list(reversed(events)) for _, events in scripts]
    ids = [tid for tid, _ in scripts]
    live = [i for i, q in enumerate(queues) if q]
    merged: list[tuple[str | None, Event]] = []
    while live:
        j = rnd.randrange(len(live))
        i = live[j]
        merged.append((ids[i], queues[i].pop()))
        if not queues[i]:
            live[j] = live[-1]
            live.pop()

    mono = 1_000_000
    records = [_record(Kind.SCENARIO, mono, None, {"name": "generated", "phase": "start"})]
    for tid, (kind, fields) in merged:
        mono += rnd.randint(1, 5_000_000)
        records.append(_record(kind, mono, tid, fields))
    for flag in flags:
        mono += 1_000
        records.append(_record(Kind.DRAIN, mono, None, {"detail": {"complete": flag}}))
    planted.history = History(records=records, torn_lines=draw(st.integers(0, 1)))
    return planted


def clean_histories(max_tasks: int = 40) -> st.SearchStrategy[Planted]:
    """Histories where every acknowledged id completes exactly once, with a complete drain."""
    return planted_histories(
        fates=CLEAN_FATES,
        max_tasks=max_tasks,
        drains=st.lists(st.booleans(), max_size=2).map(lambda f: [*f, True]),
    )
