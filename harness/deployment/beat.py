"""The beat schedule of the app under test, as the beat checker needs it.

``python -m celery_chaos.deployment.beat`` prints the schedule of ``$CHAOS_APP`` (configured like
every harness process, with the beat's own environment) as JSON: a scenario spawns it while
its beats start (:meth:`celery_chaos.runner.scenario.Scenario.start_beats`) and records the output
as the ``deployment`` ``beat_schedule`` record.
"""

from __future__ import annotations

import os
import subprocess
import sys

from celery import Celery
from celery.beat import DEFAULT_MAX_INTERVAL
from celery.schedules import crontab

from celery_chaos.checks.beat import BeatSchedule, entry_spec
from celery_chaos.deployment.app_loader import app_from_env
from celery_chaos.errors import InfrastructureError


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


def spawn_dump(env: dict[str, str]) -> subprocess.Popen[str]:
    """Start a child that prints the schedule of the app under test, loaded with ``env``."""
    return subprocess.Popen(
        [sys.executable, "-m", "celery_chaos.deployment.beat"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_dump(proc: subprocess.Popen[str], timeout: float) -> BeatSchedule:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        tail = (err or out).strip().splitlines()[-1:] or ["no output"]
        raise InfrastructureError(f"cannot read the beat schedule of the app: {tail[0]}")
    return BeatSchedule.model_validate_json(out.strip().splitlines()[-1])


def main() -> None:
    """Print the schedule of ``$CHAOS_APP`` (configured like every harness process) as JSON."""
    print(schedule_of(app_from_env()).model_dump_json())


if __name__ == "__main__":
    main()
