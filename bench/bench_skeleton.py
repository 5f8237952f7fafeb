"""Benchmarks of the walking skeleton (not run by CI; figures go in the closing note).

1. Wall time of each worker-kill scenario (``scenarios/test_worker_kill.py``), from the
   scenarios' own ``result.json`` and pytest's per-test durations. Target: <= 20 s each.
2. The recorder's overhead: worker throughput (tasks/s) with the history recorder on and
   off, in one run, on the same private Redis broker. Target: <= 5 %.

Run: ``.venv/bin/python bench/bench_skeleton.py [--tasks 5000] [--rounds 5] [--skip-scenarios]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
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

from harness.deployment.brokers import RedisServer  # noqa: E402
from harness.deployment.processes import ManagedProcess, kill_all  # noqa: E402


def scenario_times() -> list[tuple[str, float, float]]:
    """Run the kill scenarios once; return (name, scenario wall s, pytest call+setup s)."""
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
            (s["name"], s["metrics"].get("wall_s", float("nan")), junit_times.get(s["name"], 0.0))
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


def _drain_rate(redis: RedisServer, n: int, record: bool, run_dir: Path) -> tuple[float, float]:
    """Worker throughput on ``n`` trivial tasks, from the moment they appear to an empty queue,
    and the worker's CPU seconds per 1000 tasks over the same span.

    The tasks are pre-filled into a side list while the worker starts, then moved into its
    queue with one atomic RENAME, so neither publishing nor worker start-up is timed. CPU time
    (main process and pool children) is far steadier than throughput on a shared machine.
    """
    broker = redis.url(0)
    client = Celery("bench", broker=broker)
    client.conf.task_default_queue = "bench-fill"
    redis.flushall()
    with client.producer_or_acquire() as producer:
        for i in range(n):
            client.send_task("userapp.add", args=[i, 1], producer=producer)
    env = {
        "CHAOS_APP": "tests.userapp.app:app",
        "CHAOS_BROKER_URL": broker,
        "CHAOS_RESULT_BACKEND": "",
        "CHAOS_CONF": json.dumps(
            {"task_acks_late": True, "task_ignore_result": True, "worker_prefetch_multiplier": 16}
        ),
        "CHAOS_NODE_NAME": "bench@chaos",
        "PYTHONPATH": str(ROOT),
    }
    if record:
        env["CHAOS_HISTORY_DIR"] = str(run_dir / f"history-{time.monotonic_ns()}")
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "harness.deployment.celery_app:app",
        "worker",
        "-n",
        "bench@chaos",
        "-Q",
        "bench",
        "-c",
        "2",
        "-P",
        "prefork",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-l",
        "INFO",
    ]
    proc = ManagedProcess(f"bench-worker-{int(record)}", cmd, run_dir, env=env)
    proc.start()
    proc.wait_ready(lambda: "ready." in proc.log_path.read_text(errors="replace"), timeout=60)
    assert proc.pid is not None
    with redis.client(0) as r:
        cpu0 = _cpu_s(proc.pid)
        t0 = time.monotonic()
        r.rename("bench-fill", "bench")
        while r.llen("bench") or r.hlen("unacked"):
            if not proc.is_running():
                raise RuntimeError(f"bench worker exited; see {proc.log_path}")
            time.sleep(0.005)
        elapsed = time.monotonic() - t0
        cpu = _cpu_s(proc.pid) - cpu0
    proc.stop(timeout=10)
    return n / elapsed, 1000 * cpu / n


def recorder_overhead(
    tasks: int, rounds: int
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(throughput, CPU s per 1000 tasks) with recording off and on, interleaved."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        redis = RedisServer(run_dir).start()
        try:
            _drain_rate(redis, 200, False, run_dir)  # warm-up (imports, page cache)
            off, on = [], []
            for _ in range(rounds):
                off.append(_drain_rate(redis, tasks, False, run_dir))
                on.append(_drain_rate(redis, tasks, True, run_dir))
            return off, on
        finally:
            redis.stop()
            kill_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-scenarios", action="store_true")
    args = parser.parse_args()

    if not args.skip_scenarios:
        print("worker-kill scenarios (target <= 20 s each)")
        print(f"  {'scenario':62} {'wall s':>7} {'pytest s':>9}")
        for name, wall, total in scenario_times():
            print(f"  {name:62} {wall:7.1f} {total:9.1f}")
    off, on = recorder_overhead(args.tasks, args.rounds)
    rate_off, rate_on = [r for r, _ in off], [r for r, _ in on]
    cpu_off, cpu_on = [c for _, c in off], [c for _, c in on]
    m_off, m_on = statistics.median(rate_off), statistics.median(rate_on)
    c_off, c_on = statistics.median(cpu_off), statistics.median(cpu_on)
    print(
        f"\nrecorder overhead, {args.tasks} trivial tasks x {args.rounds} rounds, "
        "1 prefork worker (-c 2), Redis broker"
    )
    for label, med, rates in (("off", m_off, rate_off), ("on ", m_on, rate_on)):
        rounds = ", ".join(f"{x:.0f}" for x in rates)
        print(f"  recording {label}: {med:8.0f} tasks/s  (rounds: {rounds})")
    print(f"  throughput overhead: {100 * (1 - m_on / m_off):6.1f} %  (target <= 5 %)")
    print(f"  worker CPU off: {c_off:.3f} s per 1000 tasks  "
          f"(rounds: {', '.join(f'{x:.3f}' for x in cpu_off)})")
    print(f"  worker CPU on : {c_on:.3f} s per 1000 tasks  "
          f"(rounds: {', '.join(f'{x:.3f}' for x in cpu_on)})")
    print(f"  CPU overhead  : {100 * (c_on / c_off - 1):6.1f} %  (target <= 5 %)")


if __name__ == "__main__":
    main()
