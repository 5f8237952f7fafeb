"""The one fault vocabulary: every fault (and deployment action) a schedule can name.

Each entry is a small pydantic model registered under its ``op`` name, with typed,
validated parameters, a label for reports, and ``apply``/``heal`` against a
:class:`~celery_chaos.faults.context.Deployment`. The schedule executor
(:mod:`celery_chaos.faults.schedule`) records a fault's window in the history: a ``fault``
``start`` record before ``apply`` and an ``end`` record after ``heal`` (at once for a
fault that has no duration), named by :attr:`Op.record_name` so that checkers and
reports read the same names as ever (``kill_worker``, ``partition_blackhole``...).

Actions (``load``, ``publish``, ``start_worker``, ``start_beats``...) share the registry
so that a schedule is one list, but they open no fault window.

Parsing: :func:`parse_op` turns ``{"op": "kill_worker", "worker": "w1"}`` into a
:class:`KillWorker`; an unknown op or a bad parameter raises :class:`ValueError` with a
one-line message.
"""

from __future__ import annotations

import signal as _signal
import time
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from celery_chaos.checks.revokes import REVOKE_RECORD
from celery_chaos.faults.context import Deployment, Window
from celery_chaos.history.schema import Kind

Category = Literal["fault", "action"]

_REGISTRY: dict[str, type[Op]] = {}

#: Signals a schedule may name (by name, as in ``kill -s``).
SIGNALS = ("SIGKILL", "SIGTERM", "SIGQUIT", "SIGINT", "SIGHUP", "SIGSTOP", "SIGCONT",
           "SIGUSR1", "SIGUSR2")
SignalName = Literal["SIGKILL", "SIGTERM", "SIGQUIT", "SIGINT", "SIGHUP", "SIGSTOP",
                     "SIGCONT", "SIGUSR1", "SIGUSR2"]


def register(cls: type[Op]) -> type[Op]:
    """Class decorator: add an op to the vocabulary under its ``op`` literal."""
    name = cls.model_fields["op"].default
    if name in _REGISTRY:
        raise ValueError(f"op {name!r} registered twice")
    _REGISTRY[name] = cls
    return cls


def registry() -> dict[str, type[Op]]:
    """Every op by name (a copy)."""
    return dict(_REGISTRY)


def fault_names() -> list[str]:
    """The names of the ops that are faults (the explorer draws from these)."""
    return [n for n, c in _REGISTRY.items() if c.category == "fault"]


