"""``celery-chaos audit``: a fixed set of faults against a team's own app, its own
configuration, and the smallest fix the catalog proves safe, tried on their tasks.

For each fault (:data:`FAULTS`) a :class:`~celery_chaos.spec.model.ScenarioSpec` is built in code
with the catalog's shapes (the ``running`` trigger that strikes while tasks run) and run on
the app's configuration as it is: ``settings = {}``, only the brokers are the harness's
own, RabbitMQ or Redis after the scheme of the app's ``broker_url``. When the verdict is not
valid, the fault runs again with the catalog's fix (:func:`recommend`, reduced to what the
app does not already set by :func:`smallest_change`). The run directory gets the usual
``verdict.json`` and ``index.html`` of every scenario, plus ``audit.json`` and
``audit.html`` (:mod:`celery_chaos.report.audit`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from celery_chaos.checks.verdict import Verdict
from celery_chaos.errors import ChaosError, UsageError
from celery_chaos.report.audit import (
    AUDIT_FILE,
    AuditResult,
    AuditRow,
    AuditRun,
    Status,
    audit_exit_code,
    outcome_line,
    row_words,
    write_audit_page,
)
from celery_chaos.results import ScenarioResult, safe_name

#: The pick of worker_kill.yaml's Redis specs, for any broker: a task of w1 0.3-0.6 s into its run
#: (the RabbitMQ specs pick 0.1-0.2 s into their 0.4 s sample tasks). Not required:
#: a workload with no task that long never fires it, and the fault is then not applicable.
PICK_TIMEOUT_S = 20.0
PICK: dict[str, Any] = {
    "running": {"worker": "w1", "n": 1, "min_age": 0.3, "max_age": 0.6},
    "timeout": PICK_TIMEOUT_S,
    "required": False,
}
#: The grace of the orchestrator's stop: shorter than what is left of a picked task of 1 s.
TERMINATE_GRACE_S = 0.2
#: Celery's own settings for "a killed task comes back" (worker_kill.yaml's safe twins).
ACKS_LATE = {"task_acks_late": True, "task_reject_on_worker_lost": True}
#: Redis restores an unacknowledged message after the visibility timeout (1 h by default):
#: the re-run shortens it, as the catalog's Redis scenario does, only to see the return.
REDIS_OBSERVE = {"broker_transport_options": {"visibility_timeout": 6,
                                              "unacked_restore_interval": 1,
                                              "unacked_restore_throttle": 1}}


@dataclass(frozen=True)
class AuditFault:
    """One fault of the audit: its op, in words, and the catalog scenarios behind its fix."""

    name: str
    label: str
    do: dict[str, Any]
    what: str
    evidence: dict[str, list[str]] = field(default_factory=dict)  # broker -> catalog names


FAULTS: dict[str, AuditFault] = {
    f.name: f
    for f in (
        AuditFault(
            "worker_kill", "Worker killed mid-task",
            {"op": "kill_worker", "worker": "w1"},
            "SIGKILL of w1's main process (a node lost, a container killed) while w1 runs a "
            "task 0.3-0.6 s into its run",
            {"rabbitmq": ["rabbitmq_acks_late_survives_kill-main",
                          "rabbitmq_early_ack_loses_tasks-main"],
             "redis": ["redis_acks_late_recovers_after_visibility_timeout",
                       "redis_early_ack_loses_tasks"]},
        ),
        AuditFault(
            "pool_child_kill", "Pool child killed mid-task (the OOM killer)",
            {"op": "kill_pool_child", "worker": "w1"},
            "SIGKILL of the pool child running a task of w1 0.3-0.6 s into its run",
            {"rabbitmq": ["rabbitmq_acks_late_survives_kill-child",
                          "rabbitmq_early_ack_loses_tasks-child"]},
        ),
        AuditFault(
            "terminate", "Worker stopped with tasks still running (SIGTERM, then SIGKILL)",
            {"op": "terminate_worker", "worker": "w1", "grace_s": TERMINATE_GRACE_S},
            f"SIGTERM to w1 while it runs a task 0.3-0.6 s into its run, SIGKILL "
            f"{TERMINATE_GRACE_S:g} s later (an orchestrator's stop with tasks longer than "
            "its grace period)",
            {"rabbitmq": ["rabbitmq_terminate_acks_late_tasks_longer_than_grace_redelivered",
                          "rabbitmq_terminate_early_ack_tasks_longer_than_grace_lost"],
             "redis": ["redis_terminate_soft_shutdown_requeues_acks_late"]},
        ),
    )
}
#: The main load of every fault (worker_kill.yaml's), unless ``--tasks``/``--rate`` say more.
LOAD_TASKS, LOAD_RATE = 40, 20.0
WORKERS, CONCURRENCY = 2, 4
#: Seconds between two live progress lines of a scenario.
PROGRESS_S = 5.0


@dataclass(frozen=True)
class Recommendation:
    """The catalog's fix for a fault on a broker: settings, why, and what the re-run adds."""

    settings: dict[str, Any]
    why: str
    observe: dict[str, Any] = field(default_factory=dict)


