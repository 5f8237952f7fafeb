"""Record what Celery does from its signals, so any app is recorded with no code change.

:func:`install` connects receivers to Celery's global signals. Workers record
received/started/succeeded/failed/retried/revoked/rejected; any process that
publishes through Celery (beat, a task that calls ``apply_async``, a retry)
records ``invoke``/``ok`` from the publish signals, unless the process records
its publishes itself (the load generator does, to get ``fail``/``info`` too).
"""

from __future__ import annotations

import os
import reprlib
import socket
from typing import Any

from celery import signals

from celery_chaos.history.schema import Kind
from celery_chaos.history.store import HISTORY_DIR_ENV, HistoryWriter

#: The node name the harness gives a process (``w1@chaos``, ``beat``, ``publisher``).
NODE_ENV = "CHAOS_NODE_NAME"
#: The role of the process: ``worker``, ``beat`` or ``publisher``.
ROLE_ENV = "CHAOS_ROLE"

_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80
_repr.maxlist = 8
_repr.maxdict = 8

_writer: HistoryWriter | None = None
_installed = False


def short_repr(value: Any) -> str:
    """A bounded repr for args/kwargs/exception text (reports show it, escaped)."""
    return _repr.repr(value)


def writer() -> HistoryWriter | None:
    """The process-wide writer, if recording is on."""
    return _writer


def _delivery(request: Any) -> tuple[bool | None, str | None]:
    info = getattr(request, "delivery_info", None) or {}
    queue = info.get("routing_key") or info.get("exchange") or None
    redelivered = info.get("redelivered")
    return (bool(redelivered) if redelivered is not None else None), queue


_worker_pids: tuple[int, int] | None = None  # (our pid, worker's main pid), once per process


def _worker_pid() -> int:
    """The worker's main pid: ourselves in the main process, our parent in a pool child."""
    global _worker_pids
    pid = os.getpid()
    if _worker_pids is None or _worker_pids[0] != pid:
        _worker_pids = (pid, os.getppid() if _in_pool_child() else pid)
    return _worker_pids[1]


def _in_pool_child() -> bool:
    try:
        from billiard.process import current_process

        return current_process().name.startswith("ForkPoolWorker")
    except Exception:  # pragma: no cover - exotic pools
        return False


def _w(kind: Kind, **fields: Any) -> None:
    if _writer is not None:
        _writer.write(kind, **fields)


# -- worker main process -------------------------------------------------------------------


# The three records of every task (received, started, succeeded) take the writer's fast path:
# plain dicts and string kinds (the recorder's cost is a benchmark target: bench_skeleton.py).
_RECEIVED, _STARTED, _SUCCEEDED = Kind.RECEIVED.value, Kind.STARTED.value, Kind.SUCCEEDED.value


def _on_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    if _writer is None:
        return
    redelivered, queue = _delivery(request)
    _writer.append(
        _RECEIVED,
        {
            "task_id": request.id,
            "task_name": request.name,
            "queue": queue,
            "redelivered": redelivered,
            "retries": (request.request_dict or {}).get("retries"),
            "worker_pid": os.getpid(),
        },
    )


