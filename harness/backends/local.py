"""The local backend: private broker processes, workers and beats on this machine.

Brokers run as private child processes on free loopback ports: one RabbitMQ node per broker
group (each scenario in a vhost of its own), a Redis server per Redis-broker scenario, one
Redis for result backends. The harness's own services (an SMTP sink, a flaky HTTP server,
the sample app's SQLite database) and, for network faults, a proxy per link, run beside them.

With a packet-level network (``start_network``), the scenario's broker (and, for RabbitMQ,
a Redis for results) runs in the hub namespace of a :class:`~celery_chaos.deployment.netns.Topology`
and every worker and the load's publisher in a namespace of its own; the harness reaches the
broker through a loopback relay. The sample app's SMTP sink and HTTP server stay on the
root namespace's loopback, out of the namespaces' reach: scenarios there use tasks that need
no service (``nap``, ``hang``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psutil
from celery import Celery

from celery_chaos.backends.base import BackendError
from celery_chaos.deployment.brokers import RabbitMQServer, RedisServer
from celery_chaos.deployment.links import LinkProxies
from celery_chaos.deployment.netns import HUB, Cut, Topology
from celery_chaos.deployment.processes import free_port, wait_for
from celery_chaos.deployment.services import RemoteHttp, RemoteSmtp, ServicesProcess
from celery_chaos.deployment.sinks import seed_reports_db
from celery_chaos.deployment.workers import Beat, Worker
from celery_chaos.errors import InfrastructureError
from celery_chaos.results import safe_name

#: Where to find the broker binaries when they are not where the Debian packages put them.
RABBITMQ_BIN_ENV = "CHAOS_RABBITMQ_BIN_DIR"
REDIS_SERVER_ENV = "CHAOS_REDIS_SERVER"
#: Seconds a worker or beat gets to exit on SIGTERM at teardown before it is killed.
STOP_GRACE_S = 3.0


def in_parallel(steps: list[Callable[[], object]]) -> None:
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


def rabbitmq_server(run_dir: Path, *args: Any, **kwargs: Any) -> RabbitMQServer:
    """A :class:`RabbitMQServer` using ``$CHAOS_RABBITMQ_BIN_DIR`` for its scripts when set."""
    return RabbitMQServer(
        run_dir, *args, bin_dir=os.environ.get(RABBITMQ_BIN_ENV, "/usr/lib/rabbitmq/bin"),
        **kwargs,
    )


def _gone(proc: psutil.Process) -> bool:
    """Whether a process has exited (a zombie has)."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _stopped(pid: int) -> bool:
    """Whether a process is stopped (SIGSTOP); a process gone is not."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except psutil.NoSuchProcess:
        return False


#: RabbitMQ resource alarms: resource -> (get its limit, set it to ``{}``), in Erlang.
_ALARM_ERL = {
    "memory": ("vm_memory_monitor:get_vm_memory_high_watermark()",
               "vm_memory_monitor:set_vm_memory_high_watermark({})"),
    "disk": ("rabbit_disk_monitor:get_disk_free_limit()",
             "rabbit_disk_monitor:set_disk_free_limit({})"),
}


def _alarm_on(resource: str) -> str:
    """An Erlang expression: whether the node lists its ``resource`` alarm (the monitors
    raise and clear it within the ``set`` call)."""
    return f"lists:keymember({{resource_limit, {resource}, node()}}, 1, rabbit_alarm:get_alarms())"


def _started(make: Callable[[int], Any], attempts: int = 2) -> Any:
    """Start a broker made by ``make(attempt)``; a start that fails (a free port taken by
    another process between its choice and the bind: seen when two runs start at the same
    instant) is stopped and tried once more with fresh ports, in a folder of its own, so the
    first attempt's log stays. A broker that never started is never kept."""
    for attempt in range(1, attempts + 1):
        broker = make(attempt)
        try:
            return broker.start()
        except InfrastructureError:
            broker.stop()
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


