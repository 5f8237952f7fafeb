"""The final drain: a task still running in a live process keeps the deployment from being
called quiet (a long early-ack task is not lost); one whose process died does not."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from celery_chaos.deployment.drain import drain
from celery_chaos.history.schema import Kind
from celery_chaos.history.store import HistoryWriter


def _empty() -> dict[str, tuple[int, int]]:
    return {"celery": (0, 0)}


def _started(hist: Path, pid: int) -> None:
    HistoryWriter(hist, "publisher", "publisher").write(Kind.OK, task_id="t1", task_name="x")
    HistoryWriter(hist, "worker", "w1@chaos").write(
        Kind.STARTED, task_id="t1", task_name="x", pid=pid
    )


def test_a_task_running_in_a_live_process_keeps_the_drain_open(tmp_path: Path) -> None:
    _started(tmp_path, os.getpid())  # this very process: alive
    res = drain(tmp_path, _empty, timeout=1.0, settle=0.2, poll=0.05)
    assert not res.complete
    assert "1 still running" in res.reason


def test_a_task_whose_process_died_is_outstanding_not_running(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    _started(tmp_path, dead.pid)
    res = drain(tmp_path, _empty, timeout=5.0, settle=0.2, poll=0.05)
    assert res.complete and res.outstanding == 1, res.reason


def test_a_finished_task_completes_the_drain_at_once(tmp_path: Path) -> None:
    _started(tmp_path, os.getpid())
    HistoryWriter(tmp_path, "worker", "w1@chaos").write(Kind.SUCCEEDED, task_id="t1")
    res = drain(tmp_path, _empty, timeout=5.0, settle=2.0, poll=0.05)
    assert res.complete and res.outstanding == 0 and res.seconds < 1.0


def test_the_broker_is_asked_only_when_its_answer_can_end_the_drain(tmp_path: Path) -> None:
    # A broker probe is a round trip (erl_call on RabbitMQ): not every poll while tasks are
    # outstanding.
    calls: list[int] = []

    def depths() -> dict[str, tuple[int, int]]:
        calls.append(1)
        return _empty()

    _started(tmp_path, os.getpid())
    res = drain(tmp_path, depths, timeout=0.6, settle=5.0, poll=0.05)
    assert not res.complete and len(calls) <= 2, len(calls)