def parse_op(data: Any) -> Op:
    """An op from its JSON form; :class:`ValueError` with one line on bad input."""
    if isinstance(data, Op):
        return data
    if not isinstance(data, dict) or "op" not in data:
        raise ValueError(f"a step's `do` needs an `op` name, got {data!r}")
    name = data["op"]
    cls = _REGISTRY.get(str(name))
    if cls is None:
        raise ValueError(f"unknown op {name!r}: use one of {', '.join(sorted(_REGISTRY))}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or name
        raise ValueError(f"op {name!r}: {where}: {first['msg']}") from None


def _worker_node(name: str) -> str:
    """``w1`` -> ``w1@chaos`` (node names as the harness starts them)."""
    return name if "@" in name else f"{name}@chaos"


class Op(BaseModel):
    """One entry of the vocabulary: typed parameters plus what it does to a deployment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    op: str
    #: ``fault`` ops open a window in the history; ``action`` ops change the deployment.
    category: ClassVar[Category] = "fault"
    #: One line for ``--help``, reports and docs.
    label: ClassVar[str] = ""
    #: Whether the fault stays applied until healed (``duration``/``until`` of the step).
    held: ClassVar[bool] = False

    @property
    def record_name(self) -> str:
        """The ``name`` of the fault records this op writes."""
        return self.op

    def target(self) -> str:
        """The ``target`` of its fault records (a node, the broker, links)."""
        return ""

    def params(self) -> dict[str, Any]:
        """The parameters as JSON, without ``op`` (the fault record's detail)."""
        return self.model_dump(mode="json", exclude={"op"})

    def workers(self) -> list[str]:
        """Worker names this op needs to exist (checked before anything starts)."""
        return []

    def beats(self) -> list[str]:
        """Beat names this op needs to exist."""
        return []

    def prepare(self, dep: Deployment, window: Window) -> None:
        """Fill ``window.detail``/``target`` before the fault's start record is written."""

    def apply(self, dep: Deployment, window: Window) -> None:  # pragma: no cover - abstract
        """Inject the fault (or run the action); may add to ``window.detail``."""
        raise NotImplementedError

    def heal(self, dep: Deployment, window: Window) -> None:
        """Undo a held fault."""

    def describe(self) -> str:
        """A short human label: ``kill_worker(w1, SIGKILL)``."""
        args = ", ".join(f"{v}" for v in self.params().values() if v not in (None, [], {}))
        return f"{self.op}({args})" if args else self.op


# -- process faults on workers ---------------------------------------------------------------


class _WorkerOp(Op):
    worker: str = Field(description="worker name, w1 or w1@chaos")

    @field_validator("worker")
    @classmethod
    def _node(cls, v: str) -> str:
        return _worker_node(v)

    def target(self) -> str:
        return self.worker

    def workers(self) -> list[str]:
        return [self.worker]


@register
class KillWorker(_WorkerOp):
    """Signal a worker's main process and wait until it exits."""

    op: Literal["kill_worker"] = "kill_worker"
    signal: SignalName = "SIGKILL"
    #: Seconds to wait for the exit (a SIGTERM warm shutdown waits for running tasks).
    wait_exit: float = Field(30.0, ge=0)
    label: ClassVar[str] = "signal a worker's main process (SIGKILL by default) and wait for it"

    def prepare(self, dep: Deployment, window: Window) -> None:
        window.detail.update(pid=dep.worker_pid(self.worker), signal=self.signal)

    def apply(self, dep: Deployment, window: Window) -> None:
        t_kill = time.monotonic_ns()
        dep.signal_worker(self.worker, getattr(_signal, self.signal), wait_exit=self.wait_exit)
        _record_hit(dep, self.worker, window, t_kill)


def _record_hit(dep: Deployment, worker: str, window: Window, t_kill: int) -> None:
    """``hit``: the tasks the trigger picked that were still running when the signal left
    (a task that ended between the pick and the signal was not hit)."""
    if window.picked:
        still = dep.running_on(worker, until_ns=t_kill)
        window.detail["picked"] = list(window.picked)
        window.detail["hit"] = [t for t in window.picked if t in still]


@register
class TerminateWorker(_WorkerOp):
    """An orchestrator's stop (Kubernetes, systemd): SIGTERM, wait up to ``grace_s`` for
    the exit, then SIGKILL.

    ``detail``: ``sigkill`` (the grace ran out and a SIGKILL was sent), ``exit_s`` (SIGTERM
    to exit), ``hit`` (picked tasks running when the SIGTERM left) and, after a SIGKILL,
    ``killed`` (picked tasks still running when the SIGKILL left).
    """

    op: Literal["terminate_worker"] = "terminate_worker"
    #: Seconds between the SIGTERM and the SIGKILL (Kubernetes' default grace is 30 s).
    grace_s: float = Field(30.0, ge=0)
    label: ClassVar[str] = "SIGTERM a worker, SIGKILL it if still up after grace_s"

    def prepare(self, dep: Deployment, window: Window) -> None:
        window.detail.update(pid=dep.worker_pid(self.worker), signal="SIGTERM")

    def apply(self, dep: Deployment, window: Window) -> None:
        t_term = time.monotonic_ns()
        dep.signal_worker(self.worker, _signal.SIGTERM, wait_exit=self.grace_s)
        # wait_exit returns early only on the exit: a full grace means it timed out.
        sigkill = (time.monotonic_ns() - t_term) / 1e9 >= self.grace_s
        _record_hit(dep, self.worker, window, t_term)
        if sigkill:
            t_kill = time.monotonic_ns()
            dep.signal_worker(self.worker, _signal.SIGKILL, wait_exit=10.0)
            if window.picked:
                still = dep.running_on(self.worker, until_ns=t_kill)
                window.detail["killed"] = [t for t in window.picked if t in still]
        window.detail.update(sigkill=sigkill,
                             exit_s=round((time.monotonic_ns() - t_term) / 1e9, 3))


@register
class KillPoolChild(_WorkerOp):
    """Signal one pool child: the one running ``task`` (a task id or a ``${step}``
    reference), else the child running the task the trigger picked, else one running any
    task, else the first child."""

    op: Literal["kill_pool_child"] = "kill_pool_child"
    signal: SignalName = "SIGKILL"
    task: str | None = None
    #: A pool child's pid, when known (the imperative API); else picked as above.
    pid: int | None = None
    label: ClassVar[str] = "signal a pool child (SIGKILL: the OOM killer's signal)"

    def prepare(self, dep: Deployment, window: Window) -> None:
        if self.pid is not None:
            window.detail.update(pid=self.pid, signal=self.signal)
            return
        pid, task = _pick_child(dep, self.worker, self.task or window.picked_task)
        window.detail.update(pid=pid, signal=self.signal)
        window.picked = [task] if task else []

    def apply(self, dep: Deployment, window: Window) -> None:
        t_kill = time.monotonic_ns()
        dep.signal_pid(int(window.detail["pid"]), getattr(_signal, self.signal), wait_exit=10.0)
        _record_hit(dep, self.worker, window, t_kill)


def _pick_child(dep: Deployment, worker: str, task: str | None) -> tuple[int, str | None]:
    running = dep.running_on(worker)
    if task is not None and task in running:
        return running[task].pid, task
    if task is not None:
        raise RuntimeError(f"task {task} is not running on {worker}")
    for tid, rec in running.items():
        if rec.pid != dep.worker_pid(worker):
            return rec.pid, tid
    children = dep.child_pids(worker)
    if not children:
        raise RuntimeError(f"{worker} has no pool child to signal")
    return children[0], None


@register
class PausePoolChild(_WorkerOp):
    """SIGSTOP one pool child and leave it stopped (a frozen child: only a hard time limit,
    or teardown, ends it). Picks the child as ``kill_pool_child`` does."""

    op: Literal["pause_pool_child"] = "pause_pool_child"
    task: str | None = None
    label: ClassVar[str] = "SIGSTOP a pool child and leave it frozen"

    @property
    def record_name(self) -> str:
        return "stop_pool_child"

    def prepare(self, dep: Deployment, window: Window) -> None:
        pid, task = _pick_child(dep, self.worker, self.task or window.picked_task)
        window.detail.update(pid=pid, signal="SIGSTOP")
        window.picked = [task] if task else []

    def apply(self, dep: Deployment, window: Window) -> None:
        dep.signal_pid(int(window.detail["pid"]), _signal.SIGSTOP)


@register
class PauseWorker(_WorkerOp):
    """SIGSTOP a worker's main process for the window, then SIGCONT."""

    op: Literal["pause_worker"] = "pause_worker"
    label: ClassVar[str] = "SIGSTOP a worker's main process for the window, then SIGCONT"
    held: ClassVar[bool] = True

    def prepare(self, dep: Deployment, window: Window) -> None:
        window.detail["pid"] = dep.worker_pid(self.worker)

    def apply(self, dep: Deployment, window: Window) -> None:
        dep.signal_worker(self.worker, _signal.SIGSTOP)

    def heal(self, dep: Deployment, window: Window) -> None:
        dep.signal_worker(self.worker, _signal.SIGCONT)


@register
class StopConsuming(Op):
    """Make workers cancel their consumers (a worker that is up but never consumes again:
    the symptom of celery#8030 and #10205), through Celery's remote control."""

    op: Literal["stop_consuming"] = "stop_consuming"
    #: Worker names; empty: every worker.
    nodes: list[str] = Field(default_factory=list)
    label: ClassVar[str] = "workers cancel their consumers (remote control): up, but idle"

    @field_validator("nodes")
    @classmethod
    def _nodes(cls, v: list[str]) -> list[str]:
        return [_worker_node(w) for w in v]

    def target(self) -> str:
        return ",".join(self.nodes) or "workers"

    def workers(self) -> list[str]:
        return list(self.nodes)

    def apply(self, dep: Deployment, window: Window) -> None:
        dep.cancel_consumers(self.nodes or None)


# -- brokers ---------------------------------------------------------------------------------


@register
class CrashBroker(Op):
    """SIGKILL the broker; it starts again at the end of the window (at once without one)."""

    op: Literal["crash_broker"] = "crash_broker"
    label: ClassVar[str] = "SIGKILL the broker, start it again at the end of the window"
    held: ClassVar[bool] = True

    def target(self) -> str:
        return "broker"

    def prepare(self, dep: Deployment, window: Window) -> None:
        window.target = str(dep.broker_kind)

    def apply(self, dep: Deployment, window: Window) -> None:
        dep.crash_broker()

    def heal(self, dep: Deployment, window: Window) -> None:
        t0 = time.monotonic()
        dep.start_broker()
        window.detail["restart_s"] = round(time.monotonic() - t0, 2)


@register
class StopBroker(CrashBroker):
    """Stop the broker gracefully; it starts again at the end of the window."""

    op: Literal["stop_broker"] = "stop_broker"  # type: ignore[assignment]
    label: ClassVar[str] = "stop the broker gracefully, start it again at the end of the window"

    def apply(self, dep: Deployment, window: Window) -> None:
        dep.stop_broker()


@register
class PauseBroker(Op):
    """SIGSTOP the broker process (``redis-server``, RabbitMQ's ``beam.smp``) for the window,
    then SIGCONT: connections stay open and nothing answers, the silent peer that a proxy
    cannot produce (its heal closes the links it held)."""

    op: Literal["pause_broker"] = "pause_broker"
    label: ClassVar[str] = "SIGSTOP the broker process for the window, then SIGCONT"
    held: ClassVar[bool] = True

    def target(self) -> str:
        return "broker"

    def prepare(self, dep: Deployment, window: Window) -> None:
        window.target = str(dep.broker_kind)

    def apply(self, dep: Deployment, window: Window) -> None:
        dep.pause_broker()

    def heal(self, dep: Deployment, window: Window) -> None:
        dep.resume_broker()


@register
class ResourceAlarm(Op):
    """RabbitMQ's memory (or disk) resource alarm for the window: the node's memory high
    watermark set to 0 (disk: a free-space limit no disk meets), then put back. RabbitMQ
    sends ``connection.blocked`` and stops reading every connection that publishes, on the
    whole node (every vhost of the scenario's ``broker_group``)."""

    op: Literal["resource_alarm"] = "resource_alarm"
    label: ClassVar[str] = "raise RabbitMQ's memory or disk alarm for the window (publishers block)"
    held: ClassVar[bool] = True
    resource: Literal["memory", "disk"] = "memory"

    @property
    def record_name(self) -> str:
        return f"{self.resource}_alarm"

    def target(self) -> str:
        return "broker"

    def prepare(self, dep: Deployment, window: Window) -> None:
        window.target = str(dep.broker_kind)

    def apply(self, dep: Deployment, window: Window) -> None:
        dep.raise_alarm(self.resource)

    def heal(self, dep: Deployment, window: Window) -> None:
        dep.clear_alarm(self.resource)


# -- links (through the Toxiproxy API) -------------------------------------------------------

STREAMS = ("upstream", "downstream")


class _LinkOp(Op):
    links: str | list[str] = Field("*-broker", description="link names or globs (w*-broker)")
    held: ClassVar[bool] = True

    def target(self) -> str:
        return self.links if isinstance(self.links, str) else ",".join(self.links)

    def prepare(self, dep: Deployment, window: Window) -> None:
        names = dep.select_links(self.links)
        window.detail["links"] = names
        window.target = ",".join(names)

    def _toxics(self, dep: Deployment, window: Window, type_: str, attrs: dict[str, int]) -> None:
        names = window.detail["links"]
        api = dep.link_api()
        made: list[list[str]] = window.detail.setdefault("_toxics", [])
        for link in names:
            for stream in STREAMS:
                toxic = f"chaos_{self.record_name}_{stream}_{window.seq}"
                api.add_toxic(link, type_, attrs, name=toxic, stream=stream)
                made.append([link, toxic])

    def heal(self, dep: Deployment, window: Window) -> None:
        api = dep.link_api()
        errors: list[Exception] = []
        for link, toxic in window.detail.pop("_toxics", []):
            try:
                api.remove_toxic(link, toxic)
            except Exception as exc:  # noqa: BLE001 - heal the rest, then raise
                errors.append(exc)
        for link in window.detail.pop("_disabled", []):
            try:
                api.enable_proxy(link)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        if errors:
            raise errors[0]


@register
class Partition(_LinkOp):
    """Cut links: ``blackhole`` (a ``timeout`` toxic of 0: bytes dropped, connections left
    open until the heal closes them), ``refuse`` (proxy disabled: new connections refused,
    open ones closed) or ``reset`` (``reset_peer``: connections reset)."""

    op: Literal["partition"] = "partition"
    mode: Literal["blackhole", "refuse", "reset"] = "blackhole"
    label: ClassVar[str] = "cut links through the proxy: blackhole, refuse or reset"

    @property
    def record_name(self) -> str:
        return f"partition_{self.mode}"

    def prepare(self, dep: Deployment, window: Window) -> None:
        super().prepare(dep, window)
        window.detail["mode"] = self.mode

    def apply(self, dep: Deployment, window: Window) -> None:
        if self.mode == "blackhole":
            self._toxics(dep, window, "timeout", {"timeout": 0})
        elif self.mode == "reset":
            self._toxics(dep, window, "reset_peer", {"timeout": 0})
        else:
            disabled: list[str] = window.detail.setdefault("_disabled", [])
            for link in window.detail["links"]:
                dep.link_api().disable_proxy(link)
                disabled.append(link)


@register
class Latency(_LinkOp):
    """Add ``ms`` ± ``jitter`` milliseconds to both directions of each link."""

    op: Literal["latency"] = "latency"
    ms: int = Field(ge=0)
    jitter: int = Field(0, ge=0)
    label: ClassVar[str] = "add latency (ms ± jitter) to both directions of links"

    def prepare(self, dep: Deployment, window: Window) -> None:
        super().prepare(dep, window)
        window.detail.update(latency_ms=self.ms, jitter_ms=self.jitter)

    def apply(self, dep: Deployment, window: Window) -> None:
        self._toxics(dep, window, "latency", {"latency": self.ms, "jitter": self.jitter})


@register
class Bandwidth(_LinkOp):
    """Cap both directions of each link at ``kb_per_s`` KB/s."""

    op: Literal["bandwidth"] = "bandwidth"
    kb_per_s: int = Field(gt=0)
    label: ClassVar[str] = "cap both directions of links at KB/s"

    def prepare(self, dep: Deployment, window: Window) -> None:
        super().prepare(dep, window)
        window.detail["rate_kb_s"] = self.kb_per_s

    def apply(self, dep: Deployment, window: Window) -> None:
        self._toxics(dep, window, "bandwidth", {"rate": self.kb_per_s})


# -- packets (network namespaces) ------------------------------------------------------------


class _PacketOp(Op):
    nodes: str | list[str] = Field("w*", description="node names or globs: w1, w*, publisher")
    peers: str | list[str] = Field("broker", description="the other side's nodes: broker, w2")
    held: ClassVar[bool] = True

    def target(self) -> str:
        nodes = self.nodes if isinstance(self.nodes, str) else ",".join(self.nodes)
        peers = self.peers if isinstance(self.peers, str) else ",".join(self.peers)
        return f"{nodes}-{peers}"

    def prepare(self, dep: Deployment, window: Window) -> None:
        nodes, peers = dep.packet_nodes(self.nodes), dep.packet_nodes(self.peers)
        # ``links`` (node-peer pairs) makes it a network fault for the checkers and reports.
        window.detail.update(links=[f"{n}-{p}" for n in nodes for p in peers],
                             nodes=nodes, peers=peers)
        window.target = ",".join(window.detail["links"])

    def _cut(self, dep: Deployment, window: Window, *, outbound: bool, inbound: bool,
             loss: float | None = None) -> None:
        window.detail["_cut"] = dep.cut_packets(
            window.detail["nodes"], window.detail["peers"], outbound=outbound, inbound=inbound,
            loss=loss,
        )

    def heal(self, dep: Deployment, window: Window) -> None:
        cut = window.detail.pop("_cut", None)
        if cut is not None:
            dep.heal_packets(cut)


@register
class PacketPartition(_PacketOp):
    """Drop every packet between ``nodes`` and ``peers`` (iptables in the nodes' network
    namespaces): ``both`` ways, ``outbound`` only (the nodes hear their peers but are not
    heard) or ``inbound`` only (the nodes are heard but hear nothing). TCP connections stay
    open on both ends: no FIN or RST crosses, unlike a proxy's partition."""

    op: Literal["packet_partition"] = "packet_partition"
    direction: Literal["both", "outbound", "inbound"] = "both"
    label: ClassVar[str] = "drop packets between namespaces: both ways or one way"

    @property
    def record_name(self) -> str:
        return "packet_partition" if self.direction == "both" else \
            f"packet_partition_{self.direction}"

    def prepare(self, dep: Deployment, window: Window) -> None:
        super().prepare(dep, window)
        window.detail["direction"] = self.direction

    def apply(self, dep: Deployment, window: Window) -> None:
        self._cut(dep, window, outbound=self.direction in ("both", "outbound"),
                  inbound=self.direction in ("both", "inbound"))


@register
class PacketLoss(_PacketOp):
    """Drop ``percent`` % of the packets between ``nodes`` and ``peers``, both ways, each
    packet at random (iptables ``statistic``)."""

    op: Literal["packet_loss"] = "packet_loss"
    percent: float = Field(gt=0, le=100)
    label: ClassVar[str] = "drop a share of packets between namespaces, at random"

    def prepare(self, dep: Deployment, window: Window) -> None:
        super().prepare(dep, window)
        window.detail["loss_percent"] = self.percent

    def apply(self, dep: Deployment, window: Window) -> None:
        self._cut(dep, window, outbound=True, inbound=True, loss=self.percent / 100)


# -- beat ------------------------------------------------------------------------------------


class _BeatOp(Op):
    #: A beat name, or ``leader``: the beat that published last (RedBeat's lock holder).
    beat: str = "beat1"

    def target(self) -> str:
        return self.beat

    def beats(self) -> list[str]:
        return [] if self.beat == "leader" else [self.beat]

    def _resolve(self, dep: Deployment, window: Window) -> str:
        name = dep.beat_leader() if self.beat == "leader" else self.beat
        window.target = name
        window.output_target = name
        return name


@register
class KillBeat(_BeatOp):
    """Signal a beat (SIGKILL by default: no schedule sync) and wait until it exits."""

    op: Literal["kill_beat"] = "kill_beat"
    signal: SignalName = "SIGKILL"
    label: ClassVar[str] = "signal a beat (SIGKILL by default) and wait for it to exit"

    def prepare(self, dep: Deployment, window: Window) -> None:
        window.detail.update(pid=dep.beat_pid(self._resolve(dep, window)), signal=self.signal)

    def apply(self, dep: Deployment, window: Window) -> None:
        dep.signal_beat(window.target, getattr(_signal, self.signal), wait_exit=30.0)


@register
class PauseBeat(_BeatOp):
    """SIGSTOP a beat for the window, then SIGCONT."""

    op: Literal["pause_beat"] = "pause_beat"
    label: ClassVar[str] = "SIGSTOP a beat for the window, then SIGCONT"
    held: ClassVar[bool] = True

    def prepare(self, dep: Deployment, window: Window) -> None:
        window.detail["pid"] = dep.beat_pid(self._resolve(dep, window))

    def apply(self, dep: Deployment, window: Window) -> None:
        dep.signal_beat(window.target, _signal.SIGSTOP)

    def heal(self, dep: Deployment, window: Window) -> None:
        dep.signal_beat(window.target, _signal.SIGCONT)


# -- the harness's HTTP endpoint --------------------------------------------------------------


@register
class HttpFailures(Op):
    """The harness's HTTP endpoint ``/flaky/<key>`` answers 503 the next ``failures`` times."""

    op: Literal["http_failures"] = "http_failures"
    key: str
    failures: int = Field(ge=0)
    label: ClassVar[str] = "the HTTP endpoint /flaky/KEY fails the next K requests"

    def target(self) -> str:
        return f"/flaky/{self.key}"

    def apply(self, dep: Deployment, window: Window) -> None:
        dep.set_http_failures(self.key, self.failures)


# -- actions ---------------------------------------------------------------------------------


class _Action(Op):
    category: ClassVar[Category] = "action"


@register
class Load(_Action):
    """Start a Locust load (the app's workload, or an inline one); ``wait`` joins it."""

    op: Literal["load"] = "load"
    tasks: int | None = Field(None, ge=1)
    rate: float | None = Field(None, ge=0)
    users: int = Field(4, ge=1)
    duration: float | None = Field(None, gt=0)
    seed: int = 0
    workload: list[dict[str, Any]] | None = None
    wait: bool = False
    label: ClassVar[str] = "start a Locust load (tasks, rate, users, seed)"

    def apply(self, dep: Deployment, window: Window) -> None:
        run = dep.start_load(self)
        if self.wait:
            run.wait()


#: Options of ``Celery.send_task`` a ``publish`` step may set (the task id is the harness's).
PUBLISH_OPTIONS = frozenset({"countdown", "expires", "priority", "queue", "routing_key",
                             "time_limit", "soft_time_limit", "headers", "confirm_timeout"})


@register
class Publish(_Action):
    """Publish ``count`` calls of a task now (straight to the broker), recorded invoke/ok.

    String arguments may use ``{http_base}``, ``{smtp_host}``, ``{smtp_port}``; ``options``
    go to ``send_task`` (``{countdown: 5}``: an ETA message the worker holds until then).
    """

    op: Literal["publish"] = "publish"
    task: str
    args: list[Any] = Field(default_factory=list)
    count: int = Field(1, ge=1)
    #: Celery's publish options (``{countdown: 5}``), passed to ``send_task``.
    options: dict[str, Any] = Field(default_factory=dict)
    label: ClassVar[str] = "publish COUNT calls of a task now, with send_task OPTIONS"

    @field_validator("options")
    @classmethod
    def _options(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            if key not in PUBLISH_OPTIONS:
                raise ValueError(f"unknown publish option {key!r} (one of: "
                                 f"{', '.join(sorted(PUBLISH_OPTIONS))})")
        return v

    def apply(self, dep: Deployment, window: Window) -> None:
        extra = {"options": dict(self.options)} if self.options else {}
        window.task_ids = dep.publish_now(self.task, self.args, self.count, **extra)


@register
class PublishEncoded(_Action):
    """Publish ``count`` calls of a task encoded with kombu's ``serializer`` rather than the
    app's, recorded invoke/ok: a message the workers cannot decode when their
    ``accept_content`` leaves it out (Celery's default accepts json only)."""

    op: Literal["publish_encoded"] = "publish_encoded"
    task: str
    args: list[Any] = Field(default_factory=list)
    count: int = Field(1, ge=1)
    serializer: str = "pickle"
    label: ClassVar[str] = "publish COUNT calls of a task encoded with SERIALIZER"

    @field_validator("serializer")
    @classmethod
    def _known(cls, v: str) -> str:
        from kombu.serialization import registry as serializers

        if v not in serializers.name_to_type:
            known = ", ".join(sorted(serializers.name_to_type))
            raise ValueError(f"unknown serializer {v!r} (one of: {known})")
        return v

    def apply(self, dep: Deployment, window: Window) -> None:
        window.task_ids = dep.publish_encoded_now(self.task, self.args, self.count,
                                                  self.serializer)


@register
class Revoke(_Action):
    """Revoke tasks through Celery's remote control (``app.control.revoke``, broadcast
    straight to the broker): each worker that gets it adds the ids to its revoked set, in
    memory only unless it runs with ``worker_state_db``. ``tasks``: ids, or an earlier
    ``publish`` step's ``${step.tasks}``.

    Waits up to ``timeout`` s for the workers' replies, then writes a ``deployment`` record
    named ``revoke`` (``detail``: ``tasks``, ``replied``, the nodes that confirmed): the point
    after which ``revoked_never_run`` calls a start of those tasks a violation. The step's
    ``task_ids`` are the revoked ids.
    """

    op: Literal["revoke"] = "revoke"
    tasks: list[str] = Field(min_length=1, description="task ids, or ${step.tasks}")
    #: Seconds to wait for the workers' replies.
    timeout: float = Field(2.0, gt=0)
    label: ClassVar[str] = "revoke tasks by id through remote control (${step.tasks} of a publish)"

    @field_validator("tasks", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    def target(self) -> str:
        return "workers"

    def apply(self, dep: Deployment, window: Window) -> None:
        replied = dep.revoke(list(self.tasks), timeout=self.timeout)
        window.task_ids = list(self.tasks)
        window.detail.update(tasks=list(self.tasks), replied=replied)
        dep.writer.write(Kind.DEPLOYMENT, name=REVOKE_RECORD, target=self.target(),
                         detail={"tasks": list(self.tasks), "replied": replied})


@register
class StartWorker(_Action):
    """Start a worker: a new one (``w3``), or again after a kill."""

    op: Literal["start_worker"] = "start_worker"
    worker: str = "w1"
    label: ClassVar[str] = "start a worker (new, or again after a kill)"

    @field_validator("worker")
    @classmethod
    def _node(cls, v: str) -> str:
        return _worker_node(v)

    def target(self) -> str:
        return self.worker

    def apply(self, dep: Deployment, window: Window) -> None:
        dep.start_worker(self.worker)


@register
class StartBeats(_Action):
    """Start (or restart) beats declared by the deployment and wait until each is ready."""

    op: Literal["start_beats"] = "start_beats"
    names: list[str] = Field(default_factory=lambda: ["beat1"], min_length=1)
    label: ClassVar[str] = "start beats (declared by the deployment)"

    def beats(self) -> list[str]:
        return list(self.names)

    def apply(self, dep: Deployment, window: Window) -> None:
        dep.start_beats(self.names)


@register
class Checkpoint(_Action):
    """Do nothing: a point in the schedule to wait for (its trigger) before the check."""

    op: Literal["checkpoint"] = "checkpoint"
    label: ClassVar[str] = "wait for the step's trigger, do nothing"

    def apply(self, dep: Deployment, window: Window) -> None:
        return None
