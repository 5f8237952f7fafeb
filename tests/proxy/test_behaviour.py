"""Behaviour of proxies and toxics on real sockets (embedded server only), mirroring the bounds
of Toxiproxy's own tests (spec §4 and §6). Upstreams are small threaded servers on 127.0.0.1.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from typing import Any

import pytest

from celery_chaos.faults.proxy import ProxyServer, ToxiproxyClient
from celery_chaos.faults.proxy.link import Sink

from .servers import (
    TcpServer,
    blast,
    can_connect,
    connect,
    pattern,
    record,
    recv_all,
    recv_exactly,
)

pytestmark = pytest.mark.timeout(20)


def make_proxy(client: ToxiproxyClient, upstream: TcpServer, name: str = "p") -> int:
    return client.create_proxy(name, "127.0.0.1:0", upstream.address).listen_port


def round_trip(sock: socket.socket, payload: bytes) -> float:
    start = time.perf_counter()
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload
    return time.perf_counter() - start


def request_blast(sock: socket.socket, size: int) -> None:
    sock.sendall(size.to_bytes(4, "big"))


def added_delay(
    direct_port: int, proxied_port: int, payload: bytes, samples: int = 7
) -> tuple[float, list[float]]:
    """Median of (proxied - direct) round trips, and the proxied round trips.

    Taken in turns on two connections, so both see the same load, and as a median, so the
    odd sample a loaded 2-core box delays does not decide the outcome.
    """
    excess, proxied = [], []
    with connect(direct_port) as direct, connect(proxied_port) as via_proxy:
        for _ in range(samples):
            base = round_trip(direct, payload)
            took = round_trip(via_proxy, payload)
            proxied.append(took)
            excess.append(took - base)
    return statistics.median(excess), proxied


# --------------------------------------------------------------------------- plain proxying


def test_passthrough(client: ToxiproxyClient, echo_server: TcpServer) -> None:
    port = make_proxy(client, echo_server)
    with connect(port) as sock:
        round_trip(sock, b"hello world")
        big = pattern(64 * 1024)
        sock.sendall(big)
        assert recv_exactly(sock, len(big)) == big
        sock.sendall(b"two ")
        sock.sendall(b"writes")
        assert recv_exactly(sock, 10) == b"two writes"


def test_proxy_overhead_is_small(client: ToxiproxyClient, echo_server: TcpServer) -> None:
    port = make_proxy(client, echo_server)
    payload = b"x" * 200
    with connect(echo_server.port) as direct, connect(port) as proxied:
        for _ in range(50):
            round_trip(direct, payload)
            round_trip(proxied, payload)
        d = sorted(round_trip(direct, payload) for _ in range(300))[150]
        p = sorted(round_trip(proxied, payload) for _ in range(300))[150]
    assert (p - d) / 2 < 0.002  # relaxed from Toxiproxy's 300 us per one-way hop


def test_proxied_sockets_disable_nagle(
    client: ToxiproxyClient, echo_server: TcpServer, embedded_server: ProxyServer
) -> None:
    """Like Go: with Nagle on, a write right after another waits for the peer's delayed ACK."""
    port = make_proxy(client, echo_server)
    assert embedded_server.collection is not None
    proxy = embedded_server.collection.proxies["p"]
    with connect(port) as sock:
        round_trip(sock, b"x")
        (conn,) = proxy.connections
        for side in (conn.client, conn.upstream):
            assert side is not None and side.transport is not None
            raw = side.transport.get_extra_info("socket")
            assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), side.role


