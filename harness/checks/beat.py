"""Beat fires each scheduled tick exactly once: a strict tick checker (docs/beat.md).

In the spirit of Jepsen's Chronos checker, but strict: every tick that the schedule says was
due in the run window must map to exactly one beat publish and that publish to exactly one
execution; missing, late, early and extra fires all fail (Chronos only reports extras).

Tick times come from the schedule, not from beat's log: the harness records the schedule
(``deployment`` record ``beat_schedule``) and each beat's start, readiness, stop and kill;
the checker rebuilds each entry as a :mod:`celery.schedules` object and asks it for the
next due time with a pinned ``nowfun``. Interval entries are relative to the last run, as in
Celery: the next tick is due ``run_every`` after the publish that served the previous one.

Pure: a function of the history only.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Literal
from zoneinfo import ZoneInfo

from celery.schedules import BaseSchedule, crontab, schedule
from pydantic import BaseModel, Field

from celery_chaos.checks.verdict import Checker, InvariantResult, Verdict, with_spec
from celery_chaos.history.recorder import short_repr
from celery_chaos.history.schema import Kind, Record
from celery_chaos.history.store import History

#: ``deployment`` record names the harness writes (``Scenario.start_beats``/``stop_beats``).
SCHEDULE_RECORD = "beat_schedule"
BEAT_STARTED = "beat_started"
BEAT_READY = "beat_ready"
BEAT_STOPPED = "beat_stopped"
#: ``fault`` name of a beat kill.
KILL_BEAT = "kill_beat"
#: Stops this close to the last one are one shutdown of every beat, not a disruption.
_GROUP_STOP_S = 1.0

#: A fire may come this much before its due time (reserve-to-publish latency, clock rounding).
DEFAULT_EARLY_S = 0.3
#: Added to ``beat_max_loop_interval`` for the late bound (process scheduling under load).
DEFAULT_MARGIN_S = 0.5

TickStatus = Literal[
    "ok", "missing", "late", "early", "dropped", "unexecuted", "duplicate_execution"
]
_BAD = frozenset({"missing", "late", "early", "dropped", "duplicate_execution"})


# -- the schedule, as recorded ------------------------------------------------------------


class EntrySpec(BaseModel):
    """One beat schedule entry, serialisable into the history."""

    name: str
    task: str
    type: Literal["interval", "crontab", "unsupported"]
    run_every_s: float | None = None
    crontab: dict[str, str] | None = None
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    detail: str = ""


class BeatSchedule(BaseModel):
    """The schedule and the beat settings the checker needs (``beat_schedule`` detail)."""

    entries: list[EntrySpec]
    timezone: str = "UTC"
    scheduler: str = "celery.beat:PersistentScheduler"
    max_loop_interval_s: float = 300.0
    sync_every: int = 0
    lock_timeout_s: float | None = None


_CRON_FIELDS = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")


def entry_spec(name: str, entry: Mapping[str, Any]) -> EntrySpec:
    """An :class:`EntrySpec` from one ``beat_schedule`` item (schedule, timedelta or number)."""
    sched = entry["schedule"]
    base: dict[str, Any] = {
        "name": name,
        "task": entry["task"],
        "args": list(entry.get("args") or ()),
        "kwargs": dict(entry.get("kwargs") or {}),
    }
    if isinstance(sched, (int, float)):
        sched = timedelta(seconds=sched)
    if isinstance(sched, timedelta):
        return EntrySpec(type="interval", run_every_s=sched.total_seconds(), **base)
    if isinstance(sched, crontab):
        fields = {f: str(getattr(sched, f"_orig_{f}")) for f in _CRON_FIELDS}
        return EntrySpec(type="crontab", crontab=fields, **base)
    if type(sched) is schedule and not sched.relative:
        return EntrySpec(type="interval", run_every_s=sched.run_every.total_seconds(), **base)
    return EntrySpec(type="unsupported", detail=repr(sched), **base)


def build_schedule(
    spec: EntrySpec, tz: str = "UTC", nowfun: Callable[[], datetime] | None = None
) -> BaseSchedule:
    """The :mod:`celery.schedules` object of ``spec``, in ``tz``, with ``nowfun`` pinned."""
    sched: BaseSchedule
    if spec.type == "interval":
        sched = schedule(timedelta(seconds=spec.run_every_s or 0), nowfun=nowfun)
    elif spec.type == "crontab":
        sched = crontab(**(spec.crontab or {}), nowfun=nowfun)
    else:
        raise ValueError(f"entry {spec.name!r}: unsupported schedule {spec.detail}")
    sched.tz = ZoneInfo(tz)  # no app needed
    return sched


def next_due(spec: EntrySpec, last_run: float, tz: str = "UTC") -> float:
    """When ``spec`` is next due after a run at ``last_run`` (unix seconds), by the schedule."""
    at = datetime.fromtimestamp(last_run, tz=timezone.utc)
    sched = build_schedule(spec, tz, nowfun=lambda: at)
    return last_run + sched.remaining_estimate(at).total_seconds()


# -- results -------------------------------------------------------------------------------


class Tick(BaseModel):
    """One scheduled tick and the fire that served it (times in unix seconds, wall clock)."""

    entry: str
    due: float
    status: TickStatus
    task_id: str | None = None
    host: str | None = None
    fired: float | None = None
    offset_s: float | None = None  # fired - due
    coalesced: int = 1  # ticks this fire stands for (ticks due while no beat could run)
    executions: int = 0


class ExtraFire(BaseModel):
    """A beat publish that no tick explains."""

    entry: str | None
    task_id: str | None
    host: str
    fired: float
    reason: str
    duplicate_of: float | None = None  # due time of the tick another fire already served
    executions: int = 0


class Disruption(BaseModel):
    """A beat stopped or killed while the run went on, and how the schedule recovered."""

    beat: str
    kind: Literal["kill", "stop"]
    at: float
    recovery_by: float | None  # the latest time a fire may resume without a missing tick
    first_fire_s: float | None = None  # the fail-over gap: first publish after ``at``
    first_fire_by: str | None = None
    coalesced: int = 0


class FaultEffect(BaseModel):
    """Ticks due inside a fault window, and when beat published successfully again."""

    name: str
    target: str | None
    start: float
    end: float
    ticks: dict[str, int] = Field(default_factory=dict)  # status -> count
    resumed_s: float | None = None  # fault end -> first acknowledged publish


class EntryCounts(BaseModel):
    """Per-entry counts."""

    ticks: int = 0
    ok: int = 0
    missing: int = 0
    late: int = 0
    early: int = 0
    dropped: int = 0
    unexecuted: int = 0
    duplicate_execution: int = 0
    coalesced: int = 0
    extra: int = 0
    max_offset_s: float = 0.0
    early_s: float = 0.0
    late_s: float = 0.0


class BeatCheckResult(BaseModel):
    """The beat invariant's verdict and its evidence."""

    valid: Verdict
    window: tuple[float, float] | None = None
    entries: dict[str, EntryCounts] = Field(default_factory=dict)
    ticks: list[Tick] = Field(default_factory=list)
    extra: list[ExtraFire] = Field(default_factory=list)
    disruptions: list[Disruption] = Field(default_factory=list)
    faults: list[FaultEffect] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


