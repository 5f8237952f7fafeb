"""The beat tick checker on synthetic histories with pinned clocks (no real waiting).

Fires come from a small beat simulator that asks Celery's own schedules when an entry is due
(``is_due`` with a pinned ``nowfun``, ``last_run_at`` carried forward, sleeping as beat does:
the next due time capped by ``beat_max_loop_interval``); the checker computes tick times on
its own with ``remaining_estimate``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pytest

from celery_chaos.checks.beat import (
    BEAT_READY,
    BEAT_STARTED,
    BEAT_STOPPED,
    KILL_BEAT,
    SCHEDULE_RECORD,
    BeatCheckResult,
    BeatSchedule,
    EntrySpec,
    beat_checker,
    build_schedule,
    check_beat,
    next_due,
)
from celery_chaos.checks.verdict import Verdict, check_history
from celery_chaos.deployment.beat import schedule_of
from celery_chaos.history.schema import Kind, Record
from celery_chaos.history.store import History
from celery_chaos.sample_app.app import create_app

TASK = "celery_chaos.sample_app.tasks.generate_report"
FAST = EntrySpec(name="fast-report", task=TASK, type="interval", run_every_s=2.0, args=[1])
MORNING = EntrySpec(
    name="send-report-every-morning",
    task=TASK,
    type="crontab",
    crontab={"minute": "0", "hour": "8", "day_of_week": "*", "day_of_month": "*",
             "month_of_year": "*"},
    args=[1],
)
#: A pinned clock: 2026-03-10 00:00:07 UTC.
T0 = datetime(2026, 3, 10, 0, 0, 7, tzinfo=timezone.utc).timestamp()
_ids = itertools.count()


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=timezone.utc)


@dataclass
class Hist:
    """A synthetic history, written the way the harness, beat and workers write theirs."""

    entries: list[EntrySpec]
    max_loop: float = 1.0
    lock_timeout: float | None = None
    records: list[Record] = field(default_factory=list)

    def rec(self, kind: Kind, t: float, host: str = "harness", role: str = "harness",
            **fields: Any) -> None:
        ns = int(t * 1e9)
        self.records.append(
            Record(kind=kind, wall_ns=ns, mono_ns=ns, pid=1, host=host, role=role, **fields)
        )

    def schedule(self, t: float) -> Hist:
        detail = BeatSchedule(
            entries=self.entries, max_loop_interval_s=self.max_loop,
            lock_timeout_s=self.lock_timeout,
        ).model_dump(mode="json")
        self.rec(Kind.DEPLOYMENT, t, name=SCHEDULE_RECORD, target="beat1", detail=detail)
        return self

    def start(self, name: str, t: float, ready_after: float = 0.5) -> Hist:
        self.rec(Kind.DEPLOYMENT, t, name=BEAT_STARTED, target=name)
        self.rec(Kind.DEPLOYMENT, t + ready_after, name=BEAT_READY, target=name)
        return self

    def stop(self, name: str, t: float) -> Hist:
        self.rec(Kind.DEPLOYMENT, t, name=BEAT_STOPPED, target=name)
        return self

    def kill(self, name: str, t: float) -> Hist:
        self.rec(Kind.FAULT, t, name=KILL_BEAT, phase="start", target=name)
        self.rec(Kind.FAULT, t + 0.01, name=KILL_BEAT, phase="end", target=name)
        return self

    def fire(self, t: float, entry: EntrySpec, host: str = "beat1", *, acked: bool = True,
             runs: int = 1) -> str:
        task_id = f"t{next(_ids)}"
        args = repr(list(entry.args))
        self.rec(Kind.INVOKE, t, host=host, role="beat", task_id=task_id, task_name=entry.task,
                 args=args)
        if acked:
            self.rec(Kind.OK, t + 0.002, host=host, role="beat", task_id=task_id,
                     task_name=entry.task)
        for i in range(runs):
            self.rec(Kind.SUCCEEDED, t + 0.05 + i * 0.01, host="w1@chaos", role="worker",
                     task_id=task_id, task_name=entry.task)
        return task_id

    def fires(self, fires: Iterable[tuple[float, EntrySpec]], host: str = "beat1") -> Hist:
        for t, entry in fires:
            self.fire(t, entry, host)
        return self

    def drain(self, t: float, complete: bool = True) -> Hist:
        self.rec(Kind.DRAIN, t, name="drain", detail={"complete": complete})
        return self

    def history(self) -> History:
        return History(records=sorted(self.records, key=lambda r: r.mono_ns))

    def check(self, **kw: Any) -> BeatCheckResult:
        return check_beat(self.history(), **kw)


def simulate(
    entries: list[EntrySpec],
    start: float,
    end: float,
    *,
    max_loop: float = 1.0,
    created: float | None = None,
    last_run: dict[str, float] | None = None,
    lateness: float = 0.003,
    stall: tuple[float, float] | None = None,
) -> list[tuple[float, EntrySpec]]:
    """Fires of one beat from ``start`` to ``end``: Celery's ``is_due`` decides, beat-style.

    ``created``: when the entries were created (their first ``last_run_at``); ``last_run``
    overrides it per entry (a stale or synced schedule file); ``stall``: the loop is blocked.
    """
    last = {e.name: (last_run or {}).get(e.name, created if created else start) for e in entries}
    out: list[tuple[float, EntrySpec]] = []
    t = start
    while t < end:
        if stall and stall[0] <= t < stall[1]:
            t = stall[1]
        sleep = max_loop
        for e in entries:
            sched = build_schedule(e, nowfun=lambda t=t: _dt(t))
            due, nxt = sched.is_due(_dt(last[e.name]))
            if due:
                out.append((t, e))
                last[e.name] = t
            sleep = min(sleep, nxt)
        t += max(sleep, 0.001) + lateness
    return out


def one_beat(entries: list[EntrySpec], seconds: float = 20.0, **kw: Any) -> Hist:
    h = Hist(entries).schedule(T0 - 1).start("beat1", T0)
    h.fires(simulate(entries, T0 + 0.5, T0 + seconds, created=T0 + 0.3, **kw))
    return h.stop("beat1", T0 + seconds).drain(T0 + seconds + 1)


# -- schedules ------------------------------------------------------------------------------


def test_next_due_interval_and_crontab() -> None:
    assert next_due(FAST, T0) == pytest.approx(T0 + 2.0)
    eight = datetime(2026, 3, 10, 8, 0, tzinfo=timezone.utc).timestamp()
    assert next_due(MORNING, T0) == pytest.approx(eight)
    assert next_due(MORNING, eight + 0.5) == pytest.approx(eight + 86400)
    assert next_due(MORNING, eight - 1) == pytest.approx(eight)


def test_schedule_of_the_sample_app() -> None:
    app = create_app({"SAMPLE_BEAT_FAST_INTERVAL": "2"}, set_as_current=False)
    app.conf.result_backend = "redis://127.0.0.1:1/1"  # autoexpiring: no backend_cleanup entry
    app.conf.beat_max_loop_interval = 1
    sched = schedule_of(app)
    by_name = {e.name: e for e in sched.entries}
    assert by_name["fast-report"].type == "interval"
    assert by_name["fast-report"].run_every_s == 2.0
    assert by_name["send-report-every-morning"].crontab == MORNING.crontab
    assert by_name["send-report-every-morning"].args == [1]
    assert set(by_name) == {"fast-report", "send-report-every-morning"}
    assert (sched.max_loop_interval_s, sched.lock_timeout_s) == (1.0, None)
    app.conf.update(beat_scheduler="redbeat.RedBeatScheduler", redbeat_lock_timeout=5)
    assert schedule_of(app).lock_timeout_s == 5.0


# -- one beat -------------------------------------------------------------------------------


def test_undisturbed_interval_is_valid() -> None:
    res = one_beat([FAST]).check()
    assert res.valid is Verdict.VALID, res.problems
    c = res.entries["fast-report"]
    assert c.ticks == c.ok >= 8
    assert (c.missing, c.extra, c.early, c.late) == (0, 0, 0, 0)
    assert (c.early_s, c.late_s) == (0.3, 1.0)  # late: min(1 + 0.5, 2 / 2)


def test_missing_tick_fails() -> None:
    h = Hist([FAST]).schedule(T0 - 1).start("beat1", T0)
    fires = simulate([FAST], T0 + 0.5, T0 + 20, created=T0 + 0.3)
    del fires[4]  # the tick was never published
    res = h.fires(fires).stop("beat1", T0 + 20).drain(T0 + 21).check()
    assert res.valid is Verdict.INVALID
    c = res.entries["fast-report"]
    assert (c.missing, c.extra) == (1, 0)
    assert [k.status for k in res.ticks].count("missing") == 1


def test_extra_tick_fails() -> None:
    fires = simulate([FAST], T0 + 0.5, T0 + 20, created=T0 + 0.3)
    h = Hist([FAST]).schedule(T0 - 1).start("beat1", T0).fires(fires)
    h.fire(fires[3][0] + 0.2, FAST, host="beat2")
    res = h.stop("beat1", T0 + 20).drain(T0 + 21).check()
    assert res.valid is Verdict.INVALID
    assert res.entries["fast-report"].extra == 1
    assert res.extra[0].host == "beat2"
    assert res.extra[0].duplicate_of == pytest.approx(res.ticks[3].due)


def test_late_tick_fails() -> None:
    # The loop is blocked when a tick becomes due: it fires 1.4 s late (late bound 1.0 s).
    due = T0 + 0.3 + 4 * 2.0
    fires = simulate([FAST], T0 + 0.5, T0 + 20, created=T0 + 0.3, stall=(due - 0.01, due + 1.4))
    res = Hist([FAST]).schedule(T0 - 1).start("beat1", T0).fires(fires).stop(
        "beat1", T0 + 20).drain(T0 + 21).check()
    assert res.valid is Verdict.INVALID
    late = [k for k in res.ticks if k.status == "late"]
    assert len(late) == 1 and late[0].offset_s == pytest.approx(1.4, abs=0.05)
    assert res.entries["fast-report"].missing == 0 and not res.extra


def test_a_slightly_late_tick_is_within_tolerance() -> None:
    due = T0 + 0.3 + 4 * 2.0
    fires = simulate([FAST], T0 + 0.5, T0 + 20, created=T0 + 0.3, stall=(due - 0.01, due + 0.6))
    res = Hist([FAST]).schedule(T0 - 1).start("beat1", T0).fires(fires).stop(
        "beat1", T0 + 20).drain(T0 + 21).check()
    assert res.valid is Verdict.VALID, res.problems
    assert res.entries["fast-report"].max_offset_s == pytest.approx(0.6, abs=0.05)


def test_dropped_publish_fails_and_is_reported_in_the_fault_window() -> None:
    fires = simulate([FAST], T0 + 0.5, T0 + 20, created=T0 + 0.3)
    h = Hist([FAST]).schedule(T0 - 1).start("beat1", T0)
    crash = (fires[3][0] - 0.5, fires[5][0] + 0.5)
    h.rec(Kind.FAULT, crash[0], name="crash_broker", phase="start", target="redis")
    h.rec(Kind.FAULT, crash[1], name="crash_broker", phase="end", target="redis")
    for i, (t, e) in enumerate(fires):
        h.fire(t, e, acked=not 3 <= i <= 4, runs=0 if 3 <= i <= 4 else 1)
    del_tick = fires[5][0]
    h.records = [r for r in h.records if r.wall_ns != int(del_tick * 1e9)]  # never attempted
    res = h.stop("beat1", T0 + 20).drain(T0 + 21).check()
    assert res.valid is Verdict.INVALID
    c = res.entries["fast-report"]
    assert (c.dropped, c.missing) == (2, 1)
    (fault,) = res.faults
    assert fault.ticks == {"dropped": 2, "missing": 1}
    assert fault.resumed_s == pytest.approx(fires[6][0] - crash[1], abs=0.01)


def _runs(runs: dict[int, int], complete: bool = True) -> BeatCheckResult:
    h = Hist([FAST]).schedule(T0 - 1).start("beat1", T0)
    for i, (t, e) in enumerate(simulate([FAST], T0 + 0.5, T0 + 12, created=T0 + 0.3)):
        h.fire(t, e, runs=runs.get(i, 1))
    return h.stop("beat1", T0 + 12).drain(T0 + 13, complete=complete).check()


def test_unexecuted_and_twice_executed_ticks() -> None:
    res = _runs({1: 0, 2: 2})
    assert res.valid is Verdict.INVALID
    c = res.entries["fast-report"]
    assert (c.unexecuted, c.duplicate_execution) == (1, 1)
    # Without a complete drain the unexecuted tick may still run: unknown, not invalid.
    assert _runs({1: 0}, complete=False).valid is Verdict.UNKNOWN


def test_unscheduled_publish_fails() -> None:
    h = one_beat([FAST])
    other = EntrySpec(name="x", task="celery_chaos.sample_app.tasks.send_email", type="interval",
                      run_every_s=5, args=[])
    h.fire(T0 + 5.5, other)
    res = h.check()
    assert res.valid is Verdict.INVALID
    assert res.extra[0].entry is None and "no schedule entry" in res.extra[0].reason


def test_without_a_schedule_record_the_verdict_is_unknown() -> None:
    h = Hist([FAST]).start("beat1", T0)
    h.fires(simulate([FAST], T0 + 0.5, T0 + 6, created=T0 + 0.3))
    assert h.check().valid is Verdict.UNKNOWN


def test_as_a_scenario_invariant() -> None:
    results = check_history(one_beat([FAST]).history(), extra=[beat_checker()])
    assert [r.name for r in results] == ["queue", "beat"]
    assert results[1].verdict is Verdict.VALID
    assert results[1].summary_as(BeatCheckResult).entries["fast-report"].ok >= 8


# -- the production crontab across a simulated day -------------------------------------------


def test_morning_crontab_across_a_simulated_day_fires_once() -> None:
    """crontab(hour=8, minute=0) with Celery's default 300 s loop, plus a 10 min interval
    entry with the same task and arguments (the checker must tell their fires apart)."""
    every10 = EntrySpec(name="fast-report", task=TASK, type="interval", run_every_s=600, args=[1])
    entries = [MORNING, every10]
    day = 86400.0
    h = Hist(entries, max_loop=300.0).schedule(T0 - 1).start("beat1", T0)
    fires = simulate(entries, T0 + 0.5, T0 + day + 60, max_loop=300.0, created=T0 + 0.3)
    morning = [t for t, e in fires if e is MORNING]
    eight = datetime(2026, 3, 10, 8, 0, tzinfo=timezone.utc).timestamp()
    assert morning == [pytest.approx(eight, abs=1)]
    res = h.fires(fires).stop("beat1", T0 + day + 60).drain(T0 + day + 61).check()
    assert res.valid is Verdict.VALID, res.problems
    assert (res.entries[MORNING.name].ticks, res.entries[MORNING.name].ok) == (1, 1)
    assert res.entries["fast-report"].ok == 144


def test_morning_crontab_missing_or_twice_fails() -> None:
    day = 86400.0
    fires = simulate([MORNING], T0 + 0.5, T0 + day, max_loop=300.0, created=T0 + 0.3)
    (eight,) = [t for t, _ in fires]
    missing = Hist([MORNING], max_loop=300.0).schedule(T0 - 1).start("beat1", T0)
    res = missing.stop("beat1", T0 + day).drain(T0 + day + 1).check()
    assert res.valid is Verdict.INVALID and res.entries[MORNING.name].missing == 1
    twice = Hist([MORNING], max_loop=300.0).schedule(T0 - 1).start("beat1", T0)
    twice.fires(fires).fire(eight + 40, MORNING)  # a restarted beat with a stale file
    res = twice.stop("beat1", T0 + day).drain(T0 + day + 1).check()
    assert res.valid is Verdict.INVALID and res.entries[MORNING.name].extra == 1
    late = Hist([MORNING], max_loop=300.0).schedule(T0 - 1).start("beat1", T0)
    late.fire(eight + 400, MORNING)  # later than max loop interval + margin
    res = late.stop("beat1", T0 + day).drain(T0 + day + 1).check()
    assert res.valid is Verdict.INVALID and res.entries[MORNING.name].late == 1


def test_the_callers_margin_decides_which_entry_a_shared_fire_serves() -> None:
    """A crontab and an interval entry share task and arguments: a fire 310 s after the
    crontab slot is that slot's, late within ``margin_s=30`` (300 s loop + 30 s), so the
    assignment must use the caller's margin too, not the default 0.5 s."""
    every2d = EntrySpec(name="every-2d", task=TASK, type="interval", run_every_s=172800,
                        args=[1])
    eight = datetime(2026, 3, 10, 8, 0, tzinfo=timezone.utc).timestamp()
    h = Hist([MORNING, every2d], max_loop=300.0).schedule(T0 - 1).start("beat1", T0)
    h.fire(eight + 310, MORNING)
    h.stop("beat1", eight + 3600).drain(eight + 3601)
    res = h.check(margin_s=30.0)
    assert res.valid is Verdict.VALID, res.problems
    assert (res.entries[MORNING.name].ok, res.entries["every-2d"].extra) == (1, 0)
    default = h.check()  # 0.5 s: too late for the slot, so the interval entry's (early)
    assert (default.entries[MORNING.name].missing, default.entries["every-2d"].early) == (1, 1)


