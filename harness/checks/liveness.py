"""Liveness after network faults: workers resume consuming, publishes stay bounded.

Pure functions of a history (docs/history.md), for scenarios that heal a network fault
(``celery_chaos.faults.vocabulary``):

- :func:`check_resume_consuming` / :func:`resume_consuming`: after a heal, a live worker
  that stays idle (no task record, nothing running) for longer than ``bound_s`` while its
  broker holds ready messages is flagged (the "worker never consumes again" class of bugs:
  celery/celery#9705, #8030, #10205). Ready counts come from the ``queue_depth`` records
  that :class:`~celery_chaos.deployment.sampler.QueueDepthSampler` writes straight from the broker.
- :func:`check_publish_bounded` / :func:`publish_bounded`: no publish took, or hung, longer
  than ``bound_s`` (a producer blocked on a dead socket).
- :func:`heal_to_full_throughput`: from a heal to the moment task completions are back at
  the rate they had before the fault (a measure, not an invariant).

See docs/network.md for the semantics in prose.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from pydantic import BaseModel, Field

from celery_chaos.checks.verdict import Checker, InvariantResult, Verdict, with_spec
from celery_chaos.history.schema import WORKER_KINDS, Kind, Record
from celery_chaos.history.store import History

RESUME = "workers_resume_consuming"
PUBLISH = "publish_bounded"
S = 1_000_000_000

#: Task records a worker (main process or pool child) writes: each one is activity.
_ACTIVITY = WORKER_KINDS
#: Faults during which a worker is not expected to consume (it is dead or frozen).
_DOWN_FAULTS = frozenset({"kill_worker", "terminate_worker", "pause_worker"})
_OUTCOMES = frozenset({Kind.OK, Kind.FAIL, Kind.INFO})


def _s(ns: int | None) -> float | None:
    return None if ns is None else round(ns / S, 3)


#: Broker faults whose end (the broker back) is a heal too: workers must consume again.
_BROKER_FAULTS = frozenset({"crash_broker", "stop_broker", "pause_broker"})


def is_network_fault(rec: Record) -> bool:
    """A fault record written by a link or packet fault of :mod:`celery_chaos.faults.vocabulary`."""
    return rec.kind is Kind.FAULT and "links" in rec.detail


def is_connection_fault(rec: Record) -> bool:
    """A fault that cuts the workers from the broker: a network fault or a broker outage."""
    return is_network_fault(rec) or (rec.kind is Kind.FAULT and rec.name in _BROKER_FAULTS)


def heals(history: History) -> list[Record]:
    """The ``end`` records of network faults (partitions, latency, bandwidth, packets) and
    broker outages (crash, stop, pause: the broker is back or thawed), in order."""
    return [r for r in history.records if is_connection_fault(r) and r.phase == "end"]


def fault_start(history: History, end: Record) -> Record | None:
    """The ``start`` record matching a fault ``end`` record (same name and target)."""
    found: Record | None = None
    for rec in history.records:
        if rec.mono_ns > end.mono_ns:
            break
        if (
            rec.kind is Kind.FAULT
            and rec.phase == "start"
            and rec.name == end.name
            and rec.target == end.target
        ):
            found = rec
    return found


def end_ns(history: History) -> int:
    """The observation's end: the last ``drain`` record, else the last record."""
    drains = [r.mono_ns for r in history.records if r.kind is Kind.DRAIN]
    if drains:
        return drains[-1]
    return history.records[-1].mono_ns if history.records else 0


def ready_series(history: History) -> list[tuple[int, int | None]]:
    """``(mono_ns, total ready messages)`` at each ``queue_depth`` sample (None: broker error)."""
    out: list[tuple[int, int | None]] = []
    for rec in history.records:
        if rec.kind is Kind.DEPLOYMENT and rec.name == "queue_depth":
            out.append((rec.mono_ns, ready_total(rec)))
    return out


def ready_total(rec: Record) -> int | None:
    """Messages ready in every queue, by a ``queue_depth`` record (None: a broker error)."""
    ready = rec.detail.get("ready")
    return sum(int(v) for v in ready.values()) if isinstance(ready, dict) else None


