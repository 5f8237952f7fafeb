"""Unit tests of the sample Celery app: env parsing, routing, beat, and the tasks run eagerly
against the real local sinks (no broker needed)."""

from __future__ import annotations

import re
import string
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from celery import Celery
from celery.exceptions import Retry
from celery.schedules import crontab
from hypothesis import given
from hypothesis import strategies as st

from celery_chaos.deployment.sinks import FlakyHttpServer, SmtpSink, seed_reports_db
from celery_chaos.sample_app.app import app as module_app
from celery_chaos.sample_app.app import create_app
from celery_chaos.sample_app.config import (
    ENV_VARS,
    FETCH_URL,
    GENERATE_REPORT,
    SEND_EMAIL,
    parse_bool,
    settings_from_env,
)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "sample_app.md"
WORKLOAD = ROOT / "sample_app" / "workload.yaml"

RELIABILITY_SETTINGS = (
    "broker_url",
    "result_backend",
    "task_acks_late",
    "task_reject_on_worker_lost",
    "worker_prefetch_multiplier",
    "task_time_limit",
    "task_soft_time_limit",
    "broker_transport_options",
    "result_backend_transport_options",
    "broker_heartbeat",
    "visibility_timeout",
)


def _app(environ: dict[str, str]) -> Celery:
    return create_app(environ, set_as_current=False)


def _lookup(app: Celery, setting: str) -> Any:
    conf = app.conf
    if "." in setting:
        outer, inner = setting.split(".", 1)
        return conf[outer][inner]
    return conf[setting]


# --- env parsing -------------------------------------------------------------------------

ENV_CASES = [
    ("SAMPLE_BROKER_URL", "redis://127.0.0.1:6390/0", "broker_url", "redis://127.0.0.1:6390/0"),
    (
        "SAMPLE_RESULT_BACKEND",
        "redis://127.0.0.1:6390/1",
        "result_backend",
        "redis://127.0.0.1:6390/1",
    ),
    ("SAMPLE_ACKS_LATE", "yes", "task_acks_late", True),
    ("SAMPLE_REJECT_ON_WORKER_LOST", "TRUE", "task_reject_on_worker_lost", True),
    ("SAMPLE_PREFETCH_MULTIPLIER", "1", "worker_prefetch_multiplier", 1),
    ("SAMPLE_TIME_LIMIT", "30", "task_time_limit", 30.0),
    ("SAMPLE_SOFT_TIME_LIMIT", "25.5", "task_soft_time_limit", 25.5),
    ("SAMPLE_VISIBILITY_TIMEOUT", "15", "broker_transport_options.visibility_timeout", 15),
    ("SAMPLE_VISIBILITY_TIMEOUT", "15", "result_backend_transport_options.visibility_timeout", 15),
    ("SAMPLE_VISIBILITY_TIMEOUT", "15", "visibility_timeout", 15),
    ("SAMPLE_BROKER_HEARTBEAT", "0", "broker_heartbeat", 0),
    ("SAMPLE_CONFIRM_PUBLISH", "1", "broker_transport_options.confirm_publish", True),
    ("SAMPLE_CONFIRM_TIMEOUT", "2.5", "broker_transport_options.confirm_timeout", 2.5),
    ("SAMPLE_SMTP_HOST", "localhost", "sample_smtp_host", "localhost"),
    ("SAMPLE_SMTP_PORT", "2525", "sample_smtp_port", 2525),
    ("SAMPLE_SMTP_TIMEOUT", "3", "sample_smtp_timeout", 3.0),
    ("SAMPLE_REPORTS_DB", "/tmp/x.sqlite3", "sample_reports_db", "/tmp/x.sqlite3"),
    ("SAMPLE_REPORTS_DIR", "/tmp/out", "sample_reports_dir", "/tmp/out"),
    ("SAMPLE_FETCH_RETRY_COUNTDOWN", "0.5", "sample_fetch_retry_countdown", 0.5),
    ("SAMPLE_FETCH_TIMEOUT", "4", "sample_fetch_timeout", 4.0),
    ("SAMPLE_REPORT_RENDER_SECONDS", "12", "sample_report_render_seconds", 12.0),
    ("SAMPLE_EMAIL_SEND_SECONDS", "1.5", "sample_email_send_seconds", 1.5),
]


