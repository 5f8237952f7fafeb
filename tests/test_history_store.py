"""The history store: writer/reader round trip, torn lines, merging, versions, fork safety."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from celery_chaos.history.schema import SCHEMA_VERSION, Kind, Record, SchemaVersionError
from celery_chaos.history.store import HistoryWriter, parse_lines, read_history


def test_round_trip(tmp_path: Path) -> None:
    w = HistoryWriter(tmp_path, role="publisher", host="load gen/1")
    written = [
        w.write(Kind.INVOKE, task_id="a", task_name="t.add", args="(1, 2)"),
        w.write(Kind.OK, task_id="a", confirmed=True, latency_ns=1234),
        w.write(Kind.DRAIN, detail={"complete": True, "remaining": 0}),
        w.write("fault", name="kill_worker", phase="start", target="w1@chaos", custom="kept"),
    ]
    w.close()
    assert w.path.parent == tmp_path
    assert w.path.name == f"publisher-load_gen_1-{os.getpid()}.jsonl"

    h = read_history(tmp_path)
    assert h.files == [w.path] and h.torn_lines == 0
    assert [r.kind for r in h] == [Kind.INVOKE, Kind.OK, Kind.DRAIN, Kind.FAULT]
    first = h.records[0]
    assert (first.task_id, first.task_name, first.args, first.role) == ("a", "t.add", "(1, 2)",
                                                                         "publisher")
    assert first.v == SCHEMA_VERSION and first.pid == os.getpid()
    assert h.records[1].confirmed is True and h.records[1].latency_ns == 1234
    assert h.records[2].detail == {"complete": True, "remaining": 0}
    assert h.records[3].model_extra == {"custom": "kept"}
    assert h.records == [Record.model_validate(raw) for raw in written]
    assert [r.task_id for r in h.for_task("a")] == ["a", "a"]
    assert h.of_kind(Kind.OK, Kind.DRAIN) == h.records[1:3]


def test_torn_last_line_is_skipped_and_counted(tmp_path: Path) -> None:
    w = HistoryWriter(tmp_path, role="worker", host="w1@chaos")
    w.write(Kind.STARTED, task_id="a")
    w.write(Kind.SUCCEEDED, task_id="a")
    w.close()
    whole = w.path.read_bytes()
    # SIGKILL mid-write: the last write(2) stopped half way, with no newline
    w.path.write_bytes(whole + whole.splitlines(keepends=True)[0][:23])
    h = read_history(tmp_path)
    assert [r.kind for r in h] == [Kind.STARTED, Kind.SUCCEEDED]
    assert h.torn_lines == 1


def test_blank_lines_are_not_torn() -> None:
    line = json.dumps({"kind": "ok", "wall_ns": 1, "mono_ns": 1, "pid": 1, "host": "h"})
    records, scan = parse_lines(["\n", line + "\n", "   \n"])
    assert len(records) == 1 and scan.bad == 0 and scan.lines == 3 and not scan.open_end


def test_files_are_merged_in_monotonic_order(tmp_path: Path) -> None:
    def line(kind: str, mono: int, host: str) -> str:
        return json.dumps({"kind": kind, "wall_ns": 0, "mono_ns": mono, "pid": 7, "host": host})

    (tmp_path / "worker-w1-1.jsonl").write_text(
        "\n".join(line("started", m, "w1") for m in (10, 40, 50)) + "\n"
    )
    (tmp_path / "publisher-p-2.jsonl").write_text(
        "\n".join(line("invoke", m, "p") for m in (5, 20, 45)) + "\n"
    )
    (tmp_path / "harness-h-3.jsonl").write_text(line("drain", 60, "h") + "\n" + '{"kind": "dr')
    (tmp_path / "notes.txt").write_text("not a history file\n")
    h = read_history(tmp_path)
    assert [r.mono_ns for r in h] == [5, 10, 20, 40, 45, 50, 60]
    assert [r.host for r in h] == ["p", "w1", "p", "w1", "p", "w1", "h"]
    assert len(h.files) == 3 and h.torn_lines == 1


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    rec = {"v": SCHEMA_VERSION + 1, "kind": "ok", "wall_ns": 0, "mono_ns": 0, "pid": 1, "host": "h"}
    (tmp_path / "publisher-p-1.jsonl").write_text(json.dumps(rec) + "\n")
    with pytest.raises(SchemaVersionError, match="upgrade celery-chaos"):
        read_history(tmp_path)
    assert issubclass(SchemaVersionError, ValueError)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_history(tmp_path / "nope")


def test_writer_uses_o_append(tmp_path: Path) -> None:
    w = HistoryWriter(tmp_path, role="worker", host="w1")
    w.write(Kind.RECEIVED, task_id="a")
    fd = w._descriptor(os.getpid())
    assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND
    # two writers on one file interleave whole lines, never overwrite each other
    other = HistoryWriter(tmp_path, role="worker", host="w1")
    for i in range(50):
        (w if i % 2 else other).write(Kind.STARTED, task_id=f"t{i}")
    w.close()
    other.close()
    h = read_history(tmp_path)
    assert len(h) == 51 and h.torn_lines == 0
    assert sorted(r.task_id for r in h.of_kind(Kind.STARTED)) == sorted(f"t{i}" for i in range(50))


def test_writer_reopens_after_fork(tmp_path: Path) -> None:
    w = HistoryWriter(tmp_path, role="worker", host="w1@chaos")
    w.write(Kind.RECEIVED, task_id="parent-before")
    parent_path = w.path
    pid = os.fork()
    if pid == 0:  # child: must write to its own file, then leave without pytest's cleanup
        code = 1
        try:
            w.write(Kind.STARTED, task_id="child")
            code = 0 if w.path.name.endswith(f"-{os.getpid()}.jsonl") else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    w.write(Kind.RECEIVED, task_id="parent-after")
    w.close()

    child_path = tmp_path / f"worker-w1@chaos-{pid}.jsonl"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([parent_path.name, child_path.name])
    child_lines = [json.loads(x) for x in child_path.read_text().splitlines()]
    assert [(r["task_id"], r["pid"]) for r in child_lines] == [("child", pid)]
    parent_lines = [json.loads(x) for x in parent_path.read_text().splitlines()]
    assert [r["task_id"] for r in parent_lines] == ["parent-before", "parent-after"]
    assert [r.task_id for r in read_history(tmp_path)] == ["parent-before", "child", "parent-after"]


def test_a_line_that_is_not_a_json_object_counts_as_torn(tmp_path: Path) -> None:
    """Both readers (validated and raw) share one file reader and one rule for torn lines."""
    from celery_chaos.history.store import read_raw

    writer = HistoryWriter(tmp_path, "worker", "w1@chaos")
    writer.write(Kind.STARTED, task_id="t1", task_name="x")
    with writer.path.open("a") as fh:
        fh.write("[1, 2]")  # a last line without its end
    history = read_history(tmp_path)
    raws, files, torn = read_raw(tmp_path)
    assert len(history) == 1 and history.torn_lines == 1 and history.unreadable_lines == 0
    assert history.torn_at == [f"{writer.path.name}:2"]
    assert len(raws) == 1 and torn == 1 and files == [writer.path]


def test_decode_lines_splits_as_a_text_mode_read(tmp_path: Path) -> None:
    """The incremental reader decodes bytes itself: it must see the lines read_raw sees."""
    from celery_chaos.history.store import decode_lines

    data = b'{"a": 1}\r\n\xff\xfeok\rnext\n\nlast \xe2\x82'
    path = tmp_path / "x.jsonl"
    path.write_bytes(data)
    with path.open(encoding="utf-8", errors="replace") as fh:
        expected = [line.rstrip("\n") for line in fh]
    assert [x for x in decode_lines(data) if x] == [x for x in expected if x]


def test_a_bad_line_before_the_end_of_a_file_is_unreadable(tmp_path: Path) -> None:
    """Only a file's last line can be torn by a writer killed mid-write; a bad line with
    records after it is a line lost in the middle: unreadable, with its file and number."""
    from celery_chaos.history.store import read_raw

    writer = HistoryWriter(tmp_path, "worker", "w1@chaos")
    writer.write(Kind.STARTED, task_id="t1")
    with writer.path.open("a") as fh:
        fh.write('{"kind": "succ\n\n')  # line 2 garbled, line 3 blank
    writer.write(Kind.STARTED, task_id="t2")  # line 4
    writer.close()
    with writer.path.open("a") as fh:
        fh.write('{"v": 1, "kind": "succ')  # line 5: SIGKILL mid-write
    other = HistoryWriter(tmp_path, "publisher", "publisher")
    other.write(Kind.OK, task_id="t1")
    with other.path.open("a") as fh:
        fh.write('{"v": 1, "kind": "o')  # torn, then a record appended to it (a pid reused)
    other.write(Kind.OK, task_id="t3")  # line 2: with its line end, lost: unreadable
    other.close()
    with other.path.open("a") as fh:
        fh.write("\n  \n")
    h = read_history(tmp_path)
    assert sorted(r.task_id or "" for r in h) == ["t1", "t1", "t2"]
    assert (h.torn_lines, h.unreadable_lines) == (1, 2)
    assert h.unreadable_at == [f"{other.path.name}:2", f"{writer.path.name}:2"]
    assert h.torn_at == [f"{writer.path.name}:5"]
    assert h.skipped().model_dump() == {
        "torn": 1, "unreadable": 2, "torn_at": h.torn_at, "unreadable_at": h.unreadable_at
    }
    assert read_raw(tmp_path)[2] == 3  # the raw reader counts every skipped line


def test_unreadable_places_are_capped(tmp_path: Path) -> None:
    from celery_chaos.history.store import LINES_SHOWN

    path = tmp_path / "worker-w1-1.jsonl"
    path.write_text("junk\n" * (LINES_SHOWN + 5) + "last junk")
    h = read_history(tmp_path)
    assert (h.torn_lines, h.unreadable_lines) == (1, LINES_SHOWN + 5)
    assert h.unreadable_at == [f"{path.name}:{n}" for n in range(1, LINES_SHOWN + 1)]
    assert h.torn_at == [f"{path.name}:{LINES_SHOWN + 6}"]
    described = h.skipped().describe()
    assert f"{LINES_SHOWN + 5} unreadable lines" in described and "+5 more" in described
    assert described.startswith(f"1 torn last line ({path.name}:{LINES_SHOWN + 6})")
