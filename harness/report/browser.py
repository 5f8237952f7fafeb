"""Open a report in headless Chromium over the DevTools protocol (tests and benchmarks).

Chromium runs with ``--headless --no-sandbox --disable-gpu`` and a fresh profile; the
page is opened in its own target with the Runtime, Log and Page domains enabled
*before* navigation, so every console error, uncaught exception and failed resource
load is collected. The client is ``websocket-client``; messages are plain CDP JSON.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
)


def find_chromium() -> str | None:
    """``$CHAOS_CHROMIUM`` or the first Chromium on ``PATH``."""
    explicit = os.environ.get("CHAOS_CHROMIUM")
    if explicit:
        return explicit if shutil.which(explicit) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageResult:
    """What opening one page showed."""

    url: str
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    ready: bool = False  # the page signalled it finished drawing (``window.__reportReady``)
    load_ms: float | None = None  # navigation start to ready, by the page's own clock
    wall_ms: float = 0.0  # navigate command to ready, measured here
    values: dict[str, Any] = field(default_factory=dict)


class Chromium:
    """A headless Chromium with a private profile; use as a context manager."""

    def __init__(
        self, binary: str | None = None, *, width: int = 1400, height: int = 1000,
        timeout: float = 60.0,
    ) -> None:
        found = binary or find_chromium()
        if not found:
            raise FileNotFoundError(
                "no Chromium found: install the Debian package `chromium` (scripts/setup.sh "
                "does) or set CHAOS_CHROMIUM"
            )
        self.binary = found
        self.width, self.height = width, height
        self.timeout = timeout
        self.profile = Path(tempfile.mkdtemp(prefix="chaos-chromium-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.ws: websocket.WebSocket | None = None
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> Chromium:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start Chromium and connect to its browser endpoint."""
        self.proc = subprocess.Popen(
            [
                self.binary, *FLAGS, "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1", f"--user-data-dir={self.profile}",
                f"--window-size={self.width},{self.height}", "about:blank",
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.profile / "chromium.log", "wb"),  # noqa: SIM115
            start_new_session=True,
        )
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.profile / "chromium.log").read_text(errors="replace")[-300:]
                raise RuntimeError(f"chromium exited with {self.proc.returncode}: {log}")
            try:
                port, path = port_file.read_text().split("\n")[:2]
                if port and path:
                    break
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.05)
        else:
            raise RuntimeError(f"chromium did not open its DevTools port in {self.timeout:.0f} s")
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{port.strip()}{path.strip()}", timeout=self.timeout,
            suppress_origin=True,
        )

    def send(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None) -> dict[str, Any]:
        """Send one command and return its result (events seen meanwhile are kept)."""
        assert self.ws is not None
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def _pump(self, seconds: float) -> None:
        """Collect events for up to ``seconds``."""
        assert self.ws is not None
        self.ws.settimeout(seconds)
        try:
            while True:
                self.events.append(json.loads(self.ws.recv()))
        except websocket.WebSocketTimeoutException:
            pass
        finally:
            self.ws.settimeout(self.timeout)

    def evaluate(self, session: str, expression: str) -> Any:
        """Evaluate a JavaScript expression in the page (awaiting a promise); return its value."""
        res = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session,
        )
        return res.get("result", {}).get("value")

    def open(
        self,
        url: str,
        *,
        screenshot: Path | None = None,
        full_page: bool = False,
        probes: dict[str, str] | None = None,
        ready_expression: str = "window.__reportReady === true",
    ) -> PageResult:
        """Open ``url`` in a new tab, wait until ready, collect errors, probe, screenshot."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable", {}, session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1,
                   "mobile": False}, session)
        first_event = len(self.events)
        result = PageResult(url=url)
        t0 = time.perf_counter()
        self.send("Page.navigate", {"url": url}, session)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            state = self.evaluate(
                session, f"document.readyState === 'complete' && ({ready_expression})"
            )
            if state is True:
                result.ready = True
                break
            self._pump(0.02)
        result.wall_ms = (time.perf_counter() - t0) * 1000
        result.load_ms = self.evaluate(session, "window.__reportReadyMs || null")
        self._pump(0.2)  # late errors
        for probe, expression in (probes or {}).items():
            result.values[probe] = self.evaluate(session, expression)
        result.errors = _errors(self.events[first_event:], session)
        if screenshot is not None:
            params: dict[str, Any] = {"format": "png"}
            if full_page:
                metrics = self.send("Page.getLayoutMetrics", {}, session)
                size = metrics.get("cssContentSize") or metrics["contentSize"]
                params.update(
                    captureBeyondViewport=True,
                    clip={"x": 0, "y": 0, "width": size["width"],
                          "height": min(size["height"], 16000), "scale": 1},
                )
            data = self.send("Page.captureScreenshot", params, session)["data"]
            screenshot.write_bytes(base64.b64decode(data))
        self.send("Target.closeTarget", {"targetId": target})
        return result

    def close(self) -> None:
        """Close the browser, its process group and its profile."""
        if self.ws is not None:
            try:
                self.send("Browser.close")
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            try:
                self.ws.close()
            except Exception:  # noqa: BLE001
                pass
            self.ws = None
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            try:  # its own session: helpers (zygote, utility processes) go with it
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait(10)
            self.proc = None
        shutil.rmtree(self.profile, ignore_errors=True)


def _errors(events: list[dict[str, Any]], session: str) -> list[str]:
    out: list[str] = []
    for ev in events:
        if ev.get("sessionId") not in (None, session):
            continue
        method, params = ev.get("method"), ev.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in
                            params.get("args", []))
            out.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            desc = (d.get("exception") or {}).get("description") or d.get("text", "")
            out.append(f"exception: {desc.splitlines()[0] if desc else d}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            e = params["entry"]
            out.append(f"log ({e.get('source')}): {e.get('text')} {e.get('url', '')}".strip())
    return out
