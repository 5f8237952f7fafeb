"""Append-only history files: the writer every process uses, and the reader checkers use."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Annotated, Any, Union

import msgspec
import orjson
from pydantic import BaseModel, Field, ValidationError

from celery_chaos.history.schema import (
    SCHEMA_VERSION,
    Kind,
    Record,
    SchemaVersionError,
    TaskEnd,
)

#: Compact JSON for messages and for records orjson refuses (non-str keys, huge ints).
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def encode_line(rec: dict[str, Any]) -> bytes:
    """One record as a compact JSON line (orjson; the stdlib encoder for what it refuses)."""
    try:
        return orjson.dumps(rec, default=str, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        return (_ENCODER.encode(rec) + "\n").encode()

#: Environment variable that tells every process where the history lives.
HISTORY_DIR_ENV = "CHAOS_HISTORY_DIR"

_SAFE = re.compile(r"[^A-Za-z0-9_.@-]+")


def history_file(directory: str | os.PathLike[str], role: str, host: str, pid: int) -> Path:
    """The history file of one process: ``<dir>/<role>-<host>-<pid>.jsonl``."""
    return Path(directory) / f"{_SAFE.sub('_', role)}-{_SAFE.sub('_', host)}-{pid}.jsonl"


class HistoryWriter:
    """Writes records for one process to ``<dir>/<role>-<host>-<pid>.jsonl``.

    Each record is serialised to one line and written with a single
    ``os.write`` on an ``O_APPEND`` descriptor. The file is reopened after a
    fork (the pid is part of the name), so prefork pool children each get
    their own file with no shared offsets.
    """

    def __init__(self, directory: str | os.PathLike[str], role: str, host: str) -> None:
        self.directory = Path(directory)
        self.role = role
        self.host = host
        self._fd: int | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        """The file this process writes to."""
        return history_file(self.directory, self.role, self.host, os.getpid())

    def _descriptor(self, pid: int) -> int:
        if self._fd is None or self._pid != pid:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._pid = pid
        return self._fd

    def write(self, kind: Kind | str, **fields: Any) -> dict[str, Any]:
        """Append one record (``None`` fields left out) and return it as written."""
        return self.append(kind._value_ if isinstance(kind, Kind) else kind, fields)

    def append(self, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        """:meth:`write` for hot paths: ``kind`` already a string, ``fields`` a dict.

        A worker calls this three times a task (received, started, succeeded), so it is kept
        lean: orjson, no per-call encoder, no keyword packing, one ``os.write``.
        """
        pid = os.getpid()
        rec: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "kind": kind,
            "wall_ns": time.time_ns(),
            "mono_ns": time.monotonic_ns(),
            "pid": pid,
            "host": self.host,
            "role": self.role,
        }
        for key, value in fields.items():
            if value is not None:
                rec[key] = value
        line = encode_line(rec)
        with self._lock:
            os.write(self._descriptor(pid), line)
        return rec

    def close(self) -> None:
        """Close the descriptor (a later write reopens it)."""
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = None


_JSON = msgspec.json.Decoder().decode

#: How many ``file:line`` places of torn lines, and of unreadable lines, a history keeps.
LINES_SHOWN = 10


@dataclass
class LineScan:
    """The lines of one file read so far, and those that were not a JSON object.

    A writer appends each record and its line end in one ``write(2)``, so a writer killed
    mid-write (expected after SIGKILL) leaves a last line without its end: when that line is
    not a record it is *torn*, and only noted. Any other line that is not a record, even the
    last one if it has its line end (a record appended to a torn line, a corrupted file), is
    *unreadable*: a line lost that may have been the record of a lost task.
    """

    lines: int = 0  # lines read, blank ones included
    open_end: bool = False  # the last line read had no line end (yet)
    bad: int = 0  # non-blank lines that were not a JSON object
    bad_last: int = 0  # the number (from 1) of the last of them
    bad_first: list[int] = field(default_factory=list)  # the first LINES_SHOWN + 1 of them

    def feed(self, lines: Iterable[str]) -> list[dict[str, Any]]:
        """Read the file's next ``lines`` (with their line ends, as a text-mode read yields
        them); return the JSON objects among them (no validation)."""
        raws: list[dict[str, Any]] = []
        for line in lines:
            self.lines += 1
            self.open_end = not line.endswith("\n")
            if not line.strip():
                continue
            try:  # msgspec: json.loads' values, 3x as fast; what it refuses, json.loads judges
                raw = _JSON(line)
            except msgspec.MsgspecError:
                try:
                    raw = json.loads(line)  # NaN, Infinity, lone surrogates
                except json.JSONDecodeError:
                    raw = None
            if isinstance(raw, dict):
                raws.append(raw)
                continue
            self.bad += 1
            self.bad_last = self.lines
            if len(self.bad_first) <= LINES_SHOWN:
                self.bad_first.append(self.lines)
        return raws

    def copy(self) -> LineScan:
        """An independent copy (to read on without changing this one)."""
        return replace(self, bad_first=list(self.bad_first))

    @property
    def torn(self) -> int:
        """1 when the last line, without its line end, was not a record, else 0."""
        return int(self.bad > 0 and self.bad_last == self.lines and self.open_end)

    @property
    def unreadable(self) -> int:
        """Lines that were not a record, the torn last line aside."""
        return self.bad - self.torn

    def unreadable_numbers(self) -> list[int]:
        """The numbers of the first :data:`LINES_SHOWN` unreadable lines."""
        torn = self.bad_last if self.torn else 0
        return [n for n in self.bad_first if n != torn][:LINES_SHOWN]


class SkippedLines(BaseModel):
    """Lines of a history that were not records: torn last lines and unreadable lines, with
    the ``file:line`` places of the first :data:`LINES_SHOWN` of each."""

    torn: int = 0
    unreadable: int = 0
    torn_at: list[str] = Field(default_factory=list)
    unreadable_at: list[str] = Field(default_factory=list)

    @classmethod
    def of(cls, scans: Iterable[tuple[str, LineScan]]) -> SkippedLines:
        """The lines skipped in files ``(name, scan)``, in the order given."""
        out = cls()
        for name, scan in scans:
            out.torn += scan.torn
            out.unreadable += scan.unreadable
            if scan.torn:
                out.torn_at.append(f"{name}:{scan.bad_last}")
            out.unreadable_at += [f"{name}:{n}" for n in scan.unreadable_numbers()]
        out.torn_at = out.torn_at[:LINES_SHOWN]
        out.unreadable_at = out.unreadable_at[:LINES_SHOWN]
        return out

    def describe(self) -> str:
        """One line: the counts and the first places, for people."""
        def part(n: int, what: str, where: list[str]) -> str:
            more = f", +{n - len(where)} more" if n > len(where) else ""
            return f"{n} {what}{'' if n == 1 else 's'}" + (
                f" ({', '.join(where)}{more})" if n else ""
            )

        return "; ".join([
            part(self.torn, "torn last line", self.torn_at),
            part(self.unreadable, "unreadable line", self.unreadable_at),
        ])


@dataclass
class History:
    """All records of one history directory, ordered by monotonic time, and the lines of its
    files that were not records (:class:`LineScan` says which are torn, which unreadable)."""

    records: list[Record] | RecordStream
    files: list[Path] = field(default_factory=list)
    torn_lines: int = 0  # last lines without their end, not records: writers killed mid-write
    unreadable_lines: int = 0  # any other line that is not a record: a line lost
    torn_at: list[str] = field(default_factory=list)  # "file:line", the first LINES_SHOWN
    unreadable_at: list[str] = field(default_factory=list)  # "file:line", the first LINES_SHOWN

    @classmethod
    def of(
        cls,
        records: list[Record] | RecordStream,
        files: list[Path],
        scans: Iterable[tuple[str, LineScan]],
    ) -> History:
        """A history of ``records`` read from ``files`` with the ``(file name, scan)`` of each."""
        skipped = SkippedLines.of(scans)
        return cls(
            records=records,
            files=files,
            torn_lines=skipped.torn,
            unreadable_lines=skipped.unreadable,
            torn_at=skipped.torn_at,
            unreadable_at=skipped.unreadable_at,
        )

    def skipped(self) -> SkippedLines:
        """The lines that were not records, as a model (for ``result.json`` and ``--json``)."""
        return SkippedLines(
            torn=self.torn_lines,
            unreadable=self.unreadable_lines,
            torn_at=list(self.torn_at),
            unreadable_at=list(self.unreadable_at),
        )

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def of_kind(self, *kinds: Kind) -> list[Record]:
        """Records whose kind is one of ``kinds``."""
        wanted = set(kinds)
        return [r for r in self.records if r.kind in wanted]

    def for_task(self, task_id: str) -> list[Record]:
        """Every record about one task id, in order."""
        return [r for r in self.records if r.task_id == task_id]


def parse_raw(
    lines: Iterable[str], scan: LineScan | None = None
) -> tuple[list[dict[str, Any]], LineScan]:
    """One file's JSON Lines into plain dicts (no validation), and the :class:`LineScan` of the
    file (``scan``, continued, to read a file on from where an earlier call stopped)."""
    scan = LineScan() if scan is None else scan
    return scan.feed(lines), scan


def scan_raw(
    directory: str | os.PathLike[str],
) -> tuple[list[dict[str, Any]], list[Path], list[tuple[str, LineScan]]]:
    """Every record of every ``*.jsonl`` file under ``directory`` as a plain dict, in file
    order, with the files read and the ``(file name, scan)`` of each."""
    files = sorted(Path(directory).glob("*.jsonl"))
    raws: list[dict[str, Any]] = []
    scans: list[tuple[str, LineScan]] = []
    for path in files:
        with path.open(encoding="utf-8", errors="replace") as fh:
            got, scan = parse_raw(fh)
        raws.extend(got)
        scans.append((path.name, scan))
    return raws, files, scans


def read_raw(directory: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[Path], int]:
    """:func:`scan_raw` with the number of lines that were not records (torn or unreadable),
    for readers that need speed more than validation (reports of 100,000-task runs);
    :func:`read_history` validates and tells torn lines from unreadable ones."""
    raws, files, scans = scan_raw(directory)
    return raws, files, sum(scan.bad for _, scan in scans)


def parse_lines(lines: Iterable[str]) -> tuple[list[Record], LineScan]:
    """One file's JSON Lines into records, with the file's :class:`LineScan`."""
    raws, scan = parse_raw(lines)
    return validate_raws(raws), scan


def decode_lines(data: bytes) -> list[str]:
    """``data`` split into lines as :func:`read_raw` reads a file (UTF-8 with replacement,
    universal newlines: ``\\r\\n`` and ``\\r`` end a line too), without the line ends."""
    text = data.decode("utf-8", errors="replace")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n")


def validate_raws(raws: list[dict[str, Any]]) -> list[Record]:
    """Plain dicts into records; a newer schema or an invalid record raises
    :class:`SchemaVersionError` (the one definition of what a valid record is)."""
    records: list[Record] = []
    for raw in raws:
        version = raw.get("v", 1)
        if not isinstance(version, int) or isinstance(version, bool):
            raise SchemaVersionError(f"history record has schema version {version!r}: not a number")
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"history record has schema v{version}, this celery-chaos reads up to "
                f"v{SCHEMA_VERSION}: upgrade celery-chaos"
            )
        try:
            records.append(Record.model_validate(raw))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "record"
            raise SchemaVersionError(
                f"history record {short_json(raw)} is not valid: {where}: {first['msg']}"
            ) from None
    return records


def short_json(raw: Any, limit: int = 80) -> str:
    """``raw`` as compact JSON, cut to ``limit`` characters for a one-line message."""
    text = _ENCODER.encode(raw)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_history(directory: str | os.PathLike[str]) -> History:
    """Read every ``*.jsonl`` file under ``directory`` into one ordered :class:`History`."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"no history directory at {root}")
    raws, files, scans = scan_raw(root)
    records = validate_raws(raws)
    records.sort(key=lambda r: (r.mono_ns, r.wall_ns))
    return History.of(records, files, scans)


