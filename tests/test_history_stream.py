"""The streamed reader (``open_history``): the same records, order, skipped lines and errors
as ``read_history``, whatever the files hold, and the same verdicts from the checker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_chaos.checks.hung import check_hung
from celery_chaos.checks.queue import check_queue
from celery_chaos.history import store
from celery_chaos.history.schema import SCHEMA_VERSION, Kind, Record, SchemaVersionError
from celery_chaos.history.store import History, LiteRecord, open_history, read_history
from tests.test_checks_hung import runs_and_truth

FIELDS = LiteRecord.__struct_fields__


def rec(kind: str, mono: int, wall: int = 0, **kw: Any) -> dict[str, Any]:
    return {"v": 1, "kind": kind, "wall_ns": wall, "mono_ns": mono, "pid": 7, "host": "h", **kw}


def line(raw: Any) -> str:
    return json.dumps(raw) + "\n"


@pytest.fixture(autouse=True, params=[store._BLOCK, 5])
def block(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Every test twice: files read a MiB at a time, and 5 bytes at a time."""
    monkeypatch.setattr(store, "_BLOCK", request.param)
    return int(request.param)


def assert_same(directory: Path) -> History:
    """``open_history`` reads ``directory`` as ``read_history`` does; returns the stream."""
    full = read_history(directory)
    streamed = open_history(directory)
    got = [{f: getattr(r, f) for f in FIELDS} for r in streamed.records]
    assert got == [{f: getattr(r, f) for f in FIELDS} for r in full.records]
    assert len(streamed) == len(full) and bool(streamed.records) == bool(full.records)
    if full.records:
        assert streamed.records[0] == LiteRecord.of(full.records[0])
        assert streamed.records[-1] == LiteRecord.of(full.records[-1])
        middle = len(full) // 2
        assert streamed.records[middle] == LiteRecord.of(full.records[middle])
    assert streamed.files == full.files
    assert streamed.skipped() == full.skipped()
    assert [r.mono_ns for r in streamed.records] == [r.mono_ns for r in full.records]  # again
    for exactly_once in (False, True):
        assert (check_queue(streamed, exactly_once=exactly_once)
                == check_queue(full, exactly_once=exactly_once))
    return streamed


def test_order_ties_torn_and_unreadable_lines(tmp_path: Path) -> None:
    (tmp_path / "a-w1-1.jsonl").write_text(
        line(rec("started", 10, task_id="x")) + "garbage\n" + "\n"
        + line(rec("succeeded", 30, 2, task_id="x")) + line(rec("succeeded", 30, 1, task_id="y"))
        + '{"kind": "fai'
    )
    (tmp_path / "b-p-2.jsonl").write_text(
        line(rec("invoke", 5, task_id="x")) + line(rec("ok", 10, task_id="x"))
        + line(rec("invoke", 30, 1, task_id="y")) + line([1, 2]) + line(rec("ok", 31, task_id="y"))
    )
    (tmp_path / "c-h-3.jsonl").write_text(line(rec("drain", 40, detail={"complete": True})))
    h = assert_same(tmp_path)
    assert h.torn_lines == 1 and h.unreadable_lines == 2
    assert h.unreadable_at == ["a-w1-1.jsonl:2", "b-p-2.jsonl:4"]


def test_files_out_of_order_are_merged_exactly(tmp_path: Path) -> None:
    """A file whose records are not in time order (threads, a record written late) is put
    in order through a window as wide as its lateness."""
    late = [rec("started", m, task_id=f"t{m}") for m in (5, 3, 9, 9, 8, 20, 1, 25)]
    (tmp_path / "w.jsonl").write_text("".join(line(r) for r in late))
    (tmp_path / "p.jsonl").write_text(
        "".join(line(rec("invoke", m, task_id=f"t{m}")) for m in (1, 3, 5, 8, 9, 20, 25))
    )
    (tmp_path / "h.jsonl").write_text(line(rec("drain", 30)) + line(rec("fault", 2, name="k")))
    assert [r.mono_ns for r in assert_same(tmp_path).records][:5] == [1, 1, 2, 3, 3]


