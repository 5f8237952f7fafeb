"""The ``-A`` target of every harness process: the user's app, pointed at the deployment.

``celery -A celery_chaos.deployment.celery_app:app worker`` loads ``$CHAOS_APP``,
overrides its broker and backend, applies ``$CHAOS_CONF`` and connects the
history recorder, so the user's code needs no change.
"""

from __future__ import annotations

import os

from celery_chaos.deployment.app_loader import app_from_env
from celery_chaos.history import recorder

app = app_from_env()
recorder.install(record_publishes=os.environ.get(recorder.ROLE_ENV) != "publisher")