# -- streaming: a history read from disk as it is iterated, in constant memory -------------


class LiteRecord(msgspec.Struct, TaskEnd, gc=False):
    """A :class:`~celery_chaos.history.schema.Record` as msgspec decodes it: the same fields, types
    and properties (:class:`~celery_chaos.history.schema.TaskEnd`), a fraction of the cost (no
    pydantic model a record; extra keys dropped).

    msgspec is stricter than pydantic's lax mode (no ``"1"`` for an int, no ``1`` for a
    bool), so a line it refuses is judged by :func:`validate_raws`, the one definition of a
    valid record: what pydantic accepts is kept (with pydantic's values), the rest raises.
    """

    kind: Kind
    wall_ns: int
    mono_ns: int
    pid: int
    host: str
    v: Annotated[int, msgspec.Meta(le=SCHEMA_VERSION)] = SCHEMA_VERSION  # newer: refused
    role: str = ""
    task_id: str | None = None
    task_name: str | None = None
    queue: str | None = None
    args: str | None = None
    kwargs: str | None = None
    confirmed: bool | None = None
    error: str | None = None
    latency_ns: int | None = None
    worker_pid: int | None = None
    redelivered: bool | None = None
    retries: int | None = None
    exc_type: str | None = None
    exc_message: str | None = None
    eta: str | None = None
    reason: str | None = None
    runtime_s: float | None = None
    name: str | None = None
    phase: str | None = None
    target: str | None = None
    detail: dict[str, Any] = {}

    @classmethod
    def of(cls, rec: Record) -> LiteRecord:
        """The light copy of a validated :class:`Record` (its extra keys left out)."""
        return cls(**{name: getattr(rec, name) for name in cls.__struct_fields__})


