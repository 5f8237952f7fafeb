"""Fault schedules: steps of (trigger, op, window), executed against a running deployment.

A schedule is data (JSON/YAML)::

    - id: kill
      when: {running: {worker: w1, n: 1, min_age: 0.3, max_age: 0.6}}
      do: {op: kill_worker, worker: w1}
    - when: {at: 1.0}
      do: {op: pause_worker, worker: w2}
      duration: 6
    - when: {after_start: kill, delay: 1}
      do: {op: partition, links: "w*-broker"}
      duration: 5

A :class:`Trigger`'s conditions are waited for in order: ``after``/``after_start`` (another
step's window ended / the step was applied), ``at`` (seconds since the schedule began),
``delay``, ``published``, ``loads_done``, ``records``, ``running``, ``queued``, ``quiet``,
``completed``, ``log``. Every step runs in a thread of its own, so a long fault never delays
the next trigger and windows may overlap. ``${step}`` in a trigger or an op parameter
refers to what an earlier step produced: its first published task id (``publish``), or the
target it resolved (``kill_beat`` of the ``leader``); ``${step.tasks}``, ``${step.hit}``,
``${step.target}`` name one output.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from celery_chaos.errors import InfrastructureError
from celery_chaos.faults.context import Deployment, Window
from celery_chaos.faults.vocabulary import Op, parse_op
from celery_chaos.history.schema import Kind, Record

_REF = re.compile(r"^\$\{([A-Za-z0-9_-]+)(?:\.(tasks|hit|target|picked))?\}$")
POLL_S = 0.05


class _Cond(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunningCond(_Cond):
    """``worker`` runs ``n`` tasks that started between ``min_age`` and ``max_age`` s ago."""

    worker: str
    n: int = Field(1, ge=1)
    min_age: float = Field(0.0, ge=0)
    max_age: float | None = Field(None, gt=0)

    @field_validator("worker")
    @classmethod
    def _node(cls, v: str) -> str:
        return v if "@" in v else f"{v}@chaos"


class RecordsCond(_Cond):
    """At least ``n`` history records (or distinct tasks, with ``tasks``) that match."""

    kind: Kind
    role: str | None = None
    host: str | None = None
    host_not: str | None = None
    name: str | None = None
    #: Only these task ids (``${step}`` references allowed); ``n`` then counts distinct
    #: tasks and defaults to all of them.
    tasks: list[str] | None = None
    retries_at_least: int | None = None
    #: Only records after this step began (``since_end``: after its window ended); the
    #: condition cannot hold before that.
    since: str | None = None
    since_end: bool = False
    n: int | None = Field(None, ge=1)


class QueuedCond(_Cond):
    """The broker holds ``ready`` messages (at least) in ``queue``."""

    queue: str
    ready: int = Field(ge=0)


class LogCond(_Cond):
    """A worker's log contains ``contains``; ``required: false`` goes on after the timeout."""

    worker: str
    contains: str
    required: bool = True

    @field_validator("worker")
    @classmethod
    def _node(cls, v: str) -> str:
        return v if "@" in v else f"{v}@chaos"


class Trigger(_Cond):
    """When a step fires: every condition given, waited for in the documented order."""

    after: str | None = None
    after_start: str | None = None
    at: float | None = Field(None, ge=0)
    delay: float = Field(0.0, ge=0)
    published: int | None = Field(None, ge=1)
    loads_done: bool = False
    records: RecordsCond | None = None
    running: RunningCond | None = None
    queued: QueuedCond | None = None
    quiet: float | None = Field(None, gt=0)
    completed: bool = False
    log: LogCond | None = None
    #: Bound of each condition's wait (s); past it the schedule fails (infrastructure error).
    timeout: float = Field(30.0, gt=0)
    #: ``false``: past the timeout the step is skipped (recorded in the run's schedule as
    #: not fired) instead of failing the run; generated schedules use it for ``running``.
    required: bool = True

    def steps(self) -> list[str]:
        """Step ids this trigger refers to."""
        refs = [self.after, self.after_start, self.records.since if self.records else None]
        return [r for r in refs if r]

    def workers(self) -> list[str]:
        """Worker names this trigger needs."""
        out = [self.running.worker] if self.running else []
        return out + ([self.log.worker] if self.log else [])


