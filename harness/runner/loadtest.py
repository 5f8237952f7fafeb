"""``celery-chaos load``: a Locust load test with an optional fault schedule, and its report.

Local (default): the harness starts its own deployment (broker, result Redis, workers)
exactly as a scenario does, runs Locust for ``--duration`` and the ``--fault`` schedule
through the one runner: each ``--fault`` is a step of a
:class:`~celery_chaos.spec.model.ScenarioSpec` (an op of the fault vocabulary at its time), every
step in a thread of its own, so faults may overlap and a pause never delays the next fault.
It then drains, checks the history and writes ``reports/<run>/`` (verdict.json, index.html,
junit.xml, and the scenario's ``spec.json``: ``celery-chaos replay`` runs the load again).
Existing deployment (``--broker-url``): only Locust and the publisher-side recorder run; no
fault, no drain (the harness does not own those workers), so the verdict is ``unknown`` by
design and the report says so.

Distributed Locust: ``--processes N`` forks N Locust workers; ``--master
--expect-workers N`` waits for N workers started with the script the command prints.
Every Locust process writes its own pid-named history file into the same history
directory, so one run has one history and one report.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from celery_chaos.deployment.processes import wait_for
from celery_chaos.errors import ChaosError, InfrastructureError, UsageError
from celery_chaos.faults.context import Window
from celery_chaos.faults.schedule import Schedule, ScheduleRun, Step, Trigger
from celery_chaos.faults.vocabulary import parse_op, registry
from celery_chaos.load.runner import LOCUSTFILE, LoadRun
from celery_chaos.runner.progress import Progress
from celery_chaos.spec.model import ScenarioSpec, parse_spec

#: Seconds between two progress lines of a load test.
PROGRESS_S = 5.0

#: ``NAME[:TARGET]@AT[+DURATION]``, e.g. ``kill-worker:w1@10s``, ``pause_worker:w2@5s+3s``.
FAULT_RE = re.compile(r"^(?P<name>[a-z_-]+)(?::(?P<target>[\w.-]+(?:@[\w.-]+)?))?"
                      r"@(?P<at>[0-9][0-9.a-z]*)(?:\+(?P<dur>[0-9][0-9.a-z]*))?$")
#: The short names of ``--fault`` and the op of the fault vocabulary each stands for.
FAULT_KINDS = {
    "kill-worker": "kill_worker",
    "kill-child": "kill_pool_child",
    "pause-worker": "pause_worker",
    "restart-worker": "start_worker",
    "crash-broker": "crash_broker",
}
#: The ops a ``--fault`` may name (those that need no link proxy), by what TARGET is:
#: ``worker`` (required), ``workers`` (optional: every worker) or ``none``.
FAULT_OPS = {
    "kill_worker": "worker",
    "kill_pool_child": "worker",
    "pause_pool_child": "worker",
    "pause_worker": "worker",
    "terminate_worker": "worker",
    "start_worker": "worker",
    "stop_consuming": "workers",
    "crash_broker": "none",
    "stop_broker": "none",
    "pause_broker": "none",
    "resource_alarm": "none",
}
_ACCEPTED = ", ".join([*FAULT_KINDS, *FAULT_OPS])
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

#: How long a ``--master`` waits for its workers (Locust's ``--expect-workers-max-wait``).
MASTER_WAIT_S = 120.0


def parse_duration(text: str, what: str = "duration") -> float:
    """``90``, ``90s``, ``1m30s``, ``500ms``, ``1h`` -> seconds."""
    pos, total = 0, 0.0
    text = text.strip()
    while pos < len(text):
        m = _DURATION.match(text, pos)
        if not m:
            raise UsageError(f"bad {what} {text!r}: use e.g. 30s, 2m, 1m30s, 500ms")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not text:
        raise UsageError(f"empty {what}: use e.g. 30s")
    return total


def fault_op(name: str) -> str | None:
    """The vocabulary op a ``--fault`` NAME stands for (``kill-child``, ``kill_pool_child``
    and ``kill-pool-child`` are one), or None."""
    key = name.replace("_", "-")
    op = FAULT_KINDS.get(key, key.replace("-", "_"))
    return op if op in FAULT_OPS else None


def parse_fault(text: str) -> Step:
    """``NAME[:TARGET]@AT[+DURATION]`` -> a schedule step (the op at AT seconds, held for
    DURATION); raise a one-line :class:`UsageError`. Whether a named worker exists is the
    spec's check (:func:`scenario_spec`)."""
    m = FAULT_RE.match(text.strip())
    if not m:
        raise UsageError(
            f"bad --fault {text!r}: use NAME[:TARGET]@AT[+DURATION], e.g. kill-worker:w1@10s "
            f"(faults: {_ACCEPTED})"
        )
    name, target = m.group("name"), m.group("target")
    op = fault_op(name)
    if op is None:
        raise UsageError(f"unknown fault {name!r} in --fault {text!r}: use one of {_ACCEPTED}")
    at = parse_duration(m.group("at"), "fault time")
    dur = parse_duration(m.group("dur"), "fault duration") if m.group("dur") else None
    data: dict[str, Any] = {"op": op}
    kind = FAULT_OPS[op]
    if kind == "worker" and not target:
        raise UsageError(f"--fault {text!r} needs a worker: {name}:w1@{m.group('at')}")
    if kind == "none" and target:
        raise UsageError(f"--fault {text!r}: {name} takes no target ({name}@10s+2s)")
    node = f"{target.split('@')[0]}@chaos" if target else None
    if kind == "worker":
        data["worker"] = node
    elif kind == "workers" and node:
        data["nodes"] = [node]
    held = registry()[op].held
    if op in ("pause_worker", "pause_broker", "resource_alarm") and not dur:
        raise UsageError(f"--fault {text!r}: {name} needs +DURATION, e.g. @5s+3s")
    if dur is not None and not held:
        raise UsageError(f"--fault {text!r}: {name} is instantaneous: drop +{m.group('dur')}")
    try:
        return Step(when=Trigger(at=at), do=parse_op(data), duration=dur)
    except ValueError as exc:  # pydantic's ValidationError is one
        raise UsageError(f"--fault {text!r}: {str(exc).splitlines()[0]}") from None