# -- several beats, restarts, fail-over --------------------------------------------------------


@pytest.mark.parametrize("offset", [0.01, 0.9, 1.6])
def test_two_beats_fire_every_tick_twice(offset: float) -> None:
    h = Hist([FAST]).schedule(T0 - 1).start("beat1", T0).start("beat2", T0 + offset)
    h.fires(simulate([FAST], T0 + 0.5, T0 + 20, created=T0 + 0.3), host="beat1")
    h.fires(simulate([FAST], T0 + 0.5 + offset, T0 + 20, created=T0 + 0.3 + offset), "beat2")
    res = h.stop("beat1", T0 + 20).stop("beat2", T0 + 20).drain(T0 + 21).check()
    assert res.valid is Verdict.INVALID
    c = res.entries["fast-report"]
    assert c.extra >= c.ok - 1 >= 7
    assert {x.host for x in res.extra} | {k.host for k in res.ticks} == {"beat1", "beat2"}
    assert res.disruptions == []  # stopped together at the end: no fail-over to report


def _restart(stale: bool, restart_after: float, interval: float = 3.0) -> BeatCheckResult:
    entry = FAST.model_copy(update={"run_every_s": interval})
    h = Hist([entry]).schedule(T0 - 1).start("beat1", T0)
    first = simulate([entry], T0 + 0.5, T0 + 7, created=T0 + 0.3)
    h.fires(first)
    kill = first[-1][0] + 0.3
    h.kill("beat1", kill)
    back = kill + restart_after
    h.start("beat1", back - 0.4, ready_after=0.4)
    # The schedule file: synced at the first fire only (default), or at every fire.
    synced = first[0][0] if stale else first[-1][0]
    h.fires(simulate([entry], back, T0 + 20, last_run={entry.name: synced}))
    return h.stop("beat1", T0 + 20).drain(T0 + 21).check()


