"""The harness's typed client, against each server under test."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from celery_chaos.errors import InfrastructureError
from celery_chaos.faults.proxy import ProxyInfo, ToxicInfo, ToxiproxyClient, ToxiproxyError
from celery_chaos.faults.proxy.client import parse_version

from .conftest import PREFIX

pytestmark = pytest.mark.timeout(20)

UPSTREAM = "127.0.0.1:9"


@pytest.fixture
def api(api_url: str) -> Iterator[ToxiproxyClient]:
    with ToxiproxyClient(api_url, timeout=5.0) as client:
        yield client


def test_proxy_lifecycle(api: ToxiproxyClient) -> None:
    info = api.create_proxy(PREFIX + "a", "127.0.0.1:0", UPSTREAM)
    assert isinstance(info, ProxyInfo)
    assert info.enabled and info.listen_host == "127.0.0.1" and info.listen_port > 0
    assert api.get_proxy(PREFIX + "a") == info
    assert api.list_proxies()[PREFIX + "a"] == info
    off = api.update_proxy(PREFIX + "a", enabled=False)
    assert off.enabled is False
    on = api.enable_proxy(PREFIX + "a")
    assert on.listen == info.listen
    moved = api.update_proxy(PREFIX + "a", upstream="127.0.0.1:10")
    assert moved.upstream == "127.0.0.1:10"
    api.delete_proxy(PREFIX + "a")
    with pytest.raises(ToxiproxyError) as err:
        api.get_proxy(PREFIX + "a")
    assert (err.value.status, err.value.message) == (404, "proxy not found")


def test_errors_carry_status_and_message(api: ToxiproxyClient) -> None:
    api.create_proxy(PREFIX + "e", "127.0.0.1:0", UPSTREAM)
    with pytest.raises(ToxiproxyError) as err:
        api.create_proxy(PREFIX + "e", "127.0.0.1:0", UPSTREAM)
    assert err.value.status == 409
    assert isinstance(err.value, InfrastructureError)
    assert "proxy already exists" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ToxiproxyError) as err:
        api.add_toxic(PREFIX + "e", "latency", {"latency": 1}, stream="sideways")
    assert err.value.status == 400
    with pytest.raises(ToxiproxyError) as err:
        api.remove_toxic(PREFIX + "e", "nope")
    assert (err.value.status, err.value.message) == (404, "toxic not found")


def test_toxics(api: ToxiproxyClient) -> None:
    api.create_proxy(PREFIX + "t", "127.0.0.1:0", UPSTREAM)
    toxic = api.add_toxic(PREFIX + "t", "latency", {"latency": 100.0, "jitter": 10})
    assert toxic == ToxicInfo(
        "latency_downstream", "latency", "downstream", 1.0, {"latency": 100, "jitter": 10}
    )
    up = api.add_toxic(
        PREFIX + "t", "limit_data", {"bytes": 5}, name="lim", stream="upstream", toxicity=0.5
    )
    assert (up.name, up.stream, up.toxicity) == ("lim", "upstream", 0.5)
    assert [t.name for t in api.list_toxics(PREFIX + "t")] == ["lim", "latency_downstream"]
    updated = api.update_toxic(PREFIX + "t", "latency_downstream", {"latency": 5})
    assert updated.attributes == {"latency": 5, "jitter": 10}
    assert api.update_toxic(PREFIX + "t", "lim", toxicity=1.0).toxicity == 1.0
    assert api.get_toxic(PREFIX + "t", "lim").attributes == {"bytes": 5}
    assert api.get_proxy(PREFIX + "t").toxics[0].name == "lim"
    api.remove_toxic(PREFIX + "t", "lim")
    api.reset()
    assert api.list_toxics(PREFIX + "t") == []


def test_client_refuses_bad_attributes_before_sending(api: ToxiproxyClient) -> None:
    for attrs in ({"latency": 1.5}, {"latency": True}, {"latency": "5"}):
        with pytest.raises(ValueError):
            api.add_toxic(PREFIX + "never", "latency", attrs)
    with pytest.raises(ValueError):
        api.add_toxic(PREFIX + "never", "bandwidth", {"rate": 0})
    with pytest.raises(ValueError):
        api.add_toxic(PREFIX + "never", "slicer", {"average_size": 8, "size_variation": 8})
    with pytest.raises(ValueError):
        api.update_toxic(PREFIX + "never", "x", {"rate": -1})


def test_update_is_checked_against_the_whole_toxic(api: ToxiproxyClient) -> None:
    api.create_proxy(PREFIX + "slice", "127.0.0.1:0", "127.0.0.1:9")
    try:
        api.add_toxic(PREFIX + "slice", "slicer", {"average_size": 8, "size_variation": 2},
                      name="s")
        # size_variation alone looks fine; with the toxic's average_size (8) it would panic
        # a real Toxiproxy (#541): refused before sending.
        with pytest.raises(ValueError, match="size_variation"):
            api.update_toxic(PREFIX + "slice", "s", {"size_variation": 8})
        assert api.update_toxic(PREFIX + "slice", "s", {"size_variation": 7}).attributes[
            "size_variation"
        ] == 7
    finally:
        api.delete_proxy(PREFIX + "slice")


def test_populate_and_version(api: ToxiproxyClient) -> None:
    created = api.populate(
        [
            {"name": PREFIX + "p1", "listen": "127.0.0.1:0", "upstream": UPSTREAM},
            ProxyInfo(PREFIX + "p2", "127.0.0.1:0", UPSTREAM, enabled=False),
        ]
    )
    assert [(p.name, p.enabled) for p in created] == [(PREFIX + "p1", True), (PREFIX + "p2", False)]
    with pytest.raises(ToxiproxyError) as err:
        api.populate([{"name": PREFIX + "p3"}])
    assert err.value.status == 400
    assert err.value.message == "missing required field: upstream at proxy 1"
    assert api.populate([]) == []
    assert api.version()
    assert api.ping() is True


def test_unreachable_server_is_a_clear_error() -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    client = ToxiproxyClient(f"http://127.0.0.1:{port}", timeout=1.0)
    with pytest.raises(ToxiproxyError) as err:
        client.list_proxies()
    assert err.value.status == 0
    assert client.ping() is False


def test_hung_server_times_out() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:  # accepts (backlog), never answers
        client = ToxiproxyClient(f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=0.3)
        start = time.monotonic()
        with pytest.raises(ToxiproxyError):
            client.version()
        assert time.monotonic() - start < 2.0


@pytest.mark.parametrize(
    "body,expected",
    [
        (b'{"version": "2.12.0"}\n', "2.12.0"),
        (b"2.1.4", "2.1.4"),
        (b'{"version": "2.6.0"}\\n', "2.6.0"),
        (b'{"version": "git"}\n', "git"),
    ],
)
def test_parse_version_accepts_every_server_format(body: bytes, expected: str) -> None:
    assert parse_version(body) == expected