# -- reading the history -------------------------------------------------------------------


def _t(rec: Record) -> float:
    return rec.wall_ns / 1e9


def _norm_args(text: str | None) -> str | None:
    if text is None:
        return None
    return text.strip().strip("[]()").strip().rstrip(",").replace(" ", "")


class _Fire:
    """One beat publish attempt (``invoke``), with its outcome and executions."""

    def __init__(self, rec: Record, acked: bool, executions: int) -> None:
        self.t = _t(rec)
        self.rec = rec
        self.acked = acked
        self.executions = executions

    @property
    def status(self) -> TickStatus:
        if not self.acked:
            return "dropped"
        if self.executions == 0:
            return "unexecuted"
        return "ok" if self.executions == 1 else "duplicate_execution"


class _Timeline:
    """Beat processes' lives from the harness's records: run window and disruptions."""

    def __init__(self, records: list[Record], takeover_s: float) -> None:
        self.starts: list[tuple[float, str]] = []
        self.readies: list[tuple[float, str]] = []
        self.stops: list[tuple[float, str, Literal["kill", "stop"]]] = []
        for rec in records:
            if rec.role != "harness":
                continue
            if rec.kind is Kind.DEPLOYMENT and rec.name == BEAT_STARTED:
                self.starts.append((_t(rec), rec.target or ""))
            elif rec.kind is Kind.DEPLOYMENT and rec.name == BEAT_READY:
                self.readies.append((_t(rec), rec.target or ""))
            elif rec.kind is Kind.DEPLOYMENT and rec.name == BEAT_STOPPED:
                self.stops.append((_t(rec), rec.target or "", "stop"))
            elif rec.kind is Kind.FAULT and rec.name == KILL_BEAT and rec.phase == "start":
                self.stops.append((_t(rec), rec.target or "", "kill"))
        self.takeover_s = takeover_s

    def alive(self, at: float, exclude: str = "") -> list[str]:
        """Beats started at or before ``at`` and not stopped or killed by then."""
        state: dict[str, bool] = {}
        events = [(t, n, True) for t, n in self.starts] + [(t, n, False) for t, n, _ in self.stops]
        for t, name, up in sorted(events, key=lambda e: (e[0], not e[2])):
            if t > at:
                break
            state[name] = up
        return [n for n, up in state.items() if up and n != exclude]

    def end(self, last: float) -> float:
        """End of observation: the stop that left no beat running, else the last record."""
        for t, name, _ in sorted(self.stops):
            if not self.alive(t, exclude=name) and not any(s > t for s, _ in self.starts):
                return t
        return last

    def disruptions(self, end: float) -> list[Disruption]:
        """Every stop or kill before ``end``, with the time the schedule must be back by."""
        out: list[Disruption] = []
        for t, name, kind in sorted(self.stops):
            if t >= end - _GROUP_STOP_S and not any(s > t for s, _ in self.starts):
                continue  # part of the final shutdown of every beat
            others = self.alive(t, exclude=name)
            candidates = [r for r, _ in self.readies if r > t]
            if others:
                candidates.append(t + self.takeover_s)
            by = min(candidates) if candidates else None
            out.append(Disruption(beat=name, kind=kind, at=t, recovery_by=by))
        return out