def recommend(fault: str, broker: str) -> Recommendation:
    """The settings change the catalog proves safe for ``fault`` on ``broker``."""
    if fault not in FAULTS:
        raise UsageError(f"unknown audit fault {fault!r}: use {', '.join(FAULTS)}")
    why = ("with task_acks_late a task is acknowledged when it ends, not when it starts, so "
           "a task whose process dies goes back to the queue; task_reject_on_worker_lost "
           "makes Celery requeue it (instead of acknowledging it as failed with "
           "WorkerLostError) when the pool child running it dies")
    if broker == "redis":
        return Recommendation(
            dict(ACKS_LATE),
            why + "; on Redis the message returns only after broker_transport_options."
                  "visibility_timeout (1 h by default): keep it longer than your longest task",
            observe=REDIS_OBSERVE,
        )
    return Recommendation(dict(ACKS_LATE), why)


def smallest_change(fix: dict[str, Any], conf: dict[str, Any]) -> dict[str, Any]:
    """The part of ``fix`` the app's configuration ``conf`` does not already have (nested
    dicts compared key by key; Celery's ``None`` for a flag is ``False``)."""
    out: dict[str, Any] = {}
    for key, value in fix.items():
        have = conf.get(key)
        if isinstance(value, dict):
            sub = smallest_change(value, dict(have or {}))
            if sub:
                out[key] = sub
        elif (bool(have) if isinstance(value, bool) else have) != value:
            out[key] = value
    return out


def broker_of(url: str | None) -> str:
    """``rabbitmq`` or ``redis`` after the scheme of a ``broker_url`` (Celery's default,
    ``None``, is AMQP); a one-line :class:`UsageError` for any other transport."""
    scheme = (url or "amqp://").split("://", 1)[0].split("+")[-1].lower()
    if scheme in ("amqp", "amqps", "pyamqp", "librabbitmq"):
        return "rabbitmq"
    if scheme in ("redis", "rediss"):
        return "redis"
    raise UsageError(
        f"the app's broker_url uses {scheme!r}: the audit runs RabbitMQ (amqp://) or Redis "
        "(redis://) brokers only"
    )


