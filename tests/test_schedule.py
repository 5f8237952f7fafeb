"""The schedule executor on a fake deployment: triggers, overlapping windows, references,
errors. Pure logic: no broker, no worker; the deployment records what was done to it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from celery_chaos.errors import InfrastructureError
from celery_chaos.faults.schedule import Schedule, ScheduleRun
from celery_chaos.history.reader import HistoryTail
from celery_chaos.history.schema import Kind, Record
from celery_chaos.history.store import HistoryWriter


class FakeDeployment:
    """A deployment whose workers and broker are names: every call is logged with its time."""

    broker_kind = "redis"

    def __init__(self, tmp: Path) -> None:
        self.writer = HistoryWriter(tmp, "harness", "harness")
        self.tail = HistoryTail(tmp)
        self.calls: list[tuple[float, str, Any]] = []
        self.fail_on: str | None = None

    def _log(self, what: str, arg: Any = None) -> None:
        if what == self.fail_on:
            raise RuntimeError(f"{what} failed")
        self.calls.append((time.monotonic(), what, arg))

    def worker_names(self) -> list[str]:
        return ["w1@chaos", "w2@chaos"]

    def worker_pid(self, name: str) -> int:
        return 100 + int(name[1])

    def child_pids(self, name: str) -> list[int]:
        return [200]

    def signal_worker(self, name: str, sig: int, *, wait_exit: float | None = None) -> None:
        self._log(f"signal {sig}", name)

    def signal_pid(self, pid: int, sig: int, **_: Any) -> None:
        self._log(f"signal_pid {sig}", pid)

    def running_on(self, name: str, until_ns: int | None = None) -> dict[str, Record]:
        return {}

    def crash_broker(self) -> None:
        self._log("crash")

    def start_broker(self) -> None:
        self._log("start")

    def publish_now(self, task: str, args: list[Any], count: int) -> list[str]:
        self._log("publish", task)
        return [f"{task}-{i}" for i in range(count)]

    def history(self) -> list[Record]:
        return self.tail.records()

    def loads_done(self) -> bool:
        return True


def _run(dep: FakeDeployment, steps: list[dict[str, Any]]) -> ScheduleRun:
    run = ScheduleRun(Schedule.model_validate({"steps": steps}), dep)  # type: ignore[arg-type]
    run.run()
    return run


def _faults(tmp: Path) -> list[tuple[str, str, int]]:
    return [(r.name or "", r.phase or "", r.mono_ns) for r in HistoryTail(tmp).records()
            if r.kind is Kind.FAULT]


def test_a_long_fault_never_delays_the_next_trigger(tmp_path: Path) -> None:
    dep = FakeDeployment(tmp_path)
    t0 = time.monotonic()
    run = _run(dep, [
        {"id": "pause", "when": {"at": 0.1}, "do": {"op": "pause_worker", "worker": "w1"},
         "duration": 0.6},
        {"id": "kill", "when": {"after_start": "pause", "delay": 0.1},
         "do": {"op": "kill_worker", "worker": "w2"}},
        {"id": "crash", "when": {"at": 0.3}, "do": {"op": "crash_broker"}, "duration": 0.2},
    ])
    at = {what: t - t0 for t, what, _ in dep.calls}
    assert 0.15 <= at["signal 9"] <= 0.45, at  # 0.2 s: not after the 0.6 s pause
    assert 0.25 <= at["crash"] <= 0.5, at
    assert at["signal 18"] >= 0.65, at  # SIGCONT at the end of the pause window
    names = [(n, p) for n, p, _ in _faults(tmp_path)]
    for name in ("pause_worker", "kill_worker", "crash_broker"):
        assert names.count((name, "start")) == 1 and names.count((name, "end")) == 1, names
    times = {(n, p): ns for n, p, ns in _faults(tmp_path)}
    # The kill window opened and closed inside the pause window: they overlap.
    assert times["pause_worker", "start"] < times["kill_worker", "start"]
    assert times["kill_worker", "end"] < times["pause_worker", "end"]
    assert run.windows["pause"].end_ns is not None
    assert run.windows["crash"].detail["restart_s"] >= 0


def test_references_and_record_triggers(tmp_path: Path) -> None:
    dep = FakeDeployment(tmp_path)
    other = HistoryWriter(tmp_path, "worker", "w1@chaos")
    steps = [
        {"id": "pub", "do": {"op": "publish", "task": "t.nap", "args": [1], "count": 2}},
        {"id": "seen", "when": {"records": {"kind": "succeeded", "tasks": ["${pub.tasks}"]},
                                "timeout": 5},
         "do": {"op": "checkpoint"}},
    ]
    sched = ScheduleRun(Schedule.model_validate({"steps": steps}), dep)  # type: ignore[arg-type]

    import threading

    def finish() -> None:
        time.sleep(0.3)
        for tid in ("t.nap-0", "t.nap-1"):
            other.write(Kind.SUCCEEDED, task_id=tid, task_name="t.nap")

    threading.Thread(target=finish).start()
    t0 = time.monotonic()
    sched.run()
    assert time.monotonic() - t0 >= 0.25, "the checkpoint waited for both tasks"
    assert sched.resolve("${pub}") == "t.nap-0"
    assert sched.resolve(["${pub.tasks}"]) == ["t.nap-0", "t.nap-1"]
    assert sched.resolve({"${pub}": {"x": "${pub}"}}) == {"t.nap-0": {"x": "t.nap-0"}}


def test_a_failing_step_stops_the_others_and_says_which(tmp_path: Path) -> None:
    dep = FakeDeployment(tmp_path)
    dep.fail_on = "crash"
    t0 = time.monotonic()
    with pytest.raises(InfrastructureError, match="crash failed"):
        _run(dep, [
            {"when": {"at": 0.1}, "do": {"op": "crash_broker"}, "duration": 1},
            {"when": {"at": 5}, "do": {"op": "kill_worker", "worker": "w1"}},
        ])
    assert time.monotonic() - t0 < 2, "the waiting step was aborted, not waited for"
    # A fault that failed after its start record still ends its window.
    names = [(n, p) for n, p, _ in _faults(tmp_path)]
    assert names == [("crash_broker", "start"), ("crash_broker", "end")]


def test_a_trigger_that_never_holds_is_a_clear_error(tmp_path: Path) -> None:
    dep = FakeDeployment(tmp_path)
    with pytest.raises(InfrastructureError, match="fewer than 1 failed records within 0 s"):
        _run(dep, [{"when": {"records": {"kind": "failed"}, "timeout": 0.3},
                    "do": {"op": "checkpoint"}}])


class _StubbornWorker(FakeDeployment):
    """w1 ignores SIGTERM (the wait for its exit times out) and runs task t1 until killed."""

    def signal_worker(self, name: str, sig: int, *, wait_exit: float | None = None) -> None:
        super().signal_worker(name, sig, wait_exit=wait_exit)
        if sig == 15 and wait_exit:
            time.sleep(wait_exit)

    def running_on(self, name: str, until_ns: int | None = None) -> dict[str, Record]:
        return {"t1": None}  # type: ignore[dict-item]  # only the ids matter here


def test_terminate_worker_sigkills_only_after_the_grace(tmp_path: Path) -> None:
    """``terminate_worker``: SIGTERM, then SIGKILL once ``grace_s`` has run out, recorded."""
    from celery_chaos.faults.context import Window
    from celery_chaos.faults.vocabulary import parse_op
    from celery_chaos.runner.loadtest import parse_fault

    op = parse_op({"op": "terminate_worker", "worker": "w1", "grace_s": 0.2})
    quick = FakeDeployment(tmp_path / "quick")
    win = Window(step="stop", seq=0)
    op.prepare(quick, win)  # type: ignore[arg-type]
    op.apply(quick, win)  # type: ignore[arg-type]
    assert [what for _, what, _ in quick.calls] == ["signal 15"]
    assert win.detail["sigkill"] is False and win.detail["exit_s"] < 0.2, win.detail

    stubborn = _StubbornWorker(tmp_path / "stubborn")
    win = Window(step="stop", seq=0, picked=["t1"])
    op.prepare(stubborn, win)  # type: ignore[arg-type]
    op.apply(stubborn, win)  # type: ignore[arg-type]
    (t_term, term, _), (t_kill, kill, _) = stubborn.calls
    assert (term, kill) == ("signal 15", "signal 9") and t_kill - t_term >= 0.2
    assert win.detail["sigkill"] is True and win.detail["exit_s"] >= 0.2, win.detail
    assert win.detail["hit"] == win.detail["killed"] == ["t1"], win.detail

    step = parse_fault("terminate-worker:w1@5s")
    assert step.do == parse_op({"op": "terminate_worker", "worker": "w1"})
    assert step.do.grace_s == 30.0  # type: ignore[attr-defined]


def test_a_trigger_not_required_skips_its_step_and_the_run_goes_on(tmp_path: Path) -> None:
    dep = FakeDeployment(tmp_path)
    run = _run(dep, [
        {"id": "never", "when": {"records": {"kind": "failed"}, "timeout": 0.2,
                                 "required": False},
         "do": {"op": "kill_worker", "worker": "w1"}},
        {"when": {"after": "never"}, "do": {"op": "crash_broker"}},
    ])
    assert "fewer than 1 failed records" in run.windows["never"].detail["skipped"]
    assert [what for _, what, _ in dep.calls] == ["crash", "start"], dep.calls
    assert [(n, p) for n, p, _ in _faults(tmp_path)] == [
        ("crash_broker", "start"), ("crash_broker", "end")]
