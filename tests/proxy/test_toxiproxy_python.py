"""The PyPI client ``toxiproxy-python`` (imports as ``toxiproxy``) against each server under test,
mirroring that client's own test suite (spec §5 and §6)."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from toxiproxy import Toxiproxy
from toxiproxy.api import APIConsumer
from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists

from .conftest import PREFIX
from .servers import can_connect

pytestmark = pytest.mark.timeout(20)

UPSTREAM = "127.0.0.1:9"


@pytest.fixture
def tp(api_url: str) -> Iterator[Toxiproxy]:
    """A toxiproxy-python server object pointed at ``api_url`` (the client keeps global state)."""
    saved = APIConsumer.host, APIConsumer.port
    parts = urlsplit(api_url)
    server = Toxiproxy()
    server.update_api_consumer(parts.hostname, parts.port)
    yield server
    server.update_api_consumer(*saved)


def port(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def test_create_default_listen_reports_bound_port(tp: Toxiproxy) -> None:
    proxy = tp.create(upstream=UPSTREAM, name=PREFIX + "a")
    assert proxy.listen.startswith("127.0.0.1:") and port(proxy.listen) > 0
    assert proxy.enabled is True
    assert tp.get_proxy(PREFIX + "a").listen == proxy.listen
    assert PREFIX + "a" in tp.proxies()
    with pytest.raises(ProxyExists):
        tp.create(upstream=UPSTREAM, name=PREFIX + "a")


def test_create_disabled_echoes_listen(tp: Toxiproxy) -> None:
    proxy = tp.create(upstream=UPSTREAM, name=PREFIX + "off", listen="127.0.0.1:0", enabled=False)
    assert proxy.listen == "127.0.0.1:0"
    assert proxy.enabled is False


def test_toxics_roundtrip(tp: Toxiproxy) -> None:
    proxy = tp.create(upstream=UPSTREAM, name=PREFIX + "t")
    proxy.add_toxic(type="latency", attributes={"latency": 123})
    toxic = proxy.get_toxic("latency_downstream")
    assert toxic is not None
    assert (toxic.type, toxic.stream, toxic.toxicity) == ("latency", "downstream", 1)
    assert toxic.attributes == {"latency": 123, "jitter": 0}
    with pytest.raises(ProxyExists):
        proxy.add_toxic(type="latency", attributes={"latency": 1})
    with pytest.raises(InvalidToxic):
        proxy.add_toxic(type="latency", stream="lolstream")
    assert proxy.destroy_toxic("latency_downstream") is True
    assert proxy.toxics() == {}
    with pytest.raises(NotFound):
        proxy.destroy_toxic("latency_downstream")


def test_enable_disable_and_down(tp: Toxiproxy, is_embedded: bool) -> None:
    proxy = tp.create(upstream=UPSTREAM, name=PREFIX + "d")
    listen = proxy.listen
    proxy.disable()
    assert tp.get_proxy(PREFIX + "d").enabled is False
    if is_embedded:
        assert not can_connect(port(listen))
    proxy.enable()
    assert tp.get_proxy(PREFIX + "d").enabled is True
    assert tp.get_proxy(PREFIX + "d").listen == listen
    with proxy.down():
        assert tp.get_proxy(PREFIX + "d").enabled is False
    assert tp.get_proxy(PREFIX + "d").enabled is True
    if is_embedded:
        assert can_connect(port(listen))


def test_reset_reenables_and_clears(tp: Toxiproxy) -> None:
    proxy = tp.create(upstream=UPSTREAM, name=PREFIX + "r")
    proxy.add_toxic(type="timeout", attributes={"timeout": 0})
    proxy.disable()
    assert tp.reset() is True
    again = tp.get_proxy(PREFIX + "r")
    assert again.enabled is True
    assert again.toxics() == {}


def test_populate_client_side(tp: Toxiproxy) -> None:
    first = tp.create(upstream=UPSTREAM, name=PREFIX + "p1")
    entries = [
        {"name": PREFIX + "p1", "upstream": UPSTREAM, "listen": first.listen},
        {"name": PREFIX + "p2", "upstream": UPSTREAM, "listen": "127.0.0.1:0"},
    ]
    created = tp.populate(entries)
    assert [p.name for p in created] == [PREFIX + "p2"]  # the identical p1 is kept
    moved = tp.populate(
        [{"name": PREFIX + "p1", "upstream": "127.0.0.1:10", "listen": "127.0.0.1:0"}]
    )
    assert [p.upstream for p in moved] == ["127.0.0.1:10"]


def test_destroy_and_version(tp: Toxiproxy) -> None:
    proxy = tp.create(upstream=UPSTREAM, name=PREFIX + "x")
    assert tp.destroy(proxy) is True
    assert tp.get_proxy(PREFIX + "x") is None
    assert tp.destroy(PREFIX + "x") is False  # only Proxy objects are accepted
    version = tp.version()
    assert isinstance(version, bytes) and b"version" in version
    assert tp.running() is True