#: A record as a checker reads it: validated by pydantic, or decoded by msgspec.
AnyRecord = Union[Record, LiteRecord]  # noqa: UP007 - a runtime alias on Python 3.10

_LITE = msgspec.json.Decoder(LiteRecord)
#: Sort key of a streamed record: ``(mono_ns, wall_ns, file index, line number)``, then it.
_Item = tuple[int, int, int, int, LiteRecord]
#: Bytes read (and lines decoded) at a time.
_BLOCK = 1 << 20


def _text_lines(raw: bytes) -> list[str]:
    """A binary line (with its ``\\n``, if it has one) as the text lines a text-mode read
    yields from it (UTF-8 with replacement; ``\\r\\n`` and a lone ``\\r`` end a line too)."""
    text = raw.decode("utf-8", errors="replace")
    if "\r" not in text:
        return [text]
    parts = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _decode(
    lines: list[bytes], ended: bool, scan: LineScan, cr: bool = False
) -> tuple[list[LiteRecord], Sequence[int]]:
    """The records of ``lines`` (binary, without their ``\\n``; ``ended``: the last one had
    its ``\\n``; ``cr``: some hold a ``\\r``) and their line numbers, counted in ``scan`` as
    :meth:`LineScan.feed` counts.

    All of them at once with msgspec when every line is a valid record (``v`` at most
    :data:`SCHEMA_VERSION`: the type says so) and none holds a ``\\r``, else line by line:
    msgspec, then for a line it refuses, LineScan's own reading and :func:`validate_raws`
    (which raises for a newer schema or an invalid record, as :func:`read_history` does).
    """
    decode = _LITE.decode
    first = scan.lines + 1
    try:
        if cr:
            raise msgspec.DecodeError("a \\r: read line by line, as a text-mode read splits")
        records = [decode(line) for line in lines]
    except msgspec.MsgspecError:
        pass
    else:
        scan.lines += len(lines)
        scan.open_end = not ended
        return records, range(first, scan.lines + 1)
    records, numbers = [], []
    last = len(lines) - 1
    for i, line in enumerate(lines):
        raw = line + b"\n" if ended or i < last else line
        if b"\r" not in raw:
            try:
                rec = decode(raw)
            except msgspec.MsgspecError:
                pass
            else:
                scan.lines += 1
                scan.open_end = not raw.endswith(b"\n")
                records.append(rec)
                numbers.append(scan.lines)
                continue
        for text in _text_lines(raw):
            raws = scan.feed((text,))
            if raws:
                records.append(LiteRecord.of(validate_raws(raws)[0]))
                numbers.append(scan.lines)
    return records, numbers


