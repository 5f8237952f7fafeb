"""Every fault verb on real processes: warm, cold, kill, pause, restart, broker crash.

One Redis-backed deployment (Redis starts in milliseconds) with one worker; each verb is
checked against what the processes really did and what the history recorded.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from celery_chaos.backends.local import SharedBrokers
from celery_chaos.history.schema import Kind
from celery_chaos.load.workload import load_workload
from celery_chaos.runner.app import AppUnderTest
from celery_chaos.runner.scenario import Scenario

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    app = AppUnderTest.resolve(
        "tests.userapp.app:app", load_workload(ROOT / "tests" / "userapp" / "workload.yaml")
    )
    brokers = SharedBrokers(tmp_path)
    sc = Scenario("faults", tmp_path, app, brokers)
    try:
        yield sc.deploy("redis", workers=1, concurrency=2)
    finally:
        sc.close()
        brokers.close()


def _faults(sc: Scenario) -> list[tuple[str, str]]:
    return [(r.name or "", r.phase or "") for r in sc.history() if r.kind is Kind.FAULT]


def test_fault_verbs(scenario: Scenario) -> None:
    sc = scenario
    w1 = sc.worker("w1")
    first = w1.pid

    # Pool child kill: the child dies, the pool replaces it, the worker lives on.
    child = w1.child_pids()[0]
    sc.faults.kill_pool_child(w1)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie"
    deadline = time.monotonic() + 10
    while len(w1.child_pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert w1.is_running() and len(w1.child_pids()) == 2

    # Pause / resume: the main process is stopped inside the window, running after it.
    with sc.faults.paused(w1):
        deadline = time.monotonic() + 5  # the kernel applies SIGSTOP asynchronously
        while psutil.Process(w1.pid).status() != psutil.STATUS_STOPPED:
            assert time.monotonic() < deadline, "SIGSTOP did not stop the worker"
            time.sleep(0.01)
    assert psutil.Process(w1.pid).status() != psutil.STATUS_STOPPED

    # Warm shutdown (SIGTERM): the worker records its own shutdown and exits 0.
    sc.faults.kill_worker(w1, signal.SIGTERM)
    assert not w1.is_running()
    assert any(r.name == "worker_shutdown" and r.pid == first for r in sc.history())

    # Restart, then cold shutdown (SIGQUIT) and SIGKILL of the main process.
    sc.start_worker("w1@chaos")
    assert w1.pid != first and w1.is_running()
    sc.faults.kill_worker(w1, signal.SIGQUIT)
    assert not w1.is_running()
    sc.start_worker("w1@chaos")
    children = w1.child_pids()
    sc.faults.kill_worker(w1)
    deadline = time.monotonic() + 10  # pool children die with their parent (PDEATHSIG)
    while any(psutil.pid_exists(c) and psutil.Process(c).status() != "zombie" for c in children):
        assert time.monotonic() < deadline, "pool children outlived a SIGKILLed worker"
        time.sleep(0.1)

    # Broker crash and restart: the same port, and a restarted worker gets ready on it.
    port = sc.broker.port
    sc.faults.restart_broker(sc.broker, crash=True)
    assert sc.broker.port == port and sc.broker.is_running()
    sc.start_worker("w1@chaos")

    names = _faults(sc)
    for verb in ("kill_pool_child", "pause_worker", "kill_worker", "crash_broker"):
        assert (verb, "start") in names and (verb, "end") in names, verb
    kills = [r for r in sc.history() if r.kind is Kind.FAULT and r.name == "kill_worker"]
    assert {r.detail["signal"] for r in kills} == {"SIGTERM", "SIGQUIT", "SIGKILL"}
