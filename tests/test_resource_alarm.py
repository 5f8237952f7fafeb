"""``resource_alarm``: the op, its window, and RabbitMQ's memory and disk alarms on a real node."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import amqp
import pytest
from celery import Celery
from kombu.exceptions import OperationalError

from celery_chaos.backends.base import BackendError
from celery_chaos.backends.local import LocalBackend, SharedBrokers, rabbitmq_server
from celery_chaos.deployment.brokers import RabbitMQServer
from celery_chaos.errors import UsageError
from celery_chaos.faults.schedule import Schedule, ScheduleRun
from celery_chaos.faults.vocabulary import ResourceAlarm, parse_op
from celery_chaos.history.reader import HistoryTail
from celery_chaos.history.schema import Kind, Record
from celery_chaos.history.store import HistoryWriter
from celery_chaos.report.matrix import fault_label
from celery_chaos.runner.loadtest import parse_fault


class AlarmDeployment:
    """Enough of a deployment for the schedule executor: raise and clear are logged."""

    broker_kind = "rabbitmq"

    def __init__(self, tmp: Path) -> None:
        self.writer = HistoryWriter(tmp, "harness", "harness")
        self.tail = HistoryTail(tmp)
        self.calls: list[str] = []

    def raise_alarm(self, resource: str) -> None:
        self.calls.append(f"raise {resource}")

    def clear_alarm(self, resource: str) -> None:
        self.calls.append(f"clear {resource}")

    def history(self) -> list[Record]:
        return self.tail.records()

    def loads_done(self) -> bool:
        return True


def test_the_op_is_a_held_broker_fault_named_by_its_resource() -> None:
    op = parse_op({"op": "resource_alarm"})
    assert isinstance(op, ResourceAlarm) and op.held and op.category == "fault"
    assert op.resource == "memory" and op.record_name == "memory_alarm"
    assert op.target() == "broker"
    assert parse_op({"op": "resource_alarm", "resource": "disk"}).record_name == "disk_alarm"
    with pytest.raises(ValueError, match="resource: Input should be .memory. or .disk."):
        parse_op({"op": "resource_alarm", "resource": "cpu"})


def test_the_load_command_takes_it_held_and_the_matrix_names_it() -> None:
    step = parse_fault("resource_alarm@2s+5s")
    assert isinstance(step.do, ResourceAlarm) and step.duration == 5.0
    with pytest.raises(UsageError, match="needs \\+DURATION"):
        parse_fault("resource_alarm@2s")
    assert fault_label("memory_alarm") == "RabbitMQ memory alarm"


def test_the_window_raises_then_clears_and_is_recorded(tmp_path: Path) -> None:
    dep = AlarmDeployment(tmp_path)
    steps: list[dict[str, Any]] = [{"id": "alarm", "when": {"at": 0.05}, "duration": 0.2,
                                    "do": {"op": "resource_alarm", "resource": "disk"}}]
    ScheduleRun(Schedule.model_validate({"steps": steps}), dep).run()  # type: ignore[arg-type]
    assert dep.calls == ["raise disk", "clear disk"]
    faults = [(r.name, r.phase, r.target) for r in dep.history() if r.kind is Kind.FAULT]
    assert faults == [("disk_alarm", "start", "rabbitmq"), ("disk_alarm", "end", "rabbitmq")]


def test_a_redis_broker_has_no_alarm(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path, ["celery"], SharedBrokers(tmp_path))
    backend.broker_kind = "redis"
    with pytest.raises(BackendError, match="needs broker: rabbitmq"):
        backend.raise_alarm("memory")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):
    server = rabbitmq_server(tmp_path_factory.mktemp("alarm"))
    server.start()
    yield server
    server.stop()


def _backend(tmp: Path, server: RabbitMQServer) -> LocalBackend:
    backend = LocalBackend(tmp, ["celery"], SharedBrokers(tmp))
    backend.broker_kind, backend.broker = "rabbitmq", server
    return backend


def _alarms(server: RabbitMQServer) -> str:
    return server.erl_eval('io:format("~w~n", [rabbit_alarm:get_alarms()]).')


def test_the_memory_alarm_blocks_publishers_until_cleared(
    tmp_path: Path, node: RabbitMQServer
) -> None:
    """The watermark set to 0: RabbitMQ sends connection.blocked (py-amqp hands it to an
    ``on_blocked`` callback; kombu and Celery set none) and a publish with py-amqp socket
    timeouts fails; cleared, the watermark is what it was and the publish goes through."""
    backend = _backend(tmp_path, node)
    before = node.erl_eval('io:format("~w~n", [vm_memory_monitor:get_vm_memory_high_watermark()]).')
    app = Celery("t", broker=node.url("/"), set_as_current=False)
    app.conf.broker_transport_options = {"confirm_publish": True, "read_timeout": 1,
                                         "write_timeout": 1}
    app.conf.task_publish_retry = False
    blocked: list[str] = []
    conn = amqp.Connection(f"127.0.0.1:{node.port}", on_blocked=blocked.append)
    conn.connect()
    try:
        backend.raise_alarm("memory")
        assert "resource_limit,memory" in _alarms(node)
        conn.channel().basic_publish(amqp.Message("x"), routing_key="nowhere")
        conn.drain_events(timeout=2)  # connection.blocked, once the connection publishes
        assert blocked and "blocked" in blocked[0]
        t0 = time.monotonic()
        with pytest.raises(OperationalError):
            app.send_task("any.task")
        assert time.monotonic() - t0 < 5
        backend.clear_alarm("memory")
        assert "resource_limit" not in _alarms(node)
        assert node.erl_eval(
            'io:format("~w~n", [vm_memory_monitor:get_vm_memory_high_watermark()]).') == before
        app.send_task("any.task")  # goes through again
    finally:
        backend.clear_alarm("memory")  # no-op once cleared
        conn.collect()
        app.close()


def test_the_disk_alarm_is_raised_and_its_limit_put_back(
    tmp_path: Path, node: RabbitMQServer
) -> None:
    backend = _backend(tmp_path, node)
    limit = 'io:format("~w~n", [rabbit_disk_monitor:get_disk_free_limit()]).'
    before = node.erl_eval(limit)
    backend.raise_alarm("disk")
    try:
        assert "resource_limit,disk" in _alarms(node)
        assert backend.close_steps()[0].func == backend.clear_alarm  # type: ignore[attr-defined]
    finally:
        backend.clear_alarm("disk")
    assert "resource_limit" not in _alarms(node) and node.erl_eval(limit) == before
