"""Unit tests of the local services in celery_chaos.deployment.sinks (no broker needed)."""

from __future__ import annotations

import json
import os
import smtplib
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
import requests

from celery_chaos.deployment.sinks import FlakyHttpServer, SmtpSink, seed_reports_db


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def _send(sink: SmtpSink, to: str, subject: str, body: str, task_id: str | None = None) -> None:
    msg = EmailMessage()
    msg["From"] = "tester@localhost"
    msg["To"] = to
    msg["Subject"] = subject
    if task_id:
        msg["X-Celery-Task-Id"] = task_id
    msg.set_content(body)
    with smtplib.SMTP(sink.host, sink.port, timeout=5) as smtp:
        smtp.send_message(msg)


# --- SMTP sink ---------------------------------------------------------------------------


def test_smtp_sink_records_each_message_as_a_json_line(tmp_path: Path) -> None:
    record = tmp_path / "mail.jsonl"
    before = time.time_ns()
    with SmtpSink(record) as sink:
        assert sink.host == "127.0.0.1" and sink.port > 0
        _send(sink, "a@example.test", "first", "hello", task_id="t-1")
        _send(sink, "b@example.test", "second", "x" * 100)
        messages = sink.messages()
    assert [m["to"] for m in messages] == [["a@example.test"], ["b@example.test"]]
    assert [m["subject"] for m in messages] == ["first", "second"]
    assert [m["body_len"] for m in messages] == [5, 100]
    assert [m["task_id"] for m in messages] == ["t-1", None]
    assert all(m["from"] == "tester@localhost" for m in messages)
    assert before <= messages[0]["wall_ns"] <= messages[1]["wall_ns"] <= time.time_ns()
    lines = record.read_text().splitlines()
    assert [json.loads(line) for line in lines] == messages


def test_smtp_sink_appends_to_an_existing_record(tmp_path: Path) -> None:
    record = tmp_path / "mail.jsonl"
    record.write_text(json.dumps({"subject": "earlier run"}) + "\n")
    with SmtpSink(record) as sink:
        _send(sink, "a@example.test", "now", "body")
    assert [m["subject"] for m in SmtpSink(record).messages()] == ["earlier run", "now"]


def test_smtp_sink_stop_frees_the_port(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path / "mail.jsonl").start()
    port = sink.port
    assert not _port_is_free(port)
    sink.stop()
    sink.stop()  # idempotent
    assert not sink.running
    assert _refuses(port)
    assert _port_is_free(port)


def test_smtp_sink_messages_empty_before_start(tmp_path: Path) -> None:
    assert SmtpSink(tmp_path / "none.jsonl").messages() == []


# --- flaky HTTP server -------------------------------------------------------------------


@pytest.fixture
def http() -> Iterator[FlakyHttpServer]:
    with FlakyHttpServer() as server:
        yield server


def _get(server: FlakyHttpServer, path: str, timeout: float = 5) -> int:
    return requests.get(server.base_url + path, timeout=timeout).status_code


def test_flaky_key_fails_k_times_then_succeeds(http: FlakyHttpServer) -> None:
    http.set_failures("job", 3)
    assert [_get(http, "/flaky/job") for _ in range(5)] == [503, 503, 503, 200, 200]
    http.set_failures("job", 1)  # resets the key's count
    assert [_get(http, "/flaky/job") for _ in range(2)] == [503, 200]


def test_flaky_keys_are_independent_and_use_the_default(http: FlakyHttpServer) -> None:
    assert http.default_failures == 2
    http.set_failures("never", 0)
    assert _get(http, "/flaky/never") == 200
    assert [_get(http, "/flaky/a") for _ in range(3)] == [503, 503, 200]
    assert [_get(http, "/flaky/b") for _ in range(3)] == [503, 503, 200]


def test_flaky_count_is_exact_under_concurrency(http: FlakyHttpServer) -> None:
    http.set_failures("burst", 5)
    statuses: list[int] = []
    lock = threading.Lock()

    def hit() -> None:
        code = _get(http, "/flaky/burst")
        with lock:
            statuses.append(code)

    threads = [threading.Thread(target=hit) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] * 15 + [503] * 5


