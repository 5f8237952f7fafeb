"""The incremental history reader: the same records as ``read_history``, read a bit at a time."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_chaos.deployment.drain import DrainState, outstanding_ids
from celery_chaos.history.reader import HistoryTail
from celery_chaos.history.schema import SCHEMA_VERSION, Kind, Record, SchemaVersionError
from celery_chaos.history.store import History, HistoryWriter, encode_line, read_history


def _same(tail: History, full: History) -> None:
    assert tail.records == full.records
    assert tail.files == full.files
    assert tail.torn_lines == full.torn_lines
    assert tail.unreadable_lines == full.unreadable_lines
    assert (tail.torn_at, tail.unreadable_at) == (full.torn_at, full.unreadable_at)


def _line(mono: int, wall: int = 0, host: str = "h", **fields: object) -> bytes:
    rec = {"v": 1, "kind": "ok", "wall_ns": wall, "mono_ns": mono, "pid": 7, "host": host}
    return encode_line({**rec, **fields})


def test_appends_between_polls_from_several_writers(tmp_path: Path) -> None:
    pub = HistoryWriter(tmp_path, "publisher", "publisher")
    w1 = HistoryWriter(tmp_path, "worker", "w1@chaos")
    tail = HistoryTail(tmp_path)
    assert tail.poll() == [] and tail.records() == []
    pub.write(Kind.INVOKE, task_id="a")
    pub.write(Kind.OK, task_id="a")
    first = tail.poll()
    assert [r.kind for r in first] == [Kind.INVOKE, Kind.OK]
    assert tail.poll() == []  # nothing new
    w1.write(Kind.RECEIVED, task_id="a")  # a file that did not exist at the first poll
    w1.write(Kind.STARTED, task_id="a")
    pub.write(Kind.INVOKE, task_id="b")
    assert [r.task_id for r in tail.poll()] == ["a", "a", "b"]
    w1.write(Kind.SUCCEEDED, task_id="a")
    _same(tail.history(), read_history(tmp_path))
    assert len(tail) == 6 and tail.records() == read_history(tmp_path).records


def test_records_and_history_do_not_take_records_from_poll(tmp_path: Path) -> None:
    w = HistoryWriter(tmp_path, "publisher", "publisher")
    tail = HistoryTail(tmp_path)
    w.write(Kind.OK, task_id="a")
    assert len(tail.records()) == 1
    w.write(Kind.OK, task_id="b")
    assert len(tail.history()) == 2
    w.write(Kind.OK, task_id="c")
    assert [r.task_id for r in tail.poll()] == ["a", "b", "c"]
    assert tail.poll() == []


def test_a_half_written_line_waits_for_its_end(tmp_path: Path) -> None:
    path = tmp_path / "worker-w1-1.jsonl"
    line = _line(10, task_id="t1")
    path.write_bytes(_line(5))
    tail = HistoryTail(tmp_path)
    assert len(tail.poll()) == 1
    with path.open("ab") as fh:
        fh.write(line[:17])  # a writer seen mid-write
    assert tail.poll() == [] and tail.history().torn_lines == 0
    with path.open("ab") as fh:
        fh.write(line[17:])
    assert [r.task_id for r in tail.poll()] == ["t1"]
    assert tail.history().torn_lines == 0
    _same(tail.history(), read_history(tmp_path))


def test_torn_lines_and_a_killed_writers_last_line(tmp_path: Path) -> None:
    w = HistoryWriter(tmp_path, "worker", "w1@chaos")
    w.write(Kind.STARTED, task_id="a")
    with w.path.open("ab") as fh:
        fh.write(b"[1, 2]\nnot json\n\n")  # not JSON objects, records after: unreadable
    w.write(Kind.SUCCEEDED, task_id="a")
    w.close()
    whole = w.path.read_bytes()
    w.path.write_bytes(whole + whole[:23])  # SIGKILL mid-write: no newline, never completed
    tail = HistoryTail(tmp_path)
    h = tail.history()
    assert [r.kind for r in h] == [Kind.STARTED, Kind.SUCCEEDED]
    assert (h.torn_lines, h.unreadable_lines) == (0, 2)
    assert h.unreadable_at == [f"{w.path.name}:2", f"{w.path.name}:3"]
    full = read_history(tmp_path)
    assert (full.torn_lines, full.unreadable_lines) == (1, 2)
    assert full.torn_at == [f"{w.path.name}:6"]
    _same(tail.history(include_partial=True), full)
    assert tail.history().torn_lines == 0  # the partial line is still not consumed


def test_a_torn_line_that_gets_a_line_end_becomes_unreadable(tmp_path: Path) -> None:
    """A torn last line (no line end) is noted; once a record is appended to it (its writer's
    pid reused) the line holds a lost record: unreadable, as read_history says."""
    path = tmp_path / "worker-w1-1.jsonl"
    path.write_bytes(_line(1) + _line(2)[:9])
    tail = HistoryTail(tmp_path)
    h = tail.history()
    assert (h.torn_lines, h.unreadable_lines) == (0, 0)  # the partial line is not read yet
    h = tail.history(include_partial=True)
    assert (h.torn_lines, h.unreadable_lines, h.torn_at) == (1, 0, [f"{path.name}:2"])
    with path.open("ab") as fh:
        fh.write(_line(3) + _line(4) + _line(5)[:9])  # line 2 ends; a record; mid-write
    h = tail.history(include_partial=True)
    assert (h.torn_lines, h.unreadable_lines) == (1, 1)
    assert (h.unreadable_at, h.torn_at) == ([f"{path.name}:2"], [f"{path.name}:4"])
    _same(h, read_history(tmp_path))
    assert [r.mono_ns for r in h] == [1, 4]  # record 3 is lost in line 2


def test_a_last_line_missing_only_its_newline_counts_as_read_history_does(tmp_path: Path) -> None:
    (tmp_path / "worker-w1-1.jsonl").write_bytes(_line(1) + _line(2)[:-1])
    tail = HistoryTail(tmp_path)
    assert [r.mono_ns for r in tail.records()] == [1]
    _same(tail.history(include_partial=True), read_history(tmp_path))


def test_late_records_of_another_file_are_merged_in_order(tmp_path: Path) -> None:
    a, b = tmp_path / "worker-a-1.jsonl", tmp_path / "worker-b-2.jsonl"
    a.write_bytes(b"".join(_line(m, host="a") for m in (10, 40, 50)))
    tail = HistoryTail(tmp_path)
    tail.poll()
    b.write_bytes(b"".join(_line(m, host="b") for m in (5, 40, 45, 60)))  # 40: a tie
    new = tail.poll()
    assert [r.mono_ns for r in new] == [5, 40, 45, 60]
    got = tail.records()
    assert [(r.mono_ns, r.host) for r in got] == [
        (5, "b"), (10, "a"), (40, "a"), (40, "b"), (45, "b"), (50, "a"), (60, "b")
    ]
    assert got == read_history(tmp_path).records


def test_a_file_rewritten_shorter_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "worker-a-1.jsonl"
    path.write_bytes(_line(1) + _line(2) + b"junk\n")
    tail = HistoryTail(tmp_path)
    assert len(tail.records()) == 2 and tail.history().unreadable_lines == 1
    path.write_bytes(_line(3))
    _same(tail.history(), read_history(tmp_path))
    path.unlink()
    _same(tail.history(), read_history(tmp_path))


def test_an_invalid_record_raises_and_is_not_consumed(tmp_path: Path) -> None:
    path = tmp_path / "worker-a-1.jsonl"
    path.write_bytes(_line(1))
    tail = HistoryTail(tmp_path)
    tail.poll()
    with path.open("ab") as fh:
        fh.write(_line(2, v=SCHEMA_VERSION + 1))
    for _ in range(2):
        with pytest.raises(SchemaVersionError, match="upgrade celery-chaos"):
            tail.poll()
    assert len(tail) == 1


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        HistoryTail(tmp_path / "nope").poll()


def test_each_consumer_of_since_sees_every_record(tmp_path: Path) -> None:
    w = HistoryWriter(tmp_path, "publisher", "publisher")
    tail = HistoryTail(tmp_path)
    w.write(Kind.OK, task_id="a")
    got1, c1, whole1 = tail.since()
    w.write(Kind.OK, task_id="b")
    assert [r.task_id for r in tail.poll()] == ["a", "b"]  # poll() has a cursor of its own
    got2, c2, whole2 = tail.since()
    w.write(Kind.OK, task_id="c")
    more1, _, again1 = tail.since(c1)
    more2, _, again2 = tail.since(c2)
    assert (whole1, whole2, again1, again2) == (True, True, False, False)
    assert [r.task_id for r in got1 + more1] == ["a", "b", "c"]
    assert [r.task_id for r in got2 + more2] == ["a", "b", "c"]


def test_polls_from_several_threads(tmp_path: Path) -> None:
    tail = HistoryTail(tmp_path)
    seen: list[Record] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                seen.extend(tail.poll())
                tail.records()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    writers = [HistoryWriter(tmp_path, "worker", f"w{i}@chaos") for i in range(3)]
    for i in range(600):
        writers[i % 3].write(Kind.STARTED, task_id=f"t{i}")
    stop.set()
    for t in threads:
        t.join()
    seen.extend(tail.poll())
    assert not errors
    full = read_history(tmp_path).records
    assert tail.records() == full and len(seen) == len(full) == 600
    assert sorted(r.task_id or "" for r in seen) == sorted(r.task_id or "" for r in full)


# -- any sequence of appends, cut anywhere ---------------------------------------------------

_GARBAGE = st.sampled_from(
    [b"not json\n", b"[1, 2]\n", b"\n", b"   \n", b'{"kind": \n', b"\xff\xfe{\n", b"a\rb\n"]
)


@st.composite
def _chunk(draw: st.DrawFn) -> tuple[int, bytes]:
    """One append: a record line (maybe ``\\r\\n``-ended) or a junk line, to one of 3 files."""
    f = draw(st.integers(0, 2))
    if draw(st.booleans()):
        line = _line(
            draw(st.integers(0, 6)),
            draw(st.integers(0, 2)),  # few distinct times: ties across files
            host=f"w{f}",
            task_id=draw(st.sampled_from(["a", "b", "é", "x\ny"])),
        )
        if draw(st.booleans()):
            line = line[:-1] + b"\r\n"
    else:
        line = draw(_GARBAGE)
    return f, line


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.lists(st.tuples(_chunk(), st.floats(0, 1)), max_size=6), min_size=1, max_size=6
    ),
    torn_end=st.booleans(),
)
def test_any_appends_read_as_read_history_reads_them(
    steps: list[list[tuple[tuple[int, bytes], float]]], torn_end: bool
) -> None:
    """After every step (each file's last line maybe cut anywhere, finished at the next
    step), the tail equals ``read_history``; with every line finished, even without
    ``include_partial``."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = [root / f"worker-w{i}-{i}.jsonl" for i in range(3)]
        rest: dict[int, bytes] = {}
        tail = HistoryTail(root)
        polled: list[Record] = []
        for step in steps:
            for f, tail_bytes in list(rest.items()):
                with paths[f].open("ab") as fh:
                    fh.write(tail_bytes)
                del rest[f]
            for (f, line), cut in step:
                if f in rest:
                    continue
                at = int(len(line) * cut)
                with paths[f].open("ab") as fh:
                    fh.write(line[:at])
                if at < len(line):
                    rest[f] = line[at:]
            polled.extend(tail.poll())
            _same(tail.history(include_partial=True), read_history(root))
        for f, tail_bytes in rest.items():
            if not torn_end:
                with paths[f].open("ab") as fh:
                    fh.write(tail_bytes)
        polled.extend(tail.poll())
        full = read_history(root)
        _same(tail.history(include_partial=True), full)
        if not torn_end or not rest:
            _same(tail.history(), full)
        assert sorted(polled, key=lambda r: (r.mono_ns, r.wall_ns, r.host)) == sorted(
            tail.records(), key=lambda r: (r.mono_ns, r.wall_ns, r.host)
        )