def test_crlf_lone_cr_bad_utf8_and_json_only_values(tmp_path: Path) -> None:
    """Lines end as in a text-mode read; what msgspec refuses, json.loads and pydantic judge
    (NaN, lax values pydantic coerces, integers beyond 64 bits)."""
    data = (
        line(rec("invoke", 1, task_id="a")).replace("\n", "\r\n").encode()
        + line(rec("ok", 2, task_id="a"))[:-1].encode() + b"\r"
        + b'{"kind": "ok", \xff\n'
        + b'{"v": 1, "kind": "started", "wall_ns": 0, "mono_ns": 3, "pid": "7", "host": "h",'
        b' "task_id": "a", "redelivered": 1, "runtime_s": NaN}\n'
        + line(rec("succeeded", 4, task_id="a", worker_pid=2**70, confirmed="yes")).encode()
        + line(rec("drain", 5, detail={"complete": True})).encode()
    )
    (tmp_path / "x.jsonl").write_bytes(data)
    h = assert_same(tmp_path)
    assert len(h) == 5 and h.unreadable_lines == 1
    started = h.records[2]
    assert started.pid == 7 and started.redelivered is True and h.records[3].worker_pid == 2**70


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"v": SCHEMA_VERSION + 1}, "upgrade celery-chaos"),
        ({"v": "1"}, "not a number"),
        ({"v": True}, "not a number"),
        ({"pid": "seven"}, "is not valid: pid"),
        ({"kind": "bogus"}, "is not valid: kind"),
    ],
)
def test_errors_are_read_historys(tmp_path: Path, bad: dict[str, Any], message: str) -> None:
    (tmp_path / "a.jsonl").write_text(line(rec("ok", 1)))
    (tmp_path / "b.jsonl").write_text(line(rec("ok", 2)) + line({**rec("ok", 0), **bad}))
    with pytest.raises(SchemaVersionError) as full:
        read_history(tmp_path)
    with pytest.raises(SchemaVersionError) as streamed:
        open_history(tmp_path)
    assert message in str(full.value) and str(streamed.value) == str(full.value)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_history(tmp_path / "nope")


