"""Live progress of a long run: the scenario, its phase and its figures every few seconds.

A :class:`Progress` thread reads the scenario's history incrementally (its own cursor on the
:class:`~celery_chaos.history.reader.HistoryTail`) and hands one plain line to ``emit`` every
``interval`` seconds: published (acknowledged), completed, failed, the broker's last ready
count, and the fault windows open now. Plain lines suit both a terminal and a CI log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery_chaos.checks.liveness import ready_total
from celery_chaos.history.reader import HistoryTail, TailCursor
from celery_chaos.history.schema import Kind, Record


@dataclass
class Figures:
    """What a run has done so far, counted from its history."""

    published: int = 0
    acknowledged: int = 0
    completed: int = 0
    failed: int = 0
    ready: int | None = None
    open_faults: dict[tuple[str, str], int] = field(default_factory=dict)  # (name, target)

    def add(self, rec: Record) -> None:
        """Count one record."""
        if rec.kind is Kind.INVOKE:
            self.published += 1
        elif rec.kind is Kind.OK:
            self.acknowledged += 1
        elif rec.is_completion:
            self.completed += 1
            if rec.kind is Kind.FAILED:
                self.failed += 1
        elif rec.kind is Kind.DEPLOYMENT and rec.name == "queue_depth":
            self.ready = ready_total(rec)
        elif rec.kind is Kind.FAULT:
            key = (rec.name or "", rec.target or "")
            if rec.phase == "start":
                self.open_faults[key] = self.open_faults.get(key, 0) + 1
            elif rec.phase == "end" and self.open_faults.get(key):
                self.open_faults[key] -= 1
                if not self.open_faults[key]:
                    del self.open_faults[key]

    def words(self) -> str:
        """``published 120 (118 acknowledged), completed 110 (2 failed), 8 ready; open: ...``"""
        parts = [f"published {self.published} ({self.acknowledged} acknowledged)",
                 f"completed {self.completed}" + (f" ({self.failed} failed)" if self.failed
                                                  else "")]
        if self.ready is not None:
            parts.append(f"{self.ready} ready in the broker")
        faults = [f"{n}({t})" if t else n for (n, t) in self.open_faults]
        parts.append(f"faults open: {', '.join(faults)}" if faults else "no fault open")
        return ", ".join(parts)


class Progress:
    """Emit a progress line about ``name`` every ``interval`` seconds until :meth:`stop`."""

    def __init__(self, name: str, tail: HistoryTail, emit: Callable[[str], Any], *,
                 interval: float = 10.0, phase: Callable[[], str] = lambda: "") -> None:
        self.name = name
        self.tail = tail
        self.emit = emit
        self.interval = interval
        self.phase = phase
        self.figures = Figures()
        self._cursor: TailCursor | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.monotonic()

    def line(self) -> str:
        """Read what the history gained, and say where the run is."""
        try:
            records, self._cursor, whole = self.tail.since(self._cursor)
        except (OSError, ValueError):  # no history yet, or a line being written
            records, whole = [], False
        if whole:
            self.figures = Figures()
        for rec in records:
            self.figures.add(rec)
        phase = self.phase()
        elapsed = time.monotonic() - self._t0
        return (f"celery-chaos: [{elapsed:5.0f} s] {self.name}"
                f"{f': {phase}' if phase else ''}; {self.figures.words()}")

    def start(self) -> Progress:
        """Start emitting (nothing when ``interval`` is 0)."""
        if self.interval > 0:
            self._thread = threading.Thread(target=self._run, name="chaos-progress",
                                            daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.emit(self.line())
            except Exception:  # noqa: BLE001 - progress must never break a run
                return

    def stop(self) -> None:
        """Stop emitting (the run's own summary follows)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