class Step(BaseModel):
    """One entry of a schedule: when, what, and for how long (held faults)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    when: Trigger = Field(default_factory=Trigger)
    do: Op
    #: Seconds a held fault stays applied (0: healed at once).
    duration: float | None = Field(None, ge=0)
    #: Or: held until this trigger fires.
    until: Trigger | None = None

    @field_validator("do", mode="before")
    @classmethod
    def _op(cls, v: Any) -> Op:
        return parse_op(v)

    @model_validator(mode="after")
    def _window(self) -> Step:
        if (self.duration is not None or self.until is not None) and not self.do.held:
            raise ValueError(
                f"{self.do.op} is instantaneous: `duration`/`until` apply only to faults "
                "held for a window (pause_worker, partition, latency, crash_broker...)"
            )
        if self.duration is not None and self.until is not None:
            raise ValueError("give a step `duration` or `until`, not both")
        return self

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """The JSON form, with the op's own fields (a subclass of :class:`Op`)."""
        out = super().model_dump(**kwargs)
        out["do"] = self.do.model_dump(**kwargs)
        return out


class Schedule(BaseModel):
    """An ordered list of steps."""

    model_config = ConfigDict(extra="forbid")

    steps: list[Step] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ids(self) -> Schedule:
        seen: set[str] = set()
        for i, step in enumerate(self.steps):
            if step.id is None:
                step.id = f"step{i + 1}"
            if step.id in seen:
                raise ValueError(f"two steps have the id {step.id!r}")
            seen.add(step.id)
        for step in self.steps:
            triggers = [step.when, *([step.until] if step.until else [])]
            for ref in [r for t in triggers for r in t.steps()]:
                if ref not in seen or ref == step.id:
                    raise ValueError(f"step {step.id!r} refers to no other step {ref!r}")
        return self

    def workers(self) -> set[str]:
        """Every worker a step or trigger names."""
        out: set[str] = set()
        for step in self.steps:
            out.update(step.do.workers())
            for t in (step.when, step.until):
                if t is not None:
                    out.update(t.workers())
        return out

    def beats(self) -> set[str]:
        """Every beat a step names."""
        return {b for step in self.steps for b in step.do.beats()}

    def dump(self) -> list[dict[str, Any]]:
        """The JSON form (a list of steps)."""
        return [s.model_dump(mode="json", exclude_none=True) for s in self.steps]


# -- execution -------------------------------------------------------------------------------


def aged(running: dict[str, Record], min_age: float, max_age: float | None) -> list[str]:
    """Ids of the running tasks (id -> ``started``) that started ``min_age`` to ``max_age``
    seconds ago: the one age rule of the ``running`` trigger and ``Scenario.wait_running``."""
    now = time.monotonic_ns()
    lo, hi = min_age * 1e9, float("inf") if max_age is None else max_age * 1e9
    return [i for i, r in running.items() if lo <= now - r.mono_ns <= hi]


def _record(dep: Deployment, win: Window, phase: str, op: Op) -> None:
    dep.writer.write(Kind.FAULT, name=win.name, phase=phase, target=win.target,
                     detail={**op.params(), **win.public_detail()})


def open_window(dep: Deployment, op: Op, win: Window) -> None:
    """Prepare ``op``, record its fault window's start (faults only), and apply it.

    The one place a fault's start is recorded: before the fault acts, so every effect
    comes after it in the history."""
    win.name = op.record_name
    win.target = win.target or op.target()
    op.prepare(dep, win)
    win.start_ns = time.monotonic_ns()
    if op.category == "fault":
        _record(dep, win, "start", op)
    op.apply(dep, win)
    win.applied_ns = time.monotonic_ns()


def close_window(dep: Deployment, op: Op, win: Window, *, heal: bool = True) -> None:
    """Heal a held fault (when ``heal``) and record the window's end, even if healing fails."""
    try:
        if heal and op.held:
            op.heal(dep, win)
    finally:
        win.end_ns = time.monotonic_ns()
        if op.category == "fault":
            _record(dep, win, "end", op)


class _Aborted(Exception):
    """Another step failed: stop waiting."""


class _Skipped(Exception):  # noqa: N818 - control flow
    """A trigger that is not required never held: the step does not fire."""


