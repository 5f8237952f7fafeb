"""Run the Locust load in a subprocess (gevent's monkey patching stays out of the harness)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from celery_chaos.deployment.processes import ManagedProcess
from celery_chaos.errors import InfrastructureError
from celery_chaos.load.workload import Workload

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


class LoadRun:
    """One headless Locust run publishing a workload; stats land in ``out_dir``."""

    def __init__(
        self,
        *,
        workload: Workload,
        env: dict[str, str],
        out_dir: Path,
        tasks: int | None = None,
        rate: float | None = None,
        users: int = 4,
        duration: float | None = None,
        seed: int = 0,
        prefix: list[str] | None = None,
    ) -> None:
        """``prefix``: a command prefix (entering the publisher's network namespace)."""
        self.prefix = list(prefix or [])
        if tasks is None and duration is None:
            raise ValueError("a load needs a number of tasks or a duration")
        self.out_dir = out_dir
        self.tasks = tasks or 0
        self.rate = rate or 0.0
        self.users = users
        if duration is None:  # an upper bound: N tasks at the rate, with room for faults
            duration = (self.tasks / self.rate if self.rate else self.tasks / 50) * 3 + 60
        self.duration = duration
        self.env = {
            **env,
            "CHAOS_ROLE": "publisher",
            "CHAOS_NODE_NAME": "publisher",
            "CHAOS_WORKLOAD_JSON": json.dumps(workload.model_dump(mode="json")["tasks"]),
            "CHAOS_SEED": str(seed),
        }
        self.proc: ManagedProcess | None = None

    @property
    def command(self) -> list[str]:
        """The locust command line."""
        return [
            *self.prefix,
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "-u",
            str(self.users),
            "-r",
            str(self.users),
            "-t",
            f"{int(self.duration)}s",
            "--stop-timeout",
            "10",
            "--chaos-tasks",
            str(self.tasks),
            "--chaos-rate",
            str(self.rate),
            "--only-summary",
            "--loglevel",
            "WARNING",
            "--exit-code-on-error",
            "0",
            "--json-file",
            str(self.out_dir / "locust"),
            "--html",
            str(self.out_dir / "locust.html"),
            "--csv",
            str(self.out_dir / "locust"),
        ]

    def start(self) -> LoadRun:
        """Start Locust in the background."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.proc = ManagedProcess("locust", self.command, self.out_dir, env=self.env)
        self.proc.start()
        return self

    def wait(self, timeout: float | None = None) -> int:
        """Wait for Locust to finish; return its exit code. A Locust still running after
        ``timeout`` (default: its duration + 30 s) is stopped and raises: a load that never
        ended must not read as a finished one."""
        assert self.proc is not None
        limit = timeout if timeout is not None else self.duration + 30
        code = self.proc.wait_exit(limit)
        if code is None:
            self.proc.stop(timeout=10)
            raise InfrastructureError(
                f"Locust had not finished {limit:.0f} s into the wait for it: stopped; "
                f"see {self.proc.log_path}"
            )
        return int(code)

    def done(self) -> bool:
        """Whether Locust has exited (a load never started counts as done)."""
        return self.proc is None or not self.proc.is_running()

    def stop(self) -> None:
        """Stop Locust if it is still running."""
        if self.proc is not None:
            self.proc.stop(timeout=10)

    def stats(self) -> dict[str, Any]:
        """Locust's own final statistics (``--json-file``), or {} if none were written."""
        path = self.out_dir / "locust.json"
        try:
            entries = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        total_req = sum(e.get("num_requests", 0) for e in entries)
        total_fail = sum(e.get("num_failures", 0) for e in entries)
        return {"requests": total_req, "failures": total_fail, "by_task": entries}
