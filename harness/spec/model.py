"""A scenario as data: deployment, load, fault schedule, checkers and the declared verdict.

A spec is validated by pydantic and round-trips through JSON or YAML. Every scenario of the
shipped catalog is one (``harness/catalog/*.yaml``); a run stores the resolved spec of each
scenario as ``spec.json`` beside its history, so ``celery-chaos replay`` can run it again.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from celery_chaos.deployment.brokers import redis_config_args
from celery_chaos.errors import UsageError
from celery_chaos.faults.schedule import Schedule, Step
from celery_chaos.faults.vocabulary import Load

SPEC_VERSION = 1
Expect = Literal["valid", "invalid"]
_NODE_PREFIX = "w"


class BeatSpec(BaseModel):
    """A ``celery beat`` instance the deployment declares (started by a ``start_beats`` step)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    settings: dict[str, Any] = Field(default_factory=dict)


class DeploymentSpec(BaseModel):
    """What runs: broker, workers, beats, the settings and environment under test."""

    model_config = ConfigDict(extra="forbid")

    broker: Literal["rabbitmq", "redis"] = "rabbitmq"
    #: RabbitMQ: the session's shared node (a vhost of its own), or a node shared only by
    #: scenarios naming the same group (those that crash and restart it).
    broker_group: str = "shared"
    #: RabbitMQ: ``rabbitmq.conf`` lines for the group's node (``{consumer_timeout: 3000}``);
    #: a node of its own, so every scenario of a ``broker_group`` must give the same ones.
    #: Redis: ``redis-server`` options (``{maxmemory: 2mb, maxmemory-policy: noeviction}``)
    #: for the scenario's server, which is always its own (no ``broker_group`` needed).
    broker_config: dict[str, str] = Field(default_factory=dict)
    #: Redis broker persistence: ``none`` (``--save ''``) or ``aof-always``.
    redis_persistence: Literal["none", "aof-always"] = "none"
    workers: int = Field(2, ge=0)
    concurrency: int = Field(2, ge=1)
    pool: Literal["prefork", "threads", "solo", "eventlet", "gevent"] = "prefork"
    settings: dict[str, Any] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    #: Every link through its own proxy (network faults need it).
    proxied: bool = False
    #: ``netns``: every node in a network namespace of its own, joined to the broker's by
    #: veth pairs, for packet faults (``packet_partition``, ``packet_loss``; needs root).
    network: Literal["loopback", "netns"] = "loopback"
    #: With ``network: netns``: ``net.*`` sysctls per node glob, set in those nodes'
    #: namespaces only (``{broker: {net.ipv4.tcp_retries2: 5}}``).
    sysctls: dict[str, dict[str, int]] = Field(default_factory=dict)
    beats: list[BeatSpec] = Field(default_factory=list)
    #: The scenario drives the sample app's own tasks or beat entries: skipped (with the
    #: reason) against another app.
    needs_sample_app: bool = False
    #: Seconds workers and beats get to exit on SIGTERM at teardown (the verdict is in)
    #: before SIGKILL; 0 where tasks are left hung on purpose.
    stop_grace_s: float = Field(3.0, ge=0)

    @model_validator(mode="after")
    def _one_network(self) -> DeploymentSpec:
        if self.network == "netns" and self.proxied:
            raise ValueError("network: netns and proxied: true exclude each other: packet "
                             "faults need no proxy")
        if self.broker_config and self.broker == "rabbitmq" and self.broker_group == "shared":
            raise ValueError("broker_config needs broker: rabbitmq and a broker_group of its "
                             "own (the shared node keeps RabbitMQ's defaults), or broker: redis "
                             "(a server of the scenario's own)")
        if self.broker == "redis":
            for key in self.broker_config:
                if not re.fullmatch(r"[a-z][a-z0-9-]*", key):
                    raise ValueError(f"broker_config {key!r}: not a Redis option name "
                                     "(maxmemory-policy)")
            redis_config_args(self.broker_config)  # the harness's own options: ValueError
        if self.sysctls and self.network != "netns":
            raise ValueError("sysctls need network: netns (they are set in its namespaces)")
        for values in self.sysctls.values():
            for key in values:
                if not re.fullmatch(r"net(\.[a-z0-9_]+)+", key):
                    raise ValueError(f"sysctl {key!r}: only net.* keys (a namespace's own)")
        if self.network == "netns" and self.beats:
            raise ValueError("network: netns runs no beat yet: drop beats or the netns network")
        return self

    def worker_names(self) -> list[str]:
        """``w1@chaos`` ... ``wN@chaos``."""
        return [f"{_NODE_PREFIX}{i}@chaos" for i in range(1, self.workers + 1)]