def test_modes_apply_to_ok(http: FlakyHttpServer) -> None:
    assert _get(http, "/ok") == 200
    http.set_mode("fail")
    assert _get(http, "/ok") == 503
    http.set_mode("slow", slow_seconds=0.3)
    start = time.monotonic()
    assert _get(http, "/ok") == 200
    assert time.monotonic() - start >= 0.3
    with pytest.raises(requests.Timeout):
        requests.get(http.base_url + "/ok", timeout=0.05)
    http.set_mode("ok")
    assert _get(http, "/ok") == 200
    with pytest.raises(ValueError, match="unknown mode"):
        http.set_mode("broken")  # type: ignore[arg-type]


def test_slow_status_and_unknown_endpoints(http: FlakyHttpServer) -> None:
    start = time.monotonic()
    assert _get(http, "/slow?seconds=0.2") == 200
    assert time.monotonic() - start >= 0.2
    assert _get(http, "/slow?seconds=abc") == 400
    assert _get(http, "/status/418") == 418
    assert _get(http, "/status/500") == 500
    assert _get(http, "/status/nope") == 400
    assert _get(http, "/elsewhere") == 404


def test_requests_log_records_path_times_and_status(http: FlakyHttpServer) -> None:
    before = time.time_ns()
    _get(http, "/ok")
    _get(http, "/status/502")
    _get(http, "/slow?seconds=0")
    log = http.requests_log()
    assert [(e["path"], e["status"]) for e in log] == [
        ("/ok", 200),
        ("/status/502", 502),
        ("/slow?seconds=0", 200),
    ]
    assert all(before <= e["wall_ns"] <= time.time_ns() for e in log)
    assert [e["mono_ns"] for e in log] == sorted(e["mono_ns"] for e in log)
    http.reset()
    assert http.requests_log() == []


def test_http_stop_frees_the_port() -> None:
    server = FlakyHttpServer().start()
    port = server.port
    assert server.base_url == f"http://127.0.0.1:{port}"
    assert _get(server, "/ok") == 200
    server.stop()
    server.stop()  # idempotent
    assert _refuses(port)
    assert _port_is_free(port)


# --- reports DB --------------------------------------------------------------------------


def test_seed_reports_db(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "reports.sqlite3"
    ids = seed_reports_db(db, n_reports=7)
    assert ids == list(range(1, 8))
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT id, title FROM reports WHERE id = 4").fetchone() == (
            4,
            "Report 4",
        )
        counts = dict(
            conn.execute("SELECT report_id, COUNT(*) FROM report_rows GROUP BY report_id")
        )
    finally:
        conn.close()
    assert counts == {rid: 3 + rid % 5 for rid in ids}
    assert seed_reports_db(db, n_reports=3) == [1, 2, 3]  # re-seeding replaces the rows
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT COUNT(*) FROM reports").fetchone() == (3,)
    finally:
        conn.close()


def test_services_in_a_process_of_their_own(tmp_path: Path) -> None:
    """The deployment's services run in a child process, driven as they were in process."""
    import urllib.error
    import urllib.request

    from celery_chaos.deployment.services import ServicesProcess

    services = ServicesProcess(tmp_path / "services").start()
    try:
        assert services.smtp is not None and services.http is not None
        assert services.proc is not None and services.proc.pid != os.getpid()
        with smtplib.SMTP(services.smtp.host, services.smtp.port, timeout=5) as client:
            client.sendmail("a@example.com", ["b@example.com"],
                            "Subject: hi\r\nX-Celery-Task-Id: t1\r\n\r\nbody\r\n")
        assert [m["task_id"] for m in services.smtp.messages()] == ["t1"]
        services.http.set_failures("k", 1)
        statuses = []
        for _ in range(2):
            try:
                with urllib.request.urlopen(f"{services.http.base_url}/flaky/k", timeout=5) as r:
                    statuses.append(r.status)
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)
        assert statuses == [503, 200]
        assert [(r["path"], r["status"]) for r in services.http.requests_log()] == [
            ("/flaky/k", 503), ("/flaky/k", 200)]  # control requests are not logged
    finally:
        services.stop()
    assert services.proc is not None and not services.proc.is_running()
