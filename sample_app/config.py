"""Environment-variable configuration for the sample Celery app.

Every setting comes from a ``SAMPLE_*`` variable. Reliability settings that are unset (or set
to the empty string) are left out entirely, so Celery's and kombu's own defaults apply: the
harness exists to test those defaults. Service settings (SMTP endpoint, report paths, simulated
work) always get a value and are stored on ``app.conf`` under lowercase ``sample_*`` keys, where
the tasks read them at run time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from celery import Celery
from celery.schedules import crontab

DEFAULT_QUEUE = "default"
EMAILS_QUEUE = "emails"
REPORTS_QUEUE = "reports"
FETCH_QUEUE = "fetch"

SEND_EMAIL = "celery_chaos.sample_app.tasks.send_email"
GENERATE_REPORT = "celery_chaos.sample_app.tasks.generate_report"
FETCH_URL = "celery_chaos.sample_app.tasks.fetch_url"

TASK_ROUTES: dict[str, dict[str, str]] = {
    SEND_EMAIL: {"queue": EMAILS_QUEUE},
    GENERATE_REPORT: {"queue": REPORTS_QUEUE},
    FETCH_URL: {"queue": FETCH_QUEUE},
}

#: Report id used by the beat entries; it exists in any DB seeded with ``n_reports >= 1``.
BEAT_REPORT_ID = 1

_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"0", "false", "no"})


def parse_bool(name: str, raw: str) -> bool:
    """Parse 1/0/true/false/yes/no (case-insensitive); ValueError naming ``name`` otherwise."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean: use one of 1/0/true/false/yes/no")


def _number(name: str, raw: str, kind: type, *, positive: bool) -> Any:
    try:
        value = kind(raw.strip())
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{name}={raw!r} is not {what}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name}={raw!r} must be finite")
    if positive and value <= 0:
        raise ValueError(f"{name}={raw!r} must be > 0")
    if value < 0:
        raise ValueError(f"{name}={raw!r} must be >= 0")
    return value


def _int(positive: bool = False) -> Callable[[str, str], int]:
    return lambda name, raw: _number(name, raw, int, positive=positive)


def _float(positive: bool = False) -> Callable[[str, str], float]:
    return lambda name, raw: _number(name, raw, float, positive=positive)


def _str(name: str, raw: str) -> str:
    return raw


@dataclass(frozen=True)
class EnvVar:
    """One ``SAMPLE_*`` variable: where it goes and how it is parsed."""

    name: str
    setting: str  # Celery setting (dotted for a key inside a dict setting) or sample_* key
    parse: Callable[[str, str], Any]
    default: Any  # None: leave Celery's default (the setting is not written at all)
    meaning: str