class CheckSpec(BaseModel):
    """A checker of :mod:`celery_chaos.checks.registry`, its parameters (``${step}`` allowed)."""

    model_config = ConfigDict(extra="forbid")

    checker: str
    params: dict[str, Any] = Field(default_factory=dict)


class ChecksSpec(BaseModel):
    """How the run is judged: the queue invariant always, plus the checkers listed."""

    model_config = ConfigDict(extra="forbid")

    exactly_once: bool = False
    invariants: list[CheckSpec] = Field(default_factory=list)
    drain_timeout: float = Field(60.0, ge=0)
    settle: float = Field(3.0, ge=0)


class ScenarioSpec(BaseModel):
    """One scenario of the catalog (or of a user's own file)."""

    model_config = ConfigDict(extra="forbid")

    version: int = SPEC_VERSION
    name: str
    description: str = ""
    #: Failure modes of docs/failure-modes.md the scenario covers.
    modes: list[int] = Field(default_factory=list)
    deployment: DeploymentSpec = Field(default_factory=DeploymentSpec)
    #: The main load, started when the schedule starts (``at`` counts from there).
    load: Load | None = None
    schedule: Schedule = Field(default_factory=Schedule)
    checks: ChecksSpec = Field(default_factory=ChecksSpec)
    expect: Expect = "valid"
    #: Markers for pytest (``slow``).
    marks: list[str] = Field(default_factory=list)
    #: The app under test (``module:attr``): set in a run's ``spec.json``; None in the
    #: catalog (the session's app, ``--chaos-app``).
    app: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _schedule_list(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("schedule"), list):
            data = {**data, "schedule": {"steps": data["schedule"]}}
        if isinstance(data, dict) and isinstance(data.get("load"), dict):
            data = {**data, "load": {"op": "load", **data["load"]}}
        return data

    @model_validator(mode="after")
    def _targets(self) -> ScenarioSpec:
        if self.version > SPEC_VERSION:
            raise ValueError(
                f"spec version {self.version}: this celery-chaos reads up to {SPEC_VERSION}"
            )
        workers = set(self.deployment.worker_names())
        started = {
            s.do.worker for s in self.schedule.steps if s.do.op == "start_worker"  # type: ignore[attr-defined]
        }
        for name in sorted(self.schedule.workers() - workers - started):
            have = ", ".join(sorted(workers)) or "none"
            raise ValueError(f"the schedule names worker {name!r}, which the deployment does "
                             f"not have (workers: {have})")
        beats = {b.name for b in self.deployment.beats}
        for name in sorted(self.schedule.beats() - beats):
            raise ValueError(f"the schedule names beat {name!r}, which the deployment does "
                             f"not declare (beats: {', '.join(sorted(beats)) or 'none'})")
        return self

    def to_json(self) -> dict[str, Any]:
        """The JSON form (every field, the schedule as a list of steps)."""
        out = self.model_dump(mode="json", exclude={"schedule", "load"})
        out["load"] = self.load.model_dump(mode="json") if self.load else None
        out["schedule"] = self.schedule.dump()
        return out

    def with_schedule(self, steps: list[Step] | Schedule) -> ScenarioSpec:
        """The same spec with another schedule (validated again)."""
        sched = steps if isinstance(steps, Schedule) else Schedule(steps=steps)
        return ScenarioSpec.model_validate({**self.to_json(), "schedule": sched.dump()})


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(x) for x in first["loc"] if not str(x).startswith("function-"))
    msg = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def parse_spec(data: Any, source: str = "spec") -> ScenarioSpec:
    """A validated spec; bad input raises a one-line :class:`UsageError`."""
    try:
        return ScenarioSpec.model_validate(data)
    except ValidationError as exc:
        raise UsageError(f"{source}: {_first_error(exc)}") from None
    except ValueError as exc:
        raise UsageError(f"{source}: {exc}") from None


def read_data(path: str | Path) -> Any:
    """JSON or YAML from a file; one-line :class:`UsageError` when unreadable."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {p}: {exc.strerror or exc}") from None
    try:
        return json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise UsageError(f"{p} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}: "
                         f"{str(exc).splitlines()[0]}") from None


def load_spec(path: str | Path) -> ScenarioSpec:
    """One spec from a JSON/YAML file (a ``spec.json`` of a run, or a user's own)."""
    data = read_data(path)
    if isinstance(data, dict) and "spec" in data and "name" not in data:
        data = data["spec"]  # a schedule file: {"spec": {...}, ...}
    return parse_spec(data, str(path))
