"""An app with Celery's defaults (early ack): a worker kill loses the tasks it was running."""

from __future__ import annotations

import time

from celery import Celery

app = Celery("auditapp_early", broker="amqp://guest@prod-rabbit.example:5672//")


@app.task(name="auditapp.work")
def work(seconds: float) -> float:
    """Work for ``seconds``."""
    time.sleep(seconds)
    return seconds
