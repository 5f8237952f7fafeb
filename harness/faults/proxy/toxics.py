"""Toxic definitions (what the API stores) and their per-link behaviour (what a stub runs).

Each toxic type is an ``async def pipe(stub, toxic)`` that reads chunks with ``stub.recv()``, writes
them with ``stub.send()`` and ends the link with ``stub.close()``. A pipe returns when the stub is
interrupted (update, removal, a neighbour change) after forwarding whatever it held, exactly like
Toxiproxy's ``Pipe`` functions; the stub then restarts it with fresh settings or unlinks it.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .gojson import Float32

#: Attribute names and Go kinds per toxic type, in Go's struct (and JSON output) order.
TOXIC_FIELDS: dict[str, dict[str, str]] = {
    "latency": {"latency": "int64", "jitter": "int64"},
    "bandwidth": {"rate": "int64"},
    "slow_close": {"delay": "int64"},
    "timeout": {"timeout": "int64"},
    "reset_peer": {"timeout": "int64"},
    "slicer": {"average_size": "int", "size_variation": "int", "delay": "int"},
    "limit_data": {"bytes": "int64"},
    "noop": {},
}
#: Go type names, used in decode error messages.
GO_STRUCTS: dict[str, str] = {
    "latency": "toxics.LatencyToxic",
    "bandwidth": "toxics.BandwidthToxic",
    "slow_close": "toxics.SlowCloseToxic",
    "timeout": "toxics.TimeoutToxic",
    "reset_peer": "toxics.ResetToxic",
    "slicer": "toxics.SlicerToxic",
    "limit_data": "toxics.LimitDataToxic",
    "noop": "toxics.NoopToxic",
}
#: Chunks a stub may queue before its producer waits (latency keeps 1024 so it pipelines).
CAPACITY: dict[str, int] = {"latency": 1024}
DEFAULT_CAPACITY = 16


class Chunk:
    """Bytes read from a socket in one go, stamped with the loop time they were read."""

    __slots__ = ("data", "ts")

    def __init__(self, data: bytes, ts: float) -> None:
        self.data = data
        self.ts = ts


#: ``recv(timeout=...)`` returns this when the timer fired before a chunk arrived.
TIMED_OUT: Any = object()
Item = Chunk | None  # None is the end-of-stream marker


class StubAPI(Protocol):
    """What a pipe function may use (:class:`celery_chaos.faults.proxy.link.Stub`)."""

    state: Any

    def now(self) -> float: ...
    async def recv(self, timeout: float | None = None) -> Any: ...
    async def send(self, item: Item) -> None: ...
    async def sleep(self, seconds: float) -> bool: ...
    async def sleep_uninterruptible(self, seconds: float) -> None: ...
    def close(self) -> None: ...
    def unread(self, item: Item) -> None: ...


@dataclass(eq=False)
class Toxic:
    """A configured toxic: shared by every link of its proxy in its direction."""

    name: str
    type: str
    stream: str  # as sent by the client (casing kept)
    direction: str  # "upstream" or "downstream"
    toxicity: float  # float32-rounded
    attributes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The Toxic object in Toxiproxy's key order."""
        return {
            "attributes": {k: self.attributes.get(k, 0) for k in TOXIC_FIELDS[self.type]},
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": Float32(self.toxicity),
        }


def check_attributes(toxic_type: str, attrs: dict[str, int]) -> str | None:
    """Reject values that stall or crash real Toxiproxy; returns the error text or None."""
    if toxic_type == "bandwidth" and attrs.get("rate", 0) <= 0:
        return "bandwidth rate must be > 0 (real Toxiproxy stalls on 0 and crashes below)"
    if toxic_type == "slicer":
        avg, var = attrs.get("average_size", 0), attrs.get("size_variation", 0)
        if avg <= 0:
            return "slicer average_size must be > 0 (real Toxiproxy crashes on 0)"
        if var < 0 or var >= avg:
            return "slicer size_variation must be >= 0 and < average_size (real Toxiproxy panics)"
    return None


class LimitDataState:
    """Per-link byte count of a limit_data toxic; survives restarts of the stub."""

    __slots__ = ("transmitted",)

    def __init__(self) -> None:
        self.transmitted = 0


def new_state(toxic_type: str) -> Any:
    """Per-link state created when the toxic is attached to a link."""
    return LimitDataState() if toxic_type == "limit_data" else None


# --------------------------------------------------------------------------- pipes


async def pipe_noop(stub: StubAPI, toxic: Toxic) -> None:
    """Pass chunks through unchanged (also what a stub runs when its toxicity roll fails)."""
    while True:
        chunk = await stub.recv()
        if chunk is None:
            stub.close()
            return
        await stub.send(chunk)


async def pipe_latency(stub: StubAPI, toxic: Toxic) -> None:
    """Delay each chunk to ``read time + latency ± jitter``; pipelined, order kept."""
    latency, jitter = toxic.attributes.get("latency", 0), toxic.attributes.get("jitter", 0)
    while True:
        chunk = await stub.recv()
        if chunk is None:
            stub.close()
            return
        delay_ms = latency + (random.randrange(-jitter, jitter) if jitter > 0 else 0)
        wait = chunk.ts + delay_ms / 1000.0 - stub.now()
        if wait > 0:
            if not await stub.sleep(wait):
                await stub.send(chunk)
                return
            chunk.ts += wait  # so latency toxics later in the chain add up
        await stub.send(chunk)