def test_a_file_that_grows_is_read_as_it_was_validated(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    path.write_text(line(rec("started", 1, task_id="a")) + '{"kind": "succ')
    h = open_history(tmp_path)
    with path.open("a") as fh:  # the torn line completed, then a record of a newer schema
        fh.write('eeded"}\n' + line({**rec("ok", 2), "v": SCHEMA_VERSION + 1}))
    assert [r.kind for r in h.records] == [Kind.STARTED] and h.torn_lines == 1


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("exc_type", [None, "WorkerLostError", "Reject", "ValueError"])
def test_lite_record_properties_are_records(kind: Kind, exc_type: str | None) -> None:
    full = Record(kind=kind, wall_ns=0, mono_ns=0, pid=1, host="h", exc_type=exc_type)
    lite = LiteRecord.of(full)
    for prop in ("is_worker_lost", "is_dropped", "ends_run", "is_completion", "is_terminal"):
        assert getattr(lite, prop) == getattr(full, prop), prop


_KINDS = [k.value for k in Kind]
_LINE = st.one_of(
    st.builds(
        lambda kind, mono, wall, tid, pid, exc, complete: rec(
            kind, mono, wall, task_id=tid, pid=pid, exc_type=exc,
            detail={"complete": complete} if kind == "drain" else {},
        ),
        st.sampled_from(_KINDS), st.integers(0, 30), st.integers(0, 3),
        st.sampled_from(["a", "b", "c", None]), st.sampled_from([1, 2]),
        st.sampled_from([None, "WorkerLostError", "Reject", "ValueError"]), st.booleans(),
    ).map(line),
    st.sampled_from(["\n", "junk\n", "[]\n", '{"kind": "ok"\n', "  \r\n"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(files=st.lists(st.tuples(st.lists(_LINE, max_size=25), st.booleans()), max_size=4),
       block=st.sampled_from([1, 7, 100, store._BLOCK]))
def test_any_files_read_the_same(tmp_path_factory: pytest.TempPathFactory,
                                 monkeypatch: pytest.MonkeyPatch,
                                 files: list[tuple[list[str], bool]], block: int) -> None:
    """Whatever the lines, and however the files are cut into the blocks read at a time."""
    monkeypatch.setattr(store, "_BLOCK", block)
    directory = tmp_path_factory.mktemp("h")
    for i, (lines, torn) in enumerate(files):
        text = "".join(lines)
        if torn and text:
            text = text[:-3]
        (directory / f"f{i}.jsonl").write_text(text)
    assert_same(directory)


# -- every checker judges a streamed history as it judges the same history in memory ------


def _written(directory: Path, history: History) -> Path:
    """``history`` written as two files (records alternating), as recorders write them."""
    directory.mkdir(parents=True, exist_ok=True)
    for part in (0, 1):
        (directory / f"p{part}.jsonl").write_text("".join(
            r.model_dump_json(exclude_none=True) + "\n" for r in history.records[part::2]
        ))
    return directory


def _same_verdicts(directory: Path, checker: Any) -> None:
    full, streamed = read_history(directory), open_history(directory)
    assert checker(streamed) == checker(full)


def test_liveness_checkers_on_a_stream(tmp_path: Path) -> None:
    from celery_chaos.checks.liveness import check_publish_bounded, check_resume_consuming
    from tests.test_checks_liveness import drain, hist, partition, pub, ready, task, up

    h = hist(up(0), up(0, "w2@chaos"), ready(0, 0), *partition(1, 16), ready(2, 30),
             *task("a", 16.4), ready(17, 30), pub(Kind.INVOKE, 1, "p"), pub(Kind.OK, 14, "p"),
             drain(40))
    d = _written(tmp_path, h)
    _same_verdicts(d, lambda x: check_resume_consuming(x, bound_s=10))
    _same_verdicts(d, lambda x: check_publish_bounded(x, bound_s=5))


def test_retry_and_beat_checkers_on_a_stream(tmp_path: Path) -> None:
    from celery_chaos.checks.beat import check_beat
    from celery_chaos.checks.retries import Expected, check_retries
    from tests.test_checks_beat import FAST, one_beat
    from tests.test_checks_retries import FIXED, chain, hist

    h = hist(chain([1, 0.2, 1]) + chain([], tid="k0"))
    _same_verdicts(_written(tmp_path / "r", h), lambda x: check_retries(
        x, [FIXED], expect={"x": Expected(3, "succeeded")}))
    _same_verdicts(_written(tmp_path / "b", one_beat([FAST]).history()), check_beat)


@settings(max_examples=30, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture])
@given(case=runs_and_truth())
def test_hung_checker_on_a_stream(tmp_path_factory: pytest.TempPathFactory,
                                  case: tuple[History, float, dict[str, float], int]) -> None:
    h, bound, _, _ = case
    _same_verdicts(_written(tmp_path_factory.mktemp("h"), h),
                   lambda x: check_hung(x, bound_s=bound))


def test_a_stream_reads_again_each_time(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("".join(line(rec("ok", m, task_id=str(m)))
                                              for m in (3, 1, 2)))
    records = open_history(tmp_path).records
    assert [r.mono_ns for r in records] == [1, 2, 3] == [r.mono_ns for r in records]
    assert [r.mono_ns for r in reversed(records)] == [3, 2, 1]
    assert (records[0].mono_ns, records[1].mono_ns, records[-1].mono_ns) == (1, 2, 3)
    with pytest.raises(IndexError):
        records[3]
    (tmp_path / "a.jsonl").unlink()
    with pytest.raises(FileNotFoundError):
        list(records)


def test_files_without_records_before_one_do_not_shift_its_order(tmp_path: Path) -> None:
    """Found by the property above: a record file after empty ones, two records of one
    monotonic instant out of wall order. The file's index must fit its bits in the sort key
    (they counted the files that have records only)."""
    (tmp_path / "f0.jsonl").write_text("")
    (tmp_path / "f1.jsonl").write_text("")
    (tmp_path / "f2.jsonl").write_text(
        line(rec("invoke", 0, 1, task_id="a")) + line(rec("invoke", 0, 0, task_id="a"))
    )
    assert [r.wall_ns for r in assert_same(tmp_path).records] == [0, 1]
