"""Benchmarks of the walking skeleton (not run by CI; figures go in the closing note).

1. Wall time of each worker-kill scenario (``scenarios/test_worker_kill.py``), from the
   scenarios' own ``result.json`` and pytest's per-test durations. Target: <= 20 s each.
2. The recorder's overhead: worker throughput (tasks/s) with the history recorder on and
   off, in one run, on the same private Redis broker. Target: <= 5 %. The two workers run
   side by side over the same window (paired rounds), so the machine's noise hits both.

Run: ``.venv/bin/python bench/bench_skeleton.py [--tasks 5000] [--rounds 5] [--skip-scenarios]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from celery import Celery

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from celery_chaos.deployment.brokers import RedisServer  # noqa: E402
from celery_chaos.deployment.processes import ManagedProcess, kill_all  # noqa: E402


def scenario_times() -> list[tuple[str, float, float, float]]:
    """Run the kill scenarios once; return (name, scenario wall s, pytest call+setup s, shared
    broker start s: the session's, paid by the first scenario and not in its wall time)."""
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            str(ROOT / "scenarios" / "test_worker_kill.py"),
            "-q",
            "-p",
            "no:cacheprovider",
            "--chaos-reports",
            str(Path(tmp) / "reports"),
            f"--junitxml={junit}",
        ]
        subprocess.run(cmd, cwd=ROOT, check=False, capture_output=True)
        (run_dir,) = [p.parent for p in (Path(tmp) / "reports").glob("*/verdict.json")]
        verdict = json.loads((run_dir / "verdict.json").read_text())
        import xml.etree.ElementTree as ET

        junit_times = {
            tc.get("name"): float(tc.get("time", 0)) for tc in ET.parse(junit).iter("testcase")
        }
        return [
            (
                s["name"],
                s["metrics"].get("wall_s", float("nan")),
                junit_times.get(s["name"], 0.0),
                s["metrics"].get("shared_brokers_start_s", 0.0),
            )
            for s in verdict["scenarios"]
        ]


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants."""
    main = psutil.Process(pid)
    total = 0.0
    for p in [main, *main.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def _worker(
    name: str, broker: str, queue: str, record: bool, run_dir: Path, prefix: tuple[str, ...] = ()
) -> ManagedProcess:
    """Start a prefork worker (-c 2) of the small user app on ``queue``, recording or not;
    ``prefix`` wraps the command (Valgrind)."""
    env = {
        "CHAOS_APP": "tests.userapp.app:app",
        "CHAOS_BROKER_URL": broker,
        "CHAOS_RESULT_BACKEND": "",
        "CHAOS_CONF": json.dumps(
            {"task_acks_late": True, "task_ignore_result": True, "worker_prefetch_multiplier": 16}
        ),
        "CHAOS_NODE_NAME": f"{name}@chaos",
        "PYTHONPATH": str(ROOT),
    }
    if record:
        env["CHAOS_HISTORY_DIR"] = str(run_dir / f"history-{time.monotonic_ns()}")
    cmd = [
        *prefix, sys.executable, "-m", "celery",
        "-A", "celery_chaos.deployment.celery_app:app", "worker",
        "-n", f"{name}@chaos", "-Q", queue, "-c", "2", "-P", "prefork",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO",
    ]  # fmt: skip
    proc = ManagedProcess(name, cmd, run_dir, env=env)
    proc.start()
    return proc


def _fill(redis: RedisServer, n: int, queues: list[str]) -> str:
    """Empty the Redis broker, queue ``n`` trivial tasks on each of ``queues``; return its URL."""
    broker = redis.url(0)
    client = Celery("bench", broker=broker)
    redis.flushall()
    with client.producer_or_acquire() as producer:
        for i in range(n):
            for queue in queues:
                client.send_task("userapp.add", args=[i, 1], producer=producer, queue=queue)
    return broker


def _paired_round(redis: RedisServer, n: int, run_dir: Path, on_first: bool) -> dict[str, float]:
    """Run a recording and a non-recording worker side by side on ``n`` tasks each.

    Both queues are filled into side lists while the workers start, then moved into place in
    one MULTI/EXEC, so both start on the same instant. The clock stops when the first queue is
    empty: over that common window both workers had the same machine, so whatever else the
    machine was doing (a noisy neighbour, CPU steal) hits both alike. Returns each side's
    tasks/s and CPU seconds per 1000 tasks over the window.
    """
    broker = _fill(redis, n, ["fill-on", "fill-off"])
    order = [True, False] if on_first else [False, True]
    procs = {
        rec: _worker(f"bench-{'on' if rec else 'off'}", broker, f"q-{'on' if rec else 'off'}",
                     rec, run_dir)
        for rec in order
    }
    try:
        for proc in procs.values():
            proc.wait_ready(lambda p=proc: "ready." in p.log_path.read_text(errors="replace"),
                            timeout=60)
        with redis.client(0) as r:
            cpu0 = {rec: _cpu_s(p.pid) for rec, p in procs.items() if p.pid}
            pipe = r.pipeline(transaction=True)
            pipe.rename("fill-on", "q-on")
            pipe.rename("fill-off", "q-off")
            pipe.execute()
            t0 = time.monotonic()
            while r.llen("q-on") and r.llen("q-off"):
                if not all(p.is_running() for p in procs.values()):
                    raise RuntimeError(f"a bench worker exited; see {run_dir}")
                time.sleep(0.005)
            elapsed = time.monotonic() - t0
            cpu = {rec: _cpu_s(p.pid) - cpu0[rec] for rec, p in procs.items() if p.pid}
            # done = taken off the queue and no longer waiting in the worker's prefetch
            left = {True: r.llen("q-on"), False: r.llen("q-off")}
        # messages a worker holds (prefetched, unacked) are counted as not done
        unacked = _unacked_by_queue(redis)
    finally:
        for proc in procs.values():
            proc.stop(timeout=10)
    out: dict[str, float] = {}
    for rec in (True, False):
        side = "on" if rec else "off"
        done = n - left[rec] - unacked.get(f"fill-{side}", 0) - unacked.get(f"q-{side}", 0)
        out[f"rate_{side}"] = done / elapsed
        out[f"cpu_{side}"] = 1000 * cpu[rec] / max(done, 1)
    return out


def _unacked_by_queue(redis: RedisServer) -> dict[str, int]:
    """How many messages each queue has delivered but not yet acknowledged (Redis transport)."""
    counts: dict[str, int] = {}
    with redis.client(0) as r:
        for raw in r.hvals("unacked"):
            with contextlib.suppress(ValueError, TypeError, IndexError):
                routing_key = json.loads(raw)[2]
                counts[routing_key] = counts.get(routing_key, 0) + 1
    return counts


def recorder_overhead(tasks: int, rounds: int) -> list[dict[str, float]]:
    """Paired rounds of a recording and a non-recording worker side by side."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        redis = RedisServer(run_dir).start()
        try:
            _paired_round(redis, 200, run_dir, True)  # warm-up (imports, page cache)
            return [_paired_round(redis, tasks, run_dir, i % 2 == 0) for i in range(rounds)]
        finally:
            redis.stop()
            kill_all()


