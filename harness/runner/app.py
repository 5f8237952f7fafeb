"""The app under test: its ``module:attr`` spec, its workload and the queues it uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.deployment.app_loader import DEFAULT_APP, load_app
from harness.load.workload import Workload

#: The sample app shipped with the harness, and its workload.
SAMPLE_APP = DEFAULT_APP
SAMPLE_WORKLOAD = Path(__file__).resolve().parent.parent.parent / "sample_app" / "workload.yaml"


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
        """Import the app once in the harness to learn the queues its workers must consume."""
        app = load_app(spec)
        queues = list(workload.queues)
        default = app.conf.task_default_queue or "celery"
        routes = app.conf.task_routes or {}
        if isinstance(routes, dict):
            for route in routes.values():
                if isinstance(route, dict) and route.get("queue"):
                    queues.append(route["queue"])
        queues.append(default)
        return cls(spec=spec, workload=workload, queues=list(dict.fromkeys(queues)))