ENV_VARS: tuple[EnvVar, ...] = (
    # Celery / kombu settings: unset leaves the library default.
    EnvVar("SAMPLE_BROKER_URL", "broker_url", _str, None, "Broker URL."),
    EnvVar("SAMPLE_RESULT_BACKEND", "result_backend", _str, None, "Result backend URL."),
    EnvVar("SAMPLE_ACKS_LATE", "task_acks_late", parse_bool, None, "Ack after the task runs."),
    EnvVar(
        "SAMPLE_REJECT_ON_WORKER_LOST",
        "task_reject_on_worker_lost",
        parse_bool,
        None,
        "Requeue (reject) a late-ack task whose worker process died.",
    ),
    EnvVar(
        "SAMPLE_PREFETCH_MULTIPLIER",
        "worker_prefetch_multiplier",
        _int(),
        None,
        "Messages prefetched per worker process.",
    ),
    EnvVar("SAMPLE_TIME_LIMIT", "task_time_limit", _float(True), None, "Hard time limit (s)."),
    EnvVar(
        "SAMPLE_SOFT_TIME_LIMIT",
        "task_soft_time_limit",
        _float(True),
        None,
        "Soft time limit (s).",
    ),
    EnvVar(
        "SAMPLE_VISIBILITY_TIMEOUT",
        "broker_transport_options.visibility_timeout",
        _int(True),
        None,
        "Redis/SQS visibility timeout (s); also written to "
        "result_backend_transport_options.visibility_timeout and visibility_timeout.",
    ),
    EnvVar(
        "SAMPLE_BROKER_HEARTBEAT",
        "broker_heartbeat",
        _int(),
        None,
        "AMQP heartbeat (s); 0 disables.",
    ),
    EnvVar(
        "SAMPLE_CONFIRM_PUBLISH",
        "broker_transport_options.confirm_publish",
        parse_bool,
        None,
        "AMQP publisher confirms (py-amqp).",
    ),
    EnvVar(
        "SAMPLE_CONFIRM_TIMEOUT",
        "broker_transport_options.confirm_timeout",
        _float(True),
        None,
        "Publisher-confirm timeout (s), passed through as a transport option.",
    ),
    # Service endpoints and simulated work: always set.
    EnvVar("SAMPLE_SMTP_HOST", "sample_smtp_host", _str, "127.0.0.1", "SMTP server host."),
    EnvVar("SAMPLE_SMTP_PORT", "sample_smtp_port", _int(True), 8025, "SMTP server port."),
    EnvVar(
        "SAMPLE_SMTP_TIMEOUT", "sample_smtp_timeout", _float(True), 10.0, "SMTP socket timeout (s)."
    ),
    EnvVar(
        "SAMPLE_REPORTS_DB",
        "sample_reports_db",
        _str,
        "sample_reports.sqlite3",
        "SQLite DB that generate_report reads (seeded by celery_chaos.deployment.sinks).",
    ),
    EnvVar(
        "SAMPLE_REPORTS_DIR",
        "sample_reports_dir",
        _str,
        "sample_reports",
        "Directory generate_report writes <report_id>.html into (created if missing).",
    ),
    EnvVar(
        "SAMPLE_FETCH_RETRY_COUNTDOWN",
        "sample_fetch_retry_countdown",
        _float(),
        60.0,
        "fetch_url retry countdown (s).",
    ),
    EnvVar(
        "SAMPLE_FETCH_TIMEOUT",
        "sample_fetch_timeout",
        _float(True),
        10.0,
        "fetch_url requests timeout (s).",
    ),
    EnvVar(
        "SAMPLE_BEAT_FAST_INTERVAL",
        "beat_schedule.fast-report",
        _float(True),
        None,
        "Interval (s) of the fast-report beat entry; the entry exists only when set.",
    ),
    EnvVar(
        "SAMPLE_REPORT_RENDER_SECONDS",
        "sample_report_render_seconds",
        _float(),
        0.0,
        "Simulated render time: generate_report sleeps this long before any work.",
    ),
    EnvVar(
        "SAMPLE_EMAIL_SEND_SECONDS",
        "sample_email_send_seconds",
        _float(),
        0.0,
        "Simulated extra time: send_email sleeps this long after the SMTP delivery.",
    ),
)

ENV_BY_NAME: dict[str, EnvVar] = {var.name: var for var in ENV_VARS}


def read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Parse every ``SAMPLE_*`` variable; unset/empty ones map to their default (maybe None)."""
    values: dict[str, Any] = {}
    for var in ENV_VARS:
        raw = environ.get(var.name)
        values[var.name] = (
            var.default if raw is None or raw.strip() == "" else var.parse(var.name, raw)
        )
    return values


def beat_schedule(fast_interval: float | None) -> dict[str, dict[str, Any]]:
    """The production crontab entry, plus ``fast-report`` when an interval is given."""
    schedule: dict[str, dict[str, Any]] = {
        "send-report-every-morning": {
            "task": GENERATE_REPORT,
            "schedule": crontab(hour=8, minute=0),
            "args": (BEAT_REPORT_ID,),
        }
    }
    if fast_interval is not None:
        schedule["fast-report"] = {
            "task": GENERATE_REPORT,
            "schedule": timedelta(seconds=fast_interval),
            "args": (BEAT_REPORT_ID,),
        }
    return schedule


def settings_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Celery settings (flat, lowercase names) built from ``environ``."""
    env = read_env(environ)
    settings: dict[str, Any] = {
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        "task_default_queue": DEFAULT_QUEUE,
        "task_routes": TASK_ROUTES,
        "beat_schedule": beat_schedule(env["SAMPLE_BEAT_FAST_INTERVAL"]),
    }
    transport: dict[str, Any] = {}
    for var in ENV_VARS:
        value = env[var.name]
        if value is None or var.setting.startswith("beat_schedule."):
            continue
        if var.setting.startswith("broker_transport_options."):
            transport[var.setting.split(".", 1)[1]] = value
        else:
            settings[var.setting] = value
    visibility = env["SAMPLE_VISIBILITY_TIMEOUT"]
    if visibility is not None:
        # As the Celery Redis docs ask: broker, result backend and the top-level setting.
        settings["result_backend_transport_options"] = {"visibility_timeout": visibility}
        settings["visibility_timeout"] = visibility
    if transport:
        settings["broker_transport_options"] = transport
    return settings


def configure(app: Celery, environ: Mapping[str, str]) -> Celery:
    """Apply ``settings_from_env(environ)`` to ``app`` and return it."""
    app.conf.update(settings_from_env(environ))
    return app