def _blocks(
    path: Path, scan: LineScan, limit: int | None = None, read: list[int] | None = None
) -> Iterator[tuple[list[LiteRecord], Sequence[int]]]:
    """The records of one file, a block at a time, with their line numbers (:func:`_decode`).
    ``limit``: read no more than that many bytes; ``read``: a one-item list that gets the
    number of bytes read."""
    left = limit
    carry = b""
    total = 0
    with path.open("rb") as fh:
        while True:
            size = _BLOCK if left is None else min(_BLOCK, left)
            data = fh.read(size) if size > 0 else b""
            total += len(data)
            if left is not None:
                left -= len(data)
            if not data:
                break
            data = carry + data
            cut = data.rfind(b"\n") + 1
            carry = data[cut:]
            if cut:
                lines = data[: cut - 1].split(b"\n")
                yield _decode(lines, True, scan, b"\r" in data)
    if carry:
        yield _decode([carry], False, scan, b"\r" in carry)
    if read is not None:
        read[0] = total


@dataclass
class _FileMeta:
    """What the first pass over one history file found."""

    path: Path
    index: int
    size: int = 0  # bytes read: later passes read no further (a live file may grow)
    scan: LineScan = field(default_factory=LineScan)
    count: int = 0
    ordered: bool = True  # its records are in (mono_ns, wall_ns) order already
    late_ns: int = 0  # how far a record's mono_ns falls behind the greatest before it
    first: _Item | None = None  # the least of its records in read_history's order
    last: _Item | None = None  # the greatest
    mono_range: tuple[int, ...] = ()  # (least, greatest) mono_ns, if it has records
    wall_range: tuple[int, ...] = ()


