"""The history schema: the contract every recorder writes and every checker reads.

A history is a directory of JSON Lines files, one file per writing process
(``<role>-<host>-<pid>.jsonl``). Each line is one :class:`Record`. Files are
opened with ``O_APPEND`` and every record is one ``write(2)``, so a writer
killed with SIGKILL loses nothing it had already written; at worst the last
line is torn, and readers count and skip torn lines.

Times: ``wall_ns`` is ``time.time_ns()`` (for people and reports) and
``mono_ns`` is ``time.monotonic_ns()`` (CLOCK_MONOTONIC, shared by every
process on one machine, used for ordering and durations).

Versioned by :data:`SCHEMA_VERSION`; a reader refuses a newer major version.
See ``docs/history.md`` for the prose version of this module.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class Kind(str, Enum):
    """What a record says happened."""

    # Publisher side, in the Jepsen sense.
    INVOKE = "invoke"  # about to call apply_async/send_task
    OK = "ok"  # the broker accepted it (publisher confirms on RabbitMQ; LPUSH on Redis)
    FAIL = "fail"  # definitely not enqueued
    INFO = "info"  # unknown: timeout, connection lost mid-publish

    # Worker side, from Celery signals.
    RECEIVED = "received"  # task_received (worker main process)
    STARTED = "started"  # task_prerun (pool child)
    SUCCEEDED = "succeeded"  # task_success
    FAILED = "failed"  # task_failure (exc_type says which)
    RETRIED = "retried"  # task_retry
    REVOKED = "revoked"  # task_revoked
    REJECTED = "rejected"  # task_rejected / task_unknown (message dropped)

    # Harness side.
    FAULT = "fault"  # a fault window starts or ends (phase)
    DEPLOYMENT = "deployment"  # worker started/killed, broker restarted, ...
    DRAIN = "drain"  # result of the final drain (complete or not)
    SCENARIO = "scenario"  # scenario start/end, with the settings under test


PUBLISH_KINDS = frozenset({Kind.INVOKE, Kind.OK, Kind.FAIL, Kind.INFO})
WORKER_KINDS = frozenset(
    {
        Kind.RECEIVED,
        Kind.STARTED,
        Kind.SUCCEEDED,
        Kind.FAILED,
        Kind.RETRIED,
        Kind.REVOKED,
        Kind.REJECTED,
    }
)
HARNESS_KINDS = frozenset({Kind.FAULT, Kind.DEPLOYMENT, Kind.DRAIN, Kind.SCENARIO})

#: Exception type names that mean "the worker lost the task", not "the task ran".
WORKER_LOST_EXC = frozenset({"WorkerLostError"})
#: Failures after which the message is gone without the task having run to an outcome: the
#: worker lost it, or Celery rejected it without requeue (``Reject``, e.g. when a retry
#: could not be published).
DROPPED_EXC = WORKER_LOST_EXC | {"Reject"}


class TaskEnd:
    """The one definition of "a task ended", in its two senses, for every kind of record
    (the validated :class:`Record` and the streamed ``LiteRecord``): reads ``kind`` and
    ``exc_type`` only."""

    __slots__ = ()
    kind: Kind
    exc_type: str | None

    @property
    def is_worker_lost(self) -> bool:
        """True for a failure that means the worker lost the task, not that it ran."""
        return self.kind is Kind.FAILED and (self.exc_type or "") in WORKER_LOST_EXC

    @property
    def is_dropped(self) -> bool:
        """True for a failure after which the task is gone without an outcome (see DROPPED_EXC)."""
        return self.kind is Kind.FAILED and (self.exc_type or "") in DROPPED_EXC

    @property
    def ends_run(self) -> bool:
        """This run of the task on a worker is over (the process no longer runs it): it
        succeeded, failed, was retried (a new message follows), revoked or rejected."""
        return self.kind in RUN_END_KINDS

    @property
    def is_completion(self) -> bool:
        """The task ran to an outcome: ``succeeded``, or ``failed`` other than a drop."""
        return self.kind is Kind.SUCCEEDED or (self.kind is Kind.FAILED and not self.is_dropped)

    @property
    def is_terminal(self) -> bool:
        """Nothing more will come of the task: a completion, or revoked or rejected."""
        return self.is_completion or self.kind in (Kind.REVOKED, Kind.REJECTED)


class Record(TaskEnd, BaseModel):
    """One line of a history file.

    Common fields are always present. Kind-specific fields are optional and
    default to ``None``; unknown extra keys are kept (forward compatibility).
    """

    model_config = ConfigDict(extra="allow", use_enum_values=False)

    v: int = SCHEMA_VERSION
    kind: Kind
    wall_ns: int
    mono_ns: int
    pid: int
    host: str  # worker node name (w1@chaos), or the role of a non-worker process
    role: str = ""  # "worker", "publisher", "beat", "harness"
    task_id: str | None = None
    task_name: str | None = None

    # Publisher fields.
    queue: str | None = None
    args: str | None = None  # reprlib-truncated repr, for reports only
    kwargs: str | None = None
    confirmed: bool | None = None  # on ok: was the ok a publisher confirm?
    error: str | None = None  # on fail/info: "ExcType: message"
    latency_ns: int | None = None  # on ok/fail/info: time since invoke

    # Worker fields.
    worker_pid: int | None = None  # the worker's main process (parent of the pool child)
    redelivered: bool | None = None  # delivery_info.redelivered
    retries: int | None = None  # request.retries
    exc_type: str | None = None  # on failed/retried/rejected
    exc_message: str | None = None
    eta: str | None = None  # on retried: when the retry is due
    reason: str | None = None  # on revoked/rejected
    runtime_s: float | None = None  # on succeeded/failed, when known

    # Harness fields.
    name: str | None = None  # fault or event name: "kill_worker", "worker_started", ...
    phase: str | None = None  # fault: "start" | "end"; scenario: "start" | "end"
    target: str | None = None  # what a fault/event touched ("w1@chaos", "rabbitmq")
    detail: dict[str, Any] = Field(default_factory=dict)


#: Records that end one run of a task on a worker (:attr:`Record.ends_run`).
RUN_END_KINDS = frozenset(
    {Kind.SUCCEEDED, Kind.FAILED, Kind.RETRIED, Kind.REVOKED, Kind.REJECTED}
)


class SchemaVersionError(ValueError):
    """A history record this celery-chaos cannot read: a newer schema, or not a record."""
