"""Real ``celery worker`` and ``celery beat`` processes on the harness's app shim."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import psutil

from celery_chaos.deployment.processes import ManagedProcess
from celery_chaos.history.store import history_file

APP_TARGET = "celery_chaos.deployment.celery_app:app"


class Worker:
    """One ``celery worker`` (own process group), ready when it records ``worker_ready``."""

    def __init__(
        self,
        name: str,
        *,
        queues: list[str],
        env: dict[str, str],
        log_dir: Path,
        history_dir: Path,
        concurrency: int = 2,
        pool: str = "prefork",
        extra_args: list[str] | None = None,
        prefix: list[str] | None = None,
    ) -> None:
        """``prefix``: a command prefix (entering a network namespace; the pid stays)."""
        self.name = name
        self.prefix = list(prefix or [])
        self.queues = queues
        self.concurrency = concurrency
        self.pool = pool
        self.history_dir = history_dir
        self.log_dir = log_dir
        self.env = {**env, "CHAOS_NODE_NAME": name, "CHAOS_ROLE": "worker"}
        self.extra_args = list(extra_args or [])
        self.starts = 0
        self.proc: ManagedProcess | None = None

    @property
    def command(self) -> list[str]:
        """The worker's command line."""
        return [
            *self.prefix,
            sys.executable,
            "-m",
            "celery",
            "-A",
            APP_TARGET,
            "worker",
            "-n",
            self.name,
            "-Q",
            ",".join(self.queues),
            "-c",
            str(self.concurrency),
            "-P",
            self.pool,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "INFO",
            *self.extra_args,
        ]

    @property
    def pid(self) -> int:
        """The main process id."""
        assert self.proc is not None and self.proc.pid is not None, f"{self.name} not started"
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> None:
        """Start the worker and wait until it has recorded ``worker_ready``."""
        self.starts += 1
        short = self.name.split("@")[0]
        self.proc = ManagedProcess(
            f"worker-{short}-{self.starts}", self.command, self.log_dir, env=self.env
        )
        self.proc.start()
        self.proc.wait_ready(self._ready, timeout=timeout)

    def _ready(self) -> bool:
        path = history_file(self.history_dir, "worker", self.name, self.pid)
        try:
            return '"worker_ready"' in path.read_text()
        except FileNotFoundError:
            return False

    def is_running(self) -> bool:
        """Whether the main process is alive (and not a zombie)."""
        return self.proc is not None and self.proc.is_running()

    def child_pids(self) -> list[int]:
        """The pool children's pids."""
        try:
            return [c.pid for c in psutil.Process(self.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the main process only."""
        assert self.proc is not None
        self.proc.signal(sig)

    def kill(self) -> None:
        """SIGKILL the main process (children die by PDEATHSIG) and reap it."""
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait_exit(10)

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown, then force: leaves nothing of this worker running."""
        if self.proc is not None:
            self.proc.stop(timeout=timeout)


class Beat:
    """One ``celery beat`` process with its schedule file in the run directory."""

    def __init__(
        self,
        name: str,
        *,
        env: dict[str, str],
        log_dir: Path,
        state_dir: Path,
        extra_args: list[str] | None = None,
    ) -> None:
        self.name = name
        self.env = {**env, "CHAOS_NODE_NAME": name, "CHAOS_ROLE": "beat"}
        self.log_dir = log_dir
        self.state_dir = state_dir
        self.extra_args = list(extra_args or [])
        self.starts = 0
        self.proc: ManagedProcess | None = None

    @property
    def command(self) -> list[str]:
        """The beat command line."""
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            APP_TARGET,
            "beat",
            "-s",
            str(self.state_dir / f"{self.name}-schedule"),
            "--pidfile=",
            "-l",
            "INFO",
            *self.extra_args,
        ]

    def start(self, timeout: float = 20.0) -> None:
        """Start beat; ready once its log says it is starting."""
        self.spawn()
        self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start the process without waiting (:meth:`wait_ready` waits), e.g. to start several."""
        self.starts += 1
        self.proc = ManagedProcess(
            f"beat-{self.name}-{self.starts}", self.command, self.log_dir, env=self.env
        )
        self.proc.start()

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until this run's log says ``beat: Starting`` (the scheduler is about to tick)."""
        assert self.proc is not None, f"{self.name} not started"
        log = self.proc.log_path
        self.proc.wait_ready(
            lambda: "beat: Starting" in log.read_text(errors="replace"), timeout=timeout
        )

    @property
    def pid(self) -> int:
        """The beat process id."""
        assert self.proc is not None and self.proc.pid is not None, f"{self.name} not started"
        return self.proc.pid

    def is_running(self) -> bool:
        """Whether the beat process is alive."""
        return self.proc is not None and self.proc.is_running()

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the beat process."""
        assert self.proc is not None
        self.proc.signal(sig)

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL beat (no sync of its schedule) and reap it."""
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait_exit(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop beat and anything it started."""
        if self.proc is not None:
            self.proc.stop(timeout=timeout)