def _fault_help() -> str:
    ops = "; ".join(f"{op} ({registry()[op].label})" for op in FAULT_OPS)
    short = ", ".join(f"{k}={op}" for k, op in FAULT_KINDS.items())
    return (f"NAME[:TARGET]@AT[+DURATION], TARGET a worker (w1), +DURATION how long a held "
            f"fault lasts. NAME is an op of the fault vocabulary: {ops}; or a short name: "
            f"{short}")


def _setting(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise UsageError(f"bad --setting {text!r}: use KEY=VALUE, e.g. task_acks_late=true")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``celery-chaos load``."""
    p.add_argument("--users", type=int, default=4, help="Locust users (default 4)")
    p.add_argument("--spawn-rate", type=float, default=None,
                   help="users started per second (default: all at once)")
    p.add_argument("--duration", default="30s", help="how long the load runs (default 30s)")
    p.add_argument("--rate", type=float, default=None,
                   help="target publishes per second over all users (default 5 per user; "
                        "0: as fast as possible)")
    p.add_argument("--fault", action="append", default=[], metavar="SPEC",
                   help=_fault_help())
    p.add_argument("--broker", choices=("rabbitmq", "redis"), default="rabbitmq",
                   help="broker of the local deployment (default rabbitmq)")
    p.add_argument("--chaos-backend", choices=("local", "compose"), default="local",
                   help="where the deployment runs: local processes (default) or containers "
                        "of a docker-compose deployment (needs DOCKER_HOST; docs/compose.md)")
    p.add_argument("--chaos-compose-file", default=None,
                   help="the compose file of --chaos-backend compose")
    p.add_argument("--workers", type=int, default=2, help="workers w1..wN (default 2)")
    p.add_argument("--concurrency", type=int, default=2, help="pool size per worker (default 2)")
    p.add_argument("--pool", default="prefork", help="worker pool (default prefork)")
    p.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                   help="a Celery setting under test (JSON value), e.g. task_acks_late=true")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="an environment variable for workers and Locust (e.g. SAMPLE_*)")
    p.add_argument("--app", default=os.environ.get("CHAOS_APP", "celery_chaos.sample_app.app:app"),
                   help="the Celery app, package.module:app (default the sample app)")
    p.add_argument("--workload", default=os.environ.get("CHAOS_WORKLOAD"),
                   help="workload YAML (default the sample app's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the task mix (default 0)")
    p.add_argument("--reports", default=os.environ.get("CHAOS_REPORTS_DIR", "reports"),
                   help="where run directories go (default ./reports)")
    p.add_argument("--drain-timeout", default="60s", help="bound of the final drain (60s)")
    p.add_argument("--broker-url", help="an existing deployment's broker: publish only")
    p.add_argument("--result-backend", help="an existing deployment's result backend")
    dist = p.add_mutually_exclusive_group()
    dist.add_argument("--processes", type=int, default=0,
                      help="Locust --processes N: fork N Locust workers (one history file each)")
    dist.add_argument("--master", action="store_true",
                      help="run Locust as --master and wait for --expect-workers workers "
                           "started with the printed script")
    p.add_argument("--expect-workers", type=int, default=1,
                   help="with --master: Locust workers to wait for (default 1)")


class CommandLoadRun(LoadRun):
    """A :class:`LoadRun` with a spawn rate and Locust's distributed modes."""

    def __init__(self, *, spawn_rate: float | None, processes: int = 0, master: bool = False,
                 expect_workers: int = 1, master_port: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spawn_rate = spawn_rate or float(self.users)
        self.processes = processes
        self.master = master
        self.expect_workers = expect_workers
        self.master_port = master_port

    @property
    def command(self) -> list[str]:
        """Locust's command line: the runner's, with spawn rate and distribution options."""
        cmd = list(super().command)
        cmd[cmd.index("-r") + 1] = f"{self.spawn_rate:g}"
        if self.processes:
            cmd += ["--processes", str(self.processes)]
        if self.master:
            cmd += ["--master", "--master-bind-host", "127.0.0.1",
                    "--master-bind-port", str(self.master_port),
                    "--expect-workers", str(self.expect_workers),
                    "--expect-workers-max-wait", str(int(MASTER_WAIT_S))]
        return cmd

    def worker_script(self) -> Path:
        """A shell script that starts one Locust worker for this master (``--master``)."""
        env = {k: v for k, v in self.env.items() if k.startswith(("CHAOS_", "SAMPLE_"))}
        env["PYTHONPATH"] = self.env.get("PYTHONPATH", "")
        lines = ["#!/bin/sh", "# One Locust worker of this load; run it once per worker.",
                 *(f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())),
                 f"exec {shlex.quote(sys.executable)} -m locust -f {shlex.quote(str(LOCUSTFILE))}"
                 f" --worker --master-host 127.0.0.1 --master-port {self.master_port}"
                 f" -u {self.users} --chaos-rate {self.rate:g}", ""]  # -u: per-user pacing
        path = self.out_dir / "locust-worker.sh"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines))
        path.chmod(0o755)
        return path


