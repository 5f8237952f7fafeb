"""Local services the sample app talks to: an SMTP sink, a flaky HTTP server, a reports DB.

Both servers run in threads of the calling process, listen on 127.0.0.1 only, on a free port
chosen at ``start()``, and record what they saw so the checker can compare it with the history.
A deployment runs them in a process of their own (:mod:`celery_chaos.deployment.services`), so that
the harness's own work never starves the services the app under test depends on.
"""

from __future__ import annotations

import email
import email.policy
import errno
import json
import os
import sqlite3
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from celery_chaos.deployment.processes import free_port
from celery_chaos.errors import InfrastructureError

LOOPBACK = "127.0.0.1"
TASK_ID_HEADER = "X-Celery-Task-Id"  # set by celery_chaos.sample_app.tasks.send_email
MAX_SLOW_SECONDS = 300.0
#: Paths under this prefix control the flaky server from another process (never logged).
CONTROL = "/_chaos/"


class _RecordingHandler:
    """aiosmtpd handler: append one JSON line per delivered message (O_APPEND, one write)."""

    def __init__(self, record_path: Path) -> None:
        self.record_path = record_path

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        part = msg.get_body(preferencelist=("plain", "html"))
        body = part.get_content() if part is not None else ""
        record = {
            "to": list(envelope.rcpt_tos),
            "from": envelope.mail_from,
            "subject": str(msg.get("Subject", "")),
            "body_len": len(body.rstrip("\r\n")),
            "task_id": msg.get(TASK_ID_HEADER),
            "wall_ns": time.time_ns(),
        }
        line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        fd = os.open(self.record_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return "250 Message accepted for delivery"


class SmtpSink:
    """An aiosmtpd SMTP server on 127.0.0.1 that records each delivered message.

    Each message becomes one JSON line in ``record_path``: ``to`` (list), ``from``,
    ``subject``, ``body_len`` (decoded text body, trailing newlines excluded), ``task_id``
    (the ``X-Celery-Task-Id`` header or null) and ``wall_ns``.
    """

    def __init__(self, record_path: str | os.PathLike[str], *, start_attempts: int = 5,
                 host: str = LOOPBACK, port: int = 0) -> None:
        """``host``/``port``: where to listen (a container's all-interfaces address and a
        fixed port in the compose deployment); a free loopback port by default."""
        self.record_path = Path(record_path)
        self.host = host
        self.port = 0
        self._port = port
        self._start_attempts = start_attempts
        self._controller: Controller | None = None

    def start(self) -> SmtpSink:
        """Bind a free port and serve; retries if the port is taken in between."""
        if self._controller is not None:
            raise RuntimeError("SmtpSink already started")
        self.record_path.parent.mkdir(parents=True, exist_ok=True)
        self.record_path.touch()
        last: OSError | None = None
        for _ in range(1 if self._port else self._start_attempts):
            port = self._port or free_port()
            controller = Controller(
                _RecordingHandler(self.record_path), hostname=self.host, port=port
            )
            try:
                controller.start()
            except OSError as exc:
                controller.loop.close()
                if exc.errno != errno.EADDRINUSE:
                    raise InfrastructureError(
                        f"the SMTP sink cannot listen on {self.host}:{port}: {exc}"
                    ) from exc
                last = exc
                continue
            self._controller, self.port = controller, port
            return self
        raise InfrastructureError(
            f"the SMTP sink found no free loopback port after {self._start_attempts} attempts: "
            "free some ports or stop other servers"
        ) from last

    def stop(self) -> None:
        """Stop serving and release the port (no-op when not running)."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def running(self) -> bool:
        return self._controller is not None

    def messages(self) -> list[dict[str, Any]]:
        """Every recorded message, in delivery order (read back from ``record_path``)."""
        if not self.record_path.exists():
            return []
        text = self.record_path.read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


Mode = Literal["ok", "fail", "slow"]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        if self.path == CONTROL + "requests":  # the log, for a harness in another process
            self._reply(200, json.dumps(self.server.owner.requests_log()).encode(),
                        "application/json")
            return
        mono_ns, wall_ns = time.monotonic_ns(), time.time_ns()
        status = self.server.owner._answer(self.path)
        body = f"{status} {HTTPStatus(status).phrase}\n".encode()
        # Record before answering: a client that has its answer must find it in the log.
        self.server.owner._record(self.path, wall_ns, mono_ns, status)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client went away (e.g. its timeout fired during /slow)
            pass

    def do_POST(self) -> None:
        """``POST /_chaos/failures/<key>?k=N``: :meth:`FlakyHttpServer.set_failures` from
        another process (control requests are not logged)."""
        parts = urlsplit(self.path)
        segments = [x for x in parts.path.split("/") if x]
        try:
            if segments[:2] != [CONTROL.strip("/"), "failures"] or len(segments) != 3:
                raise ValueError("unknown control path")
            k = int(parse_qs(parts.query).get("k", [""])[0])
            self.server.owner.set_failures(segments[2], k)
        except (ValueError, IndexError) as exc:
            self._reply(400, f"{exc}\n".encode())
            return
        self._reply(200, b"ok\n")

    def _reply(self, status: int, body: bytes, kind: str = "text/plain; charset=utf-8") -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line; requests are recorded in ``requests_log()``."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: FlakyHttpServer


class FlakyHttpServer:
    """A threaded ``http.server`` on 127.0.0.1 with scriptable failures.

    Endpoints (GET): ``/ok`` (obeys :meth:`set_mode`), ``/slow?seconds=S``, ``/flaky/<key>``
    (HTTP 503 for the first K requests of that key, then 200; K from :meth:`set_failures` or
    ``default_failures``), ``/status/<code>`` (answers ``code``, 200-599). Anything else: 404.
    """

    def __init__(self, *, default_failures: int = 2, fail_status: int = 503,
                 host: str = LOOPBACK, port: int = 0) -> None:
        if default_failures < 0:
            raise ValueError("default_failures must be >= 0")
        self.default_failures = default_failures
        self.fail_status = fail_status
        self._lock = threading.Lock()
        self._failures: dict[str, int] = {}
        self._seen: dict[str, int] = {}
        self._requests: list[dict[str, Any]] = []
        self._mode: Mode = "ok"
        self._slow_seconds = 1.0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.host = host
        self.port = 0
        self._port = port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FlakyHttpServer:
        """Bind a free port (the OS picks it) and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("FlakyHttpServer already started")
        server = _Server((self.host, self._port), _Handler)
        server.owner = self
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name=f"flaky-http-{self.port}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket (no-op when not running)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def set_failures(self, key: str, k: int) -> None:
        """``/flaky/<key>`` fails its next ``k`` requests (resets that key's count)."""
        if k < 0:
            raise ValueError("k must be >= 0")
        with self._lock:
            self._failures[key] = k
            self._seen[key] = 0

    def set_mode(self, mode: Mode, slow_seconds: float | None = None) -> None:
        """Global behaviour of ``/ok``: 200, ``fail_status``, or 200 after ``slow_seconds``."""
        if mode not in ("ok", "fail", "slow"):
            raise ValueError(f"unknown mode {mode!r}: use 'ok', 'fail' or 'slow'")
        with self._lock:
            self._mode = mode
            if slow_seconds is not None:
                if not 0 <= slow_seconds <= MAX_SLOW_SECONDS:
                    raise ValueError(f"slow_seconds must be in [0, {MAX_SLOW_SECONDS}]")
                self._slow_seconds = float(slow_seconds)

    @property
    def mode(self) -> Mode:
        return self._mode

    def requests_log(self) -> list[dict[str, Any]]:
        """A copy of the request log: ``path``, ``wall_ns``, ``mono_ns`` (arrival), ``status``."""
        with self._lock:
            return [dict(entry) for entry in self._requests]

    def reset(self) -> None:
        """Clear the log, the per-key counters and failure counts, and go back to mode ok."""
        with self._lock:
            self._requests.clear()
            self._seen.clear()
            self._failures.clear()
            self._mode = "ok"

    def _record(self, path: str, wall_ns: int, mono_ns: int, status: int) -> None:
        entry = {"path": path, "wall_ns": wall_ns, "mono_ns": mono_ns, "status": status}
        with self._lock:
            self._requests.append(entry)

    def _answer(self, raw_path: str) -> int:
        """Status for one request (sleeping first where the endpoint asks)."""
        parts = urlsplit(raw_path)
        segments = [s for s in parts.path.split("/") if s]
        if segments == ["ok"]:
            with self._lock:
                mode, delay = self._mode, self._slow_seconds
            if mode == "fail":
                return self.fail_status
            if mode == "slow":
                time.sleep(delay)
            return 200
        if segments == ["slow"]:
            try:
                seconds = float(parse_qs(parts.query).get("seconds", ["1"])[0])
            except ValueError:
                return 400
            if not 0 <= seconds <= MAX_SLOW_SECONDS:
                return 400
            time.sleep(seconds)
            return 200
        if len(segments) == 2 and segments[0] == "flaky":
            key = segments[1]
            with self._lock:
                seen = self._seen.get(key, 0)
                self._seen[key] = seen + 1
                fail = seen < self._failures.get(key, self.default_failures)
            return self.fail_status if fail else 200
        if len(segments) == 2 and segments[0] == "status":
            try:
                code = int(segments[1])
            except ValueError:
                return 400
            return code if 200 <= code <= 599 and code in HTTPStatus._value2member_map_ else 400
        return 404

    def __enter__(self) -> FlakyHttpServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def seed_reports_db(path: str | os.PathLike[str], n_reports: int = 50) -> list[int]:
    """Create (or re-seed) the reports DB that ``generate_report`` reads; return the ids.

    Schema: ``reports(id INTEGER PRIMARY KEY, title TEXT)`` and
    ``report_rows(report_id, position, label, amount)``; ids are 1..n_reports, each with
    ``3 + id % 5`` deterministic rows.
    """
    if n_reports < 0:
        raise ValueError("n_reports must be >= 0")
    db = Path(path)
    db.parent.mkdir(parents=True, exist_ok=True)
    ids = list(range(1, n_reports + 1))
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.executescript(
                """
                CREATE TABLE IF NOT EXISTS reports (
                    id INTEGER PRIMARY KEY,
                    title TEXT NOT NULL
                );
                CREATE TABLE IF NOT EXISTS report_rows (
                    report_id INTEGER NOT NULL REFERENCES reports(id),
                    position INTEGER NOT NULL,
                    label TEXT NOT NULL,
                    amount REAL NOT NULL,
                    PRIMARY KEY (report_id, position)
                );
                DELETE FROM report_rows;
                DELETE FROM reports;
                """
            )
            conn.executemany(
                "INSERT INTO reports (id, title) VALUES (?, ?)",
                [(rid, f"Report {rid}") for rid in ids],
            )
            conn.executemany(
                "INSERT INTO report_rows (report_id, position, label, amount) VALUES (?, ?, ?, ?)",
                [
                    (rid, pos, f"item-{rid}-{pos}", round(rid * 10 + pos * 1.25, 2))
                    for rid in ids
                    for pos in range(3 + rid % 5)
                ],
            )
    finally:
        conn.close()
    return ids
