"""Every network link of a deployment through its own Toxiproxy proxy.

One proxy per link (``w1-broker``, ``w1-backend``, ``publisher-broker``, ``beat-broker``...),
so a fault can hit one worker or all of them. The harness starts its embedded
Toxiproxy-compatible server (``python -m celery_chaos.faults.proxy``) as a child process, or uses
a real Toxiproxy given by ``$TOXIPROXY_URL``: all of this talks the Toxiproxy HTTP API only.
"""

from __future__ import annotations

import fnmatch
import os
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from celery_chaos.deployment.processes import ManagedProcess
from celery_chaos.errors import InfrastructureError
from celery_chaos.faults.proxy.client import ToxiproxyClient

TOXIPROXY_URL_ENV = "TOXIPROXY_URL"
_API_LINE = re.compile(r"API on (http://\S+)")


def host_port(url: str) -> tuple[str, int]:
    """``(host, port)`` of a broker/backend URL (default ports for amqp and redis)."""
    parts = urlsplit(url)
    default = {"amqp": 5672, "pyamqp": 5672, "redis": 6379}.get(parts.scheme, 0)
    if not parts.hostname:
        raise InfrastructureError(f"cannot proxy {url!r}: it names no host")
    return parts.hostname, parts.port or default


def with_host_port(url: str, host: str, port: int) -> str:
    """``url`` with its host and port replaced (credentials, path and query kept)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class LinkProxies:
    """The proxies of one deployment, created on first use, one per link name."""

    def __init__(self, run_dir: Path, api_url: str | None = None) -> None:
        self.run_dir = run_dir
        self.api_url = api_url or os.environ.get(TOXIPROXY_URL_ENV) or ""
        self.external = bool(self.api_url)
        self.proc: ManagedProcess | None = None
        self.client: ToxiproxyClient | None = None
        self._urls: dict[str, str] = {}

    def start(self, timeout: float = 20.0) -> LinkProxies:
        """Start the embedded proxy server (unless a real Toxiproxy was given)."""
        if not self.external:
            cmd = [
                sys.executable,
                "-m",
                "celery_chaos.faults.proxy",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
            ]
            self.proc = ManagedProcess("toxiproxy", cmd, self.run_dir)
            self.proc.start()
            log = self.proc.log_path
            self.proc.wait_ready(lambda: bool(_API_LINE.search(log.read_text())), timeout=timeout)
            match = _API_LINE.search(log.read_text())
            assert match is not None
            self.api_url = match.group(1)
        self.client = ToxiproxyClient(self.api_url, timeout=5.0)
        if not self.client.ping():
            raise InfrastructureError(f"no Toxiproxy API answers at {self.api_url}")
        return self

    def url(self, name: str, upstream_url: str) -> str:
        """The URL a process uses to reach ``upstream_url`` through link ``name``."""
        if name not in self._urls:
            assert self.client is not None, "start() the proxies first"
            host, port = host_port(upstream_url)
            info = self.client.create_proxy(name, "127.0.0.1:0", f"{host}:{port}")
            self._urls[name] = with_host_port(upstream_url, "127.0.0.1", info.listen_port)
        return self._urls[name]

    @property
    def names(self) -> list[str]:
        """Every link created so far."""
        return list(self._urls)

    def select(self, targets: str | list[str]) -> list[str]:
        """Link names matching ``targets``: names or globs (``w*-broker``, ``*-backend``)."""
        patterns = [targets] if isinstance(targets, str) else list(targets)
        chosen = [n for n in self.names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        if not chosen:
            raise InfrastructureError(
                f"no link matches {patterns}; links are: {', '.join(self.names) or 'none'}"
            )
        return chosen

    def stop(self) -> None:
        """Stop the embedded server (or delete our proxies from a real Toxiproxy)."""
        if self.external and self.client is not None:
            for name in self.names:
                try:
                    self.client.delete_proxy(name)
                except InfrastructureError:
                    pass
        if self.client is not None:
            self.client.close()
        if self.proc is not None:
            self.proc.stop(timeout=5)