@pytest.mark.parametrize(("name", "raw", "setting", "expected"), ENV_CASES)
def test_each_variable_maps_to_its_setting(
    name: str, raw: str, setting: str, expected: Any
) -> None:
    assert _lookup(_app({name: raw}), setting) == expected


def test_every_variable_is_covered_by_a_case() -> None:
    covered = {case[0] for case in ENV_CASES} | {"SAMPLE_BEAT_FAST_INTERVAL"}
    assert covered == {var.name for var in ENV_VARS}


def test_confirm_and_visibility_share_broker_transport_options() -> None:
    conf = _app(
        {
            "SAMPLE_VISIBILITY_TIMEOUT": "60",
            "SAMPLE_CONFIRM_PUBLISH": "no",
            "SAMPLE_CONFIRM_TIMEOUT": "5",
        }
    ).conf
    assert conf.broker_transport_options == {
        "visibility_timeout": 60,
        "confirm_publish": False,
        "confirm_timeout": 5.0,
    }
    assert conf.result_backend_transport_options == {"visibility_timeout": 60}


@pytest.mark.parametrize("name", [var.name for var in ENV_VARS if var.parse is parse_bool])
@pytest.mark.parametrize("raw", ["maybe", "2", "on", "tru"])
def test_bad_boolean_names_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name}="):
        settings_from_env({name: raw})


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("SAMPLE_PREFETCH_MULTIPLIER", "four"),
        ("SAMPLE_PREFETCH_MULTIPLIER", "-1"),
        ("SAMPLE_TIME_LIMIT", "0"),
        ("SAMPLE_VISIBILITY_TIMEOUT", "1.5"),
        ("SAMPLE_SMTP_PORT", "http"),
        ("SAMPLE_FETCH_RETRY_COUNTDOWN", "nan"),
        ("SAMPLE_BEAT_FAST_INTERVAL", "0"),
    ],
)
def test_bad_numbers_name_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name}="):
        settings_from_env({name: raw})


@given(
    st.sampled_from(["1", "0", "true", "false", "yes", "no"]).flatmap(
        lambda word: st.tuples(
            st.just(word),
            st.lists(st.booleans(), min_size=len(word), max_size=len(word)),
        )
    )
)
def test_parse_bool_is_case_insensitive(case: tuple[str, list[bool]]) -> None:
    word, upper = case
    raw = "".join(c.upper() if u else c for c, u in zip(word, upper, strict=True))
    assert parse_bool("SAMPLE_X", raw) is (word in ("1", "true", "yes"))


@pytest.mark.parametrize("environ", [{}, {var.name: "" for var in ENV_VARS}])
def test_unset_or_empty_leaves_celery_defaults(environ: dict[str, str]) -> None:
    conf = _app(environ).conf
    pristine = Celery("pristine", set_as_current=False).conf
    for setting in RELIABILITY_SETTINGS:
        assert conf.get(setting) == pristine.get(setting), setting
    assert conf.task_acks_late is False
    assert conf.worker_prefetch_multiplier == 4
    assert conf.task_reject_on_worker_lost is None
    assert conf.broker_transport_options == {}


def test_fixed_settings_and_service_defaults() -> None:
    conf = _app({}).conf
    assert conf.task_serializer == conf.result_serializer == "json"
    assert conf.accept_content == ["json"]
    assert conf.timezone == "UTC"
    assert conf.task_default_queue == "default"
    assert conf.sample_fetch_retry_countdown == 60.0
    assert conf.sample_report_render_seconds == 0.0
    assert conf.sample_email_send_seconds == 0.0


def test_module_app_is_named_and_registers_the_tasks() -> None:
    assert module_app.main == "sample_app"
    assert {SEND_EMAIL, GENERATE_REPORT, FETCH_URL} <= set(module_app.tasks.keys())


def test_every_variable_is_documented() -> None:
    text = DOCS.read_text()
    for var in ENV_VARS:
        assert re.search(rf"^\| `{var.name}` \|", text, re.M), var.name


# --- routing and beat --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "queue"),
    [(SEND_EMAIL, "emails"), (GENERATE_REPORT, "reports"), (FETCH_URL, "fetch")],
)
def test_routing(task: str, queue: str) -> None:
    app = _app({})
    assert app.amqp.router.route({}, task)["queue"].name == queue
    assert app.amqp.router.route({}, "some.other.task")["queue"].name == "default"