# -- workers resume consuming --------------------------------------------------------------


class Stall(BaseModel):
    """A window in which a live, idle worker left ready messages alone."""

    worker: str
    start_s: float  # seconds after the heal
    end_s: float
    duration_s: float
    ongoing: bool  # still stalled when the window closed (next network fault, or the end)


class WorkerResume(BaseModel):
    """One worker after one heal."""

    worker: str
    live_at_heal: bool
    first_activity_s: float | None  # heal -> its first task record afterwards
    ready_at_heal: int | None  # messages ready at the heal (the last sample before it)
    longest_stall_s: float = 0.0


class HealReport(BaseModel):
    """Every worker after one heal, up to the next network fault or the end."""

    fault: str
    target: str | None
    heal_mono_ns: int
    window_s: float
    workers: list[WorkerResume] = Field(default_factory=list)
    stalls: list[Stall] = Field(default_factory=list)


class ResumeSummary(BaseModel):
    """The summary of :func:`check_resume_consuming`:
    ``InvariantResult.summary_as(ResumeSummary)``."""

    bound_s: float
    heals: int
    #: After the last heal: worker -> seconds to its first task record (None: none seen).
    resume_s: dict[str, float | None]
    longest_stall_s: float
    reports: list[HealReport]


def _worker_events(history: History) -> dict[str, list[tuple[int, str]]]:
    """Per worker node, ``(mono_ns, event)`` in order.

    Events: ``up`` (ready or started), ``down`` (shut down, killed, paused), ``resumed``
    (a pause ended), ``act`` (a task record), ``run+``/``run-`` (a run starts or ends) and
    ``run*`` (a restart forgets the old process's runs).
    """
    events: dict[str, list[tuple[int, str]]] = {}
    running: dict[str, set[str]] = {}  # node -> ids of its open runs
    for rec in history.records:
        if rec.kind is Kind.DEPLOYMENT and rec.name in ("worker_ready", "worker_started"):
            node = rec.target or rec.host
            events.setdefault(node, []).append((rec.mono_ns, "up"))
            if running.pop(node, None):
                events[node].append((rec.mono_ns, "run*"))
        elif rec.kind is Kind.DEPLOYMENT and rec.name == "worker_shutdown":
            node = rec.target or rec.host
            events.setdefault(node, []).append((rec.mono_ns, "down"))
        elif rec.kind is Kind.FAULT and rec.name in _DOWN_FAULTS and rec.target:
            if rec.phase == "start":
                events.setdefault(rec.target, []).append((rec.mono_ns, "down"))
            elif rec.name == "pause_worker":  # SIGCONT: live again; a kill's end is not
                events.setdefault(rec.target, []).append((rec.mono_ns, "resumed"))
        elif rec.role == "worker" and rec.kind in _ACTIVITY:
            node = rec.host
            ev = events.setdefault(node, [])
            ev.append((rec.mono_ns, "act"))
            runs = running.setdefault(node, set())
            tid = rec.task_id or ""
            if rec.kind is Kind.STARTED and tid not in runs:
                runs.add(tid)
                ev.append((rec.mono_ns, "run+"))
            elif rec.ends_run and tid in runs:
                runs.discard(tid)
                ev.append((rec.mono_ns, "run-"))
    return events