@dataclass
class LoadOptions:
    """Validated options of one ``celery-chaos load``."""

    users: int
    spawn_rate: float | None
    duration: float
    rate: float
    #: The ``--fault`` steps in time order, ids ``fault1``...
    faults: list[Step]
    settings: dict[str, Any]
    env: dict[str, str]
    drain_timeout: float
    existing: bool
    #: Step id -> the ``--fault`` text it came from.
    fault_texts: dict[str, str] = field(default_factory=dict)


def drain_advice(result: Any, duration: float, drain_timeout: float, run_dir: Path) -> str:
    """Why the final drain ran out and what to change (``""`` when it did not)."""
    queue = result.queue
    if queue is None or queue.drain != "incomplete":
        return ""
    pending = len(queue.pending)
    elapsed = duration + drain_timeout
    rate = queue.counts.completed / elapsed if elapsed > 0 else 0.0
    logs = run_dir / "scenarios" / "load" / "logs"
    if pending and rate > 0:
        need = pending / rate
        return (
            f"the drain ran out after --drain-timeout {drain_timeout:g}s with {pending} "
            f"acknowledged tasks not completed; the workers completed ~{rate:.1f} tasks/s over the "
            f"run, so "
            f"the backlog needed ~{need:.0f} s more: raise --drain-timeout (to "
            f"{drain_timeout + need * 1.5:.0f}s, say), add --workers or --concurrency, or "
            f"publish slower (--rate)"
        )
    return (
        f"the drain ran out after --drain-timeout {drain_timeout:g}s with {pending} "
        f"acknowledged tasks not completed and no task completing: are the workers stuck? "
        f"See their logs in {logs}"
    )