def test_beat_has_the_morning_crontab_and_no_fast_entry_by_default() -> None:
    schedule = _app({}).conf.beat_schedule
    assert set(schedule) == {"send-report-every-morning"}
    entry = schedule["send-report-every-morning"]
    assert entry["task"] == GENERATE_REPORT
    assert entry["schedule"] == crontab(hour=8, minute=0)


def test_beat_fast_entry_only_when_interval_set() -> None:
    schedule = _app({"SAMPLE_BEAT_FAST_INTERVAL": "2.5"}).conf.beat_schedule
    assert set(schedule) == {"send-report-every-morning", "fast-report"}
    assert schedule["fast-report"]["task"] == GENERATE_REPORT
    assert schedule["fast-report"]["schedule"] == timedelta(seconds=2.5)


# --- tasks against the real sinks --------------------------------------------------------


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpSink]:
    with SmtpSink(tmp_path / "mail.jsonl") as sink:
        yield sink


@pytest.fixture
def http() -> Iterator[FlakyHttpServer]:
    with FlakyHttpServer() as server:
        yield server


@pytest.fixture
def env(tmp_path: Path, smtp: SmtpSink) -> dict[str, str]:
    db = tmp_path / "reports.sqlite3"
    seed_reports_db(db, n_reports=50)
    return {
        "SAMPLE_SMTP_HOST": smtp.host,
        "SAMPLE_SMTP_PORT": str(smtp.port),
        "SAMPLE_REPORTS_DB": str(db),
        "SAMPLE_REPORTS_DIR": str(tmp_path / "out"),
        "SAMPLE_FETCH_RETRY_COUNTDOWN": "7",
        "SAMPLE_FETCH_TIMEOUT": "5",
    }


@pytest.fixture
def eager(env: dict[str, str]) -> Celery:
    app = _app(env)
    app.conf.task_always_eager = True
    return app


def test_send_email_delivers_to_the_sink(eager: Celery, smtp: SmtpSink) -> None:
    result = eager.tasks[SEND_EMAIL].apply(("alice@example.test", "Digest", "hello there"))
    value = result.get()
    assert value["to"] == "alice@example.test" and value["refused"] == []
    [message] = smtp.messages()
    assert message["to"] == ["alice@example.test"]
    assert message["subject"] == "Digest"
    assert message["body_len"] == len("hello there")
    assert message["task_id"] == result.id == value["task_id"]


def test_send_email_fails_when_smtp_is_down(eager: Celery, smtp: SmtpSink) -> None:
    smtp.stop()
    result = eager.tasks[SEND_EMAIL].apply(("a@example.test", "s", "b"))
    assert result.state == "FAILURE"
    assert isinstance(result.result, OSError)


def test_generate_report_reads_the_db_and_writes_the_file(
    eager: Celery, env: dict[str, str]
) -> None:
    path = Path(eager.tasks[GENERATE_REPORT].apply((17,)).get())
    out = Path(env["SAMPLE_REPORTS_DIR"])
    assert path == out / "17.html"
    text = path.read_text()
    assert "<h1>Report 17</h1>" in text
    assert text.count("<td>item-17-") == 3 + 17 % 5
    assert sorted(p.name for p in out.iterdir()) == ["17.html"]  # no temp file left over
    eager.tasks[GENERATE_REPORT].apply((17,)).get()
    assert path.read_text() == text  # deterministic: a re-run writes the same bytes


def test_generate_report_unknown_id_fails(eager: Celery, env: dict[str, str]) -> None:
    result = eager.tasks[GENERATE_REPORT].apply((999,))
    assert isinstance(result.result, LookupError)
    assert not (Path(env["SAMPLE_REPORTS_DIR"]) / "999.html").exists()


def test_generate_report_sleeps_render_seconds_first(env: dict[str, str]) -> None:
    app = _app({**env, "SAMPLE_REPORT_RENDER_SECONDS": "0.3"})
    start = time.monotonic()
    app.tasks[GENERATE_REPORT].apply((1,)).get()
    assert time.monotonic() - start >= 0.3