def _stalls_after(
    node: str,
    events: list[tuple[int, str]],
    ready: list[tuple[int, int | None]],
    heal: int,
    until: int,
) -> tuple[WorkerResume, list[Stall]]:
    """Sweep one worker's events and the ready series over ``[heal, until]``."""
    live = False
    runs = 0
    first_act: int | None = None

    def apply(ev: str) -> None:
        nonlocal live, runs
        if ev in ("up", "resumed"):
            live = True
        elif ev == "down":
            live = False
        elif ev == "run+":
            runs += 1
        elif ev == "run-":
            runs = max(0, runs - 1)
        elif ev == "run*":
            runs = 0

    for t, ev in events:  # the state at the heal
        if t > heal:
            break
        apply(ev)
    live_at_heal = live
    times = [t for t, _ in ready]
    i = bisect.bisect_right(times, heal) - 1
    ready_now = ready[i][1] if i >= 0 else None
    ready_at_heal = ready_now
    # Merge the worker's events and the ready samples after the heal into one timeline.
    timeline: list[tuple[int, str, int | None]] = [
        (t, ev, None) for t, ev in events if heal < t <= until
    ]
    timeline += [(t, "ready", n) for t, n in ready if heal < t <= until]
    timeline.sort(key=lambda x: x[0])
    stalls: list[Stall] = []
    since: int | None = None  # start of the current stall candidate

    def stalled_now() -> bool:
        return live and runs == 0 and bool(ready_now)

    def close(t: int, ongoing: bool = False) -> None:
        nonlocal since
        if since is not None and t > since:
            stalls.append(
                Stall(
                    worker=node,
                    start_s=round((since - heal) / S, 3),
                    end_s=round((t - heal) / S, 3),
                    duration_s=round((t - since) / S, 3),
                    ongoing=ongoing,
                )
            )
        since = None

    since = heal if stalled_now() else None
    for t, ev, n in timeline:
        if ev == "ready":
            ready_now = n
        else:
            apply(ev)
        if ev == "act":
            if first_act is None:
                first_act = t
            close(t)
        if not stalled_now():
            close(t)
        elif since is None:
            since = t
    close(until, ongoing=True)
    longest = max((s.duration_s for s in stalls), default=0.0)
    return (
        WorkerResume(
            worker=node,
            live_at_heal=live_at_heal,
            first_activity_s=_s(None if first_act is None else first_act - heal),
            ready_at_heal=ready_at_heal,
            longest_stall_s=longest,
        ),
        stalls,
    )


def resume_reports(history: History, min_report_s: float = 0.5) -> list[HealReport]:
    """For each heal, every worker's resume time and its idle-while-ready windows.

    Windows shorter than ``min_report_s`` (a worker between two messages) are left out.
    """
    events = _worker_events(history)
    ready = ready_series(history)
    stop = end_ns(history)
    starts = sorted(
        r.mono_ns for r in history.records if is_connection_fault(r) and r.phase == "start"
    )
    reports: list[HealReport] = []
    for heal in heals(history):
        nxt = [t for t in starts if t > heal.mono_ns]
        until = min(nxt[0], stop) if nxt else stop
        report = HealReport(
            fault=heal.name or "",
            target=heal.target,
            heal_mono_ns=heal.mono_ns,
            window_s=round(max(0, until - heal.mono_ns) / S, 3),
        )
        for node in sorted(events):
            worker, stalls = _stalls_after(node, events[node], ready, heal.mono_ns, until)
            if not worker.live_at_heal and worker.first_activity_s is None and not stalls:
                continue  # a worker that was gone before and after the heal
            report.workers.append(worker)
            report.stalls.extend(s for s in stalls if s.duration_s >= min_report_s)
        reports.append(report)
    return reports


def check_resume_consuming(history: History, bound_s: float = 10.0) -> InvariantResult:
    """Invalid when, after a heal, a live idle worker left ready messages alone > ``bound_s``.

    Idle: no task record from the worker and no run open on it. Ready: the broker's
    ``queue_depth`` samples say some queue has messages ready. Each window from a network
    fault's heal (or a broker's return after a crash or stop) to the next such fault (or the
    end of the observation) is judged; killed,
    paused and stopped workers are not live until they are back. Without a heal
    nothing is judged (``valid``, ``summary.heals == 0``); with heals but no ``queue_depth``
    samples idleness cannot be judged (``unknown``).
    """
    reports = resume_reports(history)
    problems: list[str] = []
    for rep in reports:
        for st in rep.stalls:
            if st.duration_s > bound_s:
                state = "still idle when the window closed" if st.ongoing else "then resumed"
                problems.append(
                    f"{st.worker} idle for {st.duration_s:.1f} s (> {bound_s:g} s) with messages "
                    f"ready, from {st.start_s:.1f} s after the heal of {rep.fault} "
                    f"on {rep.target}: {state}"
                )
    verdict = Verdict.INVALID if problems else Verdict.VALID
    if reports and not ready_series(history):
        verdict = Verdict.UNKNOWN
        problems.append("no queue_depth samples in the history: idleness cannot be judged")
    summary = ResumeSummary(
        bound_s=bound_s,
        heals=len(reports),
        resume_s={w.worker: w.first_activity_s for rep in reports[-1:] for w in rep.workers},
        longest_stall_s=max((s.duration_s for r in reports for s in r.stalls), default=0.0),
        reports=reports,
    )
    return InvariantResult(
        name=RESUME, verdict=verdict, summary=summary.model_dump(mode="json"), problems=problems
    )


