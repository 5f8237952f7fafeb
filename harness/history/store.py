"""Append-only history files: the writer every process uses, and the reader checkers use."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

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


@dataclass
class History:
    """All records of one history directory, ordered by monotonic time."""

    records: list[Record]
    files: list[Path] = field(default_factory=list)
    torn_lines: int = 0  # partial last lines from writers killed mid-write

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


def parse_raw(lines: Iterable[str]) -> tuple[list[dict[str, Any]], int]:
    """JSON Lines into plain dicts (no validation); lines that are not a JSON object are torn."""
    raws: list[dict[str, Any]] = []
    torn = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError:
            torn += 1
            continue
        if isinstance(raw, dict):
            raws.append(raw)
        else:
            torn += 1
    return raws, torn


def read_raw(directory: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[Path], int]:
    """Every record of every ``*.jsonl`` file under ``directory`` as a plain dict, in file
    order, with the files read and the number of torn lines. For readers that need speed
    more than validation (reports of 100,000-task runs); :func:`read_history` validates."""
    files = sorted(Path(directory).glob("*.jsonl"))
    raws: list[dict[str, Any]] = []
    torn = 0
    for path in files:
        with path.open(encoding="utf-8", errors="replace") as fh:
            got, t = parse_raw(fh)
        raws.extend(got)
        torn += t
    return raws, files, torn


def parse_lines(lines: Iterable[str]) -> tuple[list[Record], int]:
    """Parse JSON Lines into records; return them with the number of torn lines skipped."""
    raws, torn = parse_raw(lines)
    return validate_raws(raws), torn


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
    raws, files, torn = read_raw(root)
    records = validate_raws(raws)
    records.sort(key=lambda r: (r.mono_ns, r.wall_ns))
    return History(records=records, files=files, torn_lines=torn)