# -- the checker ---------------------------------------------------------------------------


def check_beat(
    history: History,
    *,
    early_s: float = DEFAULT_EARLY_S,
    margin_s: float = DEFAULT_MARGIN_S,
    takeover_s: float | None = None,
) -> BeatCheckResult:
    """Map every scheduled tick to exactly one publish and one execution.

    Tolerance per tick: a fire counts for a tick due at ``d`` if it lands in
    ``[d - early_s, d + late]``, ``late = beat_max_loop_interval + margin_s``, capped at half
    the gap to the entry's next tick (so a missing tick can never hide behind the next one).
    The first tick's late bound is widened by the first beat's start-up time. Ticks due while
    a stopped or killed beat was being replaced (restart until ready, or, with a leader lock,
    ``takeover_s`` = lock timeout + max loop interval) may be served late by one catch-up fire
    (Celery coalesces missed ticks); each such fire's ``coalesced`` says how many it stands for.
    """
    records = history.records
    sched_rec = next(
        (r for r in records if r.kind is Kind.DEPLOYMENT and r.name == SCHEDULE_RECORD), None
    )
    if sched_rec is None:
        return BeatCheckResult(
            valid=Verdict.UNKNOWN,
            problems=[f"no `{SCHEDULE_RECORD}` record: the checker cannot know the schedule"],
        )
    config = BeatSchedule.model_validate(sched_rec.detail)
    if takeover_s is None:
        takeover_s = (
            config.lock_timeout_s + config.max_loop_interval_s if config.lock_timeout_s else 0.0
        )
    timeline = _Timeline(records, takeover_s)
    if not timeline.starts:
        return BeatCheckResult(valid=Verdict.UNKNOWN, problems=["no beat was started"])
    first_start = min(t for t, _ in timeline.starts)
    first_ready = min((t for t, _ in timeline.readies), default=first_start)
    end = timeline.end(max(_t(r) for r in records))
    result = BeatCheckResult(valid=Verdict.VALID, window=(first_start, end))
    disruptions = timeline.disruptions(end)
    result.disruptions = disruptions

    fires = _fires(records)
    drains = [r for r in records if r.kind is Kind.DRAIN]
    drained = bool(drains) and bool(drains[-1].detail.get("complete"))

    per_entry, extra = _assign(fires, config, early_s, margin_s)
    result.extra.extend(extra)
    late_base = config.max_loop_interval_s + margin_s
    for spec in config.entries:
        counts = EntryCounts()
        result.entries[spec.name] = counts
        if spec.type == "unsupported":
            result.notes.append(f"entry {spec.name!r} not checked: {spec.detail}")
            if per_entry.get(spec.name):
                result.valid = Verdict.combine([result.valid, Verdict.UNKNOWN])
            continue
        walker = _EntryWalker(
            spec, config.timezone, per_entry.get(spec.name, []), disruptions, early_s, late_base
        )
        ticks, extras = walker.run(first_start, first_ready, end)
        result.ticks.extend(ticks)
        result.extra.extend(extras)
        counts.early_s, counts.late_s = walker.tolerance()
    result.ticks.sort(key=lambda k: (k.due, k.entry))
    result.extra.sort(key=lambda x: x.fired)
    _count(result, drained)
    _failovers(result, fires)
    result.faults = _faults(records, result.ticks, fires)
    return result


