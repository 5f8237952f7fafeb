"""Load a Celery app by ``module:attr`` and point it at the harness's deployment.

The harness runs every process (worker, beat, load generator) on the app named
by ``$CHAOS_APP`` through :mod:`celery_chaos.deployment.celery_app`, which calls
:func:`load_app` and :func:`apply_harness_config`. Apps often hard-code
``broker_url``; the harness overrides it, and the result backend, whatever the
app's own configuration says, then applies the reliability settings under test.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from typing import Any

from celery import Celery

from celery_chaos.errors import UsageError

APP_ENV = "CHAOS_APP"
BROKER_ENV = "CHAOS_BROKER_URL"
BACKEND_ENV = "CHAOS_RESULT_BACKEND"
CONF_ENV = "CHAOS_CONF"  # JSON object of Celery settings under test
DEFAULT_APP = "celery_chaos.sample_app.app:app"

#: Settings that are dicts and are merged key by key rather than replaced.
_MERGED = ("broker_transport_options", "result_backend_transport_options")


def _cwd_on_path() -> None:
    """Put the current directory first on ``sys.path`` when it is not there yet.

    ``python -m`` puts it there, but a console script (``celery-chaos``, ``pytest``) puts its
    own ``bin/`` directory instead: the user's module in the current directory would be found
    only with ``PYTHONPATH=.``. Child processes get it through ``PYTHONPATH``
    (``Scenario._process_env`` puts the harness's current directory first).
    """
    cwd = os.getcwd()
    if not any(isinstance(p, str) and os.path.abspath(p or os.curdir) == cwd for p in sys.path):
        sys.path.insert(0, cwd)
        importlib.invalidate_caches()


def load_app(spec: str) -> Celery:
    """Import ``package.module:attr`` (``attr`` defaults to ``app``) and return the Celery app."""
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise UsageError(f"bad app path {spec!r}: use package.module:app")
    _cwd_on_path()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(
            f"cannot import {module_name!r} for --chaos-app {spec!r}: {exc} "
            "(is it in the current directory, on PYTHONPATH or installed?)"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - the user's module failed: say so in one line
        raise UsageError(
            f"importing {module_name!r} for --chaos-app {spec!r} failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    obj = getattr(module, attr or "app", None)
    if obj is None:
        raise UsageError(
            f"{module_name!r} has no attribute {attr or 'app'!r} (--chaos-app {spec!r})"
        )
    if inspect.isfunction(obj):  # an app factory
        try:
            obj = obj()
        except Exception as exc:  # noqa: BLE001
            raise UsageError(
                f"the app factory {spec!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
    if not isinstance(obj, Celery):
        raise UsageError(f"--chaos-app {spec!r} is a {type(obj).__name__}, not a Celery app")
    return obj


def apply_harness_config(
    app: Celery,
    *,
    broker_url: str | None,
    result_backend: str | None,
    settings: dict[str, Any] | None,
) -> Celery:
    """Point ``app`` at the deployment and apply ``settings`` (the settings under test)."""
    conf: dict[str, Any] = {}
    if broker_url:
        conf["broker_url"] = broker_url
        conf["broker_read_url"] = None
        conf["broker_write_url"] = None
    if result_backend:
        conf["result_backend"] = result_backend
    for key, value in (settings or {}).items():
        if key in _MERGED and isinstance(value, dict):
            merged = dict(app.conf.get(key) or {})
            merged.update(value)
            conf[key] = merged
        else:
            conf[key] = value
    app.conf.update(conf)
    return app


def merge_settings(*parts: dict[str, Any]) -> dict[str, Any]:
    """Settings layered left to right; nested dicts (transport options) merge key by key."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = {**out[key], **value}
            else:
                out[key] = value
    return out


def settings_from_env(environ: os._Environ[str] | dict[str, str] | None = None) -> dict[str, Any]:
    """The settings under test, from ``$CHAOS_CONF`` (a JSON object)."""
    environ = os.environ if environ is None else environ
    raw = environ.get(CONF_ENV)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{CONF_ENV} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise UsageError(f"{CONF_ENV} must be a JSON object of Celery settings")
    return value


def app_from_env(environ: os._Environ[str] | dict[str, str] | None = None) -> Celery:
    """The app named by ``$CHAOS_APP``, configured for the harness from the environment."""
    environ = os.environ if environ is None else environ
    app = load_app(environ.get(APP_ENV, DEFAULT_APP))
    return apply_harness_config(
        app,
        broker_url=environ.get(BROKER_ENV),
        result_backend=environ.get(BACKEND_ENV),
        settings=settings_from_env(environ),
    )