def test_upstream_down_accepts_then_eof(client: ToxiproxyClient) -> None:
    dead = socket.create_server(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()
    port = client.create_proxy("p", "127.0.0.1:0", f"127.0.0.1:{dead_port}").listen_port
    start = time.monotonic()
    with connect(port) as sock:
        assert sock.recv(10) == b""
    assert time.monotonic() - start < 0.5


def test_client_half_close_closes_both_sides(
    client: ToxiproxyClient, echo_server: TcpServer
) -> None:
    port = make_proxy(client, echo_server)
    with connect(port) as sock:
        round_trip(sock, b"ping")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(10) == b""  # no half-close: the proxy closes the client too
    assert echo_server.wait_eofs(1)


def test_upstream_close_reaches_client_after_data(
    client: ToxiproxyClient, blast_server: TcpServer
) -> None:
    port = make_proxy(client, blast_server)
    with connect(port) as sock:
        request_blast(sock, 100_000)
        assert recv_all(sock) == pattern(100_000)


def test_closed_connections_are_forgotten(
    client: ToxiproxyClient, echo_server: TcpServer, embedded_server: ProxyServer
) -> None:
    port = make_proxy(client, echo_server)
    client.add_toxic("p", "latency", {"latency": 5}, stream="upstream")
    client.add_toxic("p", "slicer", {"average_size": 10, "size_variation": 2})
    assert embedded_server.collection is not None
    proxy = embedded_server.collection.proxies["p"]
    socks = [connect(port) for _ in range(30)]
    for sock in socks:
        round_trip(sock, b"y" * 50)
    assert len(proxy.connections) == 30
    for i, sock in enumerate(socks):
        if i % 2:
            sock.shutdown(socket.SHUT_WR)
        sock.close()
    assert echo_server.wait_eofs(30)
    deadline = time.monotonic() + 2
    while proxy.connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not proxy.connections


# --------------------------------------------------------------------------- enable / disable


def test_disable_refuses_and_closes_then_enable_rebinds(
    client: ToxiproxyClient, echo_server: TcpServer
) -> None:
    port = make_proxy(client, echo_server)
    sock = connect(port)
    round_trip(sock, b"before")
    info = client.disable_proxy("p")
    assert info.enabled is False
    assert sock.recv(10) == b""  # existing connection closed
    sock.close()
    assert echo_server.wait_eofs(1)
    assert not can_connect(port)  # new connections refused
    info = client.enable_proxy("p")
    assert info.listen_port == port
    with connect(port) as again:
        round_trip(again, b"after")


def test_down_context_and_delete(client: ToxiproxyClient, echo_server: TcpServer) -> None:
    port = make_proxy(client, echo_server)
    with client.down("p"):
        assert not can_connect(port)
    assert can_connect(port)
    sock = connect(port)
    round_trip(sock, b"x")
    client.delete_proxy("p")
    assert sock.recv(10) == b""
    sock.close()
    assert not can_connect(port)


def test_update_upstream_drops_connections(client: ToxiproxyClient, echo_server: TcpServer) -> None:
    other = TcpServer(blast)
    try:
        port = make_proxy(client, echo_server)
        with connect(port) as sock:
            round_trip(sock, b"x")
            info = client.update_proxy("p", upstream=other.address)
            assert info.listen_port == port and info.enabled
            assert sock.recv(10) == b""
        with connect(port) as sock:
            request_blast(sock, 10)
            assert recv_all(sock) == pattern(10)
    finally:
        other.close()


def test_update_same_address_other_spelling_keeps_connection(
    client: ToxiproxyClient, echo_server: TcpServer
) -> None:
    port = make_proxy(client, echo_server)
    with connect(port) as sock:
        round_trip(sock, b"x")
        client.update_proxy("p", listen=f"localhost:{port}")
        round_trip(sock, b"still here")


# --------------------------------------------------------------------------- latency


def test_latency_downstream_on_large_message(
    client: ToxiproxyClient, echo_server: TcpServer
) -> None:
    """Toxiproxy's bound: one way within latency +- (jitter + 10 ms); never early."""
    port = make_proxy(client, echo_server)
    client.add_toxic("p", "latency", {"latency": 100, "jitter": 10})
    payload = pattern(48 * 1024)  # more than one 32 KiB chunk: latency is not multiplied
    excess, proxied = added_delay(echo_server.port, port, payload)
    assert abs(excess - 0.100) <= 0.010 + 0.010, (excess, proxied)
    assert min(proxied) >= 0.100 - 0.010, proxied


def test_latency_both_directions_add_up(client: ToxiproxyClient, echo_server: TcpServer) -> None:
    """Toxiproxy's bound: a round trip within up + down +- (jitter up + jitter down + 20 ms)."""
    port = make_proxy(client, echo_server)
    client.add_toxic("p", "latency", {"latency": 60}, stream="upstream")
    client.add_toxic("p", "latency", {"latency": 40}, stream="downstream")
    client.add_toxic("p", "latency", {"latency": 50}, name="second", stream="downstream")
    excess, proxied = added_delay(echo_server.port, port, b"ping")
    assert abs(excess - 0.150) <= 0.020, (excess, proxied)
    # per sample only Toxiproxy's lower bound: like Go, a chained latency toxic counts from the
    # timestamp the one before moved forward by its sleep, so a late pick-up shortens the sum
    assert min(proxied) >= 0.150 - 0.020, proxied


def test_latency_is_pipelined(client: ToxiproxyClient, echo_server: TcpServer) -> None:
    port = make_proxy(client, echo_server)
    client.add_toxic("p", "latency", {"latency": 100})
    with connect(port) as sock:
        start = time.perf_counter()
        for i in range(10):
            sock.sendall(b"%02d" % i)
            time.sleep(0.01)
        assert recv_exactly(sock, 20) == b"".join(b"%02d" % i for i in range(10))
        elapsed = time.perf_counter() - start
    assert elapsed < 0.100 + 0.100 + 0.050  # 10 x 100 ms would be a second


def test_toxic_added_to_live_connection_applies_at_once(
    client: ToxiproxyClient, echo_server: TcpServer
) -> None:
    port = make_proxy(client, echo_server)
    with connect(port) as sock:
        assert round_trip(sock, b"a") < 0.05
        client.add_toxic("p", "latency", {"latency": 150})
        assert round_trip(sock, b"b") >= 0.140
        client.update_toxic("p", "latency_downstream", {"latency": 10})
        assert round_trip(sock, b"c") < 0.100
        client.remove_toxic("p", "latency_downstream")
        assert round_trip(sock, b"d") < 0.05


def test_removing_latency_flushes_held_data_in_order(
    client: ToxiproxyClient, echo_server: TcpServer
) -> None:
    port = make_proxy(client, echo_server)
    with connect(port) as sock:
        client.add_toxic("p", "latency", {"latency": 5000})
        sock.sendall(b"held")
        time.sleep(0.05)
        start = time.perf_counter()
        client.remove_toxic("p", "latency_downstream")
        assert recv_exactly(sock, 4) == b"held"
        assert time.perf_counter() - start < 0.5


def test_toxicity_zero_never_applies(client: ToxiproxyClient, echo_server: TcpServer) -> None:
    port = make_proxy(client, echo_server)
    client.add_toxic("p", "latency", {"latency": 1000}, toxicity=0.0)
    client.add_toxic("p", "timeout", {"timeout": 0}, toxicity=0.0, stream="upstream")
    for _ in range(5):
        with connect(port) as sock:
            assert round_trip(sock, b"fast") < 0.2


def test_toxicity_one_always_applies(client: ToxiproxyClient, echo_server: TcpServer) -> None:
    port = make_proxy(client, echo_server)
    client.add_toxic("p", "latency", {"latency": 50}, toxicity=1.0)
    for _ in range(3):
        with connect(port) as sock:
            assert round_trip(sock, b"slow") >= 0.045


def test_no_data_dropped_while_toxics_change(
    client: ToxiproxyClient, echo_server: TcpServer
) -> None:
    port = make_proxy(client, echo_server)
    total = 20_000
    received = bytearray()
    expected = b"".join(i.to_bytes(2, "big") for i in range(total))
    with connect(port, timeout=10) as sock:

        def reader() -> None:
            while len(received) < len(expected):
                chunk = sock.recv(65536)
                if not chunk:
                    return
                received.extend(chunk)

        thread = threading.Thread(target=reader)
        thread.start()
        for i in range(total):
            sock.sendall(i.to_bytes(2, "big"))
            if i % 2000 == 0:
                client.add_toxic(
                    "p",
                    "latency",
                    {"latency": 30},
                    name=f"l{i}",
                    stream="upstream" if i % 4000 else "downstream",
                )
                client.add_toxic("p", "noop", name=f"n{i}")
            if i % 2000 == 1000:
                for toxic in client.list_toxics("p"):
                    client.remove_toxic("p", toxic.name)
        client.reset()
        thread.join(10)
    assert bytes(received) == expected


def test_echoes_pass_while_toxics_are_added_and_removed(
    client: ToxiproxyClient, echo_server: TcpServer
) -> None:
    port = make_proxy(client, echo_server)
    stop = threading.Event()

    def churn() -> None:
        n = 0
        while not stop.is_set():
            client.add_toxic(
                "p", "noop", name=f"n{n}", stream="upstream" if n % 2 else "downstream"
            )
            client.remove_toxic("p", f"n{n}")
            n += 1

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        with connect(port) as sock:
            for i in range(100):
                round_trip(sock, b"echo %d" % i)
    finally:
        stop.set()
        thread.join(5)


# --------------------------------------------------------------------------- bandwidth


def test_bandwidth_rate(client: ToxiproxyClient, blast_server: TcpServer) -> None:
    port = make_proxy(client, blast_server)
    client.add_toxic("p", "bandwidth", {"rate": 1000})  # 1000 KB/s
    with connect(port) as sock:
        start = time.perf_counter()
        request_blast(sock, 480_000)
        assert recv_all(sock) == pattern(480_000)
        elapsed = time.perf_counter() - start
    assert abs(elapsed - 0.480) <= 0.480 * 0.05  # Toxiproxy: 10 ms; relaxed for asyncio


def test_bandwidth_removal_under_load_does_not_hang(
    client: ToxiproxyClient, blast_server: TcpServer
) -> None:
    port = make_proxy(client, blast_server)
    client.add_toxic("p", "bandwidth", {"rate": 1})
    with connect(port) as sock:
        request_blast(sock, 2_000_000)
        time.sleep(0.2)
        start = time.perf_counter()
        client.remove_toxic("p", "bandwidth_downstream")
        assert time.perf_counter() - start < 1.0
        assert recv_all(sock) == pattern(2_000_000)


# --------------------------------------------------------------------------- timeout


def test_timeout_zero_drops_data_until_removed_then_closes(
    client: ToxiproxyClient, echo_server: TcpServer
) -> None:
    port = make_proxy(client, echo_server)
    with connect(port) as sock:
        round_trip(sock, b"ok")
        client.add_toxic("p", "timeout", {"timeout": 0})
        sock.sendall(b"dropped")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(10)  # the echo is dropped and the connection stays open
        sock.settimeout(2)
        start = time.perf_counter()
        client.remove_toxic("p", "timeout_downstream")
        assert sock.recv(10) == b""  # removal closes the connection; nothing is replayed
        assert time.perf_counter() - start < 1.0
    assert echo_server.wait_eofs(1, timeout=1.0)


def test_timeout_closes_after_inactivity(client: ToxiproxyClient, echo_server: TcpServer) -> None:
    """Toxiproxy's bound: after a 1-byte write, EOF within 150 ms of a 100 ms timeout.

    The timer re-arms on the byte, so EOF never comes sooner than 100 ms after the write. The
    median of five connections decides the upper bound, as one sample can be delayed by load.
    """
    port = make_proxy(client, echo_server)
    elapsed = []
    for _ in range(5):
        with connect(port) as sock:
            round_trip(sock, b"ok")  # the links are up
            client.add_toxic("p", "timeout", {"timeout": 100}, stream="upstream")
            start = time.perf_counter()
            sock.sendall(b"x")
            assert sock.recv(10) == b""
            elapsed.append(time.perf_counter() - start)
        client.remove_toxic("p", "timeout_upstream")
    assert statistics.median(elapsed) <= 0.150, elapsed
    assert min(elapsed) >= 0.100, elapsed


def test_reset_closes_timeout_connections(client: ToxiproxyClient, echo_server: TcpServer) -> None:
    port = make_proxy(client, echo_server)
    client.add_toxic("p", "timeout", {"timeout": 0}, toxicity=0.0)
    with connect(port) as sock:
        round_trip(sock, b"passes")  # toxicity 0: pass-through
        client.reset()
        assert sock.recv(10) == b""  # removal closes even pass-through links


def test_removing_latency_before_timeout_zero_does_not_hang(
    client: ToxiproxyClient, echo_server: TcpServer
) -> None:
    port = make_proxy(client, echo_server)
    client.add_toxic("p", "latency", {"latency": 1000}, stream="upstream")
    client.add_toxic("p", "timeout", {"timeout": 0}, stream="upstream")
    with connect(port) as sock:
        sock.sendall(b"x" * 1000)
        time.sleep(0.05)
        start = time.perf_counter()
        client.remove_toxic("p", "latency_upstream")
        assert time.perf_counter() - start < 1.0


# --------------------------------------------------------------------------- reset_peer


@pytest.mark.parametrize("stream", ["downstream", "upstream"])
def test_reset_peer_gives_econnreset(
    client: ToxiproxyClient, echo_server: TcpServer, stream: str
) -> None:
    port = make_proxy(client, echo_server)
    client.add_toxic("p", "reset_peer", {"timeout": 100}, stream=stream)
    with connect(port) as sock:
        start = time.perf_counter()
        sock.sendall(b"hello")
        with pytest.raises(ConnectionResetError):
            sock.recv(10)
        elapsed = time.perf_counter() - start
        assert sock.recv(10) == b""
    assert abs(elapsed - 0.100) <= 0.110


def test_reset_peer_on_existing_connection_is_a_plain_close(
    client: ToxiproxyClient, echo_server: TcpServer
) -> None:
    port = make_proxy(client, echo_server)
    with connect(port) as sock:
        round_trip(sock, b"x")
        client.add_toxic("p", "reset_peer", {"timeout": 0})
        sock.sendall(b"y")
        assert sock.recv(10) == b""  # FIN, not RST: SO_LINGER is set only at link start


# --------------------------------------------------------------------------- limit_data


def test_limit_data_truncates_and_closes(client: ToxiproxyClient, echo_server: TcpServer) -> None:
    port = make_proxy(client, echo_server)
    client.add_toxic("p", "limit_data", {"bytes": 100})
    with connect(port) as sock:
        sock.sendall(pattern(150))
        assert recv_all(sock) == pattern(100)
    with connect(port) as sock:
        for _ in range(4):
            sock.sendall(pattern(25))
            time.sleep(0.02)
        assert recv_all(sock) == pattern(25) * 4


def test_limit_data_upstream_closes_both_sides(client: ToxiproxyClient) -> None:
    recorder = TcpServer(record)
    try:
        port = make_proxy(client, recorder)
        client.add_toxic("p", "limit_data", {"bytes": 100}, stream="upstream")
        with connect(port) as sock:
            sock.sendall(pattern(90))
            time.sleep(0.05)
            sock.sendall(pattern(20))
            assert sock.recv(10) == b""
        assert recorder.wait_eofs(1)
        assert bytes(recorder.received) == pattern(90) + pattern(10)
    finally:
        recorder.close()


def test_limit_data_count_survives_updates(client: ToxiproxyClient, echo_server: TcpServer) -> None:
    port = make_proxy(client, echo_server)
    client.add_toxic("p", "limit_data", {"bytes": 10})
    with connect(port) as sock:
        round_trip(sock, b"123456")
        client.update_toxic("p", "limit_data_downstream", {"bytes": 12})
        sock.sendall(b"abcdefgh")
        assert recv_all(sock) == b"abcdef"


def test_limit_data_zero_closes_on_first_data(
    client: ToxiproxyClient, echo_server: TcpServer
) -> None:
    port = make_proxy(client, echo_server)
    client.add_toxic("p", "limit_data", {"bytes": 0}, stream="upstream")
    with connect(port) as sock:
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv(10)  # idle: not closed yet
        sock.settimeout(2)
        sock.sendall(b"x")
        assert sock.recv(10) == b""


# --------------------------------------------------------------------------- slicer, slow_close


def test_slicer_splits_and_reassembles(
    client: ToxiproxyClient, echo_server: TcpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Toxiproxy's bound: average_size 1, size_variation 0 on 24 B gives exactly 24 writes.

    Counted as Toxiproxy's test does, at the toxic's output (here: what the link writes to the
    client socket). The client's own reads cannot count them: slices that arrive while the
    reader is descheduled, even for a few ms, come out of one recv().
    """
    writes: list[bytes] = []
    push = Sink.push

    def recording_push(sink: Sink, item: Any) -> None:
        if item is not None and sink.link.direction == "downstream":
            writes.append(item.data)
        push(sink, item)

    monkeypatch.setattr(Sink, "push", recording_push)
    port = make_proxy(client, echo_server)
    client.add_toxic("p", "slicer", {"average_size": 1, "size_variation": 0, "delay": 10})
    payload = pattern(24)
    with connect(port) as sock:
        sock.sendall(payload)
        assert recv_exactly(sock, 24) == payload
    assert writes == [payload[i : i + 1] for i in range(24)]


def test_slicer_large_payload(client: ToxiproxyClient, echo_server: TcpServer) -> None:
    port = make_proxy(client, echo_server)
    client.add_toxic("p", "slicer", {"average_size": 1024, "size_variation": 512, "delay": 10})
    payload = pattern(480_000)
    with connect(port) as sock:
        received = bytearray()
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        while len(received) < len(payload):
            received.extend(sock.recv(65536))
        sender.join()
    assert bytes(received) == payload


def test_slow_close_delays_eof(client: ToxiproxyClient, blast_server: TcpServer) -> None:
    port = make_proxy(client, blast_server)
    client.add_toxic("p", "slow_close", {"delay": 300})
    with connect(port) as sock:
        request_blast(sock, 10)
        assert recv_exactly(sock, 10) == pattern(10)
        start = time.perf_counter()
        assert sock.recv(10) == b""
        elapsed = time.perf_counter() - start
    assert 0.280 <= elapsed <= 0.300 + 0.100


def test_bytes_read_before_upstream_connects_are_kept(
    client: ToxiproxyClient, echo_server: TcpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Debian 12's Python 3.11.2 reads a new socket once even though the protocol paused it in
    connection_made: bytes that arrive before the upstream connection is up reach it later
    (they were dropped, and a client's first message with them: seen in the compose image)."""
    from celery_chaos.faults.proxy import link

    made = link.Connection.side_made

    def side_made_without_pause(self: link.Connection, side: link.Side) -> None:
        if side is self.client:
            assert side.transport is not None
            side.transport.pause_reading = lambda: None  # type: ignore[method-assign]
        made(self, side)

    monkeypatch.setattr(link.Connection, "side_made", side_made_without_pause)
    port = make_proxy(client, echo_server)
    for _ in range(5):
        with connect(port) as sock:
            sock.sendall(b"first message")  # at once: before the upstream dial completes
            assert recv_exactly(sock, 13) == b"first message"