def _fires(records: list[Record]) -> list[_Fire]:
    """Beat publish attempts (``invoke`` with role beat), with outcome and executions."""
    acked: set[str] = set()
    runs: dict[str, int] = defaultdict(int)
    for rec in records:
        if rec.task_id is None:
            continue
        if rec.kind is Kind.OK and rec.role == "beat":
            acked.add(rec.task_id)
        elif rec.kind is Kind.SUCCEEDED:
            runs[rec.task_id] += 1
    out = [
        _Fire(r, r.task_id in acked, runs.get(r.task_id or "", 0))
        for r in records
        if r.kind is Kind.INVOKE and r.role == "beat"
    ]
    return sorted(out, key=lambda f: f.t)


def _assign(
    fires: list[_Fire], config: BeatSchedule, early_s: float, margin_s: float
) -> tuple[dict[str, list[_Fire]], list[ExtraFire]]:
    """Attribute each fire to a schedule entry by task name and arguments.

    When entries share task and arguments, a fire goes to a calendar (crontab) entry whose
    slot it lands on, else to the shortest interval entry.
    """
    out: dict[str, list[_Fire]] = defaultdict(list)
    extra: list[ExtraFire] = []
    claimed: set[tuple[str, float]] = set()
    window = config.max_loop_interval_s + margin_s + early_s
    for fire in fires:
        rec = fire.rec
        cands = [
            e
            for e in config.entries
            if e.task == rec.task_name
            and (
                rec.args is None
                or _norm_args(rec.args) == _norm_args(short_repr(list(e.args)))
            )
        ]
        if not cands:
            extra.append(
                ExtraFire(
                    entry=None,
                    task_id=rec.task_id,
                    host=rec.host,
                    fired=fire.t,
                    reason=f"beat published {rec.task_name}{rec.args or ''}: no schedule entry",
                    executions=fire.executions,
                )
            )
            continue
        chosen = None
        if len(cands) > 1:
            for e in (c for c in cands if c.type == "crontab"):
                slot = next_due(e, fire.t - window, config.timezone)
                if slot - early_s <= fire.t <= slot + window and (e.name, slot) not in claimed:
                    claimed.add((e.name, slot))
                    chosen = e
                    break
            if chosen is None:
                intervals = sorted(
                    (c for c in cands if c.type == "interval"), key=lambda c: c.run_every_s or 0
                )
                chosen = intervals[0] if intervals else cands[0]
        else:
            chosen = cands[0]
        out[chosen.name].append(fire)
    return out, extra


