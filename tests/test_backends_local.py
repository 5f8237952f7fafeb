"""The local backend's shared brokers: a failed start is retried once, never kept."""

from __future__ import annotations

import pytest

from celery_chaos.backends.local import _started
from celery_chaos.errors import InfrastructureError


class FakeBroker:
    def __init__(self, attempt: int, fails: set[int], log: list[str]) -> None:
        self.attempt, self.fails, self.log = attempt, fails, log

    def start(self) -> FakeBroker:
        self.log.append(f"start {self.attempt}")
        if self.attempt in self.fails:
            raise InfrastructureError(f"port clash on attempt {self.attempt}")
        return self

    def stop(self) -> None:
        self.log.append(f"stop {self.attempt}")


def test_a_failed_start_is_stopped_and_tried_once_more() -> None:
    log: list[str] = []
    broker = _started(lambda n: FakeBroker(n, {1}, log))
    assert broker.attempt == 2 and log == ["start 1", "stop 1", "start 2"]


def test_two_failed_starts_raise_the_second_error() -> None:
    log: list[str] = []
    with pytest.raises(InfrastructureError, match="attempt 2"):
        _started(lambda n: FakeBroker(n, {1, 2}, log))
    assert log == ["start 1", "stop 1", "start 2", "stop 2"]


def test_a_killed_child_of_a_stopped_parent_counts_as_exited() -> None:
    """A zombie whose parent is SIGSTOPped cannot be reaped: dead is enough for a kill."""
    import os
    import signal
    import subprocess
    import sys

    from celery_chaos.backends.local import LocalBackend

    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', "
        "'import time; time.sleep(60)']); print(c.pid, flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGSTOP)
        LocalBackend.signal_pid(child, signal.SIGKILL, wait_exit=5)  # no timeout error
    finally:
        os.kill(parent.pid, signal.SIGCONT)
        parent.kill()
        parent.wait()
