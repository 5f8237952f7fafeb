"""Synthetic histories and run directories, for the report's tests and its benchmark.

:func:`write_history` writes a history that looks like a real one (a publisher, two
workers with pool children, the harness with a worker kill, queue-depth samples and a
drain) without any broker; :func:`make_run` judges it with the real checker and writes a
run directory (``verdict.json`` and the report) around it.
"""

from __future__ import annotations

import json
import random
import uuid
from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from celery_chaos.checks.verdict import Verdict, check_history
from celery_chaos.history.store import open_history
from celery_chaos.results import (
    RunVerdict,
    ScenarioResult,
    exit_code_for,
    new_run_dir,
    run_verdict,
    versions,
    write_json,
)

NS = 1_000_000_000
#: Planted in task args and exception messages: a report must show it as text.
TASKS = "celery_chaos.sample_app.tasks"
HOSTILE = "<script>window.__pwned = 1; console.error('pwned')</script>"


@dataclass
class SyntheticSpec:
    """What :func:`write_history` generates."""

    tasks: int = 200
    rate: float = 50.0  # publishes per second
    acks_late: bool = True  # False: the tasks running on the killed worker are lost
    kill_at: float | None = 0.4  # fraction of the publishing period; None: no fault
    runtime_s: float = 0.05
    hostile: bool = True  # plant HOSTILE in a task's args and an exception message
    seed: int = 1
    drain_complete: bool = True


def write_history(directory: Path, spec: SyntheticSpec) -> dict[str, Any]:
    """Write a history under ``directory``; return what was planted (ids lost, hit, ...)."""
    rnd = random.Random(spec.seed)
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}  # name -> its open file: lines go out as they are made
    mono0 = 1_000 * NS
    wall0 = 1_790_000_000 * NS

    def rec(fname: str, kind: str, t: float, pid: int, host: str, role: str, **kw: Any) -> None:
        r = {
            "v": 1,
            "kind": kind,
            "wall_ns": wall0 + int(t * NS),
            "mono_ns": mono0 + int(t * NS),
            "pid": pid,
            "host": host,
            "role": role,
        }
        r.update({k: v for k, v in kw.items() if v is not None})
        fh = files.get(fname)
        if fh is None:
            fh = files[fname] = (directory / fname).open("w", encoding="utf-8")
        fh.write(json.dumps(r, separators=(",", ":")) + "\n")

    harness = "harness-harness-100.jsonl"
    pub = "publisher-publisher-200.jsonl"
    workers = {"w1@chaos": 300, "w2@chaos": 400}
    settings = {"task_acks_late": spec.acks_late, "task_reject_on_worker_lost": spec.acks_late}
    rec(harness, "scenario", 0.0, 100, "harness", "harness", name="synthetic", phase="start",
        detail={"broker": "rabbitmq", "settings": settings,
                "app": "celery_chaos.sample_app.app:app"})
    for i, (name, pid) in enumerate(workers.items()):
        t = 0.2 + 0.1 * i
        rec(f"worker-{name}-{pid}.jsonl", "deployment", t, pid, name, "worker",
            name="worker_ready", target=name)
        rec(harness, "deployment", t + 0.01, 100, "harness", "harness", name="worker_started",
            target=name, detail={"pid": pid, "children": [pid + 1, pid + 2]})

    start = 1.0
    period = spec.tasks / spec.rate
    kill_t = start + period * spec.kill_at if spec.kill_at is not None else None
    free_at = {("w1@chaos", 1): 0.0, ("w1@chaos", 2): 0.0, ("w2@chaos", 1): 0.0,
               ("w2@chaos", 2): 0.0}
    lost: list[str] = []
    hit: list[str] = []
    failed: list[str] = []
    queue_ready: list[tuple[float, int]] = []
    last_end = start
    forced = False
    for n in range(spec.tasks):
        tid = str(uuid.UUID(int=rnd.getrandbits(128)))
        t = start + n / spec.rate + rnd.random() * 0.002
        name = f"{TASKS}.send_email" if n % 3 else f"{TASKS}.generate_report"
        if spec.hostile and n == 7:
            name = f"{TASKS}.{HOSTILE}"  # a hostile task name, on the failing task
        args = repr([HOSTILE if spec.hostile and n == 5 else f"user{n}@example.test"])
        rec(pub, "invoke", t, 200, "publisher", "publisher", task_id=tid, task_name=name,
            queue="emails", args=args, kwargs="{}")
        lat = 0.001 + rnd.expovariate(1 / 0.003)
        rec(pub, "ok", t + lat, 200, "publisher", "publisher", task_id=tid, task_name=name,
            queue="emails", confirmed=True, latency_ns=int(lat * NS))
        slot = min(free_at, key=lambda k: max(free_at[k], t))
        begin = max(free_at[slot], t + lat + 0.002)
        if kill_t is not None and begin > kill_t and slot[0] == "w1@chaos":
            slot = min((k for k in free_at if k[0] == "w2@chaos"), key=lambda k: free_at[k])
            begin = max(free_at[slot], t + lat + 0.002)
        runtime = spec.runtime_s * (0.5 + rnd.random())
        if kill_t is not None and not forced and t >= kill_t - spec.runtime_s:
            forced = True  # make sure the kill lands on a running task
            slot = min((k for k in free_at if k[0] == "w1@chaos"), key=lambda k: free_at[k])
            begin = max(free_at[slot], t + lat + 0.002)
            runtime = max(runtime, kill_t - begin + 0.05)
        end = begin + runtime
        host, child = slot
        wpid = workers[host]
        wfile = f"worker-{host}-{wpid}.jsonl"
        cfile = f"worker-{host}-{wpid + child}.jsonl"
        rec(wfile, "received", begin - 0.001, wpid, host, "worker", task_id=tid, task_name=name,
            queue="emails", redelivered=False, retries=0, worker_pid=wpid)
        rec(cfile, "started", begin, wpid + child, host, "worker", task_id=tid, task_name=name,
            redelivered=False, retries=0, worker_pid=wpid)
        if kill_t is not None and host == "w1@chaos" and begin <= kill_t < end:
            hit.append(tid)
            if spec.acks_late:  # redelivered to w2
                w2 = min((k for k in free_at if k[0] == "w2@chaos"), key=lambda k: free_at[k])
                b2 = max(free_at[w2], kill_t + 0.05)
                e2 = b2 + runtime
                f2, c2 = f"worker-w2@chaos-{workers['w2@chaos']}.jsonl", w2[1]
                rec(f2, "received", b2 - 0.001, 400, "w2@chaos", "worker", task_id=tid,
                    task_name=name, redelivered=True, retries=0, worker_pid=400)
                rec(f"worker-w2@chaos-{400 + c2}.jsonl", "started", b2, 400 + c2, "w2@chaos",
                    "worker", task_id=tid, task_name=name, redelivered=True, retries=0,
                    worker_pid=400)
                rec(f"worker-w2@chaos-{400 + c2}.jsonl", "succeeded", e2, 400 + c2, "w2@chaos",
                    "worker", task_id=tid, task_name=name, runtime_s=round(runtime, 4))
                free_at[w2] = e2
                last_end = max(last_end, e2)
            else:
                lost.append(tid)
            free_at[slot] = float("inf")  # the killed worker takes nothing more
            continue
        if spec.hostile and n == 7:
            failed.append(tid)
            rec(cfile, "failed", end, wpid + child, host, "worker", task_id=tid, task_name=name,
                exc_type="ValueError", exc_message=f"bad input {HOSTILE}")
        else:
            rec(cfile, "succeeded", end, wpid + child, host, "worker", task_id=tid,
                task_name=name, runtime_s=round(runtime, 4))
        free_at[slot] = end
        last_end = max(last_end, end)
        queue_ready.append((t + lat, begin))
    if kill_t is not None:
        rec(harness, "fault", kill_t, 100, "harness", "harness", name="kill_worker",
            phase="start", target="w1@chaos", detail={"pid": 300, "signal": "SIGKILL"})
        rec(harness, "fault", kill_t + 0.02, 100, "harness", "harness", name="kill_worker",
            phase="end", target="w1@chaos", detail={"pid": 300, "signal": "SIGKILL"})
    # Queue depth samples every 0.5 s, on change: published (ok) and not yet taken.
    oks = sorted(ok for ok, _ in queue_ready)
    takes = sorted(b for _, b in queue_ready)
    t, last = start, None
    while t < last_end:
        ready = bisect_right(oks, t) - bisect_right(takes, t)
        if ready != last:
            rec(harness, "deployment", t, 100, "harness", "harness", name="queue_depth",
                target="rabbitmq", detail={"ready": {"emails": ready}})
            last = ready
        t += 0.5
    rec(harness, "drain", last_end + 3.0, 100, "harness", "harness", name="drain",
        detail={"complete": spec.drain_complete, "seconds": 3.0, "reason": "synthetic"})
    rec(harness, "scenario", last_end + 3.1, 100, "harness", "harness", name="synthetic",
        phase="end")
    for fh in files.values():
        fh.close()
    return {"lost": lost, "hit": hit, "failed": failed, "kill_t": kill_t}