def validate(args: argparse.Namespace) -> LoadOptions:
    """Check every option; raise a one-line :class:`UsageError` on bad input."""
    if args.users < 1:
        raise UsageError(f"--users {args.users}: need at least 1 user")
    if args.spawn_rate is not None and args.spawn_rate <= 0:
        raise UsageError(f"--spawn-rate {args.spawn_rate:g}: must be > 0")
    duration = parse_duration(args.duration, "--duration")
    if duration < 1:
        raise UsageError(f"--duration {args.duration}: at least 1s")
    if args.workers < 1 or args.concurrency < 1:
        raise UsageError("--workers and --concurrency must be at least 1")
    if args.processes < 0 or (args.master and args.expect_workers < 1):
        raise UsageError("--processes and --expect-workers must be at least 1")
    rate = 5.0 * args.users if args.rate is None else args.rate
    if rate < 0:
        raise UsageError(f"--rate {rate:g}: must be >= 0")
    existing = bool(args.broker_url)
    if args.result_backend and not existing:
        raise UsageError("--result-backend needs --broker-url (an existing deployment)")
    parsed = [(text, parse_fault(text)) for text in args.fault]
    if existing and parsed:
        raise UsageError(
            "--fault needs a deployment the harness owns: drop --broker-url to run a local one"
        )
    for text, step in parsed:
        at = step.when.at or 0.0
        if at >= duration:
            raise UsageError(f"--fault {text!r} at {at:g}s is after --duration {duration:g}s")
    parsed.sort(key=lambda p: p[1].when.at or 0.0)
    steps = [s.model_copy(update={"id": f"fault{i}"}) for i, (_, s) in enumerate(parsed, 1)]
    env: dict[str, str] = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"bad --env {item!r}: use NAME=VALUE")
        env[name] = value
    return LoadOptions(
        users=args.users, spawn_rate=args.spawn_rate, duration=duration, rate=rate,
        faults=steps, settings=dict(_setting(s) for s in args.setting), env=env,
        drain_timeout=parse_duration(args.drain_timeout, "--drain-timeout"), existing=existing,
        fault_texts={f"fault{i}": text for i, (text, _) in enumerate(parsed, 1)},
    )