def resume_consuming(bound_s: float = 10.0) -> Checker:
    """The "workers resume consuming" invariant as a :data:`Checker` for ``Scenario.check``."""

    def checker(history: History) -> InvariantResult:
        return check_resume_consuming(history, bound_s)

    return with_spec(checker, "resume_consuming", bound_s=bound_s)


# -- publishes stay bounded ----------------------------------------------------------------


class PublishSummary(BaseModel):
    """The summary of :func:`check_publish_bounded`:
    ``InvariantResult.summary_as(PublishSummary)``."""

    bound_s: float
    publishes: int
    #: How publishes ended (``ok``, ``info``, ``fail``, ``open``) -> how many.
    outcomes: dict[str, int]
    slow: int
    longest_s: float


def check_publish_bounded(history: History, bound_s: float) -> InvariantResult:
    """Invalid when a publish took longer than ``bound_s``, or hung that long unanswered.

    Pairs each ``invoke`` with its process's next outcome for the same id; an ``invoke``
    with no outcome is open until the end of the observation. Only the load generator's
    publishes are judged (records with ``role == "publisher"``).
    """
    stop = end_ns(history)
    open_: dict[tuple[int, str], int] = {}
    durations: list[tuple[str, float, str]] = []  # (id, seconds, outcome)
    for rec in history.records:
        if rec.role != "publisher" or rec.task_id is None:
            continue
        key = (rec.pid, rec.task_id)
        if rec.kind is Kind.INVOKE:
            open_[key] = rec.mono_ns
        elif rec.kind in _OUTCOMES and key in open_:
            t0 = open_.pop(key)
            took = rec.latency_ns if rec.latency_ns is not None else rec.mono_ns - t0
            durations.append((rec.task_id, took / S, rec.kind.value))
    for (_, tid), t0 in open_.items():
        durations.append((tid, (stop - t0) / S, "open"))
    slow = sorted((d for d in durations if d[1] > bound_s), key=lambda d: -d[1])
    problems = (
        [
            f"{len(slow)} publishes took longer than {bound_s:g} s (a producer blocked on a dead "
            f"link); slowest: " + ", ".join(f"{tid} {s:.1f} s ({how})" for tid, s, how in slow[:5])
        ]
        if slow
        else []
    )
    by_outcome: dict[str, int] = {}
    for _, _, how in durations:
        by_outcome[how] = by_outcome.get(how, 0) + 1
    summary = PublishSummary(
        bound_s=bound_s,
        publishes=len(durations),
        outcomes=by_outcome,
        slow=len(slow),
        longest_s=round(max((d[1] for d in durations), default=0.0), 3),
    )
    verdict = Verdict.INVALID if slow else Verdict.VALID
    return InvariantResult(
        name=PUBLISH, verdict=verdict, summary=summary.model_dump(mode="json"), problems=problems
    )


def publish_bounded(bound_s: float) -> Checker:
    """The "publishes stay bounded" invariant as a :data:`Checker`."""

    def checker(history: History) -> InvariantResult:
        return check_publish_bounded(history, bound_s)

    return with_spec(checker, "publish_bounded", bound_s=bound_s)


# -- heal to full throughput ---------------------------------------------------------------


