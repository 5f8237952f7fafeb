"""The relay thread (a link's fast path while it has no toxic) and the hand-over to the toxic path.

The contract and behaviour suites already run through the relay (every proxy starts without
toxics); these tests pin what is particular to it: which links use it, that bytes it holds are
neither lost nor reordered when a toxic arrives, and how it ends (EOF, read and write errors).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from celery_chaos.faults.proxy import ProxyServer, ToxiproxyClient
from celery_chaos.faults.proxy import relay as relays
from celery_chaos.faults.proxy.link import Connection

from .servers import TcpServer, connect, pattern, recv_exactly

pytestmark = [
    pytest.mark.timeout(20),
    pytest.mark.skipif(not relays.AVAILABLE, reason="no splice/eventfd: links stay on asyncio"),
]


def wait_for(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def the_connection(server: ProxyServer, name: str = "p") -> Connection:
    assert server.collection is not None
    assert wait_for(lambda: len(server.collection.proxies[name].connections) == 1)  # type: ignore[union-attr]
    (conn,) = server.collection.proxies[name].connections
    return conn


def relaying(conn: Connection) -> dict[str, bool]:
    return {direction: link.relay is not None for direction, link in conn.links.items()}


def round_trip(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload


# --------------------------------------------------------------------------- through the proxy


def test_links_relay_until_a_toxic_and_again_after_it(
    client: ToxiproxyClient, echo_server: TcpServer, embedded_server: ProxyServer
) -> None:
    port = client.create_proxy("p", "127.0.0.1:0", echo_server.address).listen_port
    with connect(port) as sock:
        round_trip(sock, b"hello")
        conn = the_connection(embedded_server)
        assert wait_for(lambda: relaying(conn) == {"upstream": True, "downstream": True})
        client.add_toxic("p", "latency", {"latency": 30}, name="lat")  # downstream
        assert wait_for(lambda: relaying(conn) == {"upstream": True, "downstream": False})
        start = time.perf_counter()
        round_trip(sock, b"slow")
        assert time.perf_counter() - start >= 0.029
        client.remove_toxic("p", "lat")
        round_trip(sock, b"fast again")  # the relay is back at once or after a write
        assert wait_for(lambda: relaying(conn) == {"upstream": True, "downstream": True})
        round_trip(sock, b"x" * 100_000)


def test_new_connections_with_a_toxic_relay_only_the_clean_direction(
    client: ToxiproxyClient, echo_server: TcpServer, embedded_server: ProxyServer
) -> None:
    port = client.create_proxy("p", "127.0.0.1:0", echo_server.address).listen_port
    client.add_toxic("p", "noop", stream="upstream")
    with connect(port) as sock:
        round_trip(sock, b"hello")
        conn = the_connection(embedded_server)
        assert wait_for(lambda: relaying(conn) == {"upstream": False, "downstream": True})


def test_bytes_held_by_the_relay_reach_the_client_in_order_when_a_toxic_arrives(
    client: ToxiproxyClient, embedded_server: ProxyServer
) -> None:
    """The client does not read, so the relay stops with bytes in its pipe; they go first."""
    size = 48 * 1024 * 1024
    sent = threading.Event()

    def flood(conn: socket.socket, server: TcpServer) -> None:
        conn.sendall(pattern(size))
        sent.set()
        conn.recv(1)  # wait for the client to hang up

    server = TcpServer(flood)
    try:
        port = client.create_proxy("p", "127.0.0.1:0", server.address).listen_port
        with connect(port, timeout=10) as sock:
            conn = the_connection(embedded_server)
            time.sleep(0.3)  # the relay has filled the client's buffers and waits to write
            assert not sent.is_set()
            assert relaying(conn)["downstream"]
            client.add_toxic("p", "latency", {"latency": 1}, name="lat")
            assert not relaying(conn)["downstream"]
            got = bytearray(recv_exactly(sock, size // 2))
            client.remove_toxic("p", "lat")
            got += recv_exactly(sock, size - len(got))
            assert bytes(got) == pattern(size)
    finally:
        server.close()


def test_client_reset_through_the_relay_closes_the_upstream(
    client: ToxiproxyClient, echo_server: TcpServer, embedded_server: ProxyServer
) -> None:
    port = client.create_proxy("p", "127.0.0.1:0", echo_server.address).listen_port
    sock = connect(port)
    round_trip(sock, b"hello")
    conn = the_connection(embedded_server)
    assert wait_for(lambda: all(relaying(conn).values()))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST
    assert echo_server.wait_eofs(1)
    assert embedded_server.collection is not None
    assert wait_for(lambda: not embedded_server.collection.proxies["p"].connections)  # type: ignore[union-attr]


# --------------------------------------------------------------------------- the Relay alone


@pytest.fixture
def tcp_pairs() -> Iterator[Callable[[], tuple[socket.socket, socket.socket]]]:
    """Connected (peer, end) TCP socket pairs on 127.0.0.1; ``end`` is for the relay, so it is
    non-blocking, as asyncio leaves its sockets (the relay relies on it)."""
    listener = socket.create_server(("127.0.0.1", 0))
    made: list[socket.socket] = []

    def pair() -> tuple[socket.socket, socket.socket]:
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
        b.setblocking(False)
        made.extend((a, b))
        return a, b

    yield pair
    for sock in made:
        sock.close()
    listener.close()


def start_relay(src: socket.socket, dst: socket.socket) -> tuple[relays.Relay, threading.Event]:
    exited = threading.Event()
    relay = relays.Relay(src.fileno(), dst.fileno(), lambda r: exited.set(), "test-relay")
    relay.start()
    return relay, exited


def test_relay_moves_bytes_and_reports_eof(
    tcp_pairs: Callable[[], tuple[socket.socket, socket.socket]],
) -> None:
    writer, src = tcp_pairs()
    reader, dst = tcp_pairs()
    relay, exited = start_relay(src, dst)
    writer.sendall(pattern(300_000))
    assert recv_exactly(reader, 300_000) == pattern(300_000)
    writer.shutdown(socket.SHUT_WR)
    assert exited.wait(2)
    assert relay.reason == relays.EOF
    assert relay.finish() == b""


def test_relay_stop_returns_the_bytes_it_could_not_write(
    tcp_pairs: Callable[[], tuple[socket.socket, socket.socket]],
) -> None:
    writer, src = tcp_pairs()
    reader, dst = tcp_pairs()
    relay, exited = start_relay(src, dst)
    size = 48 * 1024 * 1024

    def send() -> None:
        writer.sendall(pattern(size))
        writer.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    time.sleep(0.3)  # nobody reads: the relay waits to write with bytes in its pipe
    left = relay.stop()
    assert relay.reason == relays.STOPPED and not exited.is_set()
    assert left
    src.setblocking(True)
    tail = bytearray()
    while data := src.recv(1 << 20):  # what the relay never read is still in the source
        tail += data
    sender.join(5)
    head = recv_exactly(reader, size - len(left) - len(tail))
    assert head + left + tail == pattern(size)


def test_relay_reports_read_and_write_errors(
    tcp_pairs: Callable[[], tuple[socket.socket, socket.socket]],
) -> None:
    writer, src = tcp_pairs()
    reader, dst = tcp_pairs()
    relay, exited = start_relay(src, dst)
    writer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()  # RST on the source
    assert exited.wait(2)
    assert relay.reason in (relays.READ_ERROR, relays.EOF)
    relay.finish()

    writer, src = tcp_pairs()
    reader, dst = tcp_pairs()
    relay, exited = start_relay(src, dst)
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    reader.close()  # RST on the destination
    time.sleep(0.05)
    writer.sendall(b"x" * 1000)
    assert exited.wait(2)
    assert relay.reason == relays.WRITE_ERROR
    relay.finish()