# -- the drain's incremental state ------------------------------------------------------------


def test_drain_state_follows_the_history_incrementally(tmp_path: Path) -> None:
    pub = HistoryWriter(tmp_path, "publisher", "publisher")
    w1 = HistoryWriter(tmp_path, "worker", "w1@chaos")
    state = DrainState(HistoryTail(tmp_path))
    pub.write(Kind.OK, task_id="a")
    pub.write(Kind.OK, task_id="b")
    w1.write(Kind.STARTED, task_id="a", pid=os.getpid())
    assert state.update() == ({"a", "b"}, 3, {"a"}) == outstanding_ids(tmp_path)
    w1.write(Kind.SUCCEEDED, task_id="a")
    w1.write(Kind.FAILED, task_id="b", exc_type="WorkerLostError")  # dropped: not done
    assert state.update() == ({"b"}, 5, set()) == outstanding_ids(tmp_path)
    w1.write(Kind.SUCCEEDED, task_id="b")
    assert state.update() == (set(), 6, set()) == outstanding_ids(HistoryTail(tmp_path))


def test_drain_state_rebuilds_when_a_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "publisher-p-1.jsonl"
    path.write_bytes(_line(1, task_id="a") + _line(2, task_id="b"))
    state = DrainState(HistoryTail(tmp_path))
    assert state.update()[:2] == ({"a", "b"}, 2)
    path.write_bytes(_line(1, task_id="c"))
    assert state.update()[:2] == ({"c"}, 1)