def _instructions(redis: RedisServer, n: int, record: bool, run_dir: Path) -> int:
    """Instructions a whole worker (main process and pool children) executes to start, drain
    ``n`` queued trivial tasks and stop, counted by Valgrind (cachegrind, no cache model)."""
    broker = _fill(redis, n, ["q"])
    name = f"vg-{'on' if record else 'off'}-{n}"
    out = run_dir / name
    out.mkdir()
    valgrind = (
        "valgrind", "--tool=cachegrind", "--cache-sim=no", "--branch-sim=no",
        f"--cachegrind-out-file={out}/cg.%p",
    )  # fmt: skip
    proc = _worker(name, broker, "q", record, run_dir, valgrind)
    try:
        with redis.client(0) as r:
            deadline = time.monotonic() + 60 + n * 0.2
            while r.llen("q") or r.hlen("unacked"):
                if not proc.is_running() or time.monotonic() > deadline:
                    raise RuntimeError(f"valgrind worker did not drain; see {proc.log_path}")
                time.sleep(0.05)
    finally:
        proc.stop(timeout=300)
    total = 0
    for f in out.glob("cg.*"):
        for line in f.read_text().splitlines():
            if line.startswith("summary:"):
                total += int(line.split()[1])
    if not total:
        raise RuntimeError(f"no cachegrind summary in {out}")
    return total


