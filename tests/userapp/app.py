"""A user's app as found in the wild: hard-coded broker and backend, its own queues.

The harness must point it at its own deployment whatever this file says.
"""

from __future__ import annotations

import time

from celery import Celery

app = Celery(
    "userapp",
    broker="amqp://prod-user:secret@rabbitmq.internal.example:5672/prod",
    backend="redis://redis.internal.example:6379/3",
)
app.conf.task_routes = {"userapp.resize_image": {"queue": "images"}}


@app.task(name="userapp.resize_image")
def resize_image(image_id: int, seconds: float = 1.0) -> dict[str, int]:
    """Pretend to resize an image: takes ``seconds`` of work."""
    time.sleep(seconds)
    return {"image_id": image_id, "width": 128}


@app.task(name="userapp.add")
def add(x: int, y: int) -> int:
    """A fast task."""
    return x + y