def _widen(span: tuple[int, ...], values: list[int]) -> tuple[int, int]:
    """``(least, greatest)`` of ``values`` and the ``span`` so far (``()``: none yet)."""
    lo, hi = min(values), max(values)
    return (min(lo, span[0]), max(hi, span[1])) if span else (lo, hi)


def _first_pass(path: Path, index: int) -> _FileMeta:
    """Read one file through: validate, count, see whether it is in order and how late an
    out-of-order record comes."""
    meta = _FileMeta(path, index)
    prev: tuple[int, int] | None = None
    top: int | None = None  # the greatest mono_ns so far
    read = [0]
    for records, numbers in _blocks(path, meta.scan, read=read):
        if not records:
            continue
        meta.count += len(records)
        monos = [r.mono_ns for r in records]
        walls = [r.wall_ns for r in records]
        meta.mono_range = _widen(meta.mono_range, monos)
        meta.wall_range = _widen(meta.wall_range, walls)
        keys: list[Any]
        if 0 <= min(walls) and max(walls) < 1 << 64:  # (mono_ns, wall_ns) as one int
            keys = [(m << 64) | w for m, w in zip(monos, walls, strict=True)]
        else:
            keys = list(zip(monos, walls, strict=True))
        i = keys.index(min(keys))  # the least, the first line of equal ones
        j = len(keys) - 1 - keys[::-1].index(max(keys))  # the greatest, the last line
        lo, hi = records[i], records[j]
        if meta.first is None or (lo.mono_ns, lo.wall_ns) < meta.first[:2]:
            meta.first = (lo.mono_ns, lo.wall_ns, index, numbers[i], lo)
        if meta.last is None or (hi.mono_ns, hi.wall_ns) >= meta.last[:2]:
            meta.last = (hi.mono_ns, hi.wall_ns, index, numbers[j], hi)
        head = (monos[0], walls[0])
        if (prev is not None and head < prev) or keys != sorted(keys):
            meta.ordered = False
            for mono in monos:
                if top is not None and mono < top:
                    meta.late_ns = max(meta.late_ns, top - mono)
                else:
                    top = mono
        else:
            top = monos[-1] if top is None else max(top, monos[-1])
        prev = (monos[-1], walls[-1])
    meta.size = read[0]
    return meta