def test_records_are_json_lines_of_the_writer(tmp_path: Path) -> None:
    """The tail parses what HistoryWriter writes, extra keys included."""
    w = HistoryWriter(tmp_path, "harness", "harness")
    written = w.write("fault", name="kill_worker", phase="start", custom="kept")
    (rec,) = HistoryTail(tmp_path).records()
    assert rec == Record.model_validate(json.loads(json.dumps(written)))
    assert rec.model_extra == {"custom": "kept"}


def test_a_live_check_is_never_valid_with_unreadable_lines(tmp_path: Path) -> None:
    """``Scenario.check`` judges ``tail.history(include_partial=True)``: the same rule as
    ``celery-chaos analyze``, one place (``check_history``)."""
    from celery_chaos.checks.verdict import HISTORY_COMPLETE, Verdict, check_history

    pub = HistoryWriter(tmp_path, "publisher", "publisher")
    pub.write(Kind.INVOKE, task_id="a")
    pub.write(Kind.OK, task_id="a")
    w = HistoryWriter(tmp_path, "worker", "w1@chaos")
    w.write(Kind.STARTED, task_id="a")
    w.write(Kind.SUCCEEDED, task_id="a")
    HistoryWriter(tmp_path, "harness", "harness").write(Kind.DRAIN, detail={"complete": True})
    tail = HistoryTail(tmp_path)
    assert [r.verdict for r in check_history(tail.history(include_partial=True))] == [
        Verdict.VALID
    ]
    with w.path.open("ab") as fh:
        fh.write(b'{"v": 1, "ki')  # torn last line: noted, still valid
    h = tail.history(include_partial=True)
    assert h.torn_lines == 1 and Verdict.combine(r.verdict for r in check_history(h)) == "valid"
    w.write(Kind.STARTED, task_id="b")  # the torn line is now in the middle: unreadable
    results = check_history(tail.history(include_partial=True))
    assert [r.name for r in results] == ["queue", HISTORY_COMPLETE]
    assert results[1].verdict is Verdict.UNKNOWN
    assert f"({w.path.name}:3)" in results[1].problems[0]
    assert results[1].summary == {"torn": 0, "unreadable": 1, "torn_at": [],
                                  "unreadable_at": [f"{w.path.name}:3"]}