@dataclass
class SharedBrokers:
    """Brokers shared by the scenarios of one session, started on first use.

    One RabbitMQ node per broker group serves every RabbitMQ scenario of the group, each in
    its own vhost; one Redis server holds the result backend. Redis *broker* scenarios get a
    server of their own, so restarts and persistence settings stay private.
    """

    root: Path
    folder: str = "brokers"  # under root; one per xdist worker
    kind = "local"
    #: Seconds spent starting the shared brokers so far: the session's cost, which the first
    #: scenario to need them should not count as its own.
    startup_s: float = 0.0
    _rabbits: dict[str, RabbitMQServer] = field(default_factory=dict)
    _redis: RedisServer | None = None
    _vhosts: int = 0

    def rabbitmq(self, group: str = "shared",
                 config: dict[str, str] | None = None) -> RabbitMQServer:
        """The session's RabbitMQ node of ``group`` (started with ``config``: rabbitmq.conf
        lines; every user of a group must give the same)."""
        config = dict(config or {})
        if group in self._rabbits and self._rabbits[group].config != config:
            raise BackendError(
                f"broker_group {group!r} runs with broker_config {self._rabbits[group].config}, "
                f"not {config}: give the scenario a broker_group of its own"
            )
        if group not in self._rabbits:
            t0 = time.monotonic()
            folder = self.folder if group == "shared" else f"{self.folder}-{safe_name(group)}"
            self._rabbits[group] = _started(
                lambda attempt: rabbitmq_server(
                    self.root.resolve() / (folder + ("" if attempt == 1 else f"-{attempt}")),
                    config=config,
                )
            )
            self.startup_s += time.monotonic() - t0
        return self._rabbits[group]

    def results_redis(self) -> RedisServer:
        """The session's Redis server for result backends."""
        if self._redis is None:
            t0 = time.monotonic()
            self._redis = _started(
                lambda attempt: redis_server(
                    self.root.resolve() / self.folder,
                    name="redis-results" + ("" if attempt == 1 else f"-{attempt}"),
                )
            )
            self.startup_s += time.monotonic() - t0
        return self._redis

    def new_vhost(self, name: str, group: str = "shared") -> str:
        """A fresh vhost on the group's node."""
        self._vhosts += 1
        vhost = f"s{self._vhosts}-{safe_name(name)[-40:]}"
        node = self._rabbits.get(group) or self.rabbitmq(group)
        node.add_vhost(vhost)
        return vhost

    def backend(self, sdir: Path, queues: list[str]) -> LocalBackend:
        """A scenario's backend on these brokers."""
        return LocalBackend(sdir, queues, self)

    def close(self) -> None:
        """Stop the shared brokers."""
        for broker in [*self._rabbits.values(), self._redis]:
            if broker is not None:
                broker.stop()
        self._rabbits.clear()
        self._redis = None


def revoke_tasks(broker_url: str, task_ids: list[str], *, timeout: float,
                 workers: int) -> list[str]:
    """Broadcast a revoke of ``task_ids`` on ``broker_url``; the nodes that confirmed."""
    app = Celery("chaos-control", broker=broker_url, set_as_current=False)
    try:
        replies = app.control.revoke(task_ids, reply=True, timeout=timeout,
                                     limit=workers or None)
    finally:
        app.close()
    return sorted(node for reply in replies or [] for node in reply)


