"""Beat fires each scheduled tick exactly once (failure modes 39-43; docs/beat.md).

The sample app's ``fast-report`` entry (``generate_report(1)`` every few seconds) runs under
real ``celery beat`` processes on a private Redis broker, with ``beat_max_loop_interval=1``.
The beat checker (:mod:`harness.checks.beat`) maps every tick the schedule says was due to
exactly one publish and one execution. Negative controls (expect ``invalid``): a SIGKILLed and
restarted beat with Celery's default schedule sync (a double fire), and two beats without a
lock (every tick twice). The broker outage also ends ``invalid``: its ticks are dropped.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from harness.checks.verdict import InvariantResult
from harness.deployment.beat import (
    add_beat,
    check_beats,
    kill_beat,
    redbeat_settings,
    start_beats,
    wait_fires,
)
from harness.pytest_plugin import DEFAULT_APP
from harness.report.results import ScenarioResult
from harness.scenario import Scenario

ENTRY = "fast-report"
#: The fast entry's interval for most scenarios (s).
FAST = 2.0
#: The restart scenarios use 3 s: a double fire is visible only when the beat is back (kill,
#: spawn, start-up: 0.5 s idle, seconds under load) before the next tick is due.
RESTART = 3.0
#: Beat re-reads its schedule at least every second (production default: 300 s).
LOOP = {"beat_max_loop_interval": 1}
LOCK_TIMEOUT = 5.0
#: Seconds between the tick we wait for and a kill (the schedule sync after a publish is done).
AFTER_FIRE = 0.3


def _deploy(
    chaos: Scenario,
    interval: float = FAST,
    settings: dict[str, Any] | None = None,
    **kwargs: Any,
) -> None:
    if chaos.app.spec != DEFAULT_APP:
        pytest.skip("the beat scenarios drive the sample app's fast-report entry")
    chaos.deploy(
        "redis",
        workers=1,
        concurrency=1,
        settings={**LOOP, **(settings or {})},
        env={"SAMPLE_BEAT_FAST_INTERVAL": str(interval)},
        **kwargs,
    )


def _beat(result: ScenarioResult) -> InvariantResult:
    return next(i for i in result.invariants if i.name == "beat")


def _entry(result: ScenarioResult) -> dict[str, Any]:
    return _beat(result).summary["entries"][ENTRY]


def _now_ns() -> int:
    return time.time_ns()


@pytest.mark.chaos
def test_one_beat_fires_every_tick_once(chaos: Scenario) -> None:
    """One beat, undisturbed: every tick of the fast entry fires once and runs once."""
    _deploy(chaos)
    add_beat(chaos, "beat1")
    start_beats(chaos, "beat1")
    wait_fires(chaos, 4, timeout=30)
    result = check_beats(chaos)
    entry = _entry(result)
    assert result.verdict == "valid", _beat(result).problems
    assert entry["ok"] >= 3 and entry["ok"] == entry["ticks"]
    assert (entry["missing"], entry["extra"], entry["early"], entry["late"]) == (0, 0, 0, 0)


def _kill_and_restart(chaos: Scenario, sig: int) -> None:
    """Let beat fire twice, stop it ``AFTER_FIRE`` s after the second fire, start it again."""
    add_beat(chaos, "beat1")
    start_beats(chaos, "beat1")
    wait_fires(chaos, 2, timeout=30)
    time.sleep(AFTER_FIRE)
    kill_beat(chaos, "beat1", sig)
    restarted = _now_ns()
    start_beats(chaos, "beat1")
    # Two more ticks: a double fire (if any) plus one fire on the restarted cadence.
    wait_fires(chaos, 2, after_ns=restarted, timeout=30)


@pytest.mark.chaos
def test_beat_sigkill_restart_double_fires(chaos: Scenario) -> None:
    """Negative control (item 40): SIGKILL loses the unsynced schedule; the restart fires again.

    PersistentScheduler syncs its shelve file at its first loop wake-up (before the first
    fire), then every 180 s: the restarted beat reads the entry's creation time as its
    ``last_run_at`` and fires at once, a tick already served.
    """
    _deploy(chaos, RESTART, expect="invalid")
    _kill_and_restart(chaos, signal.SIGKILL)
    result = check_beats(chaos)
    beat = _beat(result)
    assert result.verdict == "invalid"
    doubles = [x for x in beat.summary["extra"] if x["entry"] == ENTRY]
    assert len(doubles) >= 1, beat.problems
    (dis,) = beat.summary["disruptions"]
    # The extra fire is the restarted beat's first, long before the tick was due.
    assert doubles[0]["fired"] - dis["at"] < RESTART - 0.5, (doubles, dis)


@pytest.mark.chaos
@pytest.mark.parametrize(
    "how",
    [
        pytest.param("sigkill-sync-every-1", id="sync_every_1"),
        pytest.param("sigterm", id="graceful_stop"),
    ],
)
def test_beat_restart_fires_once(chaos: Scenario, how: str) -> None:
    """What prevents the double fire (item 40): sync after every publish, or a graceful stop."""
    settings = {"beat_sync_every": 1} if how.endswith("sync-every-1") else {}
    _deploy(chaos, RESTART, settings=settings)
    _kill_and_restart(chaos, signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    result = check_beats(chaos)
    entry = _entry(result)
    assert result.verdict == "valid", _beat(result).problems
    assert (entry["extra"], entry["early"], entry["missing"]) == (0, 0, 0)
    assert entry["ok"] >= 4


@pytest.mark.chaos
def test_two_beats_fire_every_tick_twice(chaos: Scenario) -> None:
    """Negative control (item 39): two beats with their own schedule files and no lock."""
    _deploy(chaos, expect="invalid")
    add_beat(chaos, "beat1")
    add_beat(chaos, "beat2")
    start_beats(chaos, "beat1", "beat2")
    wait_fires(chaos, 6, timeout=30)
    result = check_beats(chaos)
    beat = _beat(result)
    entry = _entry(result)
    assert result.verdict == "invalid"
    assert entry["extra"] >= 2, beat.problems
    hosts = {x["host"] for x in beat.summary["extra"]} | {
        t["host"] for t in beat.summary["ticks"] if t["host"]
    }
    assert hosts == {"beat1", "beat2"}


@pytest.mark.chaos
def test_redbeat_leader_killed_fails_over_exactly_once(chaos: Scenario) -> None:
    """RedBeat (item 43): two beats, a Redis lock of 5 s; SIGKILL the leader.

    The standby takes over once the dead leader's lock expires; the ticks due meanwhile are
    served by one catch-up fire, none twice.
    """
    _deploy(chaos, settings=redbeat_settings(lock_timeout=LOCK_TIMEOUT, max_loop_interval=1))
    add_beat(chaos, "beat1")
    add_beat(chaos, "beat2")
    start_beats(chaos, "beat1", "beat2")
    fires = wait_fires(chaos, 2, timeout=30)
    leader = fires[-1].host
    standby = "beat2" if leader == "beat1" else "beat1"
    time.sleep(AFTER_FIRE)
    killed = _now_ns()
    kill_beat(chaos, leader)
    wait_fires(chaos, 3, host=standby, after_ns=killed, timeout=30)
    result = check_beats(chaos)
    beat = _beat(result)
    entry = _entry(result)
    assert result.verdict == "valid", beat.problems
    assert (entry["extra"], entry["missing"], entry["early"]) == (0, 0, 0)
    assert {x["host"] for x in beat.summary["extra"]} == set()
    (dis,) = [d for d in beat.summary["disruptions"] if d["kind"] == "kill"]
    gap = dis["first_fire_s"]
    assert dis["first_fire_by"] == standby
    # The lock (extended every loop, <= 1 s) must expire first; the standby polls every 1 s.
    assert LOCK_TIMEOUT - 1 - 1 <= gap <= LOCK_TIMEOUT + 1 + 1, dis


@pytest.mark.chaos
def test_beat_during_broker_outage_drops_ticks(chaos: Scenario) -> None:
    """Item 42: Redis (broker and result backend) down for 6 s; ticks due meanwhile are lost.

    Beat never backfills them and sends no burst after recovery; it resumes within an interval.
    """
    _deploy(chaos, expect="invalid", redis_persistence="aof-always")
    add_beat(chaos, "beat1")
    start_beats(chaos, "beat1")
    wait_fires(chaos, 2, timeout=30)
    time.sleep(0.5)  # the last tick's task has run: only ticks are at stake
    chaos.faults.restart_broker(chaos.broker, crash=True, down_for=6.0)
    back = _now_ns()
    wait_fires(chaos, 2, after_ns=back, timeout=30)
    result = check_beats(chaos, drain_timeout=15)
    beat = _beat(result)
    entry = _entry(result)
    assert result.verdict == "invalid"
    (fault,) = [f for f in beat.summary["faults"] if f["name"] == "crash_broker"]
    lost = entry["missing"] + entry["dropped"] + entry["late"]
    assert lost >= 1, beat.problems
    assert fault["ticks"].get("missing", 0) + fault["ticks"].get("dropped", 0) >= 1, fault
    # Every bad tick was due during the outage (plus the late bound), none outside it.
    late_s = entry["late_s"]
    for tick in beat.summary["ticks"]:
        if tick["status"] in ("missing", "dropped", "late", "early"):
            assert fault["start"] - late_s <= tick["due"] <= fault["end"] + late_s, tick
    assert entry["extra"] == 0 and entry["early"] == 0  # no catch-up burst
    assert fault["resumed_s"] is not None and fault["resumed_s"] <= FAST + late_s, fault
