"""The TCP data path: one :class:`Connection` per accepted client, two :class:`Link` s each.

A link carries one direction (``upstream`` = client to server, ``downstream`` = server to client).
With no toxics a link is a plain pipe: a :class:`.relay.Relay` thread splices the bytes from one
socket to the other while the event loop leaves the source alone. Where there is no relay (not
Linux, or until the destination's write buffer has drained after the last toxic left), each read
is written straight to the other transport, and flow control pauses the reader while the writer's
buffer is full. Adding a toxic, an end of stream or a socket error stops the relay first: the
bytes it holds go to the destination transport, then the loop reads the source again. With
toxics, each read becomes chunks of at most 32 KiB stamped with the loop time, which travel
through one :class:`Stub` (a task running the toxic's pipe) per toxic, in the order the toxics
were added, to a :class:`Sink` that writes the destination socket. The end of stream travels the
same way; when it reaches the sink the destination socket is closed and the other direction is
ended too (no half-close), as in Toxiproxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import socket
import struct
import threading
from collections import deque
from typing import Any, Protocol

from . import relay as relays
from .toxics import CAPACITY, DEFAULT_CAPACITY, PIPES, TIMED_OUT, Chunk, Item, Toxic, new_state

log = logging.getLogger(__name__)

CHUNK_MAX = 32 * 1024  # Go's io.Copy buffer: the largest chunk a toxic sees
DIAL_TIMEOUT = 10.0  # seconds to connect upstream before closing the client
SPIN_BELOW = 0.0015  # sleeps shorter than this spin on the loop (epoll rounds up to 1 ms)
READ_SIZE = 1024 * 1024  # bytes asked of one recv
WRITE_HIGH_WATER = 1024 * 1024
WRITE_LOW_WATER = 256 * 1024


_LOCAL = threading.local()


def _read_buffer() -> memoryview:
    """The read buffer shared by every socket of this thread's event loop.

    asyncio fills it and calls ``buffer_updated`` synchronously, which copies the bytes out, so
    one buffer per loop (thread) is enough.
    """
    view: memoryview | None = getattr(_LOCAL, "view", None)
    if view is None:
        view = _LOCAL.view = memoryview(bytearray(READ_SIZE))
    return view


class Interrupted(Exception):
    """Raised by :meth:`Stub.recv` when the stub must stop or restart its pipe."""


def _wake(fut: asyncio.Future[Any] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


def _wake_all(waiters: list[asyncio.Future[Any]]) -> None:
    for fut in waiters:
        if not fut.done():
            fut.set_result(None)


class Inlet:
    """Something a chunk can be pushed into: a stub's queue or a link's sink."""

    def push(self, item: Item) -> None:
        """Enqueue ``item``; never blocks (capacity is enforced by the producer)."""
        raise NotImplementedError

    def full(self) -> bool:
        """True when the producer should wait before pushing more."""
        raise NotImplementedError

    def add_space_waiter(self, fut: asyncio.Future[Any]) -> None:
        """Resolve ``fut`` once :meth:`full` may have become false."""
        raise NotImplementedError


class Stub(Inlet):
    """One toxic on one link: an input queue and a task running the toxic's pipe."""

    def __init__(self, link: Link, toxic: Toxic, nxt: Inlet) -> None:
        self.link = link
        self.toxic = toxic
        self.next: Inlet = nxt
        self.queue: deque[Item] = deque()
        self.capacity = CAPACITY.get(toxic.type, DEFAULT_CAPACITY)
        self.state = new_state(toxic.type)
        self.closed = False
        self.task: asyncio.Task[None] | None = None
        self._loop = link.loop
        self._interrupt = False
        self._stopping = False
        self._waiter: asyncio.Future[Any] | None = None
        self._waiting_recv = False
        self._space_waiters: list[asyncio.Future[Any]] = []

    # ----- inlet side (called by the previous stub or the source)
    def push(self, item: Item) -> None:
        self.queue.append(item)
        if self._waiting_recv:
            _wake(self._waiter)

    def full(self) -> bool:
        return len(self.queue) >= self.capacity

    def add_space_waiter(self, fut: asyncio.Future[Any]) -> None:
        self._space_waiters.append(fut)

    def wake_space_waiters(self) -> None:
        """Wake producers waiting on this stub (after an unlink they re-read their target)."""
        waiters, self._space_waiters = self._space_waiters, []
        _wake_all(waiters)

    # ----- toxic side (see toxics.StubAPI)
    def now(self) -> float:
        return self._loop.time()

    async def recv(self, timeout: float | None = None) -> Any:
        """Next chunk, None at end of stream, or TIMED_OUT; raises Interrupted."""
        if self._interrupt:
            raise Interrupted
        queue = self.queue
        if not queue:
            fut = self._loop.create_future()
            self._waiter, self._waiting_recv = fut, True
            timer = self._loop.call_later(timeout, _wake, fut) if timeout is not None else None
            try:
                await fut
            finally:
                self._waiter, self._waiting_recv = None, False
                if timer is not None:
                    timer.cancel()
            if self._interrupt:
                raise Interrupted
            if not queue:
                return TIMED_OUT
        item = queue.popleft()
        if self._space_waiters and len(queue) < self.capacity:
            self.wake_space_waiters()
        return item

    async def send(self, item: Item) -> None:
        """Forward ``item``; waits while the next stage is full, unless interrupted."""
        while True:
            nxt = self.next
            if self._interrupt or not nxt.full():
                nxt.push(item)
                return
            fut = self._loop.create_future()
            self._waiter = fut
            nxt.add_space_waiter(fut)
            try:
                await fut
            finally:
                self._waiter = None

    async def sleep(self, seconds: float) -> bool:
        """Sleep; returns False (early) if interrupted."""
        if self._interrupt:
            return False
        if seconds <= 0:
            return True
        if seconds < SPIN_BELOW:
            deadline = self._loop.time() + seconds
            while self._loop.time() < deadline:
                await asyncio.sleep(0)
                if self._interrupt:
                    return False
            return True
        fut = self._loop.create_future()
        self._waiter = fut
        # epoll rounds timeouts up to whole milliseconds: wake-ups land 0..1 ms late
        timer = self._loop.call_later(seconds, _wake, fut)
        try:
            await fut
        finally:
            timer.cancel()
            self._waiter = None
        return not self._interrupt

    async def sleep_uninterruptible(self, seconds: float) -> None:
        """Sleep that an interrupt cannot cut short (reset_peer's wait)."""
        if seconds > 0:
            await asyncio.sleep(seconds)

    def close(self) -> None:
        """End the link from this stub: pass the end-of-stream marker on and stop."""
        self.closed = True
        self.next.push(None)

    def unread(self, item: Item) -> None:
        self.queue.appendleft(item)

    # ----- control
    def start(self) -> None:
        self.task = self._loop.create_task(self._run())

    def interrupt(self) -> None:
        """Make the pipe return (forwarding what it holds); it restarts unless stopping."""
        self._interrupt = True
        _wake(self._waiter)

    async def stop(self) -> None:
        """Interrupt for good and wait for the pipe to return."""
        self._stopping = True
        self.interrupt()
        if self.task is not None and not self.task.done():
            await asyncio.wait({self.task})

    async def _run(self) -> None:
        while True:
            self._interrupt = False
            toxic = self.toxic
            pipe = PIPES[toxic.type] if random.random() < toxic.toxicity else PIPES["noop"]
            try:
                await pipe(self, toxic)
            except Interrupted:
                pass
            except Exception:  # pragma: no cover - a bug in a pipe must not kill the proxy
                log.exception("toxic %s failed; closing its link", toxic.name)
                self.close()
            if self.closed or self._stopping or not self._interrupt:
                return


