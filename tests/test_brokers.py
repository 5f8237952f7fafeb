"""Private RabbitMQ and Redis servers: real processes, real clients."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import psutil
import pytest
from kombu import Connection, Exchange, Producer, Queue
from kombu.message import Message

from celery_chaos.deployment.brokers import UNACKED_KEY, Broker, RabbitMQServer, RedisServer
from celery_chaos.deployment.processes import count_processes, free_port, wait_for
from celery_chaos.errors import InfrastructureError

CONFIRM = {"confirm_publish": True}


def publish(url: str, queue: str, body: object, *, durable: bool = True, **kw: object) -> None:
    """Declare ``queue`` (direct exchange of the same name, like Celery) and publish ``body``."""
    exchange = Exchange(queue, type="direct", durable=durable)
    q = Queue(queue, exchange, routing_key=queue, durable=durable)
    with Connection(url, transport_options=CONFIRM) as conn:
        Producer(conn).publish(
            body, exchange=exchange, routing_key=queue, declare=[q],
            delivery_mode=2 if durable else 1, retry=False, **kw,
        )


def get_unacked(conn: Connection, queue: str) -> Message:
    """basic_get one message without acking it (a consumer would prefetch them all)."""
    message = Queue(queue, durable=True).bind(conn.default_channel).get(no_ack=False)
    assert message is not None
    return message


# ============================================================================================
# RabbitMQ: one node for the module; the last test stops it.


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory):
    server = RabbitMQServer(tmp_path_factory.mktemp("rabbit"))
    start = time.monotonic()
    server.start()
    print(f"\nRabbitMQ {server.version()} started in {time.monotonic() - start:.2f}s")
    yield server
    server.stop()


def test_rabbit_publish_consume(rabbit: RabbitMQServer) -> None:
    assert isinstance(rabbit, Broker) and rabbit.kind == "rabbitmq"
    assert rabbit.version().startswith("3.")
    assert rabbit.url() == f"amqp://guest:guest@127.0.0.1:{rabbit.port}//"
    with Connection(rabbit.url()) as conn:
        queue = conn.SimpleQueue("roundtrip")
        queue.put({"n": 1})
        message = queue.get(timeout=5)
        assert message.payload == {"n": 1}
        message.ack()
        queue.close()
    assert (rabbit.log_dir / f"{rabbit.node_name}.log").exists()


@pytest.mark.parametrize("crash", [False, True], ids=["graceful", "crash"])
def test_rabbit_durable_messages_survive_restart(rabbit: RabbitMQServer, crash: bool) -> None:
    durable, transient = f"durable-{crash}", f"transient-{crash}"
    publish(rabbit.url(), durable, {"keep": crash})
    publish(rabbit.url(), transient, {"lose": crash}, durable=False)
    assert rabbit.queue_depths()[durable] == (1, 0)
    port, data = rabbit.port, rabbit.data_dir

    start = time.monotonic()
    rabbit.restart(crash=crash)
    print(f"\nrestart(crash={crash}) took {time.monotonic() - start:.2f}s")

    assert (rabbit.port, rabbit.data_dir) == (port, data)
    depths = rabbit.queue_depths()
    assert depths[durable] == (1, 0)
    assert transient not in depths  # negative control: a non-durable queue is gone
    with Connection(rabbit.url()) as conn:
        queue = conn.SimpleQueue(durable, queue_opts={"durable": True})
        message = queue.get(timeout=5)
        assert message.payload == {"keep": crash}
        message.ack()
        queue.close()


def test_rabbit_queue_depths_ready_and_unacked(rabbit: RabbitMQServer) -> None:
    for n in range(3):
        publish(rabbit.url(), "depths", n)
    start = time.monotonic()
    assert rabbit.queue_depths(queues=["depths"]) == {"depths": (3, 0)}
    print(f"\nqueue_depths took {time.monotonic() - start:.2f}s")
    with Connection(rabbit.url()) as conn:
        held = get_unacked(conn, "depths")
        assert rabbit.queue_depths(queues=["depths"]) == {"depths": (2, 1)}
        held.ack()
        assert wait_for(lambda: rabbit.queue_depths()["depths"] == (2, 0), 10)
        get_unacked(conn, "depths")
    # the connection closed with one delivery unacked: RabbitMQ requeued it
    assert wait_for(lambda: rabbit.queue_depths()["depths"] == (2, 0), 10)


def test_rabbit_vhost_isolation(rabbit: RabbitMQServer) -> None:
    url_a = rabbit.add_vhost("scenario-a")
    rabbit.add_vhost("scenario-b")
    assert url_a.endswith("/scenario-a")
    publish(url_a, "shared-name", "a")
    assert rabbit.queue_depths("scenario-a") == {"shared-name": (1, 0)}
    assert rabbit.queue_depths("scenario-b") == {}
    assert "shared-name" not in rabbit.queue_depths("/")
    rabbit.delete_vhost("scenario-a")
    rabbit.delete_vhost("scenario-b")
    vhosts = rabbit.rabbitmqctl("list_vhosts", "--formatter", "json")
    assert "scenario-a" not in vhosts and '"/"' in vhosts


def test_rabbit_queue_depths_keeps_missing_queues_absent(rabbit: RabbitMQServer) -> None:
    vhost = 'odd "vhost" é'
    url = rabbit.add_vhost(vhost)
    rabbit.add_vhost(vhost)  # again: no error, like `rabbitmqctl add_vhost`
    odd = 'q "quoted" \\ é'
    publish(url, odd, 1)
    publish(url, "plain", 1)
    publish(url, "plain", 2)
    assert rabbit.queue_depths(vhost) == {odd: (1, 0), "plain": (2, 0)}
    # a queue that does not exist is absent, not (0, 0): a lost queue stays visible
    assert rabbit.queue_depths(vhost, queues=["plain", "never-declared"]) == {"plain": (2, 0)}
    with Connection(url) as conn:
        held = get_unacked(conn, "plain")
        assert rabbit.queue_depths(vhost, queues=[odd, "plain"]) == {odd: (1, 0), "plain": (1, 1)}
        held.ack()
    rabbit.delete_vhost(vhost)
    with pytest.raises(InfrastructureError, match="vhost 'odd \"vhost\" é' does not exist"):
        rabbit.queue_depths(vhost)
    with pytest.raises(InfrastructureError, match="no_such_vhost"):
        rabbit.delete_vhost(vhost)


def test_rabbit_erl_eval_failures_are_one_line(rabbit: RabbitMQServer) -> None:
    assert rabbit.erl_eval('io:put_chars("hi"), io:nl().') == "hi"
    with pytest.raises(InfrastructureError, match=r"erl_call on chaos-\w+@localhost failed: "
                                                  r"\{error, .*boom") as err:
        rabbit.erl_eval("erlang:error(boom).")
    assert "\n" not in str(err.value)
    with pytest.raises(InfrastructureError, match=r"timed out after 1s"):
        rabbit.erl_eval("timer:sleep(5000), io:nl().", timeout=1)


def test_rabbit_queue_depths_of_a_node_that_is_down_raises(tmp_path: Path) -> None:
    server = RabbitMQServer(tmp_path, dist_port=free_port())  # never started
    with pytest.raises(InfrastructureError, match="erl_call on .* failed"):
        server.queue_depths()


def test_rabbit_listens_on_loopback_only(rabbit: RabbitMQServer) -> None:
    listening = []
    for pid in rabbit.pids():
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        listening += [c.laddr for c in conns if c.status == psutil.CONN_LISTEN]
    ports = {addr.port for addr in listening}
    assert {rabbit.port, rabbit.dist_port, rabbit.epmd_port} <= ports
    assert {addr.ip for addr in listening} <= {"127.0.0.1", "::1"}


def test_rabbit_stop_leaves_no_process(rabbit: RabbitMQServer) -> None:
    """Runs last in this module: it stops the shared node."""
    assert sum(count_processes(m) for m in rabbit.markers) >= 2
    start = time.monotonic()
    rabbit.stop()
    print(f"\nstop took {time.monotonic() - start:.2f}s")
    assert wait_for(lambda: sum(count_processes(m) for m in rabbit.markers) == 0, 10)


# ============================================================================================
# Redis


@pytest.fixture
def redis_server(tmp_path: Path):
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def test_redis_roundtrip_and_queue_depths(redis_server: RedisServer) -> None:
    assert isinstance(redis_server, Broker) and redis_server.kind == "redis"
    assert redis_server.version().startswith("7.")
    assert redis_server.url(2) == f"redis://127.0.0.1:{redis_server.port}/2"
    url = redis_server.url()
    publish(url, "rq", "low")
    publish(url, "rq", "high", priority=9)
    publish(url, "other", "x")
    with redis_server.client() as client:
        assert any(b"\x06\x16" in key for key in client.keys("rq*"))  # a priority sub-list
    depths = redis_server.queue_depths()
    assert depths == {"rq": (2, 0), "other": (1, 0), UNACKED_KEY: (0, 0)}

    with Connection(url) as conn:
        held = get_unacked(conn, "rq")  # now in kombu's `unacked` hash
        assert redis_server.queue_depths(queues=["rq"]) == {"rq": (1, 1), UNACKED_KEY: (0, 1)}
        held.ack()
        assert redis_server.queue_depths(queues=["rq"]) == {"rq": (1, 0), UNACKED_KEY: (0, 0)}
    redis_server.flushall()
    assert redis_server.queue_depths() == {UNACKED_KEY: (0, 0)}


@pytest.mark.parametrize("persistence,survives", [("none", False), ("aof-always", True)])
def test_redis_persistence_across_crash(tmp_path: Path, persistence: str, survives: bool) -> None:
    server = RedisServer(tmp_path, persistence=persistence).start()  # type: ignore[arg-type]
    try:
        with server.client() as client:
            client.rpush("celery", *[f"task-{n}" for n in range(5)])
        port = server.port
        server.restart(crash=True)
        assert server.port == port
        with server.client() as client:
            assert client.llen("celery") == (5 if survives else 0)
    finally:
        server.stop()


def test_redis_stop_leaves_no_process(tmp_path: Path) -> None:
    server = RedisServer(tmp_path).start()
    markers = server.markers
    assert sum(count_processes(m) for m in markers) == 1
    server.stop()
    assert sum(count_processes(m) for m in markers) == 0
    assert not server.is_running()


# ============================================================================================
# One-line errors


def test_missing_binaries_are_one_line_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    with pytest.raises(InfrastructureError) as err:
        RedisServer(tmp_path, search_path=str(empty))
    assert str(err.value) == (
        "redis-server not found: run `sudo apt-get install -y redis-server` "
        "(or `make test`, which installs it)"
    )
    with pytest.raises(InfrastructureError, match=r"rabbitmq-server not found: run `sudo apt"):
        RabbitMQServer(tmp_path, bin_dir=empty)
    with pytest.raises(InfrastructureError, match=r"^epmd not found: run `sudo apt"):
        RabbitMQServer(tmp_path, search_path=str(empty))


def test_port_clash_is_one_line_error(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        for server in (RedisServer(tmp_path, port=port), RabbitMQServer(tmp_path, port=port)):
            with pytest.raises(InfrastructureError, match=f"port {port} .* already in use") as e:
                server.start()
            assert "\n" not in str(e.value)
            assert server.processes == []  # nothing was started


@pytest.mark.slow
def test_a_node_that_lost_its_port_is_not_ready_on_another_nodes_login(tmp_path: Path) -> None:
    """Two runs that chose the same free port at once: the loser's node exits, and its start
    fails (to be tried again with fresh ports) instead of passing on the winner's login."""
    winner = RabbitMQServer(tmp_path / "winner").start()  # its own: the module's may be stopped
    loser = RabbitMQServer(tmp_path / "loser", start_timeout=30)
    loser.port, loser.dist_port, loser.epmd_port = winner.port, free_port(), free_port()
    loser._ports_chosen = True  # the race: a port chosen free, then taken
    try:
        with pytest.raises(InfrastructureError, match="exited with code"):
            loser.start()
        assert winner.is_running()
    finally:
        loser.stop()
        winner.stop()