def scenario_spec(args: argparse.Namespace, opts: LoadOptions,
                  description: str = "") -> ScenarioSpec:
    """The local run as a scenario spec: the deployment, the Locust load, the ``--fault``
    schedule and the drain bound. Bad input (a worker the deployment does not have, an
    unknown pool) raises a one-line :class:`UsageError` before anything starts."""
    data = {
        "name": "load",
        "description": description,
        "deployment": {"broker": args.broker, "workers": args.workers,
                       "concurrency": args.concurrency, "pool": args.pool,
                       "settings": opts.settings, "env": opts.env},
        "load": {"users": opts.users, "rate": opts.rate, "duration": opts.duration,
                 "seed": args.seed},
        "schedule": Schedule(steps=opts.faults).dump(),
        "checks": {"drain_timeout": opts.drain_timeout},
    }
    return parse_spec(data, "celery-chaos load")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _load_run(args: argparse.Namespace, opts: LoadOptions, workload: Any, env: dict[str, str],
              out_dir: Path) -> CommandLoadRun:
    from celery_chaos.deployment.processes import free_port

    return CommandLoadRun(
        workload=workload, env=env, out_dir=out_dir, tasks=None, rate=opts.rate,
        users=opts.users, duration=opts.duration, seed=args.seed,
        spawn_rate=opts.spawn_rate, processes=args.processes, master=args.master,
        expect_workers=args.expect_workers, master_port=free_port() if args.master else 0,
    )


def _start(run: CommandLoadRun, history_dir: Path) -> None:
    """Start Locust; a ``--master`` returns only once its workers publish, so that the fault
    schedule counts from the load's start, not from the wait for workers."""
    run.start()
    if run.master:
        script = run.worker_script()
        print(f"celery-chaos: Locust master on 127.0.0.1:{run.master_port}; start "
              f"{run.expect_workers} worker(s) with: sh {script}", flush=True)

        def publishing() -> bool:
            return any(f.stat().st_size for f in history_dir.glob("publisher-*.jsonl"))

        if not wait_for(publishing, MASTER_WAIT_S + 10, interval=0.1):
            raise InfrastructureError(
                f"no Locust worker published within {MASTER_WAIT_S:.0f} s: start them with "
                f"sh {script}"
            )


def run_schedule(sched: ScheduleRun, texts: dict[str, str]) -> dict[str, Window]:
    """Run ``sched`` (every step in its own thread), printing each step as its window opens
    and, for a held fault, closes; return the windows. On an error or an interrupt the
    steps still waiting are aborted and open windows healed (bounded) before it raises."""
    held = {s.id for s in sched.schedule.steps if s.do.held}
    stop = threading.Event()
    t0 = time.monotonic_ns()

    def announce() -> None:
        seen: set[tuple[str, str]] = set()
        while True:
            last = stop.wait(0.05)
            for sid, win in sched.windows.items():
                for what, ns in (("at", win.start_ns), ("ended at", win.end_ns)):
                    if ns is None or (sid, what) in seen or (what != "at" and sid not in held):
                        continue
                    seen.add((sid, what))
                    print(f"celery-chaos: fault {texts.get(sid, sid)} {what} "
                          f"{(ns - t0) / 1e9:.1f}s", flush=True)
            if last:
                return

    printer = threading.Thread(target=announce, name="fault-announcer", daemon=True)
    printer.start()
    try:
        return sched.run()
    except BaseException:
        sched.abort()
        wait_for(lambda: all(w.start_ns is None or w.end_ns is not None
                             for w in sched.windows.values()), 15)
        raise
    finally:
        stop.set()
        printer.join(timeout=2)