def judge(
    result: ScenarioResult, *, fired: bool, reach: int, skip_reason: str = ""
) -> tuple[Status, str]:
    """A run's status and its reason: ``not_applicable`` when the trigger never fired;
    a valid verdict on a fault that touched no task is ``unknown``, never safe."""
    if result.error:
        return "error", result.error
    if not fired:
        return "not_applicable", skip_reason or "the fault never fired"
    if not result.checked:
        return "error", "the scenario stopped before its check ran"
    queue = result.queue
    v = result.verdict
    if v is Verdict.INVALID:
        problems = [p for i in result.invariants if i.verdict is Verdict.INVALID
                    for p in i.problems]
        return "unsafe", "; ".join(problems[:2])
    if v is Verdict.UNKNOWN:
        pending = queue.counts.pending if queue is not None else 0
        why = (f"{pending} acknowledged tasks had not completed when the drain ran out: they "
               "hung or wait for a redelivery" if pending else
               "; ".join(p for i in result.invariants for p in i.problems) or "no verdict")
        return "unknown", why
    if reach == 0:
        return "unknown", ("the fault touched no task, so nothing was tested: use a workload "
                           "with tasks of a second or more")
    return "safe", ""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def fault_spec(fault: AuditFault, broker: str, settings: dict[str, Any], name: str, *,
               tasks: int, rate: float, exactly_once: bool) -> Any:
    """The scenario of ``fault`` on the app's configuration with ``settings`` applied."""
    from celery_chaos.spec.model import parse_spec

    return parse_spec({
        "name": name,
        "description": f"celery-chaos audit: {fault.label.lower()}",
        "deployment": {"broker": broker, "workers": WORKERS, "concurrency": CONCURRENCY,
                       "settings": settings},
        "load": {"tasks": tasks, "rate": rate},
        "schedule": [{"id": "fault", "when": PICK, "do": fault.do}],
        "checks": {"exactly_once": exactly_once, "drain_timeout": 60},
    }, "celery-chaos audit")


def _reach(scenario_dir: Path, op: str) -> int:
    """Tasks the fault touched (what its worker held when it struck), as the report counts."""
    from celery_chaos.report.timeline import build_timeline, read_records

    try:
        records, torn = read_records(scenario_dir / "history")
        tl = build_timeline(records, torn)
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    return sum(len(f.touched) for f in tl.faults if f.name == op)


@dataclass
class _Ctx:
    run_dir: Path
    app: Any  # AppUnderTest
    brokers: Any  # SharedBrokers
    broker: str
    tasks: int
    rate: float
    exactly_once: bool
    results: list[ScenarioResult] = field(default_factory=list)


def _run_one(ctx: _Ctx, fault: AuditFault, settings: dict[str, Any], name: str) -> AuditRun:
    """Run one scenario of the audit; never raises a :class:`ChaosError` (recorded)."""
    from celery_chaos.runner.progress import Progress
    from celery_chaos.runner.run import NotApplicable, run_spec
    from celery_chaos.runner.scenario import Scenario

    spec = fault_spec(fault, ctx.broker, settings, name, tasks=ctx.tasks, rate=ctx.rate,
                      exactly_once=ctx.exactly_once)
    scenario = Scenario(name, ctx.run_dir, ctx.app, ctx.brokers, description=spec.description)
    error: str | None = None
    fired, skip = True, ""
    progress = Progress(name, scenario.tail, lambda line: print(line, flush=True),
                        interval=PROGRESS_S, phase=lambda: scenario.phase).start()
    try:
        run = run_spec(spec, scenario)
        win = run.windows.get("fault")
        if win is None or win.start_ns is None or win.detail.get("skipped"):
            fired = False
            skip = (f"no task of the workload ran on w1 for 0.3 s within {PICK_TIMEOUT_S:g} s "
                    "of the load: the workload has no task long enough for a fault to strike "
                    "it mid-run (tasks of a second or more are needed)")
    except NotApplicable as exc:
        fired, skip = False, str(exc)
    except ChaosError as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - recorded in the report, never a traceback
        error = f"{type(exc).__name__}: {exc}"
    finally:
        progress.stop()
        scenario.close(error=error)
    result = scenario.result
    ctx.results.append(result)
    index = len(ctx.results)
    reach = _reach(scenario.dir, str(fault.do["op"]))
    status, reason = judge(result, fired=fired, reach=reach, skip_reason=skip)
    queue = result.queue
    counts = queue.counts if queue is not None else None
    return AuditRun(
        scenario=name,
        dir=os.path.relpath(scenario.dir, ctx.run_dir),
        anchor=f"index.html#s{index}-{safe_name(result.name)}",
        settings=settings, verdict=result.verdict, status=status, reason=reason, reach=reach,
        acknowledged=counts.acknowledged if counts else 0,
        completed=counts.completed if counts else 0,
        lost=counts.lost if counts else 0,
        duplicated=counts.duplicated if counts else 0,
        pending=counts.pending if counts else 0,
        exactly_once=ctx.exactly_once,
        wall_s=float(result.metrics.get("wall_s") or 0.0),
        error=result.error,
    )


