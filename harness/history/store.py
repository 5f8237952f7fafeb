"""Append-only history files: the writer every process uses, and the reader checkers use."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, Field, ValidationError

from harness.history.schema import SCHEMA_VERSION, Kind, Record, SchemaVersionError

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
            try:
                raw = json.loads(line)
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

    records: list[Record]
    files: list[Path] = field(default_factory=list)
    torn_lines: int = 0  # last lines without their end, not records: writers killed mid-write
    unreadable_lines: int = 0  # any other line that is not a record: a line lost
    torn_at: list[str] = field(default_factory=list)  # "file:line", the first LINES_SHOWN
    unreadable_at: list[str] = field(default_factory=list)  # "file:line", the first LINES_SHOWN

    @classmethod
    def of(
        cls, records: list[Record], files: list[Path], scans: Iterable[tuple[str, LineScan]]
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
