"""``pause_broker``: the op, its window, its heal as a broker fault, and a real frozen Redis."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from kombu import Connection
from redis.backoff import NoBackoff
from redis.retry import Retry

from celery_chaos.backends.local import LocalBackend, SharedBrokers
from celery_chaos.checks.liveness import ResumeSummary, check_resume_consuming, is_connection_fault
from celery_chaos.checks.verdict import Verdict
from celery_chaos.deployment.brokers import RedisServer
from celery_chaos.faults.schedule import Schedule, ScheduleRun
from celery_chaos.faults.vocabulary import PauseBroker, parse_op
from celery_chaos.history.reader import HistoryTail
from celery_chaos.history.schema import Kind, Record
from celery_chaos.history.store import History, HistoryWriter
from tests.test_checks_liveness import drain, ready, rec, task, up


class PausingDeployment:
    """Enough of a deployment for the schedule executor: pause and resume are logged."""

    broker_kind = "redis"

    def __init__(self, tmp: Path) -> None:
        self.writer = HistoryWriter(tmp, "harness", "harness")
        self.tail = HistoryTail(tmp)
        self.calls: list[str] = []

    def pause_broker(self) -> None:
        self.calls.append("pause")

    def resume_broker(self) -> None:
        self.calls.append("resume")

    def history(self) -> list[Record]:
        return self.tail.records()

    def loads_done(self) -> bool:
        return True


def test_the_op_is_a_held_broker_fault() -> None:
    op = parse_op({"op": "pause_broker"})
    assert isinstance(op, PauseBroker) and op.held and op.category == "fault"
    assert op.record_name == "pause_broker" and op.target() == "broker"
    with pytest.raises(ValueError, match="pause_broker"):
        parse_op({"op": "pause_broker", "worker": "w1"})


def test_the_window_pauses_then_resumes_and_is_recorded(tmp_path: Path) -> None:
    dep = PausingDeployment(tmp_path)
    steps: list[dict[str, Any]] = [
        {"id": "freeze", "when": {"at": 0.05}, "do": {"op": "pause_broker"}, "duration": 0.2}
    ]
    ScheduleRun(Schedule.model_validate({"steps": steps}), dep).run()  # type: ignore[arg-type]
    assert dep.calls == ["pause", "resume"]
    faults = [r for r in dep.history() if r.kind is Kind.FAULT]
    assert [(r.name, r.phase, r.target) for r in faults] == [
        ("pause_broker", "start", "redis"), ("pause_broker", "end", "redis")]
    assert all(is_connection_fault(r) for r in faults)


def test_its_heal_is_judged_by_workers_resume_consuming() -> None:
    """The thaw is a heal: a worker idle with messages ready afterwards is flagged."""
    def freeze(t0: float, t1: float) -> list[Record]:
        return [rec(Kind.FAULT, t, name="pause_broker", phase=p, target="redis", detail={})
                for t, p in ((t0, "start"), (t1, "end"))]

    stuck = History(records=[up(0), ready(0, 0), *freeze(1, 3), ready(4, 9), drain(20)])
    res = check_resume_consuming(stuck, bound_s=10)
    assert res.verdict is Verdict.INVALID, res.problems
    assert "heal of pause_broker on redis" in res.problems[0]
    back = History(records=sorted([up(0), ready(0, 0), *freeze(1, 3), ready(4, 9),
                                   *task("a", 5), ready(5.5, 0), drain(20)],
                                  key=lambda r: r.mono_ns))
    summary = check_resume_consuming(back, bound_s=10).summary_as(ResumeSummary)
    assert summary.heals == 1 and summary.resume_s == {"w1@chaos": 2.0}


def test_a_frozen_redis_keeps_its_connections_and_answers_after_the_thaw(
    tmp_path: Path,
) -> None:
    """SIGSTOP: a command times out on an open connection (no refusal, no reset); SIGCONT:
    the same server answers again, with its data. Teardown resumes a broker left paused."""
    backend = LocalBackend(tmp_path, ["celery"], SharedBrokers(tmp_path))
    backend.start_broker_node("redis", name="t")
    server: RedisServer = backend.broker
    try:
        with server.client() as c:
            c.set("k", "v")
        pid = server.server_pid()
        assert pid is not None
        backend.pause_broker()
        assert psutil.Process(pid).status() == psutil.STATUS_STOPPED
        t0 = time.monotonic()
        once = Retry(NoBackoff(), 0)  # redis-py 8 retries a timeout 3 times by default
        with server.client(socket_timeout=0.5, retry=once) as c, \
                pytest.raises(redis.TimeoutError):
            c.get("k")
        assert time.monotonic() - t0 < 2
        backend.resume_broker()
        with server.client(socket_timeout=2) as c:
            assert c.get("k") == b"v"
        backend.pause_broker()  # left paused: teardown thaws it before it stops it
    finally:
        t0 = time.monotonic()
        for step in backend.close_steps():
            step()
        assert time.monotonic() - t0 < 10
    assert not server.is_running()


def test_a_frozen_rabbitmq_node_is_its_beam_and_logs_in_again_after_the_thaw(
    tmp_path: Path,
) -> None:
    """The pid paused is the Erlang VM itself (the script execs it); the node answers an
    AMQP login again once thawed."""
    backend = LocalBackend(tmp_path, ["celery"], SharedBrokers(tmp_path))
    backend.start_broker_node("rabbitmq", name="t", group="freeze")
    node = backend.broker
    try:
        pid = node.server_pid()
        assert pid is not None and psutil.Process(pid).name() == "beam.smp"
        backend.pause_broker()
        assert psutil.Process(pid).status() == psutil.STATUS_STOPPED
        backend.resume_broker()
        assert psutil.Process(pid).status() != psutil.STATUS_STOPPED
        with Connection(node.url("/"), connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=3)
    finally:
        backend.brokers.close()