class _EntryWalker:
    """Walk one entry's ticks and fires in time order (see :func:`check_beat`)."""

    def __init__(
        self,
        spec: EntrySpec,
        tz: str,
        fires: list[_Fire],
        disruptions: list[Disruption],
        early_s: float,
        late_base: float,
    ) -> None:
        self.spec = spec
        self.tz = tz
        self.fires = fires
        self.times = [f.t for f in fires]
        self.disruptions = disruptions
        self.early_base = early_s
        self.late_base = late_base
        self.ticks: list[Tick] = []
        self.extra: list[ExtraFire] = []
        self.d: float = math.nan
        self.first_widen = 0.0
        self.pending: list[float] = []
        self.pending_by = 0.0
        self.pending_disruption: Disruption | None = None
        self._due: dict[float, float] = {}
        self.min_gap = math.inf

    def next_due(self, t: float) -> float:
        due = self._due.get(t)
        if due is None:
            due = self._due[t] = next_due(self.spec, t, self.tz)
        return due

    def _gap(self, d: float) -> float:
        gap = self.next_due(d) - d
        self.min_gap = min(self.min_gap, gap)
        return gap

    def early(self, d: float) -> float:
        return min(self.early_base, self._gap(d) / 4)

    def late(self, d: float) -> float:
        return min(self.late_base, self._gap(d) / 2)

    def hi(self, d: float) -> float:
        widen = self.first_widen if not self.ticks else 0.0
        return d + self.late(d) + widen

    def tolerance(self) -> tuple[float, float]:
        """The early and late tolerance used (smallest over the entry's ticks)."""
        gap = self.min_gap
        return (round(min(self.early_base, gap / 4), 3), round(min(self.late_base, gap / 2), 3))

    def run(self, start: float, ready: float, end: float) -> tuple[list[Tick], list[ExtraFire]]:
        # A fresh entry's last run is its creation, between the spawn and beat's readiness.
        self.d = self.next_due(start)
        self.first_widen = max(0.0, self.next_due(ready) - self.d)
        for i, fire in enumerate(self.fires):
            self.settle(fire.t)
            self.handle(i, fire)
        self.settle(end)
        if self.pending and self.pending_by <= end:
            self.expire_pending()
        return self.ticks, self.extra

    def disruption(self, d: float) -> Disruption | None:
        for dis in self.disruptions:
            by = dis.recovery_by if dis.recovery_by is not None else math.inf
            if d - self.early(d) < by and self.hi(d) > dis.at:
                return dis
        return None

    def expire_pending(self) -> None:
        for due in self.pending:
            self.ticks.append(Tick(entry=self.spec.name, due=due, status="missing"))
        self.pending = []

    def settle(self, t: float) -> None:
        """Close every tick whose window ended before ``t`` without a fire."""
        while True:
            if self.pending and self.pending_by < t:
                self.expire_pending()
            if self.hi(self.d) >= t:
                return
            dis = self.disruption(self.d)
            if dis is not None and dis.recovery_by is not None:
                if not self.pending:
                    self.pending_disruption = dis
                by = dis.recovery_by + self.late(self.d)
                self.pending_by = max(self.pending_by, by) if self.pending else by
                self.pending.append(self.d)
            elif dis is not None:  # never recovered: not required
                pass
            else:
                self.ticks.append(Tick(entry=self.spec.name, due=self.d, status="missing"))
            self.d = self.next_due(self.d)

    def tick(self, due: float, fire: _Fire, status: TickStatus | None = None, n: int = 1) -> None:
        self.ticks.append(
            Tick(
                entry=self.spec.name,
                due=due,
                status=status or fire.status,
                task_id=fire.rec.task_id,
                host=fire.rec.host,
                fired=fire.t,
                offset_s=round(fire.t - due, 3),
                coalesced=n,
                executions=fire.executions,
            )
        )

    def handle(self, i: int, fire: _Fire) -> None:
        if self.pending and fire.t <= self.pending_by:
            # The catch-up fire after a restart or fail-over stands for every tick due meanwhile.
            due = self.pending[0]
            n = len(self.pending)
            while fire.t >= self.d - self.early(self.d):
                n += 1
                self.d = self.next_due(self.d)
            self.tick(due, fire, n=n)
            if self.pending_disruption is not None:
                self.pending_disruption.coalesced += n
            self.pending = []
            self.d = self.next_due(fire.t)
            return
        lo = self.d - self.early(self.d)
        hi = self.hi(self.d)
        if lo <= fire.t <= hi:
            self.tick(self.d, fire)
            # Celery's next due counts from the reservation, never before the due time: an
            # early-looking fire (recording delay) must not pull the schedule forward, or a
            # beat firing too often would pass tick by tick.
            self.d = self.next_due(max(fire.t, self.d))
            return
        last = self.ticks[-1] if self.ticks else None
        if last is not None and last.status == "missing" and last.fired is None:
            # Not early for this tick but late for the previous one.
            self.ticks.pop()
            self.tick(last.due, fire, status="late")
            self.d = self.next_due(fire.t)
            return
        if last is not None and last.fired is not None and fire.t <= self.hi_of(last):
            # Inside the window of the tick just served: that tick fired twice.
            self.duplicate(fire, last.due, "after it was served")
            return
        if last is not None and last.fired is not None and self._disrupted(last.fired, fire.t):
            # Before the next tick's window, from a beat restarted (or taking over) since the
            # last tick was served: the restart served that tick again (a stale schedule).
            self.duplicate(fire, last.due, "again after a beat restart")
            return
        j = bisect.bisect_left(self.times, lo, lo=i + 1)
        if j < len(self.times) and self.times[j] <= hi:
            self.duplicate(fire, self.d, f"{self.d - fire.t:.2f} s early; another fire served it")
            return
        # Nothing serves the tick on time: this fire is the tick, early.
        self.tick(self.d, fire, status="early")
        self.d = self.next_due(fire.t)

    def _disrupted(self, after: float, before: float) -> bool:
        """Whether a beat was stopped or killed between ``after`` and ``before``."""
        return any(after < dis.at < before for dis in self.disruptions)

    def hi_of(self, tick: Tick) -> float:
        """Until when a second fire counts as the same tick: its late bound, or its fire's."""
        late = self.late(tick.due)
        return max(tick.due, tick.fired or tick.due) + late

    def duplicate(self, fire: _Fire, due: float, why: str) -> None:
        self.extra.append(
            ExtraFire(
                entry=self.spec.name,
                task_id=fire.rec.task_id,
                host=fire.rec.host,
                fired=fire.t,
                reason=f"second fire for the tick due {_iso(due)} ({why})",
                duplicate_of=due,
                executions=fire.executions,
            )
        )


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds")


