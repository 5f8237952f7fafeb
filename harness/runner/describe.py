"""The deployment as run, for ``ScenarioResult.deployment``: broker and version, workers,
pool, the effective reliability settings.

The reliability settings shown are the *effective* ones: the app's own configuration
with the settings under test applied, read by loading the app exactly as the workers do
(``celery_chaos.deployment.celery_app``) in a short subprocess with the scenario's environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Protocol

from celery_chaos.history.store import HistoryWriter
from celery_chaos.results import (
    RELIABILITY_SETTINGS,
    ScenarioResult,
    from_conf,
    settings_over_defaults,
)


class Scenario(Protocol):
    """What a description reads of a scenario (:class:`celery_chaos.runner.scenario.Scenario`)."""

    result: ScenarioResult
    writer: HistoryWriter
    env: dict[str, str]
    settings: dict[str, Any]
    loads: list[Any]
    app: Any

    @property
    def broker_kind(self) -> str | None: ...
    @property
    def broker(self) -> Any: ...
    @property
    def workers(self) -> dict[str, Any]: ...

_SCRIPT = """
import json, sys
from celery_chaos.deployment.app_loader import app_from_env
conf = app_from_env().conf
keys = json.loads(sys.argv[1])
out = {}
for key in keys:
    if key.startswith("transport:"):
        out[key] = (conf.broker_transport_options or {}).get(key.split(":", 1)[1])
    else:
        out[key] = conf.get(key)
print(json.dumps(out, default=repr))
"""


def effective_settings(env: dict[str, str], broker: str, timeout: float = 60.0) -> dict[str, Any]:
    """The reliability settings as the workers see them (app config + settings under test).

    Raises ``RuntimeError`` with the subprocess's last error line when the app cannot load.
    """
    keys = [key for _, key in RELIABILITY_SETTINGS]
    res = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(keys)],
        env={k: v for k, v in {**os.environ, **env}.items() if k != "CHAOS_HISTORY_DIR"},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"could not load the app to read its settings: {last}")
    return from_conf(json.loads(res.stdout.strip().splitlines()[-1]), broker)


def describe(scenario: Scenario) -> dict[str, Any]:
    """The deployment of a scenario, for ``ScenarioResult.deployment`` (never raises)."""
    info: dict[str, Any] = {"broker": scenario.broker_kind or "", "app": scenario.app.spec}
    try:
        info["broker_version"] = scenario.broker.version() if scenario.broker else ""
    except Exception as exc:  # noqa: BLE001 - a report field, not a reason to fail
        info["broker_version"] = f"unknown ({type(exc).__name__})"
    workers = list(scenario.workers.values())
    info["workers"] = len(workers)
    info["concurrency"] = sorted({w.concurrency for w in workers})
    info["pool"] = sorted({w.pool for w in workers})
    if len(info["concurrency"]) == 1:
        info["concurrency"] = info["concurrency"][0]
    if len(info["pool"]) == 1:
        info["pool"] = info["pool"][0]
    broker = scenario.broker_kind or ""
    try:
        info["settings"] = effective_settings(scenario.env, broker)
        info["settings_source"] = "the app's configuration with the settings under test"
    except Exception as exc:  # noqa: BLE001
        info["settings"] = settings_over_defaults(scenario.settings, broker)
        info["settings_source"] = f"Celery's defaults with the settings under test ({exc})"
    loads = [
        {
            "users": run.users,
            "tasks": run.tasks,
            "rate": run.rate,
            "duration_s": run.duration,
            "seed": int(run.env.get("CHAOS_SEED", "0")),
        }
        for run in scenario.loads
    ]
    info["loads"] = loads
    info["seed"] = loads[0]["seed"] if loads else None
    return info


def fault_names(scenario: Scenario) -> list[str]:
    """Names of the faults this scenario's harness recorded, in order of first use."""
    names: list[str] = []
    try:
        lines = scenario.writer.path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return names
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("kind") == "fault" and rec.get("name") and rec["name"] not in names:
            names.append(rec["name"])
    return names


def annotate(scenario: Scenario) -> None:
    """Fill ``scenario.result.deployment`` (once) and ``.faults``; never raises."""
    try:
        if not scenario.result.deployment and scenario.broker_kind:
            scenario.result.deployment = describe(scenario)
        scenario.result.faults = fault_names(scenario)
    except Exception as exc:  # noqa: BLE001 - the report must not break a scenario
        print(f"celery-chaos: could not describe the deployment: {exc}", file=sys.stderr)