@dataclass(frozen=True)
class _Packing:
    """Sort keys ``(mono_ns, wall_ns, file, line)`` packed into one int each: ints sort
    faster than tuples, and a block of them is nothing for the garbage collector to scan
    (a million tuples alive in blocks cost a third of the reading time in collections). The
    widths come from the first pass, so any ints pack exactly."""

    mono0: int
    wall0: int
    wall_bits: int
    file_bits: int
    line_bits: int

    @classmethod
    def of(cls, metas: list[_FileMeta]) -> _Packing:
        monos = [v for m in metas for v in m.mono_range]
        walls = [v for m in metas for v in m.wall_range]
        mono0, wall0 = min(monos, default=0), min(walls, default=0)
        return cls(
            mono0=mono0,
            wall0=wall0,
            wall_bits=(max(walls, default=0) - wall0).bit_length(),
            # by the greatest file index: files without records are left out of ``metas``
            file_bits=max((m.index for m in metas), default=1).bit_length(),
            line_bits=max((m.scan.lines for m in metas), default=0).bit_length(),
        )

    def mono_floor(self, mono: int) -> int:
        """The least key of a record at ``mono``."""
        return (mono - self.mono0) << (self.wall_bits + self.file_bits + self.line_bits)


def _sorted_blocks(meta: _FileMeta, pack: _Packing) -> Iterator[tuple[list[int], list[Any]]]:
    """One file's records in ``(mono_ns, wall_ns)`` order as blocks of (sort keys, records),
    each block sorted and after the one before.

    A file out of order (threads of one process, a harness that writes a record late) holds
    back the records less than ``late_ns`` older than the greatest ``mono_ns`` read: no
    later record can come before any other (the first pass measured ``late_ns``), so the
    order is exact and only the records of that window are held.
    """
    try:
        grown = meta.path.stat().st_size != meta.size
    except FileNotFoundError:
        grown = True  # then opening it raises, as reading a removed file does
    m0, w0 = pack.mono0, pack.wall0
    shift_mono = pack.wall_bits + pack.file_bits + pack.line_bits
    shift_wall = pack.file_bits + pack.line_bits
    file_key = meta.index << pack.line_bits
    held_keys: list[int] = []
    held: list[Any] = []
    top: int | None = None
    for records, numbers in _blocks(meta.path, LineScan(), meta.size if grown else None):
        keys = [
            ((r.mono_ns - m0) << shift_mono) | ((r.wall_ns - w0) << shift_wall) | file_key | n
            for r, n in zip(records, numbers, strict=True)
        ]
        if meta.ordered:
            yield keys, records
            continue
        if not records:
            continue
        held_keys += keys
        held += records
        order = sorted(range(len(held_keys)), key=held_keys.__getitem__)
        held_keys = [held_keys[i] for i in order]
        held = [held[i] for i in order]
        high = (max(keys) >> shift_mono) + m0
        top = high if top is None else max(top, high)
        cut = bisect_left(held_keys, pack.mono_floor(top - meta.late_ns))
        if cut:
            yield held_keys[:cut], held[:cut]
            held_keys, held = held_keys[cut:], held[cut:]
    if held:
        yield held_keys, held