async def pipe_bandwidth(stub: StubAPI, toxic: Toxic) -> None:
    """Pace chunks to ``rate`` KB/s, in pieces of at most ``rate * 100`` bytes every 100 ms."""
    rate = toxic.attributes.get("rate", 0)
    if rate <= 0:  # refused by the API; treat as unlimited if it ever gets here
        await pipe_noop(stub, toxic)
        return
    piece = rate * 100
    debt = 0.0
    while True:
        chunk = await stub.recv()
        if chunk is None:
            stub.close()
            return
        debt += len(chunk.data) / (rate * 1000.0)
        while len(chunk.data) > piece:
            if not await stub.sleep(0.1):
                await stub.send(chunk)
                return
            await stub.send(Chunk(chunk.data[:piece], chunk.ts))
            chunk.data = chunk.data[piece:]
            debt -= 0.1
        start = stub.now()
        if not await stub.sleep(debt):
            await stub.send(chunk)
            return
        debt -= stub.now() - start  # corrects timer overshoot on the next chunk
        await stub.send(chunk)


async def pipe_slow_close(stub: StubAPI, toxic: Toxic) -> None:
    """Pass data; hold the end of stream for ``delay`` ms before passing it on."""
    delay = toxic.attributes.get("delay", 0) / 1000.0
    while True:
        chunk = await stub.recv()
        if chunk is None:
            if not await stub.sleep(delay):
                stub.unread(None)  # the restarted stub (or the removal) sees the EOF again
                return
            stub.close()
            return
        await stub.send(chunk)


async def pipe_timeout(stub: StubAPI, toxic: Toxic) -> None:
    """Drop every chunk; close the link after ``timeout`` ms without data (0 = never)."""
    timeout = toxic.attributes.get("timeout", 0)
    wait = timeout / 1000.0 if timeout > 0 else None
    while True:
        chunk = await stub.recv(wait)
        if chunk is None or chunk is TIMED_OUT:
            stub.close()
            return
        # data is dropped on the floor


async def pipe_reset_peer(stub: StubAPI, toxic: Toxic) -> None:
    """After the first chunk (or EOF) plus ``timeout`` ms, close the link (RST via SO_LINGER 0)."""
    await stub.recv()
    await stub.sleep_uninterruptible(toxic.attributes.get("timeout", 0) / 1000.0)
    stub.close()


def slice_points(length: int, average: int, variation: int) -> list[int]:
    """Split offsets for one chunk: halve until pieces are <= average + variation (Go's order)."""
    points = [0]
    stack = [(0, length)]
    while stack:
        start, end = stack.pop()
        if (end - start) - average <= variation:
            points.append(end)
            continue
        mid = start + (end - start) // 2
        if variation > 0:
            mid += random.randrange(variation * 2) - variation
        stack.append((mid, end))
        stack.append((start, mid))
    return points


async def pipe_slicer(stub: StubAPI, toxic: Toxic) -> None:
    """Write each chunk as smaller pieces, ``delay`` µs apart."""
    avg = toxic.attributes.get("average_size", 0)
    var = toxic.attributes.get("size_variation", 0)
    if avg <= 0:  # refused by the API
        await pipe_noop(stub, toxic)
        return
    var = min(max(var, 0), avg - 1)
    delay = toxic.attributes.get("delay", 0) / 1_000_000.0
    while True:
        chunk = await stub.recv()
        if chunk is None:
            stub.close()
            return
        points = slice_points(len(chunk.data), avg, var)
        for i in range(1, len(points)):
            await stub.send(Chunk(chunk.data[points[i - 1] : points[i]], chunk.ts))
            if not await stub.sleep(delay):
                rest = chunk.data[points[i] :]
                if rest:
                    await stub.send(Chunk(rest, chunk.ts))
                return


async def pipe_limit_data(stub: StubAPI, toxic: Toxic) -> None:
    """Pass at most ``bytes`` bytes on this link, then close it."""
    limit = toxic.attributes.get("bytes", 0)
    state: LimitDataState = stub.state
    while True:
        chunk = await stub.recv()
        if chunk is None:
            stub.close()
            return
        remaining = max(limit - state.transmitted, 0)
        if remaining < len(chunk.data):
            chunk.data = chunk.data[:remaining]
        if chunk.data:
            await stub.send(chunk)
            state.transmitted += len(chunk.data)
        if limit - state.transmitted <= 0:
            stub.close()
            return


PipeFn = Callable[[StubAPI, Toxic], Awaitable[None]]
PIPES: dict[str, PipeFn] = {
    "noop": pipe_noop,
    "latency": pipe_latency,
    "bandwidth": pipe_bandwidth,
    "slow_close": pipe_slow_close,
    "timeout": pipe_timeout,
    "reset_peer": pipe_reset_peer,
    "slicer": pipe_slicer,
    "limit_data": pipe_limit_data,
}
