"""The final drain: wait (bounded) until nothing more can come out of the deployment.

The checker may call a task lost only when the system is quiescent, so after
the load and the faults the harness waits until either every acknowledged task
has a terminal record, or the broker holds nothing (no ready and no unacked
messages in the scenario's queues), no task is running (its last record is
``started`` in a live process: a long early-ack task is not lost) and the history
has stopped growing for a settle period. If neither happens before the deadline
the drain is recorded ``complete: false`` and the checker's verdict can be no
better than unknown.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from celery_chaos.history.reader import HistoryTail, TailCursor
from celery_chaos.history.schema import Kind, Record
from celery_chaos.history.store import HistoryWriter


@dataclass
class DrainResult:
    """What the drain saw: whether it completed, how long it took, and what was left."""

    complete: bool
    seconds: float
    reason: str
    outstanding: int = 0
    depths: dict[str, tuple[int, int]] = field(default_factory=dict)


class DrainState:
    """Which acknowledged tasks are outstanding, kept up to date from the records a
    :class:`HistoryTail` reads after each look (not recomputed from the whole history)."""

    def __init__(self, tail: HistoryTail) -> None:
        self.tail = tail
        self._cursor: TailCursor | None = None
        self.acked: set[str] = set()
        self.done: set[str] = set()
        self.outstanding: set[str] = set()  # acked - done
        self.last: dict[str, Record] = {}  # task id -> its latest worker record
        self.count = 0

    def update(self) -> tuple[set[str], int, set[str]]:
        """Read the new records; return what :func:`outstanding_ids` returns."""
        records, self._cursor, whole = self.tail.since(self._cursor)
        if whole:
            self.acked, self.done, self.outstanding = set(), set(), set()
            self.last, self.count = {}, 0
        self.count += len(records)
        for rec in records:
            if rec.task_id is None:
                continue
            if rec.kind is Kind.OK:
                self.acked.add(rec.task_id)
                if rec.task_id not in self.done:
                    self.outstanding.add(rec.task_id)
            elif rec.is_terminal:
                self.done.add(rec.task_id)
                self.outstanding.discard(rec.task_id)
            if rec.role == "worker":
                prev = self.last.get(rec.task_id)
                if prev is None or (rec.mono_ns, rec.wall_ns) >= (prev.mono_ns, prev.wall_ns):
                    self.last[rec.task_id] = rec
        outstanding = set(self.outstanding)
        running = {
            t
            for t in outstanding
            if (rec := self.last.get(t)) is not None
            and rec.kind is Kind.STARTED
            and _alive(rec.pid)
        }
        return outstanding, self.count, running


def outstanding_ids(history: Path | HistoryTail) -> tuple[set[str], int, set[str]]:
    """Acknowledged ids without a terminal record, the history's record count, and the
    outstanding ids still running: last seen ``started`` in a process that is alive.

    A one-off look; :class:`DrainState` keeps the answer up to date between looks.
    """
    tail = history if isinstance(history, HistoryTail) else HistoryTail(history)
    return DrainState(tail).update()


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process on this machine (a zombie is not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def drain(
    history_dir: Path,
    depths: Callable[[], dict[str, tuple[int, int]]],
    *,
    timeout: float = 60.0,
    settle: float = 3.0,
    poll: float = 0.1,
    writer: HistoryWriter | None = None,
    tail: HistoryTail | None = None,
) -> DrainResult:
    """Wait until the deployment is quiescent; record and return the outcome.

    ``depths`` returns ``{queue: (ready, unacked)}`` from the broker; an
    exception from it (broker down) counts as "not empty". ``tail``: the scenario's own
    reader of ``history_dir`` (else the drain makes one), so each look reads only what
    was appended since the last one.
    """
    state = DrainState(tail if tail is not None else HistoryTail(history_dir))
    start = time.monotonic()
    last_count = -1
    last_change = start
    result: DrainResult | None = None
    current: dict[str, tuple[int, int]] = {}
    outstanding: set[str] = set()
    while True:
        now = time.monotonic()
        outstanding, count, running = state.update()
        if count != last_count:
            last_count, last_change = count, now
        # Ask the broker only when its answer can end the drain: every task done, or the
        # history quiet (an answer costs milliseconds: bench/bench_queue_probe.py).
        empty, reason_err = False, ""
        if not outstanding or now - last_change >= settle or now - start >= timeout:
            try:
                current = depths()
                empty = all(r == 0 and u == 0 for r, u in current.values())
            except Exception as exc:  # noqa: BLE001 - a broker that cannot answer is not empty
                current = {"<error>": (-1, -1)}
                reason_err = f"{type(exc).__name__}: {exc}"
        if not outstanding and empty:
            result = DrainResult(True, now - start, "every acknowledged task completed")
            break
        if empty and not running and now - last_change >= settle:
            result = DrainResult(
                True,
                now - start,
                f"broker empty, no task running and history quiet for {settle:.1f} s; "
                f"{len(outstanding)} acknowledged task(s) never completed",
                outstanding=len(outstanding),
            )
            break
        if now - start >= timeout:
            why = reason_err or (
                f"{len(outstanding)} task(s) outstanding ({len(running)} still running), "
                f"broker depths {current}"
            )
            result = DrainResult(
                False,
                now - start,
                f"drain timed out after {timeout:.0f} s: {why}",
                outstanding=len(outstanding),
            )
            break
        time.sleep(poll)
    result.depths = current
    if writer is not None:
        writer.write(
            Kind.DRAIN,
            name="drain",
            detail={
                "complete": result.complete,
                "seconds": round(result.seconds, 3),
                "reason": result.reason,
                "outstanding": result.outstanding,
                "depths": {k: list(v) for k, v in current.items()},
            },
        )
    return result