def _merge(metas: list[_FileMeta]) -> Iterator[LiteRecord]:
    """The records of every file in ``(mono_ns, wall_ns, file, line)`` order: a block of each
    file at a time, everything up to the least of the blocks' last keys sorted at once
    (timsort merges the files' runs) and handed on."""
    pack = _Packing.of(metas)
    heads: list[tuple[list[int], list[Any], int, Iterator[tuple[list[int], list[Any]]]]] = []
    for meta in metas:
        src = _sorted_blocks(meta, pack)
        block = next((b for b in src if b[0]), None)
        if block is not None:
            heads.append((*block, 0, src))
    while heads:
        if len(heads) == 1:
            _, records, pos, src = heads[0]
            yield from records[pos:]
            for _, records in src:
                yield from records
            return
        bound = min(keys[-1] for keys, _, _, _ in heads)
        batch_keys: list[int] = []
        batch: list[Any] = []
        refill = []
        for keys, records, pos, src in heads:
            cut = bisect_right(keys, bound, pos)
            batch_keys += keys[pos:cut]
            batch += records[pos:cut]
            if cut < len(keys):
                refill.append((keys, records, cut, src))
            else:
                block = next((b for b in src if b[0]), None)
                if block is not None:
                    refill.append((*block, 0, src))
        heads = refill
        yield from map(batch.__getitem__, sorted(range(len(batch)), key=batch_keys.__getitem__))


class RecordStream(Sequence[LiteRecord]):
    """The records of a history directory in ``(mono_ns, wall_ns)`` order, the order
    :func:`read_history` gives, read from disk each time they are iterated: a k-way merge
    of the files, in memory that does not grow with the history. Length, first and last
    records are known without reading again; any other index reads up to it."""

    def __init__(self, metas: list[_FileMeta]) -> None:
        self._metas = [m for m in metas if m.count]
        self._len = sum(m.count for m in self._metas)
        firsts = [m.first for m in self._metas if m.first is not None]
        lasts = [m.last for m in self._metas if m.last is not None]
        self._first = min(firsts, key=lambda i: i[:4])[4] if firsts else None
        self._last = max(lasts, key=lambda i: i[:4])[4] if lasts else None

    def __iter__(self) -> Iterator[LiteRecord]:
        return _merge(self._metas)

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __reversed__(self) -> Iterator[LiteRecord]:
        """Last to first: one read into memory (indexing back would read once a record)."""
        return reversed(list(self))

    def __getitem__(self, index: int) -> LiteRecord:  # type: ignore[override]
        if not isinstance(index, int):
            raise TypeError("a RecordStream is indexed by an int only")
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError("record index out of range")
        if index == 0 and self._first is not None:
            return self._first
        if index == self._len - 1 and self._last is not None:
            return self._last
        return next(islice(iter(self), index, None))


def open_history(directory: str | os.PathLike[str]) -> History:
    """:func:`read_history` for histories of any size: the same order, the same torn and
    unreadable lines, the same errors, but records are :class:`LiteRecord` and are read
    from disk each time ``records`` is iterated (:class:`RecordStream`), so memory does not
    grow with the history. One pass here validates every file (raising as
    :func:`read_history` does, for the first invalid record in file order)."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"no history directory at {root}")
    files = sorted(root.glob("*.jsonl"))
    metas = [_first_pass(path, i) for i, path in enumerate(files)]
    return History.of(RecordStream(metas), files, [(m.path.name, m.scan) for m in metas])