class Sink(Inlet):
    """End of a link: writes chunks to the destination side; EOF closes it."""

    def __init__(self, link: Link, dst: Side) -> None:
        self.link = link
        self.dst = dst
        self.done = False

    def push(self, item: Item) -> None:
        if self.done:
            return
        if item is None:
            self.done = True
            self.link.refresh_direct()
            self.link.conn.link_finished(self.link)
        elif not self.dst.lost:
            self.dst.transport.write(item.data)  # type: ignore[union-attr]

    def full(self) -> bool:
        return self.dst.write_paused and not self.dst.lost

    def add_space_waiter(self, fut: asyncio.Future[Any]) -> None:
        if self.dst.lost or not self.dst.write_paused:
            fut.set_result(None)
        else:
            self.dst.space_waiters.append(fut)


class Side(asyncio.BufferedProtocol):
    """asyncio protocol for one socket of a connection (the client's or the upstream's).

    Reads go into one large buffer per event loop (no allocation per read, which costs more than
    the proxying itself for small messages); each read is copied out once, as ``bytes``.
    """

    def __init__(self, conn: Connection, role: str) -> None:
        self.conn = conn
        self.role = role
        self.transport: asyncio.Transport | None = None
        self.link: Link | None = None  # the link reading from this side
        self.write_paused = False
        self.space_waiters: list[asyncio.Future[Any]] = []
        self.lost = False
        self._view = _read_buffer()
        #: Bytes read before the connection had its links. The client side pauses reading in
        #: connection_made, but some Pythons (3.11.2, Debian 12's) still read once after it:
        #: those bytes wait here instead of being dropped.
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        _set_nodelay(transport)
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        self.conn.side_made(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        if self.link is None:
            self.early.append(self._view[:nbytes].tobytes())
            return
        self.deliver(self._view[:nbytes])

    def deliver(self, data: memoryview | bytes) -> None:
        """Send bytes read from this side on through its link."""
        link = self.link
        assert link is not None
        if link.direct:
            dst = link.dst
            dst.transport.write(bytes(data))  # type: ignore[union-attr]
            if dst.write_paused:
                link.pause_source()
            elif link.relay_wanted:
                link.start_relay()
        else:
            link.feed(memoryview(data) if isinstance(data, bytes) else data)

    def eof_received(self) -> bool:
        if self.link is not None:
            self.link.source_ended()
        return True  # keep the socket open until the other direction has flushed

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiters, self.space_waiters = self.space_waiters, []
        _wake_all(waiters)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.write_paused = False
        waiters, self.space_waiters = self.space_waiters, []
        _wake_all(waiters)
        self.conn.side_lost(self)


class Link:
    """One direction of a connection: source side -> stubs -> sink -> destination side."""

    def __init__(self, conn: Connection, direction: str, src: Side, dst: Side) -> None:
        self.conn = conn
        self.loop = conn.loop
        self.direction = direction
        self.src = src
        self.dst = dst
        self.sink = Sink(self, dst)
        self.stubs: list[Stub] = []
        self.head: Inlet = self.sink
        self.direct = True  # no toxics and the sink still open: write straight through
        self.ended = False  # end of stream fed in
        self.relay: relays.Relay | None = None  # the thread moving the bytes while direct
        self.relay_wanted = relays.AVAILABLE  # direct, but no relay yet: try after a write
        self._src_paused = False
        src.link = self

    def refresh_direct(self) -> None:
        self.direct = not self.stubs and not self.sink.done and not self.dst.lost
        self.relay_wanted = relays.AVAILABLE and self.direct and not self.conn.closing

    # ----- the relay thread (fast path while direct)
    def start_relay(self) -> None:
        """Hand the direction to a relay thread if it is direct and nothing is in flight."""
        src, dst = self.src.transport, self.dst.transport
        if (
            not self.relay_wanted
            or self.relay is not None
            or self.ended
            or self._src_paused
            or self.conn.closing
            or self.src.lost
            or self.dst.lost
            or src is None
            or dst is None
            or src.is_closing()
            or dst.is_closing()
        ):
            return
        if dst.get_write_buffer_size():
            return  # bytes still queued on the loop: a later write (buffer_updated) retries
        self.relay_wanted = False
        src_sock, dst_sock = src.get_extra_info("socket"), dst.get_extra_info("socket")
        if src_sock is None or dst_sock is None:
            return
        relay = relays.Relay(
            src_sock.fileno(), dst_sock.fileno(), self._relay_exited, f"relay-{self.direction}"
        )
        src.pause_reading()
        try:
            relay.start()
        except RuntimeError:  # pragma: no cover - no thread to be had: stay on the loop
            src.resume_reading()
            return
        self.relay = relay

    def stop_relay(self) -> None:
        """Stop the relay thread (if any) and continue on the asyncio path; waits for it."""
        relay = self.relay
        if relay is not None:
            self._relay_over(relay, relay.stop())

    def _relay_exited(self, relay: relays.Relay) -> None:
        """From the relay's thread: it returned on its own (end of stream or a socket error)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to do
            self.loop.call_soon_threadsafe(self._relay_returned, relay)

    def _relay_returned(self, relay: relays.Relay) -> None:
        if relay is self.relay:
            self._relay_over(relay, relay.finish())

    def _relay_over(self, relay: relays.Relay, left: bytes) -> None:
        """Continue where the relay stopped, as the asyncio path would have at that point."""
        self.relay = None
        src, dst = self.src.transport, self.dst.transport
        assert src is not None and dst is not None
        if relay.reason == relays.WRITE_ERROR:
            dst.abort()  # what a failed transport write does (the unsent bytes are lost)
        elif left and not self.dst.lost:
            dst.write(left)  # read before whatever comes next: order is kept
        if relay.reason == relays.EOF:
            self.source_ended()
        elif relay.reason == relays.READ_ERROR:
            src.abort()  # what a failed transport read does
        elif not self.src.lost:
            src.resume_reading()
            if self.dst.write_paused:
                self.pause_source()

    # ----- data in
    def feed(self, data: memoryview) -> None:
        """Queue data read from the source into the chain as chunks of at most 32 KiB."""
        if self.ended or self.sink.done:
            return
        now = self.loop.time()
        head = self.head
        for i in range(0, len(data), CHUNK_MAX):
            head.push(Chunk(data[i : i + CHUNK_MAX].tobytes(), now))
        if head.full():
            self.pause_source()

    def source_ended(self) -> None:
        """The source hit EOF or an error: send the end-of-stream marker down the chain."""
        self.stop_relay()
        if not self.ended:
            self.ended = True
            self.head.push(None)

    # ----- flow control
    def pause_source(self) -> None:
        if self._src_paused or self.src.lost:
            return
        self._src_paused = True
        self.src.transport.pause_reading()  # type: ignore[union-attr]
        self._wait_for_space()

    def _wait_for_space(self) -> None:
        fut = self.loop.create_future()
        fut.add_done_callback(self._on_space)
        self.head.add_space_waiter(fut)

    def _on_space(self, _fut: asyncio.Future[Any]) -> None:
        if not self._src_paused:
            return
        if self.head.full() and not self.conn.closed:
            self._wait_for_space()
            return
        self._src_paused = False
        if not self.src.lost and self.src.transport is not None:
            self.src.transport.resume_reading()

    # ----- chain changes
    def add_toxic(self, toxic: Toxic, restart_previous: bool = True) -> None:
        """Append a stub for ``toxic``; the previous last stub restarts (Toxiproxy does)."""
        self.stop_relay()
        if self.sink.done:
            return
        stub = Stub(self, toxic, self.sink)
        if self.stubs:
            prev = self.stubs[-1]
            prev.next = stub
            if restart_previous:
                prev.interrupt()
        else:
            self.head = stub
        self.stubs.append(stub)
        self.refresh_direct()
        stub.start()

    def find(self, toxic: Toxic) -> Stub | None:
        for stub in self.stubs:
            if stub.toxic is toxic:
                return stub
        return None

    def update_toxic(self, toxic: Toxic) -> None:
        """Restart the toxic's stub so it picks up new settings (and rolls toxicity again)."""
        stub = self.find(toxic)
        if stub is not None:
            stub.interrupt()

    async def remove_toxic(self, toxic: Toxic) -> None:
        """Flush the stub's queue onward, unlink it; a timeout toxic closes the link instead."""
        stub = self.find(toxic)
        if stub is None:
            return
        await stub.stop()
        if stub not in self.stubs:  # pragma: no cover - removed concurrently
            return
        index = self.stubs.index(stub)
        nxt = stub.next
        items = list(stub.queue)
        stub.queue.clear()
        if stub.closed:
            items = []
        elif toxic.type == "timeout":
            items = [None]  # Toxiproxy's cleanup hook: close the link, dropped data is gone
            stub.closed = True
        for item in items:
            nxt.push(item)
        if index > 0:
            prev = self.stubs[index - 1]
            prev.next = nxt
            prev.interrupt()
        else:
            self.head = nxt
        del self.stubs[index]
        self.refresh_direct()
        stub.wake_space_waiters()
        self.start_relay()

    def cancel(self) -> None:
        self.stop_relay()
        for stub in self.stubs:
            if stub.task is not None:
                stub.task.cancel()


def _set_nodelay(transport: asyncio.Transport) -> None:
    """Disable Nagle, as Go does on every TCP connection.

    asyncio only does it for sockets created with ``proto=IPPROTO_TCP``; accepted sockets inherit
    the listener's ``proto=0``, so without this a write that follows another one within the
    peer's delayed ACK (40 ms) waits for that ACK (a 48 KiB message behind a latency toxic
    arrived 40 ms late, and slicer pieces were merged).
    """
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _set_linger_zero(transport: asyncio.Transport | None) -> None:
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class Toxics(Protocol):
    """A proxy's toxics, as a connection reads them."""

    def all(self) -> list[Toxic]: ...
    def chain(self, direction: str) -> list[Toxic]: ...


class Proxy(Protocol):
    """What a connection needs of its proxy (:class:`.proxies.Proxy`)."""

    name: str
    upstream: str
    connections: set[Connection]

    @property
    def toxics(self) -> Toxics: ...


class Connection:
    """A client connection and its upstream connection, joined by two links."""

    def __init__(self, proxy: Proxy, loop: asyncio.AbstractEventLoop) -> None:
        self.proxy = proxy
        self.loop = loop
        self.client = Side(self, "client")
        self.upstream: Side | None = None
        self.links: dict[str, Link] = {}
        self.closed = False
        self.closing = False  # a side ended: no relay starts any more
        self._dial: asyncio.Task[None] | None = None

    # ----- lifecycle
    def side_made(self, side: Side) -> None:
        if side is self.client:
            assert side.transport is not None
            side.transport.pause_reading()
            self.proxy.connections.add(self)
            self._dial = self.loop.create_task(self._connect_upstream())
        else:
            self._start_links()

    async def _connect_upstream(self) -> None:
        host, port = split_host_port(self.proxy.upstream)
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: self._new_upstream_side(), host, port),
                DIAL_TIMEOUT,
            )
        except (OSError, ValueError) as exc:  # TimeoutError is an OSError
            log.info(
                "proxy %s: cannot reach upstream %s: %s", self.proxy.name, self.proxy.upstream, exc
            )
            if self.client.transport is not None and not self.closed:
                self.client.transport.close()  # the client sees accept, then EOF

    def _new_upstream_side(self) -> Side:
        self.upstream = Side(self, "upstream")
        return self.upstream

    def _start_links(self) -> None:
        up = self.upstream
        assert up is not None and up.transport is not None
        if self.closed or self.client.lost:
            up.transport.abort()
            return
        toxics = self.proxy.toxics
        self.links = {
            "upstream": Link(self, "upstream", self.client, up),
            "downstream": Link(self, "downstream", up, self.client),
        }
        if any(t.type == "reset_peer" for t in toxics.all()):
            _set_linger_zero(self.client.transport)
            _set_linger_zero(up.transport)
        for direction, link in self.links.items():
            for toxic in toxics.chain(direction):
                link.add_toxic(toxic, restart_previous=False)
        for side in (self.client, up):
            if side.early and side.link is not None:
                data, side.early = b"".join(side.early), []
                side.deliver(data)
        if self.client.transport is not None:
            self.client.transport.resume_reading()
        for link in self.links.values():
            link.start_relay()

    def stop_relays(self) -> None:
        """The connection is ending: every byte goes the asyncio way from now on."""
        self.closing = True
        for link in self.links.values():
            link.relay_wanted = False
            link.stop_relay()

    def link_finished(self, link: Link) -> None:
        """End of stream reached ``link``'s sink: close its destination, end the other link."""
        self.stop_relays()
        if link.dst.transport is not None:
            link.dst.transport.close()
        other = self.links.get("downstream" if link.direction == "upstream" else "upstream")
        if other is not None:
            other.source_ended()

    def side_lost(self, side: Side) -> None:
        self.stop_relays()  # the socket closes when this returns: no thread may still use it
        if side.link is not None:
            side.link.source_ended()
        for link in self.links.values():
            if link.dst is side:
                link.refresh_direct()
        if self.client.lost and (self.upstream is None or self.upstream.lost):
            self._finish()

    def _finish(self) -> None:
        self.closed = True
        if self._dial is not None and not self._dial.done():
            self._dial.cancel()
        for link in self.links.values():
            link.cancel()
        self.proxy.connections.discard(self)

    def abort(self) -> None:
        """Close both sockets now (proxy disabled or deleted); data in toxics is lost."""
        self.stop_relays()
        self.closed = True
        if self._dial is not None and not self._dial.done():
            self._dial.cancel()
        for side in (self.client, self.upstream):
            if side is not None and side.transport is not None and not side.lost:
                side.transport.abort()
        for link in self.links.values():
            link.cancel()
        self.proxy.connections.discard(self)

    # ----- toxic changes on a live connection
    def add_toxic(self, toxic: Toxic) -> None:
        link = self.links.get(toxic.direction)
        if link is not None:
            link.add_toxic(toxic)

    def update_toxic(self, toxic: Toxic) -> None:
        link = self.links.get(toxic.direction)
        if link is not None:
            link.update_toxic(toxic)

    async def remove_toxic(self, toxic: Toxic) -> None:
        link = self.links.get(toxic.direction)
        if link is not None:
            await link.remove_toxic(toxic)


def split_host_port(address: str) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port`` like Go's ``net.SplitHostPort``; port must be numeric
    or a service name."""
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            raise ValueError(f"address {address}: missing ']' in address")
        host, rest = address[1:end], address[end + 1 :]
        if not rest.startswith(":"):
            raise ValueError(f"address {address}: missing port in address")
        port_text = rest[1:]
    else:
        if ":" not in address:
            raise ValueError(f"address {address}: missing port in address")
        host, port_text = address.rsplit(":", 1)
        if ":" in host:
            raise ValueError(f"address {address}: too many colons in address")
    return host, parse_port(port_text)


def parse_port(text: str) -> int:
    """A numeric port 0-65535 (empty means 0) or a service name such as ``http``."""
    if text == "":
        return 0
    if re.fullmatch(r"[+-]?[0-9]+", text):
        port = int(text)
        if not 0 <= port <= 65535:
            raise ValueError(f"address {text}: invalid port")
        return port
    try:
        return socket.getservbyname(text, "tcp")
    except OSError:
        raise ValueError(f"lookup tcp/{text}: unknown port") from None
