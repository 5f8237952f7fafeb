"""One scenario's deployment, load, faults and verdict: the imperative API.

The runner (:mod:`celery_chaos.runner.run`) drives a :class:`Scenario` from a spec; users' own
tests drive one through the ``chaos`` pytest fixture::

    def test_kill(chaos):
        chaos.deploy("rabbitmq", settings=ACKS_LATE)
        chaos.load(tasks=40, rate=20)
        chaos.wait_running("w1", n=1, min_age=0.3)
        chaos.faults.kill_worker(chaos.worker("w1"))
        result = chaos.check()
        assert result.verdict == "valid"

Both inject faults through the one vocabulary (:mod:`celery_chaos.faults.vocabulary`) and record
their windows in one place (:func:`celery_chaos.faults.schedule.open_window`). The deployment
itself lives in a backend (:class:`celery_chaos.backends.local.LocalBackend`).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from celery import Celery
from celery.backends.redis import RedisBackend

from celery_chaos.backends.local import SharedBrokers
from celery_chaos.checks.beat import (
    BEAT_READY,
    BEAT_STARTED,
    BEAT_STOPPED,
    SCHEDULE_RECORD,
    BeatCheckResult,
    BeatSchedule,
    beat_metrics,
)
from celery_chaos.checks.queue import recovery_time
from celery_chaos.checks.results import RESULT_STATES, needs_result_states, task_ids
from celery_chaos.checks.verdict import Checker, Verdict, check_history, spec_of
from celery_chaos.deployment.app_loader import (
    CONF_ENV,
    apply_harness_config,
    load_app,
    merge_settings,
)
from celery_chaos.deployment.beat import read_dump, spawn_dump
from celery_chaos.deployment.drain import drain
from celery_chaos.deployment.sampler import QueueDepthSampler
from celery_chaos.deployment.workers import Beat, Worker
from celery_chaos.errors import InfrastructureError
from celery_chaos.faults.context import Window
from celery_chaos.faults.schedule import aged, close_window, open_window
from celery_chaos.faults.vocabulary import (
    Bandwidth,
    CrashBroker,
    KillBeat,
    KillPoolChild,
    KillWorker,
    Latency,
    Op,
    Partition,
    PauseWorker,
    StopBroker,
)
from celery_chaos.faults.vocabulary import Load as LoadOp
from celery_chaos.history.reader import HistoryTail
from celery_chaos.history.schema import Kind, Record
from celery_chaos.history.store import HISTORY_DIR_ENV, HistoryWriter
from celery_chaos.load.publisher import Publisher
from celery_chaos.load.runner import LoadRun
from celery_chaos.load.workload import TaskSpec, Workload, parse_workload
from celery_chaos.results import ScenarioResult, safe_name, write_json
from celery_chaos.runner.app import AppUnderTest
from celery_chaos.runner.describe import annotate
from celery_chaos.spec.model import DeploymentSpec

BrokerKind = Literal["rabbitmq", "redis"]


def process_env(app: str, broker_url: str, settings: dict[str, Any], history_dir: Path, *,
                result_backend: str | None = None) -> dict[str, str]:
    """The environment every harness-started process shares (workers, beats, Locust): the
    app, its broker (and result backend), the settings under test and the history directory;
    ``PYTHONPATH`` starts with the working directory so the app imports as it does here."""
    cwd = os.getcwd()
    env = {
        "PYTHONPATH": os.pathsep.join(p for p in [cwd, os.environ.get("PYTHONPATH", "")] if p),
        "CHAOS_APP": app,
        "CHAOS_BROKER_URL": broker_url,
        "CHAOS_CONF": json.dumps(settings),
        HISTORY_DIR_ENV: str(history_dir),
        "PYTHONUNBUFFERED": "1",
    }
    if result_backend is not None:
        env["CHAOS_RESULT_BACKEND"] = result_backend
    return env


def _node(worker: Worker | str) -> str:
    if isinstance(worker, Worker):
        return worker.name
    return worker if "@" in worker else f"{worker}@chaos"


#: In a setting's string value: the scenario's directory (a file of its own per run).
SCENARIO_DIR = "{scenario_dir}"


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
        self.tail = HistoryTail(self.history_dir)
        self.backend = brokers.backend(self.dir, app.queues)
        self.faults = FaultsApi(self)
        self.net: NetApi | None = None
        self.result = ScenarioResult(
            name=name,
            description=description,
            history_dir=str(self.history_dir),
            log_dir=str(self.log_dir),
        )
        self.started = time.monotonic()
        #: Where the run is, in words (for live progress): deploying, faults, draining...
        self.phase = "starting"
        self._shared_startup0 = brokers.startup_s
        self.deployment: DeploymentSpec | None = None
        self.settings: dict[str, Any] = {}
        self.env: dict[str, str] = {}
        self.loads: list[LoadRun] = []
        self.sampler: QueueDepthSampler | None = None
        #: The beat schedule recorded at the first start of a beat.
        self.beat_schedule: BeatSchedule | None = None
        self._seq = 0
        self._closed = False

    # -- what the backend runs (read-only views) --------------------------------------------

    @property
    def broker_kind(self) -> str | None:
        return self.backend.broker_kind

    @property
    def broker(self) -> Any:
        return self.backend.broker

    @property
    def broker_url(self) -> str:
        return self.backend.broker_url

    @property
    def backend_url(self) -> str:
        return self.backend.backend_url

    @property
    def vhost(self) -> str:
        return self.backend.vhost

    @property
    def workers(self) -> dict[str, Worker]:
        return self.backend.workers

    @property
    def beats(self) -> dict[str, Beat]:
        return self.backend.beats

    @property
    def smtp(self) -> Any:
        return self.backend.smtp

    @property
    def http(self) -> Any:
        return self.backend.http

    @property
    def links(self) -> Any:
        return self.backend.links

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
        broker_group: str = "shared",
    ) -> Scenario:
        """Start the broker, the local services and ``workers`` workers (``w1@chaos``...)."""
        spec = DeploymentSpec.model_validate(
            {
                "broker": broker,
                "workers": workers,
                "concurrency": concurrency,
                "pool": pool,
                "settings": settings or {},
                "env": env or {},
                "redis_persistence": redis_persistence,
                "proxied": proxied,
                "broker_group": broker_group,
            }
        )
        return self.deploy_spec(spec, expect=expect)

    def deploy_spec(self, spec: DeploymentSpec, *, expect: str = "valid") -> Scenario:
        """Start what ``spec`` describes (beats are registered; a step starts them)."""
        self.phase = "deploying"
        self.deployment = spec
        # A setting's string value may name the scenario's directory (`worker_state_db`).
        self.settings = {
            k: v.replace(SCENARIO_DIR, str(self.dir)) if isinstance(v, str) else v
            for k, v in spec.settings.items()
        }
        self.result.broker = spec.broker
        self.result.settings = self.settings
        self.result.expect = expect  # type: ignore[assignment]
        b = self.backend
        b.stop_grace_s = spec.stop_grace_s
        if spec.network == "netns":
            b.start_network(spec.sysctls)
        b.start_broker_node(spec.broker, name=self.name, group=spec.broker_group,
                            config=spec.broker_config,
                            persistence=spec.redis_persistence)
        b.start_services()
        self.env = self._process_env(spec.env)
        if spec.proxied:
            b.start_links()
            self.net = NetApi(self)
        self.writer.write(
            Kind.SCENARIO,
            name=self.name,
            phase="start",
            detail={"broker": spec.broker, "settings": self.settings, "app": self.app.spec,
                    "backend": b.kind, "network": spec.network},
        )
        self.sampler = QueueDepthSampler(
            self.writer, self.broker_url, self.app.queues, target=spec.broker
        ).start()
        for name in spec.worker_names():
            self.add_worker(name, concurrency=spec.concurrency, pool=spec.pool)
        for beat in spec.beats:
            self.add_beat(beat.name, settings=beat.settings)
        return self

    def placeholders(self) -> dict[str, Any]:
        """Values for ``{placeholders}`` in workload files."""
        return self.backend.placeholders()

    def _process_env(self, extra: dict[str, str]) -> dict[str, str]:
        b = self.backend
        assert b.smtp is not None and b.reports_db is not None
        env = process_env(self.app.spec, self.broker_url, self.settings, self.history_dir,
                          result_backend=self.backend_url)
        env.update({
            # The sample app's services (harmless for other apps).
            "SAMPLE_SMTP_HOST": b.smtp.host,
            "SAMPLE_SMTP_PORT": str(b.smtp.port),
            "SAMPLE_REPORTS_DB": str(b.reports_db),
            "SAMPLE_REPORTS_DIR": str(self.dir / "services" / "reports"),
            # Timing knob: retry in seconds, not the production minute (override with env=).
            "SAMPLE_FETCH_RETRY_COUNTDOWN": "1",
        })
        env.update(extra)
        return env

    def env_for(self, node: str) -> dict[str, str]:
        """The environment of one process; with proxies, its broker and backend links.

        ``node`` is ``w1@chaos``, ``publisher``, ``beat``...: the link names are
        ``<node>-broker`` and ``<node>-backend`` (``w1-broker`` for ``w1@chaos``).
        """
        if self.backend.links is None and self.backend.net is None:
            return self.env
        short = node.split("@")[0]
        env = dict(self.env)
        env["CHAOS_BROKER_URL"] = self.backend.link_url(f"{short}-broker", self.broker_url)
        if self.backend_url:
            env["CHAOS_RESULT_BACKEND"] = self.backend.link_url(
                f"{short}-backend", self.backend_url
            )
        return env

    def add_worker(
        self, name: str, *, concurrency: int = 2, pool: str = "prefork", start: bool = True
    ) -> Worker:
        """Add (and start) one more worker consuming the app's queues."""
        name = _node(name)
        worker = self.backend.new_worker(
            name, self.env_for(name), self.log_dir, self.history_dir,
            concurrency=concurrency, pool=pool,
        )
        if start:
            self.start_worker(name)
        return worker

    def start_worker(self, name: str) -> Worker:
        """Start (or restart) a worker, adding it with the deployment's pool if it is new."""
        node = _node(name)
        if node not in self.workers:
            spec = self.deployment or DeploymentSpec()
            return self.add_worker(node, concurrency=spec.concurrency, pool=spec.pool)
        worker = self.workers[node]
        worker.start()
        self.writer.write(
            Kind.DEPLOYMENT,
            name="worker_started",
            target=node,
            detail={"pid": worker.pid, "children": worker.child_pids()},
        )
        return worker

    def worker(self, name: str) -> Worker:
        """A worker by node name (``w1@chaos``) or short name (``w1``)."""
        return self.backend.worker(name)

    # -- the fault interface (celery_chaos.faults.context.Deployment) ---------------------------

    def worker_names(self) -> list[str]:
        return list(self.workers)

    def worker_pid(self, name: str) -> int:
        return self.worker(name).pid

    def child_pids(self, name: str) -> list[int]:
        return self.worker(name).child_pids()

    def signal_worker(self, name: str, sig: int, *, wait_exit: float | None = None) -> None:
        self.backend.signal_worker(name, sig, wait_exit=wait_exit)

    def signal_pid(self, pid: int, sig: int, *, wait_exit: float | None = None,
                   missing_ok: bool = False) -> None:
        self.backend.signal_pid(pid, sig, wait_exit=wait_exit, missing_ok=missing_ok)

    def cancel_consumers(self, names: list[str] | None) -> None:
        self.backend.cancel_consumers(names or list(self.workers), self.app.queues)

    def revoke(self, task_ids: list[str], *, timeout: float) -> list[str]:
        """Revoke ``task_ids`` on every worker; the nodes that confirmed."""
        return self.backend.revoke(task_ids, timeout=timeout, workers=len(self.workers))

    def worker_log(self, name: str) -> str:
        return self.backend.worker_log(name)

    def crash_broker(self) -> None:
        self.backend.crash_broker()

    def stop_broker(self) -> None:
        self.backend.stop_broker()

    def start_broker(self) -> None:
        self.backend.start_broker()

    def pause_broker(self) -> None:
        self.backend.pause_broker()

    def resume_broker(self) -> None:
        self.backend.resume_broker()

    def raise_alarm(self, resource: str) -> None:
        self.backend.raise_alarm(resource)

    def clear_alarm(self, resource: str) -> None:
        self.backend.clear_alarm(resource)

    def select_links(self, targets: str | list[str]) -> list[str]:
        if self.backend.links is None:
            raise InfrastructureError(
                "network faults need proxied links: deploy with proxied=True (spec: "
                "deployment.proxied: true)"
            )
        return self.backend.links.select(targets)

    def link_api(self) -> Any:
        assert self.backend.links is not None and self.backend.links.client is not None
        return self.backend.links.client

    def packet_nodes(self, patterns: str | list[str]) -> list[str]:
        return self.backend.packet_nodes(patterns)

    def cut_packets(self, nodes: list[str], peers: list[str], *, outbound: bool, inbound: bool,
                    loss: float | None = None) -> Any:
        return self.backend.cut_packets(nodes, peers, outbound=outbound, inbound=inbound,
                                        loss=loss)

    def heal_packets(self, cut: Any) -> None:
        self.backend.heal_packets(cut)

    def beat_names(self) -> list[str]:
        return list(self.beats)

    def beat_pid(self, name: str) -> int:
        return self.backend.beat(name).pid

    def beat_leader(self) -> str:
        """The beat that published last (RedBeat's lock holder)."""
        fires = [r for r in self.history() if r.kind is Kind.OK and r.role == "beat"]
        if not fires or fires[-1].host is None:
            raise InfrastructureError("no beat has published yet: no leader to target")
        return fires[-1].host

    def signal_beat(self, name: str, sig: int, *, wait_exit: float | None = None) -> None:
        self.backend.signal_beat(name, sig, wait_exit=wait_exit)

    def start_beats(self, names: Iterable[str] | str, timeout: float = 30.0) -> list[Beat]:
        """Start (or restart) beats together, record them, and wait until each is ready.

        The first start in a scenario also records the schedule (``beat_schedule``), dumped
        by a child with the beat's own environment in parallel with the beats' start-up.
        """
        beats = [self.backend.beat(n) for n in ([names] if isinstance(names, str) else names)]
        dump = spawn_dump(beats[0].env) if self.beat_schedule is None else None
        try:
            for beat in beats:
                beat.spawn()
                self.writer.write(Kind.DEPLOYMENT, name=BEAT_STARTED, target=beat.name,
                                  detail={"pid": beat.pid, "start": beat.starts})
            for beat in beats:
                beat.wait_ready(timeout)
                self.writer.write(Kind.DEPLOYMENT, name=BEAT_READY, target=beat.name,
                                  detail={"pid": beat.pid})
        finally:
            if dump is not None:
                self.beat_schedule = read_dump(dump, timeout)
                self.writer.write(Kind.DEPLOYMENT, name=SCHEDULE_RECORD, target=beats[0].name,
                                  detail=self.beat_schedule.model_dump(mode="json"))
        return beats

    def add_beat(self, name: str = "beat1", *, settings: dict[str, Any] | None = None) -> Beat:
        """Register a beat (not started) with the scenario's settings plus ``settings``.

        RedBeat without ``redbeat_redis_url`` gets the scenario's Redis (db 2): the broker's
        when the broker is Redis, else the result backend's, keys prefixed by the scenario.
        """
        conf = merge_settings(self.settings, settings or {})
        if "redbeat" in str(conf.get("beat_scheduler", "")).lower() and not conf.get(
            "redbeat_redis_url"
        ):
            redis = self.broker if self.broker_kind == "redis" else self.brokers.results_redis()
            conf["redbeat_redis_url"] = redis.url(2)
            conf.setdefault("redbeat_key_prefix", f"redbeat:{self.dir.name}:")
        state_dir = self.dir / "beat"
        state_dir.mkdir(exist_ok=True)
        return self.backend.new_beat(name, env={**self.env_for(name), CONF_ENV: json.dumps(conf)},
                                     log_dir=self.log_dir, state_dir=state_dir)

    def kill_beat(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Signal a beat (SIGKILL by default: no schedule sync) and wait for it to exit."""
        win = self.inject(KillBeat(beat=name, signal=signal.Signals(sig).name))
        return int(win.detail["pid"])

    def stop_beats(self, *names: str) -> None:
        """Gracefully stop beats (SIGTERM: the scheduler syncs and closes); all at once."""
        beats = [self.backend.beat(n) for n in names] if names else list(self.beats.values())
        running = [b for b in beats if b.is_running()]
        for beat in running:
            self.writer.write(Kind.DEPLOYMENT, name=BEAT_STOPPED, target=beat.name,
                              detail={"pid": beat.pid})
            beat.signal(signal.SIGTERM)
        for beat in running:
            beat.stop()

    def beat_fires(self, *, host: str | None = None, after_ns: int = 0) -> list[Record]:
        """Acknowledged beat publishes (``ok``, role beat) so far, optionally of one beat,
        after a wall-clock time."""
        return [r for r in self.history() if r.kind is Kind.OK and r.role == "beat"
                and r.wall_ns > after_ns and (host is None or r.host == host)]

    def wait_fires(self, n: int, *, host: str | None = None, after_ns: int = 0,
                   timeout: float = 30.0) -> list[Record]:
        """Wait until ``n`` acknowledged beat publishes are recorded (after ``after_ns``)."""
        deadline = time.monotonic() + timeout
        while True:
            fires = self.beat_fires(host=host, after_ns=after_ns)
            if len(fires) >= n:
                return fires
            if time.monotonic() >= deadline:
                raise InfrastructureError(
                    f"beat published {len(fires)} of {n} ticks within {timeout:.0f} s: see "
                    f"the beat logs in {self.log_dir}"
                )
            time.sleep(0.05)

    def set_http_failures(self, key: str, failures: int) -> None:
        assert self.backend.http is not None
        self.backend.http.set_failures(key, failures)

    def publish_now(self, task: str, args: list[Any], count: int,
                    options: dict[str, Any] | None = None) -> list[str]:
        return self.publish(task, *self._render(args), count=count, options=options)

    def publish_encoded_now(
        self, task: str, args: list[Any], count: int, serializer: str
    ) -> list[str]:
        """:meth:`publish` with kombu's ``serializer`` instead of the app's (``pickle``)."""
        return self.publish(task, *self._render(args), count=count,
                            options={"serializer": serializer})

    def _render(self, value: Any) -> Any:
        if isinstance(value, str) and "{" in value:
            return value.format(**self.placeholders())
        if isinstance(value, list):
            return [self._render(v) for v in value]
        return value

    def start_load(self, spec: LoadOp) -> LoadRun:
        wl = parse_workload(spec.workload) if spec.workload is not None else None
        return self.load(tasks=spec.tasks, rate=spec.rate, users=spec.users,
                         duration=spec.duration, workload=wl, seed=spec.seed)

    def loads_done(self) -> bool:
        return all(run.done() for run in self.loads)

    # -- faults, imperatively --------------------------------------------------------------

    def open_fault(self, op: Op) -> Window:
        """Apply ``op`` and record its window's start; :meth:`close_fault` ends it."""
        self._seq += 1
        win = Window(step=f"api{self._seq}", seq=1000 + self._seq)
        open_window(self, op, win)
        return win

    def close_fault(self, op: Op, win: Window) -> None:
        """Heal a held fault and record the end of its window."""
        close_window(self, op, win)

    def inject(self, op: Op) -> Window:
        """Apply ``op`` and close its window at once (a held fault is healed at once too)."""
        win = self.open_fault(op)
        self.close_fault(op, win)
        return win

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
            prefix=self.backend.command_prefix("publisher"),
        )
        self.loads.append(run)
        return run.start()

    def publish(self, name: str, *args: Any, count: int = 1,
                options: dict[str, Any] | None = None) -> list[str]:
        """Publish ``count`` calls of task ``name`` now, recorded invoke/ok; return their ids.

        For scenarios that need tasks at an exact moment rather than a load; the publish
        goes straight to the broker (never through a proxied link). ``options`` go to
        ``send_task`` (``{"countdown": 5}``).
        """
        app = Celery("scenario-publisher", set_as_current=False)
        src = load_app(self.app.spec).conf
        app.conf.update(task_default_queue=src.task_default_queue, task_routes=src.task_routes)
        apply_harness_config(
            app, broker_url=self.broker_url, result_backend=None, settings=self.settings
        )
        pub = Publisher(app, HistoryWriter(self.history_dir, "publisher", "publisher"), options)
        try:
            return [pub.publish(TaskSpec(name=name, args=list(args)))[0] for _ in range(count)]
        finally:
            app.close()

    # -- observation -----------------------------------------------------------------------

    def history(self) -> list[Record]:
        """The history so far, in monotonic order (read incrementally)."""
        return self.tail.records()

    def running_on(self, worker: Worker | str, until_ns: int | None = None) -> dict[str, Record]:
        """Tasks started by the worker's current process and not yet ended: id -> ``started``.

        ``until_ns``: as of that monotonic time (later records are left out).
        """
        pid = self.worker(_node(worker)).pid
        started: dict[str, Record] = {}
        for rec in self.history():
            if rec.worker_pid != pid or rec.task_id is None:
                continue
            if until_ns is not None and rec.mono_ns > until_ns:
                continue
            if rec.kind is Kind.STARTED:
                started[rec.task_id] = rec
            elif rec.ends_run:
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
        node = _node(worker)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            old = aged(self.running_on(node), min_age, max_age)
            if len(old) >= n:
                return old
            time.sleep(0.05)
        span = f"{min_age}-{max_age} s" if max_age is not None else f"{min_age} s"
        raise InfrastructureError(
            f"{node} never ran {n} task(s) for {span} within {timeout:.0f} s: is the "
            f"workload long enough to be interrupted? (logs in {self.log_dir})"
        )

    def child_running(self, worker: Worker | str, task_id: str) -> int:
        """The pid of the pool child running ``task_id`` on ``worker``."""
        rec = self.running_on(worker).get(task_id)
        if rec is None:
            raise InfrastructureError(f"task {task_id} is no longer running on {_node(worker)}")
        return rec.pid

    def queue_depths(self) -> dict[str, tuple[int, int]]:
        """``{queue: (ready, unacked)}`` for the app's queues on the scenario's broker."""
        return self.backend.queue_depths(self.app.queues)

    # -- verdict ---------------------------------------------------------------------------

    def check(
        self,
        *,
        exactly_once: bool = False,
        invariants: Iterable[Checker] = (),
        drain_timeout: float = 60.0,
        settle: float = 3.0,
    ) -> ScenarioResult:
        """Join the loads, stop the beats, drain (bounded), check the history, write
        ``result.json``.

        The queue invariant always runs; ``invariants`` adds the scenario's own checkers
        (pure functions ``History -> InvariantResult``).
        """
        self.phase = "waiting for the loads to end"
        for run in self.loads:
            run.wait()
        if any(b.is_running() for b in self.beats.values()):
            self.stop_beats()  # nothing more may be published while the drain waits
        self.phase = f"draining (up to {drain_timeout:g} s)"
        drained = drain(
            self.history_dir,
            self.queue_depths,
            timeout=drain_timeout,
            settle=settle,
            writer=self.writer,
            tail=self.tail,
        )
        invariants = list(invariants)
        if any(needs_result_states(c) for c in invariants):
            self.record_result_states()
        self.phase = "checking the history"
        history = self.tail.history(include_partial=True)
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
        beat = next((i for i in results if i.name == "beat"), None)
        if beat is not None:
            metrics["beat"] = beat_metrics(beat.summary_as(BeatCheckResult))
        self.result.verdict = verdict
        self.result.checked = True
        self.result.invariants = results
        self.result.history_lines = history.skipped()
        self.result.checkers = [spec for c in invariants if (spec := spec_of(c)) is not None]
        self.result.metrics = metrics
        self.save()
        return self.result

    def record_result_states(self) -> None:
        """Read the state the result backend stores for every task of the history and write
        it as a ``result_states`` record (``detail.states``: id -> state or None; on a read
        failure, ``detail.error``): what ``results_stored`` compares with the history. With
        it ``detail.expires_s`` (the backend's ``result_expires``) and, on Redis,
        ``detail.ttls`` (id -> the key's remaining TTL in s, None without a key or expiry)."""
        ids = task_ids(self.tail.history(include_partial=True))
        app = Celery("chaos-results", set_as_current=False)
        apply_harness_config(app, broker_url=self.broker_url, result_backend=self.backend_url,
                             settings=self.settings)
        detail: dict[str, Any]
        try:
            backend = app.backend
            states: dict[str, str | None] = {}
            ttls: dict[str, int | None] = {}
            redis = backend.client if isinstance(backend, RedisBackend) else None
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                keys = [backend.get_key_for_task(t) for t in chunk]
                values = backend.mget(keys)
                states.update({t: backend.decode_result(v)["status"] if v else None
                               for t, v in zip(chunk, values, strict=True)})
                if redis is not None:
                    pipe = redis.pipeline(transaction=False)
                    for key in keys:
                        pipe.ttl(key)
                    ttls.update({t: s if s >= 0 else None  # -2: no key, -1: no expiry
                                 for t, s in zip(chunk, pipe.execute(), strict=True)})
            detail = {"states": states, "expires_s": getattr(backend, "expires", None)}
            if redis is not None:
                detail["ttls"] = ttls
        except Exception as exc:  # noqa: BLE001 - an unreadable backend is data: unknown
            detail = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        finally:
            app.close()
        self.writer.write(Kind.DEPLOYMENT, name=RESULT_STATES, target=self.backend_url,
                          detail=detail)

    def _shared_start_s(self) -> float:
        """Seconds this scenario waited for the session's shared brokers to start."""
        return self.brokers.startup_s - self._shared_startup0

    def _wall_s(self) -> float:
        """Seconds since the scenario began, less any start of the session's shared brokers."""
        return round(time.monotonic() - self.started - self._shared_start_s(), 2)

    def save(self) -> None:
        """Write ``result.json`` for this scenario."""
        annotate(self)  # the deployment as run and the faults injected, for reports
        for key, value in self.backend.facts().items():
            self.result.deployment.setdefault(key, value)
        write_json(self.dir / "result.json", self.result.model_dump(mode="json"))

    def close(self, error: str | None = None) -> None:
        """Stop everything the scenario started; never raises."""
        if self._closed:
            return
        self._closed = True
        if error and not self.result.error:
            self.result.error = error
        steps: list[Any] = []
        if self.net is not None:
            steps.append(self.net.heal)
        steps += [run.stop for run in self.loads]
        steps += [self.sampler.stop] if self.sampler is not None else []
        steps += self.backend.close_steps()
        for step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - teardown must go on
                print(f"celery-chaos: teardown step failed: {exc}", file=sys.stderr)
        self.result.metrics.setdefault("wall_s", self._wall_s())
        self.writer.write(Kind.SCENARIO, name=self.name, phase="end")
        self.save()


