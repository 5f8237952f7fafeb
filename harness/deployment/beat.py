"""Run, kill and restart ``celery beat`` instances for a :class:`~harness.scenario.Scenario`.

Every step leaves a record the beat checker (:mod:`harness.checks.beat`) reads: the schedule
(``deployment`` ``beat_schedule``, dumped from the app under test with the beat's own
environment), each beat's ``beat_started``/``beat_ready``/``beat_stopped``, and kills as
``fault`` ``kill_beat`` windows. Beat's own publishes are recorded by the recorder the app
shim installs (role ``beat``, ``invoke``/``ok`` from Celery's publish signals).

``python -m harness.deployment.beat`` prints the schedule of ``$CHAOS_APP`` as JSON.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import weakref
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.beat import DEFAULT_MAX_INTERVAL
from celery.schedules import crontab

from harness.checks.beat import (
    BEAT_READY,
    BEAT_STARTED,
    BEAT_STOPPED,
    KILL_BEAT,
    SCHEDULE_RECORD,
    BeatSchedule,
    beat_checker,
    entry_spec,
)
from harness.deployment.app_loader import CONF_ENV, app_from_env, merge_settings
from harness.deployment.workers import Beat
from harness.errors import InfrastructureError
from harness.history.schema import Kind, Record
from harness.history.store import read_history

if TYPE_CHECKING:
    from harness.report.results import ScenarioResult
    from harness.scenario import Scenario

REDBEAT = "redbeat.RedBeatScheduler"

_recorded: weakref.WeakKeyDictionary[Any, BeatSchedule] = weakref.WeakKeyDictionary()


def redbeat_settings(*, lock_timeout: float = 5, max_loop_interval: float = 1) -> dict[str, Any]:
    """Celery settings for RedBeat with a short leader lock (the Redis URL is filled in later)."""
    return {
        "beat_scheduler": REDBEAT,
        "beat_max_loop_interval": max_loop_interval,
        "redbeat_lock_timeout": lock_timeout,
    }


def schedule_of(app: Celery) -> BeatSchedule:
    """The beat schedule and beat settings of ``app``, as the checker needs them."""
    conf = app.conf
    items = dict(conf.beat_schedule or {})
    if conf.result_expires and not app.backend.supports_autoexpire:
        items.setdefault(  # what Scheduler.install_default_entries adds
            "celery.backend_cleanup",
            {"task": "celery.backend_cleanup", "schedule": crontab("0", "4", "*")},
        )
    scheduler = str(conf.beat_scheduler)
    max_loop = float(conf.beat_max_loop_interval or DEFAULT_MAX_INTERVAL)
    lock_timeout: float | None = None
    if "redbeat" in scheduler.lower():
        keys = {k.lower() for k in conf.keys()}
        has_lock = conf.get("redbeat_lock_key") if "redbeat_lock_key" in keys else True
        if has_lock:
            lock_timeout = float(conf.get("redbeat_lock_timeout") or max_loop * 5)
    return BeatSchedule(
        entries=[entry_spec(name, entry) for name, entry in items.items()],
        timezone=str(conf.timezone or "UTC"),
        scheduler=scheduler,
        max_loop_interval_s=max_loop,
        sync_every=int(conf.beat_sync_every or 0),
        lock_timeout_s=lock_timeout,
    )


def _spawn_dump(env: dict[str, str]) -> subprocess.Popen[str]:
    """Start a child that prints the schedule of the app under test, loaded with ``env``."""
    return subprocess.Popen(
        [sys.executable, "-m", "harness.deployment.beat"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _read_dump(proc: subprocess.Popen[str], timeout: float) -> BeatSchedule:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        tail = (err or out).strip().splitlines()[-1:] or ["no output"]
        raise InfrastructureError(f"cannot read the beat schedule of the app: {tail[0]}")
    return BeatSchedule.model_validate_json(out.strip().splitlines()[-1])


def add_beat(
    chaos: Scenario, name: str = "beat1", *, settings: dict[str, Any] | None = None
) -> Beat:
    """Register a beat (not started) with the scenario's settings plus ``settings``.

    RedBeat without ``redbeat_redis_url`` gets the scenario's Redis (db 2): the broker's when
    the broker is Redis, else the result backend's, with keys prefixed by the scenario.
    """
    conf = merge_settings(chaos.settings, settings or {})
    if "redbeat" in str(conf.get("beat_scheduler", "")).lower() and not conf.get(
        "redbeat_redis_url"
    ):
        redis = chaos.broker if chaos.broker_kind == "redis" else chaos.brokers.results_redis()
        conf["redbeat_redis_url"] = redis.url(2)
        conf.setdefault("redbeat_key_prefix", f"redbeat:{chaos.dir.name}:")
    state_dir = chaos.dir / "beat"
    state_dir.mkdir(exist_ok=True)
    beat = Beat(
        name,
        env={**chaos.env_for(name), CONF_ENV: json.dumps(conf)},
        log_dir=chaos.log_dir,
        state_dir=state_dir,
    )
    chaos.beats[name] = beat
    return beat


def start_beats(chaos: Scenario, *names: str, timeout: float = 30.0) -> list[Beat]:
    """Start (or restart) beats together, record them, and wait until each is ready.

    The first start in a scenario also records the schedule (``beat_schedule``), dumped in
    parallel with the beats' own start-up.
    """
    beats = [chaos.beats[n] for n in names]
    dump = _spawn_dump(beats[0].env) if chaos not in _recorded else None
    try:
        for beat in beats:
            beat.spawn()
            chaos.writer.write(
                Kind.DEPLOYMENT,
                name=BEAT_STARTED,
                target=beat.name,
                detail={"pid": beat.pid, "start": beat.starts},
            )
        for beat in beats:
            beat.wait_ready(timeout)
            chaos.writer.write(
                Kind.DEPLOYMENT, name=BEAT_READY, target=beat.name, detail={"pid": beat.pid}
            )
    finally:
        if dump is not None:
            sched = _read_dump(dump, timeout)
            _recorded[chaos] = sched
            chaos.writer.write(
                Kind.DEPLOYMENT,
                name=SCHEDULE_RECORD,
                target=beats[0].name,
                detail=sched.model_dump(mode="json"),
            )
    return beats


def beat_schedule(chaos: Scenario) -> BeatSchedule | None:
    """The schedule recorded for the scenario (after the first :func:`start_beats`)."""
    return _recorded.get(chaos)


def kill_beat(chaos: Scenario, name: str, sig: int = signal.SIGKILL) -> int:
    """Signal a beat (SIGKILL by default: no schedule sync) and wait for it to exit."""
    beat = chaos.beats[name]
    pid = beat.pid
    with chaos.faults.window(KILL_BEAT, name, pid=pid, signal=signal.Signals(sig).name):
        beat.signal(sig)
        assert beat.proc is not None
        if beat.proc.wait_exit(30) is None:
            raise InfrastructureError(f"beat {name} (pid {pid}) did not exit after {sig}")
    return pid


def stop_beats(chaos: Scenario, *names: str) -> None:
    """Gracefully stop beats (SIGTERM: the scheduler syncs and closes); all stop at once."""
    beats = [chaos.beats[n] for n in names] if names else list(chaos.beats.values())
    running = [b for b in beats if b.is_running()]
    for beat in running:
        chaos.writer.write(
            Kind.DEPLOYMENT, name=BEAT_STOPPED, target=beat.name, detail={"pid": beat.pid}
        )
        beat.signal(signal.SIGTERM)
    for beat in running:
        beat.stop()


def beat_fires(chaos: Scenario, *, host: str | None = None, after_ns: int = 0) -> list[Record]:
    """Acknowledged beat publishes (``ok``, role beat) so far, optionally of one beat."""
    return [
        r
        for r in read_history(chaos.history_dir).records
        if r.kind is Kind.OK
        and r.role == "beat"
        and r.wall_ns > after_ns
        and (host is None or r.host == host)
    ]


def wait_fires(
    chaos: Scenario,
    n: int,
    *,
    host: str | None = None,
    after_ns: int = 0,
    timeout: float = 30.0,
) -> list[Record]:
    """Wait until ``n`` acknowledged beat publishes are recorded (after ``after_ns``)."""
    deadline = time.monotonic() + timeout
    while True:
        fires = beat_fires(chaos, host=host, after_ns=after_ns)
        if len(fires) >= n:
            return fires
        if time.monotonic() >= deadline:
            raise InfrastructureError(
                f"beat published {len(fires)} of {n} ticks within {timeout:.0f} s: see the "
                f"beat logs in {chaos.log_dir}"
            )
        time.sleep(0.05)


def check_beats(
    chaos: Scenario,
    *,
    early_s: float | None = None,
    margin_s: float | None = None,
    takeover_s: float | None = None,
    drain_timeout: float = 30.0,
    settle: float = 1.0,
) -> ScenarioResult:
    """Stop every beat, then drain and check the queue and beat invariants."""
    stop_beats(chaos)
    opts: dict[str, Any] = {"takeover_s": takeover_s}
    if early_s is not None:
        opts["early_s"] = early_s
    if margin_s is not None:
        opts["margin_s"] = margin_s
    result = chaos.check(
        invariants=[beat_checker(**opts)], drain_timeout=drain_timeout, settle=settle
    )
    beat = next((i for i in result.invariants if i.name == "beat"), None)
    if beat is not None:
        result.metrics["beat"] = beat_metrics(beat.summary)
        chaos.save()
    return result


def beat_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The beat invariant's numbers for ``result.json`` metrics and benchmarks."""
    keys = ("ticks", "ok", "missing", "late", "early", "dropped", "extra", "coalesced")
    return {
        "entries": {
            name: {k: c[k] for k in keys}
            for name, c in summary.get("entries", {}).items()
            if c["ticks"] or c["extra"]
        },
        "extra_fires": len(summary.get("extra", [])),
        "disruptions": [
            {k: d[k] for k in ("beat", "kind", "first_fire_s", "first_fire_by", "coalesced")}
            for d in summary.get("disruptions", [])
        ],
        "faults": [
            {k: f[k] for k in ("name", "ticks", "resumed_s")} for f in summary.get("faults", [])
        ],
    }


def main() -> None:
    """Print the schedule of ``$CHAOS_APP`` (configured like every harness process) as JSON."""
    print(schedule_of(app_from_env()).model_dump_json())


if __name__ == "__main__":
    main()