def audit_fault(ctx: _Ctx, fault: AuditFault, conf: dict[str, Any],
                say: Any = print) -> AuditRow:
    """Run ``fault`` on the app's configuration, then, if it was not safe, with the fix."""
    rec = recommend(fault.name, ctx.broker)
    row = AuditRow(fault=fault.name, label=fault.label,
                   what_ran=f"{fault.what}; {ctx.tasks} tasks of the workload at "
                            f"{ctx.rate:g}/s, {WORKERS} workers x {CONCURRENCY} processes",
                   status="unknown",
                   evidence_catalog=fault.evidence.get(ctx.broker, []))
    say(f"celery-chaos audit: {fault.name}: on your configuration ...")
    theirs = _run_one(ctx, fault, {}, f"{fault.name}-your-config")
    row.theirs, row.status, row.reason = theirs, theirs.status, theirs.reason
    # Lost, duplicated or hung (no verdict: tasks never completed): try the fix. A pass on a
    # fault that touched nothing, or an error, is not something a setting fixes.
    if theirs.status == "unsafe" or (theirs.status == "unknown"
                                     and theirs.verdict is Verdict.UNKNOWN):
        change = smallest_change(rec.settings, conf)
        row.why = rec.why
        if not change:
            row.fix_note = ("Your configuration already has what the catalog proves safe for "
                            f"this fault ({', '.join(rec.settings)}): per-task options "
                            "(@app.task(acks_late=...)) win over app settings; check them.")
        else:
            row.recommended, row.observe = change, dict(rec.observe)
            settings = {**change, **rec.observe}
            say(f"celery-chaos audit: {fault.name}: again with {', '.join(change)} ...")
            row.fixed = _run_one(ctx, fault, settings, f"{fault.name}-with-fix")
    say(f"celery-chaos audit: {row_words(row)}")
    return row