def _run_local(args: argparse.Namespace, opts: LoadOptions, spec: ScenarioSpec, run_dir: Path,
               workload: Any) -> Any:
    from celery_chaos.backends.local import SharedBrokers
    from celery_chaos.results import write_json
    from celery_chaos.runner.app import AppUnderTest
    from celery_chaos.runner.run import SPEC_FILE, _window_summary, resolved
    from celery_chaos.runner.scenario import Scenario

    app = AppUnderTest.resolve(args.app, workload)
    brokers: Any = SharedBrokers(run_dir)
    if getattr(args, "chaos_backend", "local") == "compose":
        from celery_chaos.backends.compose import ComposeSession
        from celery_chaos.deployment.docker_engine import unavailable

        if (why := unavailable()) is not None:
            raise InfrastructureError(f"compose backend: {why}")
        file = getattr(args, "chaos_compose_file", None)
        brokers = ComposeSession(run_dir, "compose", Path(file) if file else None)
    scenario = Scenario(spec.name, run_dir, app, brokers, description=spec.description)
    error: str | None = None
    try:
        write_json(scenario.dir / SPEC_FILE, resolved(spec, scenario).to_json())
        scenario.deploy_spec(spec.deployment, expect=spec.expect)
        # The load of the spec, started with Locust's spawn rate and distributed modes.
        wl = workload.render(scenario.placeholders())
        run = _load_run(args, opts, wl, scenario.env_for("publisher"), scenario.dir / "load-1")
        scenario.loads.append(run)
        _start(run, scenario.history_dir)
        scenario.phase = "load and faults"
        progress = Progress("load", scenario.tail, lambda line: print(line, flush=True),
                            interval=PROGRESS_S, phase=lambda: scenario.phase).start()
        try:
            windows = run_schedule(ScheduleRun(spec.schedule, scenario), opts.fault_texts)
            scenario.check(drain_timeout=spec.checks.drain_timeout, settle=spec.checks.settle)
        finally:
            progress.stop()
        if windows:
            scenario.result.metrics["schedule"] = [
                _window_summary(w, scenario) for w in windows.values()
            ]
            scenario.save()
    except ChaosError as exc:
        error = str(exc)
    except KeyboardInterrupt:
        error = "interrupted"
    except Exception as exc:  # noqa: BLE001 - recorded in the report, never a traceback
        error = f"{type(exc).__name__}: {exc}"
    finally:
        scenario.close(error=error)
        brokers.close()
    return scenario.result


def _run_existing(args: argparse.Namespace, opts: LoadOptions, run_dir: Path, command: str,
                  workload: Any) -> Any:
    from kombu.utils.url import maybe_sanitize_url

    from celery_chaos.checks.verdict import Verdict, check_history
    from celery_chaos.deployment.sampler import QueueDepthSampler
    from celery_chaos.history.schema import Kind
    from celery_chaos.history.store import HistoryWriter, read_history
    from celery_chaos.results import ScenarioResult, write_json
    from celery_chaos.runner.app import AppUnderTest
    from celery_chaos.runner.scenario import process_env

    queues = AppUnderTest.resolve(args.app, workload).queues  # task_routes' queues too
    sdir = run_dir / "scenarios" / "load"
    hist, logs = sdir / "history", sdir / "logs"
    hist.mkdir(parents=True)
    logs.mkdir()
    url = str(maybe_sanitize_url(args.broker_url))
    kind = "redis" if args.broker_url.startswith(("redis", "rediss")) else "rabbitmq"
    writer = HistoryWriter(hist, "harness", "harness")
    writer.write(Kind.SCENARIO, name="load", phase="start",
                 detail={"broker": kind, "broker_url": url, "settings": opts.settings,
                         "app": args.app, "existing": True})
    env = {
        **process_env(args.app, args.broker_url, opts.settings, hist.resolve(),
                      result_backend=args.result_backend),
        **opts.env,
    }
    started = time.monotonic()
    result = ScenarioResult(
        name="load", description=f"celery-chaos load against {url}: {command}",
        broker=kind, settings=opts.settings, expect="unknown",
        history_dir=str(hist), log_dir=str(logs),
        deployment={"broker": kind, "broker_url": url, "existing": True, "app": args.app,
                    "seed": args.seed,
                    "loads": [{"users": opts.users, "rate": opts.rate,
                               "duration_s": opts.duration, "seed": args.seed}]},
    )
    sampler = QueueDepthSampler(writer, args.broker_url, queues, target=kind).start()
    run = _load_run(args, opts, workload, env, sdir / "load-1")
    try:
        _start(run, hist)
        run.wait()
    except KeyboardInterrupt:
        result.error = "interrupted"
    except Exception as exc:  # noqa: BLE001 - recorded in the report, never a traceback
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        run.stop()
        sampler.stop()
    writer.write(Kind.SCENARIO, name="load", phase="end")
    invariants = check_history(read_history(hist))
    result.invariants = invariants
    result.verdict = Verdict.combine(i.verdict for i in invariants)
    result.checked = True
    stats = run.stats()
    result.metrics = {"wall_s": round(time.monotonic() - started, 2),
                      "locust_1": {k: v for k, v in stats.items() if k != "by_task"}}
    write_json(sdir / "result.json", result.model_dump(mode="json"))
    return result


