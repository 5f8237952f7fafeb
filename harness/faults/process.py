"""Process faults on workers and brokers; every fault is a start/end pair in the history."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import psutil

from harness.deployment.workers import Worker
from harness.history.schema import Kind
from harness.history.store import HistoryWriter


class RestartableBroker(Protocol):
    """What process faults need from a broker."""

    kind: str

    def crash(self) -> None: ...
    def restart(self, crash: bool = False) -> None: ...


class FaultInjector:
    """Injects faults and records each as ``fault`` records with phase start and end."""

    def __init__(self, writer: HistoryWriter) -> None:
        self.writer = writer

    @contextmanager
    def window(self, name: str, target: str, **detail: Any) -> Iterator[dict[str, Any]]:
        """Record a fault window around the body; the body may add to the yielded detail."""
        info: dict[str, Any] = dict(detail)
        self.writer.write(Kind.FAULT, name=name, phase="start", target=target, detail=dict(info))
        try:
            yield info
        finally:
            self.writer.write(Kind.FAULT, name=name, phase="end", target=target, detail=info)

    def kill_worker(self, worker: Worker, sig: int = signal.SIGKILL) -> int:
        """Signal a worker's main process (SIGKILL by default) and wait for it to exit."""
        pid = worker.pid
        with self.window("kill_worker", worker.name, pid=pid, signal=signal.Signals(sig).name):
            worker.signal(sig)
            assert worker.proc is not None
            worker.proc.wait_exit(30)
        return pid

    def kill_pool_child(self, worker: Worker, pid: int | None = None) -> int:
        """SIGKILL one pool child (the OOM killer's signal); by default the first child."""
        children = worker.child_pids()
        if pid is None:
            if not children:
                raise RuntimeError(f"{worker.name} has no pool child to kill")
            pid = children[0]
        with self.window("kill_pool_child", worker.name, pid=pid, signal="SIGKILL"):
            try:
                proc = psutil.Process(pid)
                proc.kill()
                proc.wait(10)
            except psutil.NoSuchProcess:
                pass
        return pid

    @contextmanager
    def paused(self, worker: Worker) -> Iterator[None]:
        """SIGSTOP the worker's main process for the body, then SIGCONT."""
        with self.window("pause_worker", worker.name, pid=worker.pid):
            worker.signal(signal.SIGSTOP)
            try:
                yield
            finally:
                worker.signal(signal.SIGCONT)

    def restart_broker(
        self, broker: RestartableBroker, *, crash: bool = True, down_for: float = 0.0
    ) -> None:
        """Crash (SIGKILL) or stop the broker, keep it down ``down_for`` s, and start it again."""
        name = "crash_broker" if crash else "stop_broker"
        with self.window(name, broker.kind, down_for=down_for):
            if down_for > 0:
                broker.crash() if crash else broker.stop()  # type: ignore[attr-defined]
                time.sleep(down_for)
                broker.start()  # type: ignore[attr-defined]
            else:
                broker.restart(crash=crash)
