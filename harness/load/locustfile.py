"""Locust load for Celery: ``CeleryUser`` publishes a workload's tasks by weighted mix.

Every publish is recorded in the history (invoke, then ok/fail/info) and
reported to Locust as a request named after the task. Runs standalone::

    CHAOS_APP=celery_chaos.sample_app.app:app CHAOS_BROKER_URL=amqp://... CHAOS_HISTORY_DIR=hist \\
    locust -f harness/load/locustfile.py --headless -u 10 -r 10 -t 30s \\
        --chaos-workload sample_app/workload.yaml --chaos-rate 50

The harness runs it in a subprocess, so gevent's monkey patching never
touches the harness process.
"""

from __future__ import annotations

import json
import os
import threading

import gevent
from locust import User, constant, constant_throughput, events, task
from locust.exception import StopUser

os.environ.setdefault("CHAOS_ROLE", "publisher")
os.environ.setdefault("CHAOS_NODE_NAME", "publisher")

from celery_chaos.deployment.celery_app import app  # noqa: E402
from celery_chaos.errors import UsageError  # noqa: E402
from celery_chaos.history import recorder  # noqa: E402
from celery_chaos.history.schema import Kind  # noqa: E402
from celery_chaos.load.publisher import Publisher  # noqa: E402
from celery_chaos.load.workload import Workload, load_workload, parse_workload  # noqa: E402

_lock = threading.Lock()
_state = {"reserved": 0, "done": 0, "users": 0}


@events.init_command_line_parser.add_listener
def _options(parser) -> None:  # type: ignore[no-untyped-def]
    env = os.environ
    parser.add_argument(
        "--chaos-workload",
        default=env.get("CHAOS_WORKLOAD", ""),
        help="workload file (YAML/JSON); default $CHAOS_WORKLOAD_JSON",
    )
    parser.add_argument(
        "--chaos-tasks",
        type=int,
        default=int(env.get("CHAOS_TASKS", "0")),
        help="stop after publishing this many tasks (0: no limit)",
    )
    parser.add_argument(
        "--chaos-rate",
        type=float,
        default=float(env.get("CHAOS_RATE", "0")),
        help="target publishes per second across all users (0: no pacing)",
    )
    parser.add_argument(
        "--chaos-seed",
        type=int,
        default=int(env.get("CHAOS_SEED", "0")),
        help="seed of the task mix",
    )


def _workload(options) -> Workload:  # type: ignore[no-untyped-def]
    if os.environ.get("CHAOS_WORKLOAD_JSON"):
        return parse_workload(json.loads(os.environ["CHAOS_WORKLOAD_JSON"]), "CHAOS_WORKLOAD_JSON")
    if options.chaos_workload:
        try:
            return load_workload(options.chaos_workload).render(_placeholders())
        except UsageError as exc:
            raise SystemExit(f"celery-chaos: {exc}") from None
    raise SystemExit("no workload: pass --chaos-workload FILE or set CHAOS_WORKLOAD_JSON")


#: Standalone runs fill a workload file's placeholders from these variables.
PLACEHOLDER_ENV = {
    "http_base": "CHAOS_HTTP_BASE",
    "smtp_host": "CHAOS_SMTP_HOST",
    "smtp_port": "CHAOS_SMTP_PORT",
}


def _placeholders() -> dict[str, str]:
    return {k: os.environ[v] for k, v in PLACEHOLDER_ENV.items() if os.environ.get(v)}


@events.test_start.add_listener
def _start(environment, **_) -> None:  # type: ignore[no-untyped-def]
    opts = environment.parsed_options
    environment.chaos_workload = _workload(opts)
    environment.chaos_publisher = Publisher(app, recorder.writer())
    limit = opts.chaos_tasks
    if limit and environment.runner is not None:

        def _watch() -> None:
            while _state["done"] < limit:
                gevent.sleep(0.05)
            environment.runner.quit()

        gevent.spawn(_watch)


class CeleryUser(User):
    """Publishes tasks from the workload, paced to ``--chaos-rate`` overall."""

    def wait_time(self) -> float:  # type: ignore[override]
        opts = self.environment.parsed_options
        users = max(1, getattr(opts, "num_users", 1) or 1)
        if opts.chaos_rate > 0:
            return constant_throughput(opts.chaos_rate / users)(self)
        return constant(0)(self)

    def on_start(self) -> None:
        with _lock:
            _state["users"] += 1
            index = _state["users"]
        seed = self.environment.parsed_options.chaos_seed
        self.choose = self.environment.chaos_workload.chooser(seed * 100_003 + index)

    @task
    def publish(self) -> None:
        limit = self.environment.parsed_options.chaos_tasks
        with _lock:
            if limit and _state["reserved"] >= limit:
                raise StopUser()
            _state["reserved"] += 1
        spec = self.choose()
        task_id, kind, seconds, exc = self.environment.chaos_publisher.publish(spec)
        with _lock:
            _state["done"] += 1
        self.environment.events.request.fire(
            request_type="celery",
            name=spec.name,
            response_time=seconds * 1000.0,
            response_length=0,
            exception=exc if kind is not Kind.OK else None,
            context={"task_id": task_id, "outcome": kind.value},
        )