def _count(result: BeatCheckResult, drained: bool) -> None:
    for tick in result.ticks:
        c = result.entries[tick.entry]
        c.ticks += tick.coalesced
        c.coalesced += tick.coalesced - 1
        setattr(c, tick.status, getattr(c, tick.status) + 1)
        if tick.offset_s is not None and tick.status not in ("early", "late"):
            c.max_offset_s = max(c.max_offset_s, round(tick.offset_s, 3))
    for x in result.extra:
        if x.entry is not None:
            result.entries[x.entry].extra += 1
    bad = [k for k in result.ticks if k.status in _BAD]
    unexecuted = [k for k in result.ticks if k.status == "unexecuted"]
    for k in bad[:10]:
        fired = f", fired {k.offset_s:+.2f} s by {k.host} ({k.task_id})" if k.fired else ""
        result.problems.append(f"{k.entry}: tick due {_iso(k.due)} {k.status}{fired}")
    if len(bad) > 10:
        result.problems.append(f"... and {len(bad) - 10} more bad ticks")
    for x in result.extra[:10]:
        result.problems.append(
            f"{x.entry or '?'}: extra fire at {_iso(x.fired)} by {x.host} ({x.task_id}): "
            f"{x.reason}"
        )
    if len(result.extra) > 10:
        result.problems.append(f"... and {len(result.extra) - 10} more extra fires")
    if unexecuted:
        ids = ", ".join(str(k.task_id) for k in unexecuted[:10])
        result.problems.append(f"{len(unexecuted)} published tick(s) never executed: {ids}")
    verdicts = [result.valid]
    if bad or result.extra:
        verdicts.append(Verdict.INVALID)
    if unexecuted:
        verdicts.append(Verdict.INVALID if drained else Verdict.UNKNOWN)
    result.valid = Verdict.combine(verdicts)


