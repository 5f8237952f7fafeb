"""The app under test: its ``module:attr`` spec, its workload and the queues it uses."""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from celery import Celery

from celery_chaos.deployment.app_loader import DEFAULT_APP, load_app
from celery_chaos.errors import UsageError
from celery_chaos.load.workload import Workload

#: The sample app shipped with the harness, and its workload.
SAMPLE_APP = DEFAULT_APP
SAMPLE_WORKLOAD = (
    Path(importlib.util.find_spec("celery_chaos.sample_app").origin).parent / "workload.yaml"
)


@dataclass
class AppUnderTest:
    """The app the scenarios run: ``module:attr`` plus its workload."""

    spec: str
    workload: Workload
    queues: list[str] = field(default_factory=list)

    @property
    def is_sample(self) -> bool:
        """Whether this is the sample app (scenarios that drive its own tasks need it)."""
        return self.spec == SAMPLE_APP

    @classmethod
    def resolve(cls, spec: str, workload: Workload) -> AppUnderTest:
        """Import the app once in the harness to learn the queues its workers must consume,
        and check that it registers every task the workload names (:func:`check_tasks`)."""
        app = load_app(spec)
        check_tasks(app, spec, (t.name for t in workload.tasks))
        queues = list(workload.queues)
        default = app.conf.task_default_queue or "celery"
        routes = app.conf.task_routes or {}
        if isinstance(routes, dict):
            for route in routes.values():
                if isinstance(route, dict) and route.get("queue"):
                    queues.append(route["queue"])
        queues.append(default)
        return cls(spec=spec, workload=workload, queues=list(dict.fromkeys(queues)))


def registered_tasks(app: Celery, spec: str) -> set[str]:
    """The task names a worker of ``app`` registers: the modules of its ``imports`` and
    ``include`` settings and its ``autodiscover_tasks`` packages imported as ``celery worker``
    imports them (``app.loader.import_default_modules()``), then the app finalized.
    A task module that fails to import is a one-line :class:`UsageError`."""
    try:
        app.loader.import_default_modules()
        app.finalize()
    except Exception as exc:  # noqa: BLE001 - the user's task modules failed: say so in one line
        first = (str(exc).splitlines() or [""])[0]
        raise UsageError(
            f"importing the task modules of --chaos-app {spec!r} failed: "
            f"{type(exc).__name__}: {first}"
        ) from exc
    return set(app.tasks.keys())


def close_tasks(name: str, known: Iterable[str]) -> list[str]:
    """Up to 3 of ``known`` close to ``name``, whole (``difflib``) or by the last dotted part
    (``send_email`` for ``celery_chaos.sample_app.tasks.send_email``)."""
    known = sorted(known)
    by_tail: dict[str, list[str]] = {}
    for k in known:
        by_tail.setdefault(k.rsplit(".", 1)[-1], []).append(k)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.85)
    for tail in difflib.get_close_matches(name.rsplit(".", 1)[-1], by_tail, n=3, cutoff=0.75):
        close += by_tail[tail]
    return list(dict.fromkeys(close))[:3]


def check_tasks(app: Celery, spec: str, names: Iterable[str]) -> None:
    """Raise a one-line :class:`UsageError` naming each task in ``names`` that ``app`` does
    not register, with the registered names closest to it (or, with none close, the
    registered names)."""
    wanted = list(dict.fromkeys(names))
    known = registered_tasks(app, spec)
    unknown = [n for n in wanted if n not in known]
    if not unknown:
        return
    own = sorted(n for n in known if not n.startswith("celery."))
    parts = []
    hinted = False
    for name in unknown[:3]:
        close = close_tasks(name, own)
        hinted |= bool(close)
        parts.append(f"{name!r}" + (f" (did you mean {' or '.join(close)}?)" if close else ""))
    more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
    listed = ", ".join(own[:8]) + (f", +{len(own) - 8} more" if len(own) > 8 else "")
    raise UsageError(
        f"the workload names task{'s' if len(unknown) > 1 else ''} {', '.join(parts)}{more}, "
        f"which --chaos-app {spec} does not register"
        + ("" if hinted else f" (it registers {listed or 'no task'})")
        + ": fix the names in the workload file"
    )
