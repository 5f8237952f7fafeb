"""One scenario end to end: deployment -> load -> faults -> history -> checks -> result.

Scenarios (and users' own tests) drive a :class:`Scenario` through the
``chaos`` pytest fixture::

    def test_kill(chaos):
        chaos.deploy("rabbitmq", settings=ACKS_LATE)
        chaos.load(tasks=40, rate=20)
        chaos.faults.kill_worker(chaos.worker("w1") , ...)
        result = chaos.check()
        assert result.verdict == "valid"
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

from celery import Celery

from harness.checks.queue import recovery_time
from harness.checks.verdict import Checker, Verdict, check_history, spec_of
from harness.deployment.app_loader import apply_harness_config, load_app
from harness.deployment.brokers import RabbitMQServer, RedisServer
from harness.deployment.drain import drain
from harness.deployment.links import LinkProxies
from harness.deployment.sinks import FlakyHttpServer, SmtpSink, seed_reports_db
from harness.deployment.workers import Beat, Worker
from harness.errors import InfrastructureError
from harness.faults.network import NetworkFaults
from harness.faults.process import FaultInjector
from harness.history.schema import Kind, Record
from harness.history.store import HISTORY_DIR_ENV, HistoryWriter, read_history
from harness.load.publisher import Publisher
from harness.load.runner import LoadRun
from harness.load.workload import TaskSpec, Workload
from harness.report.deployment import annotate
from harness.report.results import ScenarioResult, safe_name, write_json
from harness.report.sampler import QueueDepthSampler

BrokerKind = Literal["rabbitmq", "redis"]

#: Records that end a run of a task on a worker (a retry ends this run; a new message follows).
_ENDS = {Kind.SUCCEEDED, Kind.FAILED, Kind.RETRIED}


#: Where to find the broker binaries when they are not where the Debian packages put them.
RABBITMQ_BIN_ENV = "CHAOS_RABBITMQ_BIN_DIR"
REDIS_SERVER_ENV = "CHAOS_REDIS_SERVER"


#: Seconds a worker or beat gets to exit on SIGTERM at teardown before it is killed.
STOP_GRACE_S = 3.0


def _in_parallel(steps: list[Callable[[], object]]) -> None:
    """Run ``steps`` in threads, wait for all, then raise the first error, if any."""
    with ThreadPoolExecutor(max_workers=max(1, len(steps))) as pool:
        futures = [pool.submit(step) for step in steps]
    errors = [e for f in futures if (e := f.exception()) is not None]
    if errors:
        raise errors[0]


def redis_server(run_dir: Path, **kwargs: Any) -> RedisServer:
    """A :class:`RedisServer` using ``$CHAOS_REDIS_SERVER`` as the binary when set."""
    return RedisServer(
        run_dir, executable=os.environ.get(REDIS_SERVER_ENV, "redis-server"), **kwargs
    )


@dataclass
class SharedBrokers:
    """Brokers shared by the scenarios of one session, started on first use.

    One RabbitMQ node serves every RabbitMQ scenario, each in its own vhost;
    one Redis server holds the result backend. Redis *broker* scenarios get a
    server of their own, so restarts and persistence settings stay private.
    """

    root: Path
    folder: str = "brokers"  # under root; one per xdist worker
    #: Seconds spent starting the shared brokers so far: the session's cost, which the first
    #: scenario to need them should not count as its own.
    startup_s: float = 0.0
    _rabbit: RabbitMQServer | None = None
    _redis: RedisServer | None = None
    _vhosts: int = 0

    def rabbitmq(self) -> RabbitMQServer:
        """The session's RabbitMQ node."""
        if self._rabbit is None:
            t0 = time.monotonic()
            self._rabbit = RabbitMQServer(
                self.root.resolve() / self.folder,
                bin_dir=os.environ.get(RABBITMQ_BIN_ENV, "/usr/lib/rabbitmq/bin"),
            )
            self._rabbit.start()
            self.startup_s += time.monotonic() - t0
        return self._rabbit

    def results_redis(self) -> RedisServer:
        """The session's Redis server for result backends."""
        if self._redis is None:
            t0 = time.monotonic()
            self._redis = redis_server(self.root.resolve() / self.folder, name="redis-results")
            self._redis.start()
            self.startup_s += time.monotonic() - t0
        return self._redis

    def new_vhost(self, name: str) -> str:
        """A fresh vhost on the shared node."""
        self._vhosts += 1
        vhost = f"s{self._vhosts}-{safe_name(name)[-40:]}"
        self.rabbitmq().add_vhost(vhost)
        return vhost

    def close(self) -> None:
        """Stop the shared brokers."""
        for broker in (self._rabbit, self._redis):
            if broker is not None:
                broker.stop()
        self._rabbit = self._redis = None