@pytest.mark.parametrize("restart_after", [0.5, 1.2, 1.5, 2.2])
def test_restart_with_a_stale_schedule_file_double_fires(restart_after: float) -> None:
    # However long the restart takes (a loaded machine: over half the interval), the restarted
    # beat's immediate fire, before the next tick's window, is the served tick fired again.
    res = _restart(stale=True, restart_after=restart_after)
    assert res.valid is Verdict.INVALID
    assert res.entries["fast-report"].extra == 1, res.problems
    assert res.entries["fast-report"].early == 0, res.problems
    assert "second fire" in res.extra[0].reason
    assert res.disruptions[0].first_fire_s == pytest.approx(restart_after, abs=0.05)


def test_restart_with_a_synced_schedule_file_is_valid() -> None:
    res = _restart(stale=False, restart_after=0.5)
    assert res.valid is Verdict.VALID, res.problems
    assert res.disruptions[0].coalesced == 0


def test_slow_restart_coalesces_the_ticks_due_meanwhile() -> None:
    # Down for 7 s with a 3 s interval: two ticks due while down, one catch-up fire serves both.
    res = _restart(stale=False, restart_after=7.0)
    assert res.valid is Verdict.VALID, res.problems
    assert res.entries["fast-report"].coalesced == 1
    assert res.disruptions[0].coalesced == 2