def _failovers(result: BeatCheckResult, fires: list[_Fire]) -> None:
    times = [f.t for f in fires]
    for dis in result.disruptions:
        j = bisect.bisect_right(times, dis.at)
        if j < len(fires):
            dis.first_fire_s = round(fires[j].t - dis.at, 3)
            dis.first_fire_by = fires[j].rec.host


def _faults(records: list[Record], ticks: list[Tick], fires: list[_Fire]) -> list[FaultEffect]:
    out: list[FaultEffect] = []
    opened: dict[tuple[str | None, str | None], Record] = {}
    for rec in records:
        if rec.kind is not Kind.FAULT or rec.name == KILL_BEAT:
            continue
        key = (rec.name, rec.target)
        if rec.phase == "start":
            opened[key] = rec
        elif rec.phase == "end" and key in opened:
            start, stop = _t(opened.pop(key)), _t(rec)
            eff = FaultEffect(name=rec.name or "", target=rec.target, start=start, end=stop)
            for k in ticks:
                if start <= k.due <= stop:
                    eff.ticks[k.status] = eff.ticks.get(k.status, 0) + 1
            resumed = [f.t for f in fires if f.t > stop and f.acked]
            eff.resumed_s = round(resumed[0] - stop, 3) if resumed else None
            out.append(eff)
    return out


def beat_invariant(result: BeatCheckResult) -> InvariantResult:
    """The :class:`InvariantResult` of a beat check."""
    return InvariantResult(
        name="beat",
        verdict=result.valid,
        summary=result.model_dump(mode="json", exclude={"valid", "problems"}),
        problems=result.problems,
    )


def beat_checker(
    *,
    early_s: float = DEFAULT_EARLY_S,
    margin_s: float = DEFAULT_MARGIN_S,
    takeover_s: float | None = None,
) -> Checker:
    """A :data:`~celery_chaos.checks.verdict.Checker` for ``Scenario.check(invariants=[...])``."""

    def check(history: History) -> InvariantResult:
        return beat_invariant(
            check_beat(history, early_s=early_s, margin_s=margin_s, takeover_s=takeover_s)
        )

    return with_spec(check, "beat", early_s=early_s, margin_s=margin_s, takeover_s=takeover_s)


def beat_metrics(beat: BeatCheckResult) -> dict[str, Any]:
    """The beat invariant's numbers for ``result.json`` metrics and benchmarks."""
    keys = {"ticks", "ok", "missing", "late", "early", "dropped", "extra", "coalesced"}
    return {
        "entries": {
            name: c.model_dump(include=keys)
            for name, c in beat.entries.items()
            if c.ticks or c.extra
        },
        "extra_fires": len(beat.extra),
        "disruptions": [
            d.model_dump(include={"beat", "kind", "first_fire_s", "first_fire_by", "coalesced"})
            for d in beat.disruptions
        ],
        "faults": [f.model_dump(include={"name", "ticks", "resumed_s"}) for f in beat.faults],
    }
