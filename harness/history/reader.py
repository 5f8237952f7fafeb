"""An incremental reader of a history directory: each poll reads only what was appended.

:func:`~celery_chaos.history.store.read_history` re-reads and re-validates every file; the waits
and the drain look at the history every 50-250 ms, so they use a :class:`HistoryTail`
instead. It keeps, per ``*.jsonl`` file, the byte offset after the last complete line; a
line without its trailing newline is a record still being written and waits for a later
poll. Parsing and validation are the store's own (:func:`~celery_chaos.history.store.parse_raw`,
:func:`~celery_chaos.history.store.validate_raws`), and each file's
:class:`~celery_chaos.history.store.LineScan` goes on from where it stopped, so a tail and
``read_history`` give the same records in the same order, and the same torn and unreadable
lines.
"""

from __future__ import annotations

import bisect
import heapq
import os
import threading
from dataclasses import dataclass, field
from itertools import pairwise
from operator import itemgetter
from pathlib import Path

from celery_chaos.history.schema import Record
from celery_chaos.history.store import History, LineScan, decode_lines, parse_raw, validate_raws

#: Sort key of a record: ``(mono_ns, wall_ns, file name, index in the file)``, the order
#: ``read_history`` gives (a stable sort by time of the files' records in name order).
Key = tuple[int, int, str, int]


@dataclass
class _File:
    """How far one history file has been read."""

    path: Path
    inode: int = -1
    offset: int = 0  # bytes consumed: just after the last complete line
    size: int = 0  # bytes seen at the last read (offset + the partial line)
    partial: bytes = b""  # the unterminated last line, if any
    count: int = 0  # records taken from the file so far
    scan: LineScan = field(default_factory=LineScan)  # the complete lines read so far


@dataclass(frozen=True)
class TailCursor:
    """Where a consumer of :meth:`HistoryTail.since` stopped: records that arrived up to
    ``index`` in epoch ``epoch`` (a file that shrank or was replaced starts a new epoch)."""

    epoch: int = -1
    index: int = 0