def test_fetch_url_ok(eager: Celery, http: FlakyHttpServer) -> None:
    value = eager.tasks[FETCH_URL].apply((http.base_url + "/ok",)).get()
    assert value == {"status": 200, "length": len(b"200 OK\n")}


def test_fetch_url_4xx_is_returned_not_retried(eager: Celery, http: FlakyHttpServer) -> None:
    assert eager.tasks[FETCH_URL].apply((http.base_url + "/status/404",)).get()["status"] == 404
    assert len(http.requests_log()) == 1


def test_fetch_url_503_raises_retry_with_configured_countdown(
    eager: Celery, http: FlakyHttpServer
) -> None:
    task = eager.tasks[FETCH_URL]
    http.set_failures("k", 1)
    # An eager worker-like request: self.retry raises Retry without publishing a message.
    task.push_request(id="t-1", retries=0, is_eager=True, called_directly=False)
    try:
        with pytest.raises(Retry) as info:
            task.run(http.base_url + "/flaky/k")
    finally:
        task.pop_request()
    assert info.value.when == 7.0
    assert isinstance(info.value.exc, requests.HTTPError)
    assert info.value.sig.options["retries"] == 1


def test_fetch_url_connection_error_raises_retry(eager: Celery) -> None:
    http = FlakyHttpServer().start()
    url = http.base_url + "/ok"
    http.stop()
    task = eager.tasks[FETCH_URL]
    task.push_request(id="t-2", retries=0, is_eager=True, called_directly=False)
    try:
        with pytest.raises(Retry) as info:
            task.run(url)
    finally:
        task.pop_request()
    assert isinstance(info.value.exc, requests.ConnectionError)


def test_fetch_url_eager_retries_until_success(eager: Celery, http: FlakyHttpServer) -> None:
    http.set_failures("twice", 2)
    value = eager.tasks[FETCH_URL].apply((http.base_url + "/flaky/twice",)).get()
    assert value["status"] == 200
    assert [e["status"] for e in http.requests_log()] == [503, 503, 200]


def test_fetch_url_gives_up_after_max_retries(eager: Celery, http: FlakyHttpServer) -> None:
    assert eager.tasks[FETCH_URL].max_retries == 3
    result = eager.tasks[FETCH_URL].apply((http.base_url + "/status/503",))
    assert result.state == "FAILURE"
    assert isinstance(result.result, requests.HTTPError)
    assert len(http.requests_log()) == 4  # the first try and 3 retries


# --- workload file -----------------------------------------------------------------------

PLACEHOLDERS = {"http_base", "smtp_host", "smtp_port"}


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def test_workload_file_is_well_formed() -> None:
    entries = yaml.safe_load(WORKLOAD.read_text())
    assert isinstance(entries, list) and entries
    routes = module_app.conf.task_routes
    for entry in entries:
        assert set(entry) <= {"name", "args", "kwargs", "queue", "weight"}, entry
        assert entry["name"] in module_app.tasks
        assert entry["weight"] > 0
        assert isinstance(entry.get("args", []), list)
        assert isinstance(entry.get("kwargs", {}), dict)
        if "queue" in entry:
            assert entry["queue"] == routes[entry["name"]]["queue"]
        for text in _strings([entry.get("args", []), entry.get("kwargs", {})]):
            fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
            assert fields <= PLACEHOLDERS, text
        if entry["name"] == GENERATE_REPORT:
            assert 1 <= entry["args"][0] <= 50
    assert {e["name"] for e in entries} == {SEND_EMAIL, GENERATE_REPORT, FETCH_URL}


def test_workload_runs_eagerly_against_the_sinks(
    eager: Celery, http: FlakyHttpServer, smtp: SmtpSink
) -> None:
    values = {"http_base": http.base_url, "smtp_host": smtp.host, "smtp_port": smtp.port}
    eager.conf.sample_fetch_retry_countdown = 0
    for entry in yaml.safe_load(WORKLOAD.read_text()):
        args = [a.format(**values) if isinstance(a, str) else a for a in entry.get("args", [])]
        kwargs = {
            k: v.format(**values) if isinstance(v, str) else v
            for k, v in entry.get("kwargs", {}).items()
        }
        result = eager.tasks[entry["name"]].apply(args, kwargs)
        assert result.state == "SUCCESS", (entry, result.result)
    assert len(smtp.messages()) == 2