class FaultsApi:
    """``chaos.faults``: process faults as methods, each an op of the one vocabulary."""

    def __init__(self, scenario: Scenario) -> None:
        self._s = scenario

    @contextmanager
    def window(self, name: str, target: str, **detail: Any) -> Iterator[dict[str, Any]]:
        """Record an ad hoc fault window around the body; the body may add to the detail."""
        s = self._s
        info: dict[str, Any] = dict(detail)
        s.writer.write(Kind.FAULT, name=name, phase="start", target=target, detail=dict(info))
        try:
            yield info
        finally:
            s.writer.write(Kind.FAULT, name=name, phase="end", target=target, detail=info)

    def kill_worker(self, worker: Worker | str, sig: int = signal.SIGKILL) -> int:
        """Signal a worker's main process (SIGKILL by default) and wait for it to exit."""
        win = self._s.inject(KillWorker(worker=_node(worker), signal=signal.Signals(sig).name))
        return int(win.detail["pid"])

    def kill_pool_child(self, worker: Worker | str, pid: int | None = None) -> int:
        """SIGKILL one pool child (the OOM killer's signal); by default one running a task."""
        win = self._s.inject(KillPoolChild(worker=_node(worker), pid=pid))
        return int(win.detail["pid"])

    @contextmanager
    def paused(self, worker: Worker | str) -> Iterator[None]:
        """SIGSTOP the worker's main process for the body, then SIGCONT."""
        op = PauseWorker(worker=_node(worker))
        win = self._s.open_fault(op)
        try:
            yield
        finally:
            self._s.close_fault(op, win)

    def restart_broker(self, broker: Any = None, *, crash: bool = True,
                       down_for: float = 0.0) -> None:
        """Crash (SIGKILL) or stop the broker, keep it down ``down_for`` s, start it again."""
        op: Op = CrashBroker() if crash else StopBroker()
        win = self._s.open_fault(op)
        try:
            time.sleep(down_for)
        finally:
            self._s.close_fault(op, win)


