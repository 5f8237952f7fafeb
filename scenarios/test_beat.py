"""Beat fires each scheduled tick exactly once (failure modes 39-43; docs/beat.md).

The specs are in ``harness/catalog/beat.yaml``; this file runs each one and asserts what is
specific to it. The sample app's ``fast-report`` entry (``generate_report(1)`` every few
seconds) runs under real ``celery beat`` processes on a private Redis broker, with
``beat_max_loop_interval=1``. The beat checker (:mod:`celery_chaos.checks.beat`) maps every tick
the schedule says was due to exactly one publish and one execution. Negative controls (expect
``invalid``): a SIGKILLed and restarted beat with Celery's default schedule sync (a double
fire), and two beats without a lock (every tick twice). The broker outage also ends
``invalid``: its ticks are dropped.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from celery_chaos.checks.beat import BeatCheckResult, EntryCounts
from celery_chaos.runner.catalog import specs
from celery_chaos.runner.run import ScenarioRun
from celery_chaos.spec.model import ScenarioSpec

SPECS = specs("beat")
ENTRY = "fast-report"
#: The fast entry's interval for most scenarios (s).
FAST = 2.0
#: The restart scenarios' interval (s).
RESTART = 3.0
#: RedBeat's leader lock in the fail-over scenario (s).
LOCK_TIMEOUT = 5.0


def _one_beat(run: ScenarioRun, beat: BeatCheckResult, entry: EntryCounts) -> None:
    """Every tick fired once and ran once."""
    assert entry.ok >= 3 and entry.ok == entry.ticks
    assert (entry.missing, entry.extra, entry.early, entry.late) == (0, 0, 0, 0)


def _double_fire(run: ScenarioRun, beat: BeatCheckResult, entry: EntryCounts) -> None:
    """PersistentScheduler syncs its shelve file at its first loop wake-up (before the first
    fire), then every 180 s: the restarted beat reads the entry's creation time as its
    ``last_run_at`` and fires at once, a tick already served."""
    doubles = [x for x in beat.extra if x.entry == ENTRY]
    assert len(doubles) >= 1, beat.problems
    (dis,) = beat.disruptions
    # The extra fire is the restarted beat's first, long before the tick was due.
    assert doubles[0].fired - dis.at < RESTART - 0.5, (doubles, dis)


def _restart_fires_once(run: ScenarioRun, beat: BeatCheckResult, entry: EntryCounts) -> None:
    """A sync after every publish, or a graceful stop: no double fire after the restart."""
    assert (entry.extra, entry.early, entry.missing) == (0, 0, 0)
    assert entry.ok >= 4


def _two_beats_fire_twice(run: ScenarioRun, beat: BeatCheckResult, entry: EntryCounts) -> None:
    """Both beats fire every tick."""
    assert entry.extra >= 2, beat.problems
    hosts = {x.host for x in beat.extra} | {t.host for t in beat.ticks if t.host}
    assert hosts == {"beat1", "beat2"}


def _outage_drops_ticks(run: ScenarioRun, beat: BeatCheckResult, entry: EntryCounts) -> None:
    """Ticks due in the outage are lost: never backfilled, no burst after recovery, and beat
    resumes within an interval."""
    (fault,) = [f for f in beat.faults if f.name == "crash_broker"]
    lost = entry.missing + entry.dropped + entry.late
    assert lost >= 1, beat.problems
    assert fault.ticks.get("missing", 0) + fault.ticks.get("dropped", 0) >= 1, fault
    # Every bad tick was due during the outage (plus the late bound), none outside it.
    late_s = entry.late_s
    for tick in beat.ticks:
        if tick.status in ("missing", "dropped", "late", "early"):
            assert fault.start - late_s <= tick.due <= fault.end + late_s, tick
    assert entry.extra == 0 and entry.early == 0  # no catch-up burst
    assert fault.resumed_s is not None and fault.resumed_s <= FAST + late_s, fault


def _redbeat_fails_over(run: ScenarioRun, beat: BeatCheckResult, entry: EntryCounts) -> None:
    """The standby takes over once the dead leader's lock expires, and fires no tick twice."""
    leader = run.window("kill").output_target
    standby = "beat2" if leader == "beat1" else "beat1"
    assert (entry.extra, entry.missing, entry.early) == (0, 0, 0)
    assert {x.host for x in beat.extra} == set()
    (dis,) = [d for d in beat.disruptions if d.kind == "kill"]
    assert dis.first_fire_by == standby
    # The lock (extended every loop, <= 1 s) must expire first; the standby polls every 1 s.
    gap = dis.first_fire_s
    assert gap is not None and LOCK_TIMEOUT - 1 - 1 <= gap <= LOCK_TIMEOUT + 1 + 1, dis


#: What each spec asserts beyond its verdict.
CHECKS: dict[str, Callable[[ScenarioRun, BeatCheckResult, EntryCounts], None]] = {
    "one_beat_fires_every_tick_once": _one_beat,
    "beat_sigkill_restart_double_fires": _double_fire,
    "beat_restart_fires_once-sync_every_1": _restart_fires_once,
    "beat_restart_fires_once-graceful_stop": _restart_fires_once,
    "two_beats_fire_every_tick_twice": _two_beats_fire_twice,
    "redbeat_leader_killed_fails_over_exactly_once": _redbeat_fails_over,
    "beat_during_broker_outage_drops_ticks": _outage_drops_ticks,
}


@pytest.mark.chaos
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_beat(chaos_run, spec: ScenarioSpec) -> None:  # type: ignore[no-untyped-def]
    """Each catalog spec of the family ends as declared, for the reason it claims."""
    run: ScenarioRun = chaos_run(spec)
    inv = run.invariant("beat")
    beat = inv.summary_as(BeatCheckResult)
    assert run.result.verdict == spec.expect, inv.problems
    entry = beat.entries[ENTRY]
    CHECKS[spec.name](run, beat, entry)
