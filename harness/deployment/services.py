"""The sample app's services (SMTP sink, flaky HTTP server) in a process of their own.

Run as ``python -m celery_chaos.deployment.services --smtp-record FILE --ready FILE``: it starts
:class:`~celery_chaos.deployment.sinks.SmtpSink` and
:class:`~celery_chaos.deployment.sinks.FlakyHttpServer`,
writes their ports to the ready file, and serves until SIGTERM. :class:`ServicesProcess` starts
it as a :class:`~celery_chaos.deployment.processes.ManagedProcess` and gives the harness the same
handles it had in process: ``smtp`` (``host``, ``port``, ``messages()``) and ``http``
(``base_url``, ``set_failures()``, ``requests_log()``, through the server's control paths).

Why a process: under a full-speed load (``celery-chaos load --users 20 --rate 0``) the
harness's own work held the interpreter while the services, threads of that same interpreter,
starved, and every worker waited on them. In a process of their own the same command ended
valid in 3 runs of 3 (6,954-10,751 tasks published in 20 s, ~185 completed a second).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery_chaos.deployment.processes import ManagedProcess, wait_for
from celery_chaos.deployment.sinks import CONTROL, LOOPBACK, FlakyHttpServer, SmtpSink
from celery_chaos.errors import InfrastructureError


@dataclass
class RemoteSmtp:
    """The SMTP sink of a services process."""

    host: str
    port: int
    record_path: Path

    def messages(self) -> list[dict[str, Any]]:
        """Every recorded message, in delivery order."""
        return SmtpSink(self.record_path).messages()


@dataclass
class RemoteHttp:
    """The flaky HTTP server of a services process."""

    host: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def set_failures(self, key: str, k: int) -> None:
        """``/flaky/<key>`` fails its next ``k`` requests."""
        if k < 0:
            raise ValueError("k must be >= 0")
        req = urllib.request.Request(f"{self.base_url}{CONTROL}failures/{key}?k={k}",
                                     method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=5) as resp:
            resp.read()

    def requests_log(self) -> list[dict[str, Any]]:
        """The server's request log (``path``, ``wall_ns``, ``mono_ns``, ``status``)."""
        with urllib.request.urlopen(f"{self.base_url}{CONTROL}requests", timeout=5) as resp:
            return list(json.loads(resp.read()))


class ServicesProcess:
    """The services in a child process; ``smtp`` and ``http`` once started."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.record = folder / "smtp.jsonl"
        self.ready = folder / "services.ready.json"
        self.proc: ManagedProcess | None = None
        self.smtp: RemoteSmtp | None = None
        self.http: RemoteHttp | None = None

    def start(self, timeout: float = 20.0) -> ServicesProcess:
        """Start the process and wait until both servers listen."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ready.unlink(missing_ok=True)
        self.proc = ManagedProcess(
            "services",
            [sys.executable, "-m", "celery_chaos.deployment.services", "--smtp-record",
             str(self.record), "--ready", str(self.ready)],
            self.folder,
        ).start()
        if not wait_for(lambda: self.ready.exists() or not self.proc.is_running(), timeout,
                        interval=0.02) or not self.ready.exists():
            self.stop()
            raise InfrastructureError(
                f"the SMTP sink and HTTP server did not start: see {self.proc.log_path}"
            )
        ports = json.loads(self.ready.read_text())
        self.smtp = RemoteSmtp(LOOPBACK, int(ports["smtp"]), self.record)
        self.http = RemoteHttp(LOOPBACK, int(ports["http"]))
        return self

    def stop(self) -> None:
        """Stop the process (both servers with it)."""
        if self.proc is not None:
            self.proc.stop(5)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM; the ready file says the ports."""
    parser = argparse.ArgumentParser(prog="python -m celery_chaos.deployment.services")
    parser.add_argument("--smtp-record", required=True, type=Path)
    parser.add_argument("--ready", required=True, type=Path)
    parser.add_argument("--host", default=LOOPBACK, help="listen address (default loopback)")
    parser.add_argument("--smtp-port", type=int, default=0, help="SMTP port (default: free)")
    parser.add_argument("--http-port", type=int, default=0, help="HTTP port (default: free)")
    args = parser.parse_args(argv)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    smtp = SmtpSink(args.smtp_record, host=args.host, port=args.smtp_port).start()
    http = FlakyHttpServer(host=args.host, port=args.http_port).start()
    try:
        tmp = args.ready.with_name(args.ready.name + ".tmp")
        tmp.write_text(json.dumps({"smtp": smtp.port, "http": http.port}))
        tmp.replace(args.ready)
        done.wait()
    finally:
        http.stop()
        smtp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