def _on_rejected(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
    headers = getattr(message, "headers", None) or {}
    _w(
        Kind.REJECTED,
        task_id=headers.get("id"),
        task_name=headers.get("task"),
        exc_type=type(exc).__name__ if exc else None,
        exc_message=short_repr(str(exc)) if exc else None,
        reason="rejected",
        worker_pid=os.getpid(),
    )


def _on_unknown(
    sender: Any = None,
    message: Any = None,
    exc: Any = None,
    name: Any = None,
    id: Any = None,
    **_: Any,
) -> None:
    _w(
        Kind.REJECTED,
        task_id=id,
        task_name=name,
        exc_type=type(exc).__name__ if exc else None,
        reason="unknown task",
        worker_pid=os.getpid(),
    )


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    _w(Kind.DEPLOYMENT, name="worker_ready", target=getattr(sender, "hostname", None))


def _on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    _w(Kind.DEPLOYMENT, name="worker_shutdown", target=getattr(sender, "hostname", None))


# -- pool child (or main process for failures the parent detects) --------------------------


def _task_fields(task: Any) -> dict[str, Any]:
    req = task.request
    redelivered, queue = _delivery(req)
    return {
        "task_id": req.id,
        "task_name": task.name,
        "queue": queue,
        "redelivered": redelivered,
        "retries": req.retries,
        "worker_pid": _worker_pid(),
    }


def _on_prerun(sender: Any = None, task_id: Any = None, task: Any = None, **_: Any) -> None:
    if _writer is not None:
        _writer.append(_STARTED, _task_fields(task or sender))


def _on_success(sender: Any = None, result: Any = None, **kw: Any) -> None:
    if _writer is not None:
        fields = _task_fields(sender)
        fields["runtime_s"] = kw.get("runtime")
        _writer.append(_SUCCEEDED, fields)


def _on_failure(
    sender: Any = None, task_id: Any = None, exception: BaseException | None = None, **_: Any
) -> None:
    fields = _task_fields(sender)
    fields["task_id"] = task_id or fields["task_id"]
    _w(
        Kind.FAILED,
        exc_type=type(exception).__name__ if exception is not None else None,
        exc_message=short_repr(str(exception)) if exception is not None else None,
        **fields,
    )


def _on_retry(sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
    redelivered, queue = _delivery(request)
    _w(
        Kind.RETRIED,
        task_id=getattr(request, "id", None),
        task_name=getattr(sender, "name", None),
        queue=queue,
        redelivered=redelivered,
        retries=getattr(request, "retries", None),
        exc_type=type(reason).__name__ if isinstance(reason, BaseException) else None,
        exc_message=short_repr(str(reason)) if reason is not None else None,
        eta=str(getattr(request, "eta", None) or "") or None,
        worker_pid=_worker_pid(),
    )


def _on_revoked(
    sender: Any = None,
    request: Any = None,
    terminated: Any = None,
    signum: Any = None,
    expired: Any = None,
    **_: Any,
) -> None:
    reason = "expired" if expired else ("terminated" if terminated else "revoked")
    _w(
        Kind.REVOKED,
        task_id=getattr(request, "id", None),
        task_name=getattr(sender, "name", None),
        reason=reason,
        worker_pid=os.getpid(),
    )


# -- publishers (beat, tasks publishing tasks, retries) ------------------------------------


def _publish_id(headers: Any, body: Any) -> tuple[str | None, str | None]:
    headers = headers or {}
    if "id" in headers:  # task protocol 2
        return headers.get("id"), headers.get("task")
    if isinstance(body, dict):  # protocol 1
        return body.get("id"), body.get("task")
    return None, None


def _on_before_publish(
    sender: Any = None, body: Any = None, routing_key: Any = None, headers: Any = None, **_: Any
) -> None:
    task_id, name = _publish_id(headers, body)
    args = kwargs = None
    if isinstance(body, (tuple, list)) and len(body) >= 2:
        args, kwargs = short_repr(body[0]), short_repr(body[1])
    _w(
        Kind.INVOKE,
        task_id=task_id,
        task_name=name or sender,
        queue=routing_key,
        args=args,
        kwargs=kwargs,
        retries=(headers or {}).get("retries"),
        eta=(headers or {}).get("eta"),  # when the message is due (a retry's countdown)
    )


def _on_after_publish(
    sender: Any = None, body: Any = None, routing_key: Any = None, headers: Any = None, **_: Any
) -> None:
    task_id, name = _publish_id(headers, body)
    _w(Kind.OK, task_id=task_id, task_name=name or sender, queue=routing_key)


def install(
    directory: str | os.PathLike[str] | None = None,
    *,
    role: str | None = None,
    host: str | None = None,
    record_publishes: bool = True,
) -> HistoryWriter | None:
    """Connect the recorder to Celery's signals (idempotent).

    ``directory`` defaults to ``$CHAOS_HISTORY_DIR``; with neither, nothing is
    recorded and ``None`` is returned. ``record_publishes`` records publishes
    seen through Celery's publish signals; the load generator turns it off
    because it records its own publishes with their outcome.
    """
    global _writer, _installed
    directory = directory or os.environ.get(HISTORY_DIR_ENV)
    if not directory:
        return None
    role = role or os.environ.get(ROLE_ENV, "worker")
    host = host or os.environ.get(NODE_ENV) or f"{role}@{socket.gethostname()}"
    _writer = HistoryWriter(directory, role=role, host=host)
    if _installed:
        return _writer
    _installed = True
    signals.task_received.connect(_on_received, weak=False)
    signals.task_rejected.connect(_on_rejected, weak=False)
    signals.task_unknown.connect(_on_unknown, weak=False)
    signals.worker_ready.connect(_on_worker_ready, weak=False)
    signals.worker_shutdown.connect(_on_worker_shutdown, weak=False)
    signals.task_prerun.connect(_on_prerun, weak=False)
    signals.task_success.connect(_on_success, weak=False)
    signals.task_failure.connect(_on_failure, weak=False)
    signals.task_retry.connect(_on_retry, weak=False)
    signals.task_revoked.connect(_on_revoked, weak=False)
    if record_publishes:
        signals.before_task_publish.connect(_on_before_publish, weak=False)
        signals.after_task_publish.connect(_on_after_publish, weak=False)
    return _writer