class ScheduleRun:
    """Runs a schedule against a deployment: a thread per step, errors gathered."""

    def __init__(self, schedule: Schedule, dep: Deployment) -> None:
        self.schedule = schedule
        self.dep = dep
        self.windows: dict[str, Window] = {}
        self._started: dict[str, threading.Event] = {}
        self._ended: dict[str, threading.Event] = {}
        self._abort = threading.Event()
        self._errors: list[BaseException] = []
        self._t0 = 0.0
        self._lock = threading.Lock()
        for i, step in enumerate(schedule.steps, 1):
            assert step.id is not None
            self.windows[step.id] = Window(
                step=step.id, seq=i, name=step.do.record_name, target=step.do.target()
            )
            self._started[step.id] = threading.Event()
            self._ended[step.id] = threading.Event()

    # references ---------------------------------------------------------------------------

    def resolve(self, value: Any) -> Any:
        """``${step}`` references in ``value`` (any JSON) replaced by the step's outputs."""
        if isinstance(value, str):
            m = _REF.match(value)
            if not m:
                return value
            win = self.windows.get(m.group(1))
            if win is None:
                raise InfrastructureError(f"no step {m.group(1)!r} for the reference {value}")
            part = m.group(2)
            if part == "tasks":
                return list(win.task_ids)
            if part in ("hit", "picked"):
                return list(win.detail.get(part, win.picked))
            if part == "target":
                return win.output_target or win.target
            return win.task_ids[0] if win.task_ids else (win.output_target or win.target)
        if isinstance(value, list):
            out: list[Any] = []
            for v in value:
                r = self.resolve(v)
                out.extend(r if isinstance(r, list) and isinstance(v, str) and
                           v.endswith((".tasks}", ".hit}", ".picked}")) else [r])
            return out
        if isinstance(value, dict):
            return {self.resolve(k): self.resolve(v) for k, v in value.items()}
        return value

    # waiting ------------------------------------------------------------------------------

    def _wait(self, what: str, ok: Callable[[], Any], timeout: float, required: bool = True) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            if self._abort.is_set():
                raise _Aborted
            got = ok()
            if got:
                return got
            if time.monotonic() >= deadline:
                if not required:
                    return None
                raise InfrastructureError(f"{what} within {timeout:.0f} s")
            time.sleep(POLL_S)

    def _sleep(self, seconds: float) -> None:
        if self._abort.wait(max(0.0, seconds)):
            raise _Aborted

    def wait_trigger(self, trig: Trigger, win: Window, label: str) -> None:
        """Block until every condition of ``trig`` holds; pick tasks for ``running``."""
        t = trig.timeout
        if trig.after:
            self._wait(f"{label}: step {trig.after!r} never ended",
                       self._ended[trig.after].is_set, t + 3600)
        if trig.after_start:
            self._wait(f"{label}: step {trig.after_start!r} never started",
                       self._started[trig.after_start].is_set, t + 3600)
        if trig.at is not None:
            self._sleep(self._t0 + trig.at - time.monotonic())
        if trig.delay:
            self._sleep(trig.delay)
        if trig.published is not None:
            n = trig.published
            self._wait(f"{label}: the load never had {n} publishes acknowledged",
                       lambda: sum(r.kind is Kind.OK and r.role == "publisher"
                                   for r in self.dep.history()) >= n, t)
        if trig.loads_done:
            self._wait(f"{label}: the loads never ended", self.dep.loads_done, t)
        if trig.records is not None:
            self._wait_records(trig.records, label, t)
        if trig.running is not None:
            picked = self._wait_running(trig.running, label, t)
            win.picked = picked
            win.picked_task = picked[0]
        if trig.queued is not None:
            q = trig.queued
            self._wait(f"{label}: {q.queue} never held {q.ready} ready messages",
                       lambda: self.dep.queue_depths().get(q.queue, (0, 0))[0] >= q.ready, t)
        if trig.quiet is not None:
            self._wait(f"{label}: the load never paused for {trig.quiet} s",
                       lambda: self._quiet(trig.quiet or 0), t)
        if trig.completed:
            self._wait(f"{label}: the acknowledged tasks never all completed",
                       self._all_completed, t)
        if trig.log is not None:
            lg = trig.log
            found = self._wait(f"{label}: {lg.worker}'s log never said {lg.contains!r}",
                               lambda: lg.contains in self.dep.worker_log(lg.worker), t,
                               required=lg.required)
            win.detail[f"log_{'seen' if found else 'not_seen'}"] = lg.contains

    def _wait_records(self, cond: RecordsCond, label: str, timeout: float) -> None:
        tasks = set(self.resolve(cond.tasks)) if cond.tasks is not None else None
        host = self.resolve(cond.host) if cond.host else None
        host_not = self.resolve(cond.host_not) if cond.host_not else None
        need = cond.n or (len(tasks) if tasks is not None else 1)

        def count() -> bool:
            since = 0
            if cond.since:
                w = self.windows[cond.since]
                mark = w.end_ns if cond.since_end else w.start_ns
                if mark is None:  # that step has not begun (or ended) yet: nothing counts
                    return False
                since = mark
            seen: set[str] = set()
            n = 0
            for r in self.dep.history():
                if r.mono_ns <= since or r.kind is not cond.kind:
                    continue
                if (cond.role and r.role != cond.role) or (host and r.host != host):
                    continue
                if (host_not and r.host == host_not) or (cond.name and r.name != cond.name):
                    continue
                if cond.retries_at_least is not None and (r.retries or 0) < cond.retries_at_least:
                    continue
                if tasks is not None:
                    if r.task_id in tasks:
                        seen.add(r.task_id)
                    continue
                n += 1
            return (len(seen) if tasks is not None else n) >= need

        self._wait(f"{label}: fewer than {need} {cond.kind.value} records", count, timeout)

    def _wait_running(self, cond: RunningCond, label: str, timeout: float) -> list[str]:
        def old() -> list[str]:
            got = aged(self.dep.running_on(cond.worker), cond.min_age, cond.max_age)
            return got if len(got) >= cond.n else []

        span = f"{cond.min_age}-{cond.max_age} s" if cond.max_age else f"{cond.min_age} s"
        return self._wait(
            f"{label}: {cond.worker} never ran {cond.n} task(s) for {span}: is the workload "
            "long enough to be interrupted?", old, timeout)

    def _quiet(self, quiet_s: float) -> bool:
        recs = [r for r in self.dep.history() if r.role in ("worker", "publisher")]
        return bool(recs) and time.monotonic_ns() - recs[-1].mono_ns >= quiet_s * 1e9

    def _all_completed(self) -> bool:
        recs: list[Record] = self.dep.history()
        acked = {r.task_id for r in recs if r.kind is Kind.OK}
        return acked <= {r.task_id for r in recs if r.is_completion}

    # running ------------------------------------------------------------------------------

    def _run_step(self, step: Step) -> None:
        assert step.id is not None
        win = self.windows[step.id]
        label = f"step {step.id} ({step.do.op})"
        try:
            try:
                self.wait_trigger(step.when, win, label)
            except InfrastructureError as exc:
                if step.when.required:
                    raise
                win.detail["skipped"] = str(exc)
                raise _Skipped from None
            op = self._resolved_op(step.do)
            opened = False
            try:
                open_window(self.dep, op, win)
                opened = True
                self._started[step.id].set()
                if op.held and step.until is not None:
                    self.wait_trigger(step.until, win, f"{label} until")
                elif op.held and step.duration:
                    self._sleep(step.duration)
            finally:
                if win.start_ns is not None:
                    close_window(self.dep, op, win, heal=opened)
            self._ended[step.id].set()
        except _Skipped:
            self._ended[step.id].set()  # later steps waiting for it go on
        except _Aborted:
            return
        except BaseException as exc:  # noqa: BLE001 - gathered, raised by run()
            with self._lock:
                self._errors.append(exc)
            self._abort.set()

    def _resolved_op(self, op: Op) -> Op:
        data = op.model_dump(mode="json")
        resolved = self.resolve(data)
        return op if resolved == data else parse_op(resolved)

    def run(self) -> dict[str, Window]:
        """Run every step; return the windows by step id. Raises the first step's error."""
        self._t0 = time.monotonic()
        threads = [
            threading.Thread(target=self._run_step, args=(s,), name=f"step-{s.id}", daemon=True)
            for s in self.schedule.steps
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if self._errors:
            err = self._errors[0]
            if isinstance(err, InfrastructureError):
                raise err
            raise InfrastructureError(f"{type(err).__name__}: {err}") from err
        return self.windows

    def abort(self) -> None:
        """Stop every step still waiting (teardown after an interrupt)."""
        self._abort.set()


def describe_steps(steps: list[dict[str, Any]]) -> str:
    """A schedule (its JSON form) in words, for people: ``kill_worker(w1) at 1.2 s;
    pause_worker(w2) for 3.0 s when w2 runs a task 0.3 s old``."""
    parts = []
    for s in steps:
        do, when = s["do"], s.get("when", {})
        target = do.get("worker") or do.get("links") or do.get("beat") or ""
        if "running" in when:
            run = when["running"]
            trig = f"when {run['worker']} runs a task {run.get('min_age', 0)} s old"
        elif "at" in when:
            trig = f"at {when['at']} s"
        else:
            trig = "on its trigger"
        held = f" for {s['duration']} s" if s.get("duration") is not None else ""
        parts.append(f"{do['op']}({target}){held} {trig}")
    return "; ".join(parts)