class ThroughputRecovery(BaseModel):
    """Completions per second before a fault, during it, and how soon after the heal they
    were back at the pre-fault rate (``heal_to_full_s``; None if never)."""

    baseline_per_s: float | None
    during_per_s: float | None
    after_per_s: float | None
    heal_to_first_completion_s: float | None
    heal_to_full_s: float | None
    backlog_cleared_s: float | None  # heal -> queues back at (or under) their pre-fault level
    window_s: float
    fraction: float


def _rate(times: list[int], a: int, b: int) -> float | None:
    if b <= a:
        return None
    n = bisect.bisect_left(times, b) - bisect.bisect_left(times, a)
    return round(n / ((b - a) / S), 2)


def heal_to_full_throughput(
    history: History,
    heal: Record | None = None,
    *,
    window_s: float = 1.0,
    fraction: float = 0.9,
) -> ThroughputRecovery:
    """Measure recovery from ``heal`` (default: the last heal: network fault or broker back).

    The baseline is the completion rate from the first completion to the fault's start.
    Full throughput is reached at the first completion after the heal that opens a
    ``window_s`` window holding at least ``fraction`` x baseline x window completions.
    """
    if heal is None:
        found = heals(history)
        heal = found[-1] if found else None
    completions = sorted(r.mono_ns for r in history.records if r.is_completion)
    empty = ThroughputRecovery(
        baseline_per_s=None,
        during_per_s=None,
        after_per_s=None,
        heal_to_first_completion_s=None,
        heal_to_full_s=None,
        backlog_cleared_s=None,
        window_s=window_s,
        fraction=fraction,
    )
    if heal is None or not completions:
        return empty
    start = fault_start(history, heal)
    t_start = start.mono_ns if start is not None else heal.mono_ns
    stop = end_ns(history)
    baseline = _rate(completions, completions[0], t_start)
    after = [t for t in completions if t >= heal.mono_ns]
    full: int | None = None
    if baseline:
        need = fraction * baseline * window_s
        win = int(window_s * S)
        for i, t in enumerate(after):
            j = bisect.bisect_left(after, t + win)
            if j - i >= need:
                full = t
                break
    ready = ready_series(history)
    before = [n for t, n in ready if t < t_start and n is not None]
    level = max(before[-10:], default=0)
    cleared = next(
        (t for t, n in ready if t >= heal.mono_ns and n is not None and n <= level), None
    )
    last = after[-1] if after else heal.mono_ns
    return ThroughputRecovery(
        baseline_per_s=baseline,
        during_per_s=_rate(completions, t_start, heal.mono_ns),
        after_per_s=_rate(completions, heal.mono_ns, min(stop, last + 1)),
        heal_to_first_completion_s=_s(after[0] - heal.mono_ns) if after else None,
        heal_to_full_s=_s(None if full is None else full - heal.mono_ns),
        backlog_cleared_s=_s(None if cleared is None else cleared - heal.mono_ns),
        window_s=window_s,
        fraction=fraction,
    )


def end_to_end_latencies(
    history: History, since_ns: int = 0, until_ns: int | None = None
) -> list[int]:
    """Per task id published in ``[since_ns, until_ns)``: its first ``invoke`` to its first
    completion, in ns (ids never completed are left out)."""
    first_invoke: dict[str, int] = {}
    done: dict[str, int] = {}
    for rec in history.records:
        tid = rec.task_id
        if tid is None:
            continue
        if rec.kind is Kind.INVOKE and tid not in first_invoke:
            first_invoke[tid] = rec.mono_ns
        elif rec.is_completion and tid not in done:
            done[tid] = rec.mono_ns
    hi = until_ns if until_ns is not None else 1 << 62
    return [done[t] - t0 for t, t0 in first_invoke.items() if since_ns <= t0 < hi and t in done]


def percentiles(
    values: Iterable[float], qs: Iterable[float] = (0.5, 0.95, 0.99)
) -> dict[str, float]:
    """``{"p50": ..., ...}`` by nearest rank (empty input: empty dict)."""
    ordered = sorted(values)
    if not ordered:
        return {}
    out: dict[str, float] = {}
    for q in qs:
        out[f"p{round(q * 100):d}"] = ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return out