EXISTING_NOTE = (
    "Existing deployment: the harness ran only Locust and the publisher-side recorder. No "
    "fault was injected and no drain was run, because the harness does not own these "
    "workers: it cannot tell a lost task from one still queued, so the verdict is unknown "
    "by design. The charts show the publish side and the broker's queue depth."
)


def main(args: argparse.Namespace) -> int:
    """Run ``celery-chaos load``; return the exit code (0, 1 or 2)."""
    from celery_chaos.checks.queue import QueueCounts
    from celery_chaos.load.workload import load_workload
    from celery_chaos.report.html import write_index
    from celery_chaos.results import (
        RunVerdict,
        exit_code_for,
        new_run_dir,
        run_verdict,
        versions,
        write_json,
    )
    from celery_chaos.runner.app import SAMPLE_WORKLOAD as DEFAULT_WORKLOAD
    from celery_chaos.runner.app import AppUnderTest

    opts = validate(args)
    command = "celery-chaos load " + " ".join(shlex.quote(a) for a in args.argv)
    # Bad input fails here, before a run directory exists.
    workload = load_workload(args.workload or DEFAULT_WORKLOAD)
    if opts.existing:
        try:
            workload = workload.render({})  # no local services: no placeholders
        except UsageError as exc:
            raise UsageError(
                f"{exc.args[0].split(';')[0]}: against an existing deployment only a workload "
                "without {placeholders} works (pass --workload FILE)"
            ) from None
    spec = None if opts.existing else scenario_spec(args, opts, f"celery-chaos load: {command}")
    AppUnderTest.resolve(args.app, workload)  # the app imports and registers every task named
    run_dir = new_run_dir(args.reports)
    started = _now()
    print(f"celery-chaos: load run in {run_dir}", flush=True)
    if spec is None:
        result = _run_existing(args, opts, run_dir, command, workload)
    else:
        for step in spec.schedule.steps:
            assert step.id is not None
            print(f"celery-chaos: schedule {opts.fault_texts[step.id]}: {step.do.describe()} "
                  f"at {step.when.at or 0:g}s"
                  + (f" for {step.duration:g}s" if step.duration else ""), flush=True)
        result = _run_local(args, opts, spec, run_dir, workload)
    queue = result.queue
    counts = queue.counts if queue is not None else QueueCounts()
    if result.checked and not counts.attempted and not result.error:
        log = run_dir / "scenarios" / "load" / "load-1" / "locust.log"
        result.error = f"the load published no task, so nothing is proven: see {log}"
    results = [result]
    verdict, as_expected = run_verdict(results)
    code = exit_code_for(results)
    run = RunVerdict(
        run_id=run_dir.name, started=started, finished=_now(), verdict=verdict,
        as_expected=as_expected, exit_code=code, versions=versions(), scenarios=results,
        kind="load", command=command, notes=[EXISTING_NOTE] if opts.existing else [],
    )
    write_json(run_dir / "verdict.json", run.model_dump(mode="json"))
    page = write_index(run_dir, run)
    advice = drain_advice(result, opts.duration, opts.drain_timeout, run_dir)
    if advice:
        print(f"celery-chaos: {advice}", flush=True)
    print(
        f"celery-chaos: verdict {verdict.value}"
        f"{' (as declared)' if as_expected else ''}: published {counts.acknowledged}, "
        f"completed {counts.completed}, lost {counts.lost}; report {page}"
        + (f"; error: {result.error}" if result.error else ""),
        flush=True,
    )
    return code
