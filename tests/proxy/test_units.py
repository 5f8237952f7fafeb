"""Unit tests: Go-compatible JSON, address parsing, toxic pipes on a fake stub, the slicer split."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_chaos.errors import UsageError
from celery_chaos.faults.proxy.gojson import (
    DecodeError,
    Float32,
    decode_struct,
    dumps,
    format_float32,
    loads_first,
)
from celery_chaos.faults.proxy.link import split_host_port
from celery_chaos.faults.proxy.proxies import canonical_listen
from celery_chaos.faults.proxy.server import check_port
from celery_chaos.faults.proxy.toxics import (
    PIPES,
    TIMED_OUT,
    Chunk,
    Toxic,
    check_attributes,
    new_state,
    slice_points,
)

FIELDS = {"name": "string", "enabled": "bool", "n": "int64", "t": "float32", "a": "object"}


# --------------------------------------------------------------------------- gojson


def test_loads_first_reads_only_the_first_value() -> None:
    assert loads_first(b'  {"a": 1} trailing garbage') == {"a": 1}
    assert loads_first(b"null") is None
    with pytest.raises(DecodeError, match="^EOF$"):
        loads_first(b" \n")
    with pytest.raises(DecodeError, match="^unexpected EOF$"):
        loads_first(b'{"a": 1')
    with pytest.raises(DecodeError, match="invalid character"):
        loads_first(b"nope")
    with pytest.raises(DecodeError):
        loads_first(b"NaN")


def test_decode_struct_follows_go_rules() -> None:
    base = {"name": "d", "enabled": True, "n": 0, "t": 1.0, "a": None}
    got = decode_struct(loads_first(b'{"NAME":"x","n":null,"extra":1,"N":5}'), FIELDS, "T", base)
    assert got == {"name": "x", "enabled": True, "n": 5, "t": 1.0, "a": None}
    assert decode_struct(None, FIELDS, "T", base) == base
    for bad in (
        b'{"n": 100.0}',
        b'{"n": 1e3}',
        b'{"n": true}',
        b'{"n": "1"}',
        b'{"n": 9223372036854775808}',
        b'{"enabled": 1}',
        b'{"name": 1}',
        b'{"t": "1"}',
        b'{"t": 1e39}',
        b'{"a": 5}',
        b"[1]",
        b'"x"',
    ):
        with pytest.raises(DecodeError):
            decode_struct(loads_first(bad), FIELDS, "T", base)
    assert decode_struct(loads_first(b'{"n": -0, "t": 2}'), FIELDS, "T", base)["n"] == 0


@pytest.mark.parametrize(
    "value,text",
    [
        (1.0, "1"),
        (0.2, "0.2"),
        (0.5, "0.5"),
        (0.0, "0"),
        (1e-7, "1e-7"),
        (123.25, "123.25"),
        (0.1234567891, "0.12345679"),
        (1e21, "1e+21"),
    ],
)
def test_float32_formatting_matches_go(value: float, text: str) -> None:
    assert format_float32(value) == text


def test_dumps_is_compact_and_escapes_like_go() -> None:
    assert dumps({"a": [1, True, None], "b": Float32(1.0)}) == '{"a":[1,true,null],"b":1}'
    assert dumps("<&>\u2028é") == '"\\u003c\\u0026\\u003e\\u2028é"'


# --------------------------------------------------------------------------- addresses, ports


def test_split_host_port() -> None:
    assert split_host_port("127.0.0.1:80") == ("127.0.0.1", 80)
    assert split_host_port("[::1]:80") == ("::1", 80)
    assert split_host_port(":0") == ("", 0)
    for bad in ("nope", "1:2:3", "host:70000", "[::1]", "h:notaport-xyz"):
        with pytest.raises(ValueError):
            split_host_port(bad)


@pytest.mark.parametrize(
    "listen,canonical",
    [
        ("localhost:5", "127.0.0.1:5"),
        ("127.0.0.1:0", "127.0.0.1:0"),
        ("", ":0"),
        (":7", ":7"),
        ("0.0.0.0:7", "0.0.0.0:7"),
        ("[::]:7", "[::]:7"),
    ],
)
def test_canonical_listen(listen: str, canonical: str) -> None:
    assert asyncio.run(canonical_listen(listen)) == canonical


def test_check_port() -> None:
    assert check_port(8474) == 8474
    assert check_port("0") == 0
    for bad in ("abc", -1, 70000, "", True, "80.5"):
        with pytest.raises(UsageError):
            check_port(bad)


# --------------------------------------------------------------------------- pipes


class FakeStub:
    """Feeds ``items`` to a pipe and records what it sends; sleeps take no time."""

    def __init__(self, items: list[Any], toxic_type: str) -> None:
        self.items = list(items)
        self.sent: list[bytes] = []
        self.closed = False
        self.state = new_state(toxic_type)
        self.clock = 0.0

    def now(self) -> float:
        return self.clock

    async def recv(self, timeout: float | None = None) -> Any:
        if not self.items:
            return TIMED_OUT if timeout is not None else None
        return self.items.pop(0)

    async def send(self, item: Any) -> None:
        self.sent.append(item.data)

    async def sleep(self, seconds: float) -> bool:
        self.clock += max(seconds, 0)
        return True

    async def sleep_uninterruptible(self, seconds: float) -> None:
        self.clock += max(seconds, 0)

    def close(self) -> None:
        self.closed = True

    def unread(self, item: Any) -> None:
        self.items.insert(0, item)


def run_pipe(toxic_type: str, attrs: dict[str, int], writes: list[bytes]) -> FakeStub:
    stub = FakeStub([Chunk(w, 0.0) for w in writes] + [None], toxic_type)
    toxic = Toxic("t", toxic_type, "downstream", "downstream", 1.0, attrs)
    asyncio.run(PIPES[toxic_type](stub, toxic))  # type: ignore[arg-type]
    return stub


@pytest.mark.parametrize(
    "writes,expected",
    [
        ([50], [50]),
        ([100], [100]),
        ([150], [100]),
        ([25, 25, 25, 25], [25, 25, 25, 25]),
        ([90, 20], [90, 10]),
        ([0], []),
    ],
)
def test_limit_data_table(writes: list[int], expected: list[int]) -> None:
    stub = run_pipe("limit_data", {"bytes": 100}, [b"x" * n for n in writes if n] or [b""])
    assert [len(s) for s in stub.sent] == expected
    assert stub.closed


def test_timeout_pipe_drops_everything() -> None:
    stub = run_pipe("timeout", {"timeout": 0}, [b"a", b"b"])
    assert stub.sent == [] and stub.closed


def test_bandwidth_pipe_splits_big_chunks() -> None:
    stub = run_pipe("bandwidth", {"rate": 1}, [b"x" * 250])  # 100 B per 100 ms
    assert [len(s) for s in stub.sent] == [100, 100, 50]
    assert stub.clock == pytest.approx(0.25, abs=0.01)


def test_slicer_pipe_one_byte_pieces() -> None:
    stub = run_pipe("slicer", {"average_size": 1, "size_variation": 0, "delay": 0}, [b"x" * 24])
    assert len(stub.sent) == 24


def test_slicer_read_counts_match_toxiproxy_bounds() -> None:
    total, pieces = 480_000, 0
    for start in range(0, total, 32 * 1024):
        size = min(32 * 1024, total - start)
        pieces += len(slice_points(size, 1024, 512)) - 1
    assert 240 <= pieces <= 720


@settings(deadline=None, max_examples=60)
@given(
    length=st.integers(min_value=0, max_value=70_000),
    average=st.integers(min_value=1, max_value=5000),
    data=st.data(),
)
def test_slice_points_partition_the_chunk(length: int, average: int, data: Any) -> None:
    variation = data.draw(st.integers(min_value=0, max_value=average - 1))
    points = slice_points(length, average, variation)
    assert points[0] == 0 and points[-1] == length
    sizes = [b - a for a, b in zip(points, points[1:], strict=False)]
    assert all(0 < s <= average + variation for s in sizes) or length == 0


def test_check_attributes() -> None:
    assert check_attributes("bandwidth", {"rate": 1}) is None
    assert check_attributes("bandwidth", {"rate": 0})
    assert check_attributes("slicer", {"average_size": 0})
    assert check_attributes("slicer", {"average_size": 3, "size_variation": 3})
    assert check_attributes("latency", {"latency": -5}) is None
