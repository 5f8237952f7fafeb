"""The sample Celery app, configured only from ``SAMPLE_*`` environment variables.

Run a worker with ``celery -A celery_chaos.sample_app.app:app worker -Q emails,reports,fetch``.
Tests build independent apps with :func:`create_app` instead of reloading this module.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from celery import Celery

from celery_chaos.sample_app import tasks as _tasks  # noqa: F401  (registers the shared tasks)
from celery_chaos.sample_app.config import configure

TASKS_MODULE = "celery_chaos.sample_app.tasks"
#: Tasks for the time-limit and retry scenarios (a hanging task, auto-retrying fetches).
CHAOS_TASKS_MODULE = "celery_chaos.sample_app.chaos_tasks"


def create_app(environ: Mapping[str, str], *, set_as_current: bool = True) -> Celery:
    """A new ``Celery("sample_app")`` configured from ``environ``, with the tasks registered."""
    new_app = Celery(
        "sample_app",
        include=[TASKS_MODULE, CHAOS_TASKS_MODULE],
        set_as_current=set_as_current,
    )
    return configure(new_app, environ)


app = create_app(os.environ)
