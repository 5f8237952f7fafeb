"""Publish tasks and record each publish in the Jepsen sense: invoke, then ok, fail or info."""

from __future__ import annotations

import errno
import json
import os
import time
import uuid
from typing import Any

from celery import Celery
from kombu.exceptions import EncodeError

from celery_chaos.history.recorder import short_repr
from celery_chaos.history.schema import Kind
from celery_chaos.history.store import HistoryWriter
from celery_chaos.load.workload import TaskSpec

#: JSON object of extra ``send_task`` options for every publish (e.g. ``confirm_timeout``,
#: ``retry``, ``retry_policy``): Celery passes them on to kombu's ``Producer.publish``.
PUBLISH_OPTIONS_ENV = "CHAOS_PUBLISH_OPTIONS"

#: Errors that mean the message certainly never reached the broker.
_REFUSED = (ConnectionRefusedError,)


def classify_publish_error(exc: BaseException) -> Kind:
    """``fail`` when the message certainly was not enqueued, else ``info`` (unknown).

    Certain: the payload could not be encoded, or the connection was refused
    (nothing was sent). Anything else (a timeout, a reset mid-publish, a
    publisher-confirm timeout) leaves the outcome unknown.
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, (EncodeError, TypeError)) or isinstance(cur, _REFUSED):
            return Kind.FAIL
        if isinstance(cur, OSError) and cur.errno == errno.ECONNREFUSED:
            return Kind.FAIL
        if "Connection refused" in str(cur):
            return Kind.FAIL
        cur = cur.__cause__ or cur.__context__
    return Kind.INFO


def confirms_enabled(app: Celery) -> bool:
    """Whether an ``ok`` from this app means the broker confirmed the message."""
    url = str(app.conf.broker_url or "")
    if url.startswith(("redis://", "rediss://", "sentinel://")):
        return True  # LPUSH returned: Redis holds it (in memory)
    opts = app.conf.broker_transport_options or {}
    return bool(opts.get("confirm_publish"))


class Publisher:
    """Publishes by task name and records invoke/ok/fail/info for each publish."""

    def __init__(
        self,
        app: Celery,
        writer: HistoryWriter | None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.writer = writer
        self.confirmed = confirms_enabled(app)
        if options is None:  # from the environment, as the load generator runs
            raw = os.environ.get(PUBLISH_OPTIONS_ENV)
            options = json.loads(raw) if raw else {}
        self.options: dict[str, Any] = dict(options)

    def publish(self, spec: TaskSpec) -> tuple[str, Kind, float, BaseException | None]:
        """Publish one task; return (task id, outcome kind, seconds, exception)."""
        task_id = str(uuid.uuid4())
        self._record(
            Kind.INVOKE,
            task_id=task_id,
            task_name=spec.name,
            queue=spec.queue,
            args=short_repr(spec.args),
            kwargs=short_repr(spec.kwargs),
        )
        t0 = time.monotonic_ns()
        exc: BaseException | None = None
        options: dict[str, Any] = {**self.options, "task_id": task_id}
        if spec.queue:
            options["queue"] = spec.queue
        try:
            self.app.send_task(spec.name, args=spec.args, kwargs=spec.kwargs, **options)
            kind = Kind.OK
        except Exception as err:  # noqa: BLE001 - every failure is recorded, none is hidden
            exc = err
            kind = classify_publish_error(err)
        elapsed = time.monotonic_ns() - t0
        self._record(
            kind,
            task_id=task_id,
            task_name=spec.name,
            queue=spec.queue,
            latency_ns=elapsed,
            confirmed=self.confirmed if kind is Kind.OK else None,
            error=f"{type(exc).__name__}: {short_repr(str(exc))}" if exc else None,
        )
        return task_id, kind, elapsed / 1e9, exc

    def _record(self, kind: Kind, **fields: Any) -> None:
        if self.writer is not None:
            self.writer.write(kind, **fields)