class LocalBackend:
    """One scenario's deployment as local processes (the backend interface's first kind)."""

    kind = "local"

    def __init__(self, sdir: Path, queues: list[str], brokers: SharedBrokers) -> None:
        self.dir = sdir
        self.queues = queues
        self.brokers = brokers
        self.broker_kind: str | None = None
        self.broker: Any = None
        self.own_broker = False
        self.broker_url = ""
        self.backend_url = ""
        self.vhost = ""
        self.workers: dict[str, Worker] = {}
        self.beats: dict[str, Beat] = {}
        self.services: ServicesProcess | None = None
        self.smtp: RemoteSmtp | None = None
        self.http: RemoteHttp | None = None
        self.links: LinkProxies | None = None
        self.reports_db: Path | None = None
        self.stop_grace_s = STOP_GRACE_S
        self.net: Topology | None = None
        self.results: RedisServer | None = None  # own result backend (packet-level networks)
        self._ns_urls: dict[str, str] = {}  # harness URL -> URL inside the namespaces
        self._paused_broker: int | None = None  # pid SIGSTOPped by pause_broker
        self._alarm_limits: dict[str, str] = {}  # resource -> limit replaced by raise_alarm

    # -- brokers and services --------------------------------------------------------------

    def start_network(self, sysctls: dict[str, dict[str, int]] | None = None) -> None:
        """A packet-level network: the nodes started after this run in namespaces."""
        self.net = Topology(self.dir / "netns", sysctls).start()

    def _start_in_hub(self, kind: str, persistence: str,
                      config: dict[str, str] | None = None) -> None:
        """The scenario's own broker in the hub namespace, reached through a relay (for
        RabbitMQ, with a Redis of its own there for results); ``config``: the broker's
        ``broker_config``."""
        assert self.net is not None
        net, hub = self.net, self.net.address(HUB)

        def redis_in_hub(name: str, persistence: str,
                         config: dict[str, str] | None = None) -> RedisServer:
            port = free_port()
            return redis_server(
                self.dir.resolve(), name=name, persistence=persistence, config=config,
                port=port,
                prefix=net.prefix(HUB), bind=["127.0.0.1", hub],
                access=("127.0.0.1", net.expose(HUB, port)),
            )

        self.own_broker = True
        if kind == "redis":
            self.broker = redis_in_hub("redis", persistence, config).start()
            self.broker_url, self.backend_url = self.broker.url(0), self.broker.url(1)
            self._ns_urls[self.broker_url] = self.broker.url_at(hub, 0)
            self._ns_urls[self.backend_url] = self.broker.url_at(hub, 1)
            return
        port = free_port()
        self.broker = rabbitmq_server(
            self.dir.resolve(), port, prefix=net.prefix(HUB), listen="0.0.0.0",
            access=("127.0.0.1", net.expose(HUB, port)), config=config,
        )
        self.results = redis_in_hub("redis-results", "none")
        in_parallel([self.broker.start, self.results.start])
        self.vhost = "/"
        self.broker_url = self.broker.url("/")
        self._ns_urls[self.broker_url] = self.broker.url_at(hub, "/")
        self.backend_url = self.results.url(1)
        self._ns_urls[self.backend_url] = self.results.url_at(hub, 1)

    def start_broker_node(
        self, kind: str, *, name: str, group: str = "shared", persistence: str = "none",
        config: dict[str, str] | None = None,
    ) -> None:
        """Get the scenario's broker: a vhost on the group's node, or a private Redis (in the
        hub namespace with a packet-level network)."""
        self.broker_kind = kind
        if kind not in ("rabbitmq", "redis"):
            raise BackendError(f"unknown broker {kind!r}: use rabbitmq or redis")
        if self.net is not None:
            self._start_in_hub(kind, persistence, config)
        elif kind == "rabbitmq":
            self.broker = self.brokers.rabbitmq(group, config)
            self.vhost = self.brokers.new_vhost(name, group)
            self.broker_url = self.broker.url(self.vhost)
            self.backend_url = self.brokers.results_redis().url(1)
        elif kind == "redis":
            self.broker = redis_server(self.dir.resolve(), persistence=persistence,
                                       config=config)
            self.own_broker = True
            self.broker.start()
            self.broker_url = self.broker.url(0)
            self.backend_url = self.broker.url(1)

    def start_services(self) -> None:
        """The SMTP sink, the flaky HTTP server and the sample app's database."""
        services = self.dir / "services"
        services.mkdir(exist_ok=True)
        # a process of their own: the harness's work never starves what the app depends on
        self.services = ServicesProcess(services).start()
        self.smtp, self.http = self.services.smtp, self.services.http
        self.reports_db = services / "reports.sqlite3"
        seed_reports_db(self.reports_db)

    def start_links(self) -> None:
        """A proxy per link (created on first use by :meth:`link_url`)."""
        self.links = LinkProxies(self.dir / "proxy").start()

    def link_url(self, link: str, upstream_url: str) -> str:
        """The URL through link ``link`` (``w1-broker``), or ``upstream_url`` unproxied; with a
        packet-level network, the URL of the hub's address, from inside the namespaces."""
        if self.net is not None:
            return self._ns_urls.get(upstream_url, upstream_url)
        return self.links.url(link, upstream_url) if self.links is not None else upstream_url

    def command_prefix(self, node: str) -> list[str]:
        """The prefix that runs ``node``'s process (``w1@chaos``, ``publisher``) in its
        namespace; none on loopback."""
        return self.net.prefix(node.split("@")[0]) if self.net is not None else []

    # -- packet faults ---------------------------------------------------------------------

    def _topology(self) -> Topology:
        if self.net is None:
            raise BackendError("packet faults need a packet-level network: deploy with "
                               "deployment.network: netns")
        return self.net

    def packet_nodes(self, patterns: str | list[str]) -> list[str]:
        """Nodes of the packet-level network matching globs (``w*``, ``broker``)."""
        return self._topology().select(patterns)

    def cut_packets(self, nodes: list[str], peers: list[str], *, outbound: bool, inbound: bool,
                    loss: float | None = None) -> Cut:
        """Drop packets between ``nodes`` and ``peers`` (see :meth:`Topology.cut`)."""
        return self._topology().cut(nodes, peers, outbound=outbound, inbound=inbound, loss=loss)

    def heal_packets(self, cut: Cut) -> None:
        self._topology().heal(cut)

    def crash_broker(self) -> None:
        """SIGKILL the broker."""
        self.broker.crash()

    def stop_broker(self) -> None:
        """Stop the broker gracefully."""
        self.broker.stop()

    def start_broker(self) -> None:
        """Start the broker again on its data directory."""
        self.broker.start()

    def pause_broker(self) -> None:
        """SIGSTOP the broker process (``redis-server``, or RabbitMQ's ``beam.smp``): every
        connection stays open and nothing answers, a silent peer no proxy produces. On
        RabbitMQ it freezes the whole node, every vhost of its ``broker_group``."""
        pid = self.broker.server_pid() if self.broker is not None else None
        if pid is None:
            raise BackendError("pause_broker: the broker is not running")
        os.kill(pid, signal.SIGSTOP)
        self._paused_broker = pid
        # The signal is delivered asynchronously: return once the kernel shows it stopped.
        if not wait_for(lambda: _stopped(pid), 5.0, interval=0.01):
            raise BackendError(f"pause_broker: pid {pid} not stopped 5 s after SIGSTOP")

    def resume_broker(self) -> None:
        """SIGCONT the broker paused by :meth:`pause_broker` (no-op when none is)."""
        pid, self._paused_broker = self._paused_broker, None
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            wait_for(lambda: not _stopped(pid), 5.0, interval=0.01)

    def raise_alarm(self, resource: str) -> None:
        """Raise RabbitMQ's ``memory`` or ``disk`` resource alarm through ``erl_call``: the
        memory high watermark set to 0, or the disk free limit to 2^60 bytes (RabbitMQ then
        blocks every connection that publishes: node-wide, every vhost of the scenario's
        ``broker_group``). Returns once the node lists the alarm; :meth:`clear_alarm` puts
        the previous limit back."""
        if self.broker_kind != "rabbitmq" or self.broker is None:
            raise BackendError("resource_alarm needs broker: rabbitmq")
        get, put = _ALARM_ERL[resource]
        self._alarm_limits[resource] = self.broker.erl_eval(
            f"L = {get}, ok = {put.format('0.0' if resource == 'memory' else '1 bsl 60')},"
            f" true = {_alarm_on(resource)}, io:format(\"~w~n\", [L])."
        ).strip()

    def clear_alarm(self, resource: str) -> None:
        """Put back the limit :meth:`raise_alarm` replaced (no-op when it raised none);
        returns once the node no longer lists the alarm."""
        limit = self._alarm_limits.pop(resource, None)
        if limit is not None:
            _, put = _ALARM_ERL[resource]
            self.broker.erl_eval(f"ok = {put.format(limit)}, false = {_alarm_on(resource)},"
                                 " io:nl().")

    def queue_depths(self, queues: list[str]) -> dict[str, tuple[int, int]]:
        """``{queue: (ready, unacked)}`` on the scenario's broker."""
        if self.broker_kind == "rabbitmq":
            depths = self.broker.queue_depths(self.vhost)
            return {q: depths.get(q, (0, 0)) for q in queues}
        return self.broker.queue_depths(0, queues)

    def cancel_consumers(self, names: list[str], queues: list[str]) -> None:
        """Ask workers to stop consuming ``queues`` (Celery remote control, straight to the
        broker)."""
        app = Celery("chaos-control", broker=self.broker_url, set_as_current=False)
        try:
            for queue in queues:
                app.control.cancel_consumer(queue, destination=names, reply=True, timeout=2)
        finally:
            app.close()

    def revoke(self, task_ids: list[str], *, timeout: float, workers: int) -> list[str]:
        """Revoke ``task_ids`` (Celery remote control, a broadcast): the nodes that confirmed
        within ``timeout`` (at most ``workers`` replies are awaited)."""
        return revoke_tasks(self.broker_url, task_ids, timeout=timeout, workers=workers)

    # -- nodes -----------------------------------------------------------------------------

    def new_worker(self, name: str, env: dict[str, str], log_dir: Path, history_dir: Path,
                   *, concurrency: int, pool: str) -> Worker:
        """Register a worker (not started) consuming the app's queues."""
        worker = Worker(name, queues=self.queues, env=env, log_dir=log_dir,
                        history_dir=history_dir, concurrency=concurrency, pool=pool,
                        prefix=self.command_prefix(name))
        self.workers[name] = worker
        return worker

    def worker(self, name: str) -> Worker:
        """A worker by node name (``w1@chaos``) or short name (``w1``)."""
        node = name if "@" in name else f"{name}@chaos"
        try:
            return self.workers[node]
        except KeyError:
            raise BackendError(f"no worker {node}; workers: {', '.join(self.workers)}") from None

    def signal_worker(self, name: str, sig: int, *, wait_exit: float | None = None) -> None:
        """Signal a worker's main process; optionally wait until it exits."""
        w = self.worker(name)
        w.signal(sig)
        if wait_exit is not None and w.proc is not None:
            w.proc.wait_exit(wait_exit)

    @staticmethod
    def signal_pid(pid: int, sig: int, *, wait_exit: float | None = None,
                   missing_ok: bool = False) -> None:
        """Signal one process of the deployment by host pid (a pool child)."""
        try:
            proc = psutil.Process(pid)
            proc.send_signal(sig)
            if wait_exit is not None and sig in (signal.SIGKILL, signal.SIGTERM):
                # Dead is enough: a zombie whose parent is stopped (a paused worker) cannot be
                # reaped until the parent runs again.
                if not wait_for(lambda: _gone(proc), wait_exit, interval=0.02):
                    raise BackendError(f"pid {pid} did not exit within {wait_exit} s of {sig}")
        except psutil.NoSuchProcess:
            if not missing_ok and sig != signal.SIGKILL:
                raise

    def worker_log(self, name: str) -> str:
        """The current process's log of a worker."""
        w = self.worker(name)
        if w.proc is None:
            return ""
        try:
            return w.proc.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def beat(self, name: str) -> Beat:
        """A beat by name."""
        try:
            return self.beats[name]
        except KeyError:
            raise BackendError(f"no beat {name}; beats: {', '.join(self.beats)}") from None

    def new_beat(self, name: str, *, env: dict[str, str], log_dir: Path,
                 state_dir: Path) -> Beat:
        """Register a beat (not started)."""
        beat = Beat(name, env=env, log_dir=log_dir, state_dir=state_dir)
        self.beats[name] = beat
        return beat

    def signal_beat(self, name: str, sig: int, *, wait_exit: float | None = None) -> None:
        """Signal a beat; optionally wait until it exits."""
        b = self.beat(name)
        b.signal(sig)
        if wait_exit is not None and b.proc is not None and b.proc.wait_exit(wait_exit) is None:
            raise BackendError(f"beat {name} (pid {b.pid}) did not exit after signal {sig}")

    def placeholders(self) -> dict[str, Any]:
        """Values for ``{placeholders}`` in workloads and published arguments."""
        assert self.smtp is not None and self.http is not None
        return {"http_base": self.http.base_url, "smtp_host": self.smtp.host,
                "smtp_port": self.smtp.port}

    def close_steps(self) -> list[Callable[[], object]]:
        """Teardown, in order: every worker and beat at once (a short grace: the verdict is
        in), the scenario's own broker, the services, the link proxies."""
        steps: list[Callable[[], object]] = []
        procs = [*self.beats.values(), *self.workers.values()]
        if procs:
            stops = [partial(p.stop, timeout=self.stop_grace_s) for p in procs]
            steps.append(partial(in_parallel, stops))
        if self._paused_broker is not None:  # a pause never healed: a stopped broker
            steps.insert(0, self.resume_broker)  # ignores SIGTERM, and its clients hang
        for resource in list(self._alarm_limits):  # an alarm never cleared blocks the
            steps.insert(0, partial(self.clear_alarm, resource))  # group's other scenarios
        if self.own_broker and self.broker is not None:
            steps.append(self.broker.stop)
        if self.results is not None:
            steps.append(self.results.stop)
        if self.services is not None:
            steps.append(self.services.stop)
        if self.links is not None:
            steps.append(self.links.stop)
        if self.net is not None:  # last: its namespaces end with their processes
            steps.append(self.net.close)
        return steps

    @staticmethod
    def unsupported(deployment: Any) -> str | None:
        """Why this backend cannot run a deployment spec (None: it can)."""
        return None

    def facts(self) -> dict[str, Any]:
        """What the report says of the backend (the compose backend adds its images)."""
        return {"backend": self.kind}

    def versions(self) -> dict[str, str]:
        """What ran: the backend and the broker's version."""
        out = {"backend": self.kind, "network": "netns" if self.net is not None else "loopback"}
        try:
            out["broker"] = f"{self.broker_kind} {self.broker.version()}" if self.broker else ""
        except Exception as exc:  # noqa: BLE001 - a report field
            out["broker"] = f"{self.broker_kind} (version unknown: {type(exc).__name__})"
        return out