class HistoryTail:
    """Reads a history directory incrementally; thread-safe.

    ``poll()`` reads what writers appended and returns the records no earlier ``poll()``
    returned; ``records()`` and ``history()`` read too, then return everything so far, in
    ``(mono_ns, wall_ns)`` order, as :func:`~celery_chaos.history.store.read_history` would.
    ``poll()`` has one cursor per tail (a record goes to one of the threads that poll);
    consumers that each need every new record use :meth:`since` with a cursor of their own.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._files: dict[str, _File] = {}
        self._keys: list[Key] = []  # sorted; parallel to _records
        self._records: list[Record] = []
        self._arrival_keys: list[Key] = []  # in the order reads found them (for cursors)
        self._arrivals: list[Record] = []
        self._epoch = 0
        self._polled = TailCursor(0, 0)  # poll()'s own cursor

    # -- public ----------------------------------------------------------------------------

    def poll(self) -> list[Record]:
        """Read what was appended; return the records no earlier ``poll()`` returned (every
        record again after a file shrank or was replaced), in ``(mono_ns, wall_ns)`` order.
        Raises like ``read_history`` (no directory, a record of a newer schema or not
        valid); nothing is consumed then."""
        with self._lock:
            self._read()
            records, self._polled, _ = self._after(self._polled)
            return records

    def records(self) -> list[Record]:
        """Read what was appended, then every record so far in ``(mono_ns, wall_ns)`` order
        (a new list)."""
        with self._lock:
            self._read()
            return list(self._records)

    def history(self, *, include_partial: bool = False) -> History:
        """Read what was appended, then everything so far as a :class:`History` (with files,
        torn and unreadable lines, as far as the complete lines tell).

        ``include_partial``: also read each file's unterminated last line as
        ``read_history`` does (a record if it parses, else a torn line) without consuming
        it; for the final look once the writers have stopped, when the result must equal
        ``read_history`` exactly.
        """
        with self._lock:
            self._read()
            records = list(self._records)
            states = sorted(self._files.values(), key=lambda f: f.path.name)
            scans = [(f.path.name, f.scan) for f in states]
            if include_partial:
                records, scans = self._with_partials(records, states)
            return History.of(records, [f.path for f in states], scans)

    def since(self, cursor: TailCursor | None = None) -> tuple[list[Record], TailCursor, bool]:
        """Read what was appended, then the records read after ``cursor`` (by any call).

        Returns ``(records, new cursor, whole)``: ``whole`` is true when ``records`` is the
        entire history instead (no cursor yet, or a file shrank or was replaced since), and
        the consumer must rebuild what it derived from earlier records.
        """
        with self._lock:
            self._read()
            return self._after(cursor)

    def __len__(self) -> int:
        """Records read so far (reads nothing)."""
        with self._lock:
            return len(self._records)

    # -- internals (the lock held) ---------------------------------------------------------

    def _after(self, cursor: TailCursor | None) -> tuple[list[Record], TailCursor, bool]:
        """Records read after ``cursor``, in order; the cursor now; whether that is all."""
        end = TailCursor(self._epoch, len(self._arrivals))
        if cursor is None or cursor.epoch != self._epoch:
            return list(self._records), end, True
        keys = self._arrival_keys[cursor.index :]
        records = self._arrivals[cursor.index :]
        if any(a > b for a, b in pairwise(keys)):  # several reads: merge them
            order = sorted(range(len(keys)), key=keys.__getitem__)
            records = [records[i] for i in order]
        return records, end, False

    def _read(self) -> None:
        """Read every file from where it stopped; merge the new records in."""
        if not self.directory.is_dir():
            raise FileNotFoundError(f"no history directory at {self.directory}")
        reads: list[tuple[_File, int, int, bytes, list[Record], LineScan, bool]] = []
        paths = sorted(self.directory.glob("*.jsonl"))
        gone = self._files.keys() - {p.name for p in paths}
        for path in paths:
            state = self._files.get(path.name)
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            reset = state is not None and (st.st_ino != state.inode or st.st_size < state.size)
            if state is None or reset:
                state = _File(path, inode=st.st_ino)
            elif st.st_size == state.size:
                continue
            with path.open("rb") as fh:
                fh.seek(state.offset)
                data = fh.read()
            end = data.rfind(b"\n") + 1
            raws, scan = parse_raw(_lines(data[:end]), state.scan.copy())
            records = validate_raws(raws)  # may raise: nothing is committed then
            reads.append((state, st.st_ino, end, data, records, scan, reset))
        for name in gone:
            self._drop(name)
        new_keys: list[Key] = []
        new_recs: list[Record] = []
        for state, inode, end, data, records, scan, reset in reads:
            name = state.path.name
            if reset:
                self._drop(name)
            self._files[name] = state
            state.inode = inode
            state.size = state.offset + len(data)
            state.offset += end
            state.partial = data[end:]
            state.scan = scan
            for rec in records:
                key = (rec.mono_ns, rec.wall_ns, name, state.count)
                state.count += 1
                new_keys.append(key)
                new_recs.append(rec)
        if not new_recs:
            return
        order = sorted(range(len(new_recs)), key=new_keys.__getitem__)
        keys = [new_keys[i] for i in order]
        recs = [new_recs[i] for i in order]
        self._keys, self._records = _merge(self._keys, self._records, keys, recs)
        self._arrival_keys.extend(keys)
        self._arrivals.extend(recs)

    def _drop(self, name: str) -> None:
        """Forget a file that was removed, shrank or was replaced (then read again)."""
        old = self._files.pop(name, None)
        if old is None:
            return
        kept = [(k, r) for k, r in zip(self._keys, self._records, strict=True) if k[2] != name]
        self._keys = [k for k, _ in kept]
        self._records = [r for _, r in kept]
        self._arrival_keys = list(self._keys)
        self._arrivals = list(self._records)
        self._epoch += 1

    def _with_partials(
        self, records: list[Record], states: list[_File]
    ) -> tuple[list[Record], list[tuple[str, LineScan]]]:
        """``records`` with each file's unterminated last line read in, and the scans of
        ``states`` read on through it (nothing is consumed)."""
        keys = list(self._keys)
        scans: list[tuple[str, LineScan]] = []
        for state in states:
            if not state.partial:
                scans.append((state.path.name, state.scan))
                continue
            raws, scan = parse_raw(_lines(state.partial), state.scan.copy())
            scans.append((state.path.name, scan))
            extra = validate_raws(raws)
            name = state.path.name
            pk = [(r.mono_ns, r.wall_ns, name, state.count + i) for i, r in enumerate(extra)]
            pairs = sorted(zip(pk, extra, strict=True), key=itemgetter(0))
            keys, records = _merge(keys, records, [k for k, _ in pairs], [r for _, r in pairs])
        return records, scans


def _lines(data: bytes) -> list[str]:
    """The lines of ``data`` as a text-mode read of a file yields them (each with its
    ``\\n``, the last without one if it has none): line numbers and torn last lines then
    match :func:`read_history`'s."""
    parts = decode_lines(data)
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _merge(
    keys: list[Key], recs: list[Record], new_keys: list[Key], new_recs: list[Record]
) -> tuple[list[Key], list[Record]]:
    """Merge sorted ``new_keys``/``new_recs`` into sorted ``keys``/``recs`` (in place when
    they all come after the last one, the usual case; otherwise only the overlap moves)."""
    if not new_keys:
        return keys, recs
    if not keys or new_keys[0] >= keys[-1]:
        keys.extend(new_keys)
        recs.extend(new_recs)
        return keys, recs
    pos = bisect.bisect_left(keys, new_keys[0])
    old = zip(keys[pos:], recs[pos:], strict=True)
    new = zip(new_keys, new_recs, strict=True)
    merged = list(heapq.merge(old, new, key=itemgetter(0)))
    del keys[pos:], recs[pos:]
    keys.extend(k for k, _ in merged)
    recs.extend(r for _, r in merged)
    return keys, recs
