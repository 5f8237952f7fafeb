"""Benchmark of ``celery-chaos analyze`` on a large history (not run by CI).

Writes the synthetic run of ``bench/bench_report.py`` (a publisher, two workers, a worker
kill under early ack: 5 records a task, one task lost, a complete drain) unless ``--run``
names one already written, then runs ``celery-chaos analyze RUN_DIR`` ``--rounds`` times as
a child process and reads each child's wall time and peak RSS (``wait4``).

Targets: 200,000 tasks (1,000,000 records) in at most 10 s (the median of the rounds) and
1 GiB. The history is streamed (``celery_chaos.history.store.open_history``) and the checker
keeps one int of state a task id, so memory grows with the task ids (about 180 bytes each),
not with the records: ``--tasks 1000000`` (5,000,000 records) must stay under the same
1 GiB, and its time is judged as linear (10 s a million records). The verdict must be the
declared one (exit 0: ``invalid``, the lost task found).

Run: ``.venv/bin/python bench/bench_analyze.py [--tasks 200000] [--rounds 3] [--run DIR]
[--keep DIR]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from celery_chaos.report.synthetic import SyntheticSpec, make_run  # noqa: E402

TIME_LIMIT_S = 10.0  # a million records
RSS_LIMIT = 1 << 30  # bytes


def analyze_once(run_dir: Path) -> tuple[float, int, int, str]:
    """One ``celery-chaos analyze`` child: (wall seconds, peak RSS in bytes, exit code,
    its first output line)."""
    cmd = [sys.executable, "-m", "celery_chaos.cli", "analyze", str(run_dir)]
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert child.stdout is not None
    out = child.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t0
    child.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss * 1024, child.returncode, (out.splitlines() or [""])[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=200_000)
    ap.add_argument("--rate", type=float, default=500.0, help="publishes per second")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--run", type=Path, help="analyze this run directory (nothing written)")
    ap.add_argument("--keep", type=Path, help="write the run here and keep it")
    args = ap.parse_args()
    root: Path | None = None
    if args.run is not None:
        run_dir = args.run
    else:
        root = args.keep or Path(tempfile.mkdtemp(prefix="bench-analyze-"))
        spec = SyntheticSpec(tasks=args.tasks, rate=args.rate, runtime_s=0.004,
                             acks_late=False)
        t0 = time.perf_counter()
        run_dir, _ = make_run(root, {"early_ack_kill": spec}, write_report=False)
        print(f"run written in {time.perf_counter() - t0:.1f} s: {run_dir}")
    history = list(run_dir.glob("scenarios/*/history/*.jsonl"))
    lines = 0
    for path in history:
        with path.open("rb") as fh:
            lines += sum(1 for _ in fh)
    size = sum(p.stat().st_size for p in history)
    print(f"history: {lines} lines, {size / 1e6:.1f} MB in {len(history)} files")
    limit = TIME_LIMIT_S * max(1.0, lines / 1_000_000)
    walls: list[float] = []
    peaks: list[int] = []
    ok = True
    for i in range(args.rounds):
        wall, peak, code, first = analyze_once(run_dir)
        walls.append(wall)
        peaks.append(peak)
        print(f"round {i + 1}: {wall:.2f} s, peak RSS {peak / 2**20:.0f} MiB, exit {code}: "
              f"{first}")
        ok = ok and code == 0
    print(f"analyze: median {statistics.median(walls):.2f} s (min {min(walls):.2f}, max "
          f"{max(walls):.2f}; limit {limit:.0f} s); peak RSS max "
          f"{max(peaks) / 2**20:.0f} MiB (limit {RSS_LIMIT / 2**20:.0f} MiB)")
    ok = ok and statistics.median(walls) <= limit and max(peaks) <= RSS_LIMIT
    print("PASS" if ok else "FAIL")
    if root is not None and args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