def _failover(takeover: float) -> BeatCheckResult:
    h = Hist([FAST], lock_timeout=5.0).schedule(T0 - 1)
    h.start("beat1", T0).start("beat2", T0 + 0.6)
    first = simulate([FAST], T0 + 0.5, T0 + 7, created=T0 + 0.3)
    h.fires(first, host="beat1")
    kill = first[-1][0] + 0.3
    h.kill("beat1", kill)
    h.fires(simulate([FAST], kill + takeover, T0 + 25, last_run={FAST.name: first[-1][0]}),
            host="beat2")
    return h.stop("beat2", T0 + 25).drain(T0 + 26).check()


def test_leader_lock_failover_is_exactly_once_and_reports_the_gap() -> None:
    res = _failover(takeover=4.8)
    assert res.valid is Verdict.VALID, res.problems
    (dis,) = res.disruptions
    assert dis.first_fire_s == pytest.approx(4.8, abs=0.01)
    assert dis.first_fire_by == "beat2" and dis.coalesced == 2
    assert dis.recovery_by == pytest.approx(dis.at + 6.0)  # lock timeout + max loop interval


def test_failover_slower_than_the_lock_allows_fails() -> None:
    res = _failover(takeover=9.0)
    assert res.valid is Verdict.INVALID
    assert res.entries["fast-report"].missing >= 1


def test_tolerance_is_capped_by_the_interval() -> None:
    slow = FAST.model_copy(update={"run_every_s": 10.0})
    res = one_beat([slow], seconds=35).check()
    assert res.valid is Verdict.VALID
    assert (res.entries["fast-report"].early_s, res.entries["fast-report"].late_s) == (0.3, 1.5)


@pytest.mark.parametrize(("period", "flagged"), [(1.75, True), (1.9, True), (2.0, False)])
def test_a_beat_firing_too_often_is_flagged(period: float, flagged: bool) -> None:
    # Each fire is within the early tolerance of "previous fire + interval", but the schedule
    # cannot drift forward: Celery counts the next due from the reservation, never earlier.
    h = Hist([FAST]).schedule(T0 - 1).start("beat1", T0)
    fires = [(T0 + 0.3 + FAST.run_every_s + i * period, FAST) for i in range(int(30 / period))]
    h.fires(fires)
    end = fires[-1][0] + 0.5
    res = h.stop("beat1", end).drain(end + 1).check()
    assert (res.valid is Verdict.INVALID) is flagged, res.problems
