"""An app that already acknowledges late and requeues the tasks of a lost worker."""

from __future__ import annotations

import time

from celery import Celery

app = Celery("auditapp_safe", broker="amqp://guest@prod-rabbit.example:5672//")
app.conf.task_acks_late = True
app.conf.task_reject_on_worker_lost = True


@app.task(name="auditapp.work")
def work(seconds: float) -> float:
    """Work for ``seconds``."""
    time.sleep(seconds)
    return seconds