def instruction_overhead(small: int, large: int) -> tuple[float, float]:
    """Instructions per task with recording off and on: the difference between a run of
    ``large`` and a run of ``small`` tasks, so start-up and shutdown cancel out."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        redis = RedisServer(run_dir).start()
        try:
            per_task = []
            for record in (False, True):
                lo = _instructions(redis, small, record, run_dir)
                hi = _instructions(redis, large, record, run_dir)
                per_task.append((hi - lo) / (large - small))
            return per_task[0], per_task[1]
        finally:
            redis.stop()
            kill_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-scenarios", action="store_true")
    parser.add_argument(
        "--instructions", type=int, nargs=2, default=(200, 1200), metavar=("SMALL", "LARGE"),
        help="task counts of the two Valgrind runs a mode (0 0 skips them)",
    )
    args = parser.parse_args()

    if not args.skip_scenarios:
        print("worker-kill scenarios (target <= 20 s each)")
        print(f"  {'scenario':62} {'wall s':>7} {'pytest s':>9} {'shared brokers s':>17}")
        for name, wall, total, shared in scenario_times():
            print(f"  {name:62} {wall:7.1f} {total:9.1f} {shared:17.1f}")
    results = recorder_overhead(args.tasks, args.rounds)
    tput = [100 * (1 - r["rate_on"] / r["rate_off"]) for r in results]
    cpu = [100 * (r["cpu_on"] / r["cpu_off"] - 1) for r in results]
    print(
        f"\nrecorder overhead, {args.tasks} trivial tasks a side x {args.rounds} paired rounds: "
        "a recording and a non-recording prefork worker (-c 2) side by side, one Redis broker"
    )
    print("  round  off tasks/s  on tasks/s  overhead   CPU off s/1k  CPU on s/1k  CPU overhead")
    for i, (r, t, c) in enumerate(zip(results, tput, cpu, strict=True), 1):
        print(
            f"  {i:5d}  {r['rate_off']:11.0f}  {r['rate_on']:10.0f}  {t:7.1f} %  "
            f"{r['cpu_off']:12.3f}  {r['cpu_on']:11.3f}  {c:10.1f} %"
        )
    print(f"  throughput overhead, median of rounds: {statistics.median(tput):6.1f} %  "
          "(target <= 5 %)")
    print(f"  CPU overhead, median of rounds:        {statistics.median(cpu):6.1f} %")
    small, large = args.instructions
    if large > small > 0 and shutil.which("valgrind"):
        off, on = instruction_overhead(small, large)
        print(
            f"\nrecorder overhead in instructions per task (Valgrind; runs of {large} minus "
            f"{small} tasks, one worker -c 2): the same on any machine, noise or not"
        )
        print(f"  recording off: {off / 1e6:8.3f} M instructions/task")
        print(f"  recording on : {on / 1e6:8.3f} M instructions/task")
        print(f"  overhead     : {100 * (on / off - 1):6.1f} %  (target <= 5 %)")
    elif large > small > 0:
        print("\n(valgrind not installed: no instruction count; apt install valgrind)")

if __name__ == "__main__":
    main()
