"""Network fault verbs on real links: a Redis server reached through the deployment's proxy."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from celery_chaos.deployment.brokers import RedisServer
from celery_chaos.deployment.links import LinkProxies, host_port, with_host_port
from celery_chaos.errors import InfrastructureError
from celery_chaos.history.schema import Kind
from celery_chaos.history.store import HistoryWriter, read_history
from celery_chaos.runner.scenario import NetApi


def test_url_rewriting_keeps_credentials_and_path() -> None:
    url = "amqp://guest:secret@127.0.0.1:5672/vhost-1?heartbeat=4"
    assert host_port(url) == ("127.0.0.1", 5672)
    assert with_host_port(url, "127.0.0.1", 40001) == (
        "amqp://guest:secret@127.0.0.1:40001/vhost-1?heartbeat=4"
    )
    assert host_port("redis://127.0.0.1/3") == ("127.0.0.1", 6379)
    assert with_host_port("redis://127.0.0.1:6379/3", "127.0.0.1", 9) == "redis://127.0.0.1:9/3"


class _Links:
    """The part of a deployment that link faults use: the history writer and the links."""

    def __init__(self, links: LinkProxies, writer: HistoryWriter) -> None:
        self.links = links
        self.writer = writer

    def select_links(self, targets: str | list[str]) -> list[str]:
        return self.links.select(targets)

    def link_api(self) -> Any:
        return self.links.client


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[LinkProxies, NetApi, RedisServer, Path]]:
    server = RedisServer(tmp_path).start()
    links = LinkProxies(tmp_path / "proxy").start()
    hist = tmp_path / "history"
    net = NetApi(_Links(links, HistoryWriter(hist, "harness", "harness")))
    try:
        yield links, net, server, hist
    finally:
        net.heal()
        links.stop()
        server.stop()


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)


def test_partition_modes_and_heal(
    rig: tuple[LinkProxies, NetApi, RedisServer, Path],
) -> None:
    links, net, server, hist = rig
    url_a = links.url("w1-broker", server.url(0))
    url_b = links.url("w2-broker", server.url(0))
    a, b = _client(url_a), _client(url_b)
    assert a.ping() and b.ping()

    net.partition("w1-*", "blackhole")  # a silent peer: the request times out
    with pytest.raises(redis.TimeoutError):
        a.ping()
    assert b.ping(), "a fault on one link leaves the others alone"
    net.heal()
    assert _client(url_a).ping()

    net.partition(["w1-broker"], "refuse")  # the proxy stops listening
    with pytest.raises(redis.ConnectionError):
        _client(url_a).ping()
    net.heal()
    assert _client(url_a).ping()

    net.partition("w1-broker", "reset")
    with pytest.raises(redis.ConnectionError):
        _client(url_a).ping()
    net.heal()

    net.latency("w2-broker", ms=100)
    c = _client(url_b)
    c.ping()
    t0 = time.monotonic()
    c.ping()
    assert time.monotonic() - t0 >= 0.19, "100 ms each way"
    net.heal()

    faults = [(r.name, r.phase) for r in read_history(hist) if r.kind is Kind.FAULT]
    assert faults == [
        ("partition_blackhole", "start"),
        ("partition_blackhole", "end"),
        ("partition_refuse", "start"),
        ("partition_refuse", "end"),
        ("partition_reset", "start"),
        ("partition_reset", "end"),
        ("latency", "start"),
        ("latency", "end"),
    ]


def test_unknown_target_is_a_clear_error(
    rig: tuple[LinkProxies, NetApi, RedisServer, Path],
) -> None:
    links, net, server, _ = rig
    links.url("w1-broker", server.url(0))
    with pytest.raises(InfrastructureError, match="no link matches"):
        net.partition("beat-*")


def test_bad_fault_input_records_nothing_and_heal_ends_every_window(
    rig: tuple[LinkProxies, NetApi, RedisServer, Path],
) -> None:
    links, net, server, hist = rig
    links.url("w1-broker", server.url(0))
    links.url("w2-broker", server.url(0))
    for bad in (
        lambda: net.partition("w1-broker", "drop"),  # type: ignore[arg-type]
        lambda: net.bandwidth("w1-broker", 0),
        lambda: net.latency("w1-broker", -5),
    ):
        with pytest.raises(ValueError):
            bad()
    assert net.open == []
    assert not hist.exists() or not [r for r in read_history(hist) if r.kind is Kind.FAULT]

    net.partition("w1-broker", "blackhole")
    net.latency("w2-broker", ms=10)
    toxic = net.open[-1][1].detail["_toxics"][0][1]
    links.client.remove_toxic("w2-broker", toxic)  # gone behind our back
    with pytest.raises(Exception):  # noqa: B017 - whatever the API answers for a missing toxic
        net.heal()
    faults = [(r.name, r.phase) for r in read_history(hist) if r.kind is Kind.FAULT]
    assert faults.count(("partition_blackhole", "end")) == 1, faults
    assert faults.count(("latency", "end")) == 1, faults
    assert _client(links.url("w1-broker", server.url(0))).ping(), "the other fault was healed"