def make_run(
    reports: Path,
    specs: dict[str, SyntheticSpec],
    *,
    write_report: bool = True,
) -> tuple[Path, RunVerdict]:
    """A run directory with one synthetic scenario per ``specs`` entry, judged and reported."""
    run_dir = new_run_dir(reports)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results = []
    for name, spec in specs.items():
        sdir = run_dir / "scenarios" / name
        write_history(sdir / "history", spec)
        (sdir / "logs").mkdir()
        history = open_history(sdir / "history")  # streamed: any number of tasks
        invariants = check_history(history)
        settings = {"task_acks_late": spec.acks_late,
                    "task_reject_on_worker_lost": spec.acks_late}
        result = ScenarioResult(
            name=name,
            description=f"synthetic: {spec.tasks} tasks, acks_late={spec.acks_late}",
            broker="rabbitmq",
            settings=settings,
            expect="valid" if spec.acks_late else "invalid",
            verdict=Verdict.combine(i.verdict for i in invariants),
            checked=True,
            invariants=invariants,
            metrics={"wall_s": 1.0},
            history_dir=str(sdir / "history"),
            log_dir=str(sdir / "logs"),
            deployment={
                "broker": "rabbitmq",
                "broker_version": "3.12.1",
                "workers": 2,
                "concurrency": 2,
                "pool": "prefork",
                "seed": spec.seed,
                "settings": {"acks_late": spec.acks_late,
                             "reject_on_worker_lost": spec.acks_late,
                             "prefetch_multiplier": 4, "confirm_publish": True},
            },
            faults=["kill_worker"] if spec.kill_at is not None else [],
        )
        write_json(sdir / "result.json", result.model_dump(mode="json"))
        results.append(result)
    verdict, as_expected = run_verdict(results)
    run = RunVerdict(
        run_id=run_dir.name,
        started=started,
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        verdict=verdict,
        as_expected=as_expected,
        exit_code=exit_code_for(results),
        versions=versions(),
        scenarios=results,
    )
    write_json(run_dir / "verdict.json", run.model_dump(mode="json"))
    if write_report:
        from celery_chaos.report.html import write_index

        write_index(run_dir, run)
    return run_dir, run