@dataclass
class AppUnderTest:
    """The app the scenarios run: ``module:attr`` plus its workload."""

    spec: str
    workload: Workload
    queues: list[str] = field(default_factory=list)

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


class Scenario:
    """A deployment under one configuration, its load, its faults and its verdict."""

    def __init__(
        self,
        name: str,
        root: Path,
        app: AppUnderTest,
        brokers: SharedBrokers,
        *,
        description: str = "",
    ) -> None:
        self.name = name
        self.app = app
        self.brokers = brokers
        self.dir = root / "scenarios" / safe_name(name)
        self.dir.mkdir(parents=True, exist_ok=False)
        self.history_dir = self.dir / "history"
        self.log_dir = self.dir / "logs"
        self.history_dir.mkdir()
        self.log_dir.mkdir()
        self.writer = HistoryWriter(self.history_dir, "harness", "harness")
        self.faults = FaultInjector(self.writer)
        self.result = ScenarioResult(
            name=name,
            description=description,
            history_dir=str(self.history_dir),
            log_dir=str(self.log_dir),
        )
        self.started = time.monotonic()
        self._shared_startup0 = brokers.startup_s
        self.broker_kind: BrokerKind | None = None
        self.broker: Any = None
        self.broker_url = ""
        self.backend_url = ""
        self.vhost = ""
        self.settings: dict[str, Any] = {}
        self.workers: dict[str, Worker] = {}
        self.beats: dict[str, Beat] = {}
        self.loads: list[LoadRun] = []
        self.smtp: SmtpSink | None = None
        self.http: FlakyHttpServer | None = None
        self.env: dict[str, str] = {}
        self.extra_env: dict[str, str] = {}
        self._closed = False
        self.sampler: QueueDepthSampler | None = None  # queue depth into the history
        self.links: LinkProxies | None = None  # per-link proxies (deploy(proxied=True))
        self.net: NetworkFaults | None = None  # network faults on those links

    # -- deployment ------------------------------------------------------------------------

    def deploy(
        self,
        broker: BrokerKind = "rabbitmq",
        *,
        workers: int = 2,
        concurrency: int = 2,
        pool: str = "prefork",
        settings: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        redis_persistence: str = "none",
        expect: Literal["valid", "invalid"] = "valid",
        proxied: bool = False,
    ) -> Scenario:
        """Start the broker, the local services and ``workers`` workers (``w1@chaos``...)."""
        self.broker_kind = broker
        self.settings = dict(settings or {})
        self.extra_env = dict(env or {})
        self.result.broker = broker
        self.result.settings = self.settings
        self.result.expect = expect
        if broker == "rabbitmq":
            rabbit = self.brokers.rabbitmq()
            self.vhost = self.brokers.new_vhost(self.name)
            self.broker = rabbit
            self.broker_url = rabbit.url(self.vhost)
            self.backend_url = self.brokers.results_redis().url(1)
        elif broker == "redis":
            self.broker = redis_server(self.dir.resolve(), persistence=redis_persistence)
            self.broker.start()
            self.broker_url = self.broker.url(0)
            self.backend_url = self.broker.url(1)
        else:
            raise InfrastructureError(f"unknown broker {broker!r}: use rabbitmq or redis")
        self._start_services()
        self.env = self._process_env()
        if proxied:
            self.links = LinkProxies(self.dir / "proxy").start()
            self.net = NetworkFaults(self.links, self.writer)
        self.writer.write(
            Kind.SCENARIO,
            name=self.name,
            phase="start",
            detail={"broker": broker, "settings": self.settings, "app": self.app.spec},
        )
        self.sampler = QueueDepthSampler(
            self.writer, self.broker_url, self.app.queues, target=broker
        ).start()
        for i in range(1, workers + 1):
            self.add_worker(f"w{i}@chaos", concurrency=concurrency, pool=pool)
        return self

    def _start_services(self) -> None:
        services = self.dir / "services"
        services.mkdir(exist_ok=True)
        self.smtp = SmtpSink(services / "smtp.jsonl").start()
        self.http = FlakyHttpServer().start()
        self.reports_db = services / "reports.sqlite3"
        seed_reports_db(self.reports_db)

    def placeholders(self) -> dict[str, Any]:
        """Values for ``{placeholders}`` in workload files."""
        assert self.smtp is not None and self.http is not None
        return {
            "http_base": self.http.base_url,
            "smtp_host": self.smtp.host,
            "smtp_port": self.smtp.port,
        }

    def _process_env(self) -> dict[str, str]:
        assert self.smtp is not None
        cwd = os.getcwd()
        path = os.pathsep.join(p for p in [cwd, os.environ.get("PYTHONPATH", "")] if p)
        env = {
            "PYTHONPATH": path,
            "CHAOS_APP": self.app.spec,
            "CHAOS_BROKER_URL": self.broker_url,
            "CHAOS_RESULT_BACKEND": self.backend_url,
            "CHAOS_CONF": json.dumps(self.settings),
            HISTORY_DIR_ENV: str(self.history_dir),
            # The sample app's services (harmless for other apps).
            "SAMPLE_SMTP_HOST": self.smtp.host,
            "SAMPLE_SMTP_PORT": str(self.smtp.port),
            "SAMPLE_REPORTS_DB": str(self.reports_db),
            "SAMPLE_REPORTS_DIR": str(self.dir / "services" / "reports"),
            # Timing knob: retry in seconds, not the production minute (override with env=).
            "SAMPLE_FETCH_RETRY_COUNTDOWN": "1",
            "PYTHONUNBUFFERED": "1",
        }
        env.update(self.extra_env)
        return env

    def env_for(self, node: str) -> dict[str, str]:
        """The environment of one process; with proxies, its broker and backend links.

        ``node`` is ``w1@chaos``, ``publisher``, ``beat``...: the link names are
        ``<node>-broker`` and ``<node>-backend`` (``w1-broker`` for ``w1@chaos``).
        """
        if self.links is None:
            return self.env
        short = node.split("@")[0]
        env = dict(self.env)
        env["CHAOS_BROKER_URL"] = self.links.url(f"{short}-broker", self.broker_url)
        if self.backend_url:
            env["CHAOS_RESULT_BACKEND"] = self.links.url(f"{short}-backend", self.backend_url)
        return env

    def add_worker(
        self, name: str, *, concurrency: int = 2, pool: str = "prefork", start: bool = True
    ) -> Worker:
        """Add (and start) one more worker consuming the app's queues."""
        worker = Worker(
            name,
            queues=self.app.queues,
            env=self.env_for(name),
            log_dir=self.log_dir,
            history_dir=self.history_dir,
            concurrency=concurrency,
            pool=pool,
        )
        self.workers[name] = worker
        if start:
            self.start_worker(name)
        return worker

    def start_worker(self, name: str) -> Worker:
        """Start (or restart) a worker and record it."""
        worker = self.workers[name]
        worker.start()
        self.writer.write(
            Kind.DEPLOYMENT,
            name="worker_started",
            target=name,
            detail={"pid": worker.pid, "children": worker.child_pids()},
        )
        return worker

    def worker(self, name: str) -> Worker:
        """A worker by node name (``w1@chaos``) or short name (``w1``)."""
        return self.workers[name if "@" in name else f"{name}@chaos"]

    # -- load ------------------------------------------------------------------------------

    def load(
        self,
        *,
        tasks: int | None = None,
        rate: float | None = None,
        users: int = 4,
        duration: float | None = None,
        workload: Workload | None = None,
        seed: int = 0,
    ) -> LoadRun:
        """Start a Locust load in the background; ``.wait()`` on the result to join it."""
        wl = (workload or self.app.workload).render(self.placeholders())
        run = LoadRun(
            workload=wl,
            env=self.env_for("publisher"),
            out_dir=self.dir / f"load-{len(self.loads) + 1}",
            tasks=tasks,
            rate=rate,
            users=users,
            duration=duration,
            seed=seed,
        )
        self.loads.append(run)
        return run.start()

    def publish(self, name: str, *args: Any, count: int = 1) -> list[str]:
        """Publish ``count`` calls of task ``name`` now, recorded invoke/ok; return their ids.

        For scenarios that need tasks at an exact moment rather than a load; the publish
        goes straight to the broker (never through a proxied link).
        """
        app = Celery("scenario-publisher", set_as_current=False)
        src = load_app(self.app.spec).conf
        app.conf.update(task_default_queue=src.task_default_queue, task_routes=src.task_routes)
        apply_harness_config(
            app, broker_url=self.broker_url, result_backend=None, settings=self.settings
        )
        pub = Publisher(app, HistoryWriter(self.history_dir, "publisher", "publisher"))
        try:
            return [pub.publish(TaskSpec(name=name, args=list(args)))[0] for _ in range(count)]
        finally:
            app.close()

    # -- observation -----------------------------------------------------------------------

    def history(self) -> list[Record]:
        """The history so far, in monotonic order."""
        return read_history(self.history_dir).records

    def running_on(self, worker: Worker, until_ns: int | None = None) -> dict[str, Record]:
        """Tasks started by ``worker``'s current process and not yet ended: id -> ``started``.

        ``until_ns``: as of that monotonic time (later records are left out).
        """
        started: dict[str, Record] = {}
        for rec in self.history():
            if rec.worker_pid != worker.pid or rec.task_id is None:
                continue
            if until_ns is not None and rec.mono_ns > until_ns:
                continue
            if rec.kind is Kind.STARTED:
                started[rec.task_id] = rec
            elif rec.kind in _ENDS:
                started.pop(rec.task_id, None)
        return started

    def wait_running(
        self,
        worker: Worker | str,
        n: int = 1,
        *,
        min_age: float = 0.0,
        max_age: float | None = None,
        timeout: float = 30.0,
    ) -> list[str]:
        """Wait until ``worker`` runs ``n`` tasks that started ``min_age`` s ago or more.

        ``min_age`` picks tasks that are really under way; ``max_age`` (if given) leaves
        out tasks so old they may end before a fault lands. Together they make a
        negative control detect its loss every time.
        """
        w = worker if isinstance(worker, Worker) else self.worker(worker)
        lo, hi = min_age * 1e9, float("inf") if max_age is None else max_age * 1e9
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = time.monotonic_ns()
            running = self.running_on(w)
            old = [i for i, r in running.items() if lo <= now - r.mono_ns <= hi]
            if len(old) >= n:
                return old
            time.sleep(0.05)
        span = f"{min_age}-{max_age} s" if max_age is not None else f"{min_age} s"
        raise InfrastructureError(
            f"{w.name} never ran {n} task(s) for {span} within {timeout:.0f} s: is the "
            f"workload long enough to be interrupted? (logs in {self.log_dir})"
        )

    def child_running(self, worker: Worker, task_id: str) -> int:
        """The pid of the pool child running ``task_id`` on ``worker``."""
        rec = self.running_on(worker).get(task_id)
        if rec is None:
            raise InfrastructureError(f"task {task_id} is no longer running on {worker.name}")
        return rec.pid

    def queue_depths(self) -> dict[str, tuple[int, int]]:
        """``{queue: (ready, unacked)}`` for the app's queues on the scenario's broker."""
        if self.broker_kind == "rabbitmq":
            depths = self.broker.queue_depths(self.vhost)
            return {q: depths.get(q, (0, 0)) for q in self.app.queues}
        return self.broker.queue_depths(0, self.app.queues)

    # -- verdict ---------------------------------------------------------------------------

    def check(
        self,
        *,
        exactly_once: bool = False,
        invariants: Iterable[Checker] = (),
        drain_timeout: float = 60.0,
        settle: float = 3.0,
    ) -> ScenarioResult:
        """Join the loads, drain (bounded), check the history, and write ``result.json``.

        The queue invariant always runs; ``invariants`` adds the scenario's own checkers
        (pure functions ``History -> InvariantResult``).
        """
        for run in self.loads:
            run.wait()
        drained = drain(
            self.history_dir,
            self.queue_depths,
            timeout=drain_timeout,
            settle=settle,
            writer=self.writer,
        )
        history = read_history(self.history_dir)
        invariants = list(invariants)
        results = check_history(history, exactly_once=exactly_once, extra=invariants)
        verdict = Verdict.combine(i.verdict for i in results)
        metrics: dict[str, Any] = {
            "drain_s": round(drained.seconds, 2),
            "drain": drained.reason,
            "wall_s": self._wall_s(),
        }
        if shared := self._shared_start_s():
            metrics["shared_brokers_start_s"] = round(shared, 2)
        faults = [r for r in history.records if r.kind is Kind.FAULT and r.phase == "end"]
        if faults:
            rec = recovery_time(history, faults[-1])
            metrics["recovery"] = rec.model_dump(mode="json")
        for i, run in enumerate(self.loads, 1):
            stats = run.stats()
            metrics[f"locust_{i}"] = {k: v for k, v in stats.items() if k != "by_task"}
        self.result.verdict = verdict
        self.result.checked = True
        self.result.invariants = results
        self.result.checkers = [spec for c in invariants if (spec := spec_of(c)) is not None]
        self.result.metrics = metrics
        self.save()
        return self.result

    def _shared_start_s(self) -> float:
        """Seconds this scenario waited for the session's shared brokers to start."""
        return self.brokers.startup_s - self._shared_startup0

    def _wall_s(self) -> float:
        """Seconds since the scenario began, less any start of the session's shared brokers."""
        return round(time.monotonic() - self.started - self._shared_start_s(), 2)

    def save(self) -> None:
        """Write ``result.json`` for this scenario."""
        annotate(self)  # the deployment as run and the faults injected, for reports
        write_json(self.dir / "result.json", self.result.model_dump(mode="json"))

    def close(self, error: str | None = None) -> None:
        """Stop everything the scenario started; never raises."""
        if self._closed:
            return
        self._closed = True
        if error and not self.result.error:
            self.result.error = error
        steps: list[Any] = [run.stop for run in self.loads]
        steps += [self.sampler.stop] if self.sampler is not None else []
        # Every beat and worker at once, with a short grace: the verdict is in, and a warm
        # shutdown takes 2-6 s each (measured), most of a scenario's teardown.
        procs = [*self.beats.values(), *self.workers.values()]
        if procs:
            stops = [partial(p.stop, timeout=STOP_GRACE_S) for p in procs]
            steps.append(partial(_in_parallel, stops))
        if self.broker_kind == "redis" and self.broker is not None:
            steps.append(self.broker.stop)
        steps += [s.stop for s in (self.smtp, self.http) if s is not None]
        if self.net is not None:
            steps.insert(0, self.net.heal)
        if self.links is not None:
            steps.append(self.links.stop)
        for step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - teardown must go on
                print(f"celery-chaos: teardown step failed: {exc}", file=sys.stderr)
        self.result.metrics.setdefault("wall_s", self._wall_s())
        self.writer.write(Kind.SCENARIO, name=self.name, phase="end")
        self.save()