def _app_conf(app_spec: str) -> dict[str, Any]:
    """The app's own configuration, as a plain dict of the settings the audit compares."""
    from celery_chaos.deployment.app_loader import load_app

    conf = load_app(app_spec).conf
    keys = ("broker_url", "task_acks_late", "task_reject_on_worker_lost",
            "worker_prefetch_multiplier", "task_time_limit", "task_soft_time_limit",
            "broker_transport_options")
    return {k: conf.get(k) for k in keys}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``celery-chaos audit``."""
    p.add_argument("--chaos-app", required=True, help="your Celery app, package.module:app")
    p.add_argument("--chaos-workload", default=None,
                   help="workload YAML of your tasks (needed unless the app is the sample's)")
    p.add_argument("--reports", default=os.environ.get("CHAOS_REPORTS_DIR", "reports"),
                   help="where the run directory goes (default ./reports)")
    p.add_argument("--only", default="", help=f"faults to run, comma-separated (default all: "
                                              f"{', '.join(FAULTS)})")
    p.add_argument("--exactly-once", action="store_true",
                   help="count a task completed twice as a violation")
    p.add_argument("--tasks", default=str(LOAD_TASKS),
                   help=f"tasks published per fault (default {LOAD_TASKS})")
    p.add_argument("--rate", default=f"{LOAD_RATE:g}",
                   help=f"publishes per second (default {LOAD_RATE:g})")


def _number(text: str, option: str, cast: Any) -> Any:
    try:
        value = cast(text)
    except ValueError:
        raise UsageError(f"{option} {text!r}: not a number") from None
    if value <= 0:
        raise UsageError(f"{option} {text!r}: must be more than 0")
    return value


def selected(only: str) -> list[AuditFault]:
    """The faults ``--only`` names (all by default); a one-line error for an unknown one."""
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        raise UsageError(f"--only {', '.join(unknown)}: unknown fault; use "
                         f"{', '.join(FAULTS)}")
    return [FAULTS[n] for n in names] if names else list(FAULTS.values())


def main(args: argparse.Namespace) -> int:
    """Run ``celery-chaos audit``; return the exit code (0, 1 or 2)."""
    from celery_chaos.backends.local import SharedBrokers
    from celery_chaos.deployment.app_loader import DEFAULT_APP
    from celery_chaos.load.workload import load_workload
    from celery_chaos.report.html import write_index
    from celery_chaos.results import (
        RunVerdict,
        from_conf,
        new_run_dir,
        run_verdict,
        versions,
        write_json,
    )
    from celery_chaos.runner.app import SAMPLE_WORKLOAD, AppUnderTest

    # Bad input fails here, before a run directory exists.
    faults = selected(args.only)
    tasks = _number(args.tasks, "--tasks", int)
    rate = _number(args.rate, "--rate", float)
    if args.chaos_app != DEFAULT_APP and not args.chaos_workload:
        raise UsageError(f"--chaos-app {args.chaos_app} needs --chaos-workload FILE: the "
                         "tasks of yours to publish")
    workload = load_workload(args.chaos_workload or SAMPLE_WORKLOAD)
    app = AppUnderTest.resolve(args.chaos_app, workload)
    conf = _app_conf(args.chaos_app)
    broker = broker_of(conf["broker_url"])
    command = "celery-chaos audit " + " ".join(shlex.quote(a) for a in args.argv)
    run_dir = new_run_dir(args.reports)
    t0 = time.monotonic()
    transport = dict(conf.get("broker_transport_options") or {})
    values = {**conf, **{f"transport:{k}": v for k, v in transport.items()}}
    result = AuditResult(
        run_id=run_dir.name, command=command, app=args.chaos_app, broker=broker,
        workload=[t.model_dump(mode="json") for t in workload.tasks],
        app_settings=from_conf(values, broker), started=_now(),
    )
    print(f"celery-chaos audit: {args.chaos_app} on {broker}, faults "
          f"{', '.join(f.name for f in faults)}; run directory {run_dir}", flush=True)
    ctx = _Ctx(run_dir=run_dir, app=app, brokers=SharedBrokers(run_dir), broker=broker,
               tasks=tasks, rate=rate, exactly_once=args.exactly_once)
    try:
        for fault in faults:
            prior = next((r for r in result.rows if r.theirs is not None
                          and r.theirs.status == "not_applicable"), None)
            if prior is not None:  # every fault has the same `running` pick: none can fire
                result.rows.append(AuditRow(
                    fault=fault.name, label=fault.label, what_ran=fault.what,
                    status="not_applicable", reason=prior.reason))
                print(f"celery-chaos audit: {row_words(result.rows[-1])}", flush=True)
                continue
            result.rows.append(audit_fault(ctx, fault, conf,
                                           say=lambda line: print(line, flush=True)))
    except KeyboardInterrupt:
        result.error = "interrupted: the faults not listed did not run"
    finally:
        ctx.brokers.close()
    result.finished = _now()
    result.elapsed_s = round(time.monotonic() - t0, 1)
    result.exit_code = code = audit_exit_code(result.rows, result.error)
    page = run_dir / "audit.html"
    result.outcome = outcome_line(result, page)
    write_json(run_dir / AUDIT_FILE, result.model_dump(mode="json"))
    verdict, as_expected = run_verdict(ctx.results)
    run = RunVerdict(
        run_id=run_dir.name, started=result.started, finished=result.finished,
        verdict=verdict, as_expected=as_expected, exit_code=code, versions=versions(),
        scenarios=ctx.results, command=command,
        notes=[f"An audit of {args.chaos_app}: the scorecard is in audit.html. Every scenario "
               "declares valid: a configuration that loses tasks shows as not as declared."],
    )
    write_json(run_dir / "verdict.json", run.model_dump(mode="json"))
    write_index(run_dir, run)
    write_audit_page(run_dir, result)
    print(result.outcome, flush=True)
    return code