class NetApi:
    """``chaos.net``: link faults through the Toxiproxy API; ``heal()`` ends every one.

    Works on any :class:`~celery_chaos.faults.context.Deployment` that has links (it needs only
    ``writer``, ``select_links`` and ``link_api``)."""

    def __init__(self, dep: Any) -> None:
        self._dep = dep
        self._seq = 0
        self.open: list[tuple[Op, Window]] = []

    def _open(self, op: Op) -> None:
        self._seq += 1
        win = Window(step=f"net{self._seq}", seq=self._seq)
        open_window(self._dep, op, win)
        self.open.append((op, win))

    def partition(self, targets: str | list[str],
                  mode: Literal["blackhole", "refuse", "reset"] = "blackhole") -> None:
        """Cut the links named by ``targets`` (names or globs such as ``w*-broker``)."""
        self._open(Partition(links=targets, mode=mode))

    def latency(self, targets: str | list[str], ms: int, jitter: int = 0) -> None:
        """Add ``ms`` ± ``jitter`` milliseconds to both directions of each link."""
        self._open(Latency(links=targets, ms=ms, jitter=jitter))

    def bandwidth(self, targets: str | list[str], kb_per_s: int) -> None:
        """Cap both directions of each link at ``kb_per_s`` KB/s."""
        self._open(Bandwidth(links=targets, kb_per_s=kb_per_s))

    def heal(self) -> None:
        """Undo every open link fault (newest first); every window ends in the history even
        when one removal fails, and the first failure is raised afterwards."""
        errors: list[Exception] = []
        while self.open:
            op, win = self.open.pop()
            try:
                close_window(self._dep, op, win)
            except Exception as exc:  # noqa: BLE001 - heal the rest, then raise
                errors.append(exc)
        if errors:
            raise errors[0]

    @contextmanager
    def partitioned(self, targets: str | list[str],
                    mode: Literal["blackhole", "refuse", "reset"] = "blackhole") -> Iterator[None]:
        """A partition for the duration of the block, healed afterwards."""
        self.partition(targets, mode)
        try:
            yield
        finally:
            self.heal()
