"""Rebuild a scenario's invariants from the specs stored in its ``result.json``.

Each checker factory (``no_hung_tasks``, ``resume_consuming``, ``publish_bounded``,
``retry_policy``, ``beat``, ``results_stored``, ``revoked_never_run``) tags what it returns
with its name and JSON parameters (:func:`celery_chaos.checks.verdict.with_spec`);
``Scenario.check`` stores them as ``result.checkers`` and ``celery-chaos analyze`` rebuilds them
here to re-judge a history.
"""

from __future__ import annotations

from typing import Any

from celery_chaos.checks.beat import beat_checker
from celery_chaos.checks.hung import no_hung_tasks
from celery_chaos.checks.liveness import publish_bounded, resume_consuming
from celery_chaos.checks.results import results_stored
from celery_chaos.checks.retries import (
    DEFAULT_TOLERANCE_S,
    NAME,
    Expected,
    policy_from_json,
    retry_policy,
)
from celery_chaos.checks.revokes import revoked_never_run
from celery_chaos.checks.verdict import Checker


def _retry_policy(params: dict[str, Any]) -> Checker:
    return retry_policy(
        *(policy_from_json(p) for p in params["policies"]),
        expect={k: Expected(**v) for k, v in params.get("expect", {}).items()} or None,
        tolerance_s=params.get("tolerance_s", DEFAULT_TOLERANCE_S),
        name=params.get("name", NAME),
    )


_FACTORIES: dict[str, Any] = {
    "no_hung_tasks": lambda p: no_hung_tasks(**p),
    "resume_consuming": lambda p: resume_consuming(**p),
    "publish_bounded": lambda p: publish_bounded(**p),
    "beat": lambda p: beat_checker(**p),
    "retry_policy": _retry_policy,
    "results_stored": lambda p: results_stored(**p),
    "revoked_never_run": lambda p: revoked_never_run(**p),
}


class UnknownChecker(ValueError):
    """A stored spec names no checker this celery-chaos knows, or has bad parameters."""


def rebuild(spec: dict[str, Any]) -> Checker:
    """The checker a stored spec describes."""
    name = spec.get("checker")
    factory = _FACTORIES.get(str(name))
    if factory is None:
        raise UnknownChecker(f"no checker named {name!r}")
    try:
        return factory(dict(spec.get("params") or {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise UnknownChecker(f"checker {name!r}: bad parameters ({exc})") from None
