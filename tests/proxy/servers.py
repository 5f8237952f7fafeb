"""Small blocking TCP servers and client helpers on 127.0.0.1 for the proxy tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

Handler = Callable[[socket.socket, "TcpServer"], None]


class TcpServer:
    """A threaded TCP server on 127.0.0.1 that runs ``handler(conn, server)`` per connection.

    ``eofs`` counts connections whose peer closed (the handler saw EOF or an error).
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.eofs = 0
        self.received = bytearray()  # what ``record`` handlers got
        self.accepted = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.accepted += 1
                self._conns.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self.handler(conn, self)
        except OSError:
            pass
        finally:
            with self._lock:
                self.eofs += 1
            with contextlib.suppress(OSError):
                conn.close()

    def wait_eofs(self, count: int, timeout: float = 2.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.eofs >= count:
                return True
            time.sleep(0.005)
        return self.eofs >= count

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.close()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.close()


def echo(conn: socket.socket, server: TcpServer) -> None:
    """Send back everything received until EOF."""
    while True:
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)


def record(conn: socket.socket, server: TcpServer) -> None:
    """Keep everything received in ``server.received``; send nothing."""
    while True:
        data = conn.recv(65536)
        if not data:
            return
        server.received.extend(data)


def blast(conn: socket.socket, server: TcpServer) -> None:
    """Read a 4-byte big-endian length, send that many bytes (a counter pattern), then close."""
    size = int.from_bytes(recv_exactly(conn, 4), "big")
    conn.sendall(pattern(size))


def pattern(size: int) -> bytes:
    """``size`` bytes of a repeating 0..250 counter (cheap to build, easy to check)."""
    return (bytes(range(251)) * (size // 251 + 1))[:size]


def connect(port: int, timeout: float = 3.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {size} bytes")
        buf += chunk
    return bytes(buf)


def recv_all(sock: socket.socket) -> bytes:
    """Read until EOF."""
    buf = bytearray()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return bytes(buf)
        buf += chunk


def can_connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False
