"""Queue depth over time: a background thread that samples the broker into the history.

Every ``interval`` seconds it asks the broker, through kombu, how many messages are ready
in each queue (a passive ``queue_declare``: AMQP's ``message_count``, or the length of
the Redis list) and writes a ``deployment`` record named ``queue_depth`` with
``detail.ready = {queue: n}`` -- only when the numbers change, so a quiet deployment
adds no records (the drain waits for a quiet history). A broker that cannot answer is
recorded once as ``detail.error``. Read-only: it never consumes or declares anything.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from kombu import Connection

from celery_chaos.history.schema import Kind
from celery_chaos.history.store import HistoryWriter


def ready_counts(conn: Connection, queues: Iterable[str]) -> dict[str, int]:
    """Ready messages per queue; a queue that does not exist (yet) counts 0."""
    out: dict[str, int] = {}
    for queue in queues:
        channel = conn.channel()
        try:
            ok = channel.queue_declare(queue=queue, passive=True)
            out[queue] = int(ok.message_count if hasattr(ok, "message_count") else ok[1])
        except conn.channel_errors:
            out[queue] = 0  # not declared yet: nothing is waiting in it
        finally:
            try:
                channel.close()
            except Exception:  # noqa: BLE001 - a channel the broker closed already
                pass
    return out


class QueueDepthSampler:
    """Samples ``queues`` on ``broker_url`` into ``writer`` until :meth:`stop`."""

    def __init__(
        self,
        writer: HistoryWriter,
        broker_url: str,
        queues: Iterable[str],
        *,
        interval: float = 0.5,
        target: str = "broker",
    ) -> None:
        self.writer = writer
        self.broker_url = broker_url
        self.queues = list(dict.fromkeys(queues))
        self.interval = interval
        self.target = target
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: Any = None
        self.samples = 0

    def start(self) -> QueueDepthSampler:
        """Start sampling in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="queue-depth", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sampling and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _emit(self, detail: dict[str, Any]) -> None:
        if detail != self._last:
            self.writer.write(Kind.DEPLOYMENT, name="queue_depth", target=self.target,
                              detail=detail)
            self._last = detail

    def _run(self) -> None:
        conn: Connection | None = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = Connection(self.broker_url, connect_timeout=2,
                                      transport_options={"max_retries": 0})
                    conn.ensure_connection(max_retries=1)
                self._emit({"ready": ready_counts(conn, self.queues)})
                self.samples += 1
            except Exception as exc:  # noqa: BLE001 - a broker down is data, not a crash
                self._emit({"error": f"{type(exc).__name__}: {str(exc)[:200]}"})
                if conn is not None:
                    try:
                        conn.release()
                    except Exception:  # noqa: BLE001
                        pass
                conn = None
            self._stop.wait(self.interval)
        if conn is not None:
            try:
                conn.release()
            except Exception:  # noqa: BLE001
                pass
