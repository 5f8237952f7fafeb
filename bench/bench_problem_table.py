"""Wall time of the problem-table scenarios: time limits, retries, broker restarts.

Runs ``scenarios/test_time_limits.py``, ``test_retries.py`` and ``test_broker_restart.py``
once through pytest into a temporary run directory, then prints, per scenario, its verdict,
what it expected, its own wall time (``metrics.wall_s`` in its ``result.json``: deploy to
check) and pytest's setup+call+teardown time. Target: <= 20 s each, ~3 min in all.

Run: ``.venv/bin/python bench/bench_problem_table.py [-k EXPR] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = ("test_time_limits.py", "test_retries.py", "test_broker_restart.py")



def _scenario_name(test: str) -> str:
    """``test_beat[one_beat_fires_every_tick_once]`` -> the catalog name in brackets."""
    return test.split("[", 1)[1][:-1] if test.endswith("]") and "[" in test else test

def run(reports: Path, select: str | None) -> tuple[int, float, Path]:
    """Run the scenarios; return (pytest exit code, total seconds, junit path)."""
    junit = reports / "junit.xml"
    cmd = [
        sys.executable, "-m", "pytest", *(str(ROOT / "scenarios" / f) for f in FILES),
        "-q", "-p", "no:cacheprovider", "--chaos-reports", str(reports / "runs"),
        f"--junitxml={junit}",
    ]
    if select:
        cmd += ["-k", select]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, check=False, capture_output=True, text=True)
    total = time.monotonic() - t0
    if proc.returncode not in (0, 1):
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
    return proc.returncode, total, junit


def pytest_times(junit: Path) -> dict[str, float]:
    """Per test name: pytest's reported time (setup + call + teardown)."""
    times: dict[str, float] = defaultdict(float)
    if junit.exists():
        for case in ET.parse(junit).iter("testcase"):
            times[_scenario_name(case.get("name", ""))] += float(case.get("time", 0))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", dest="select", help="pytest -k expression")
    parser.add_argument("--keep", type=Path, help="keep the run directory here")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-problem-table-"))
    try:
        code, total, junit = run(tmp, args.select)
        junit_times = pytest_times(junit)
        rows = []
        for path in sorted((tmp / "runs").glob("*/scenarios/*/result.json")):
            res = json.loads(path.read_text())
            rows.append((res["name"], res.get("verdict"), res.get("expect"),
                         res.get("metrics", {}).get("wall_s"), junit_times.get(res["name"])))
        width = max((len(r[0]) for r in rows), default=20)
        print(f"{'scenario':<{width}}  verdict  expect   wall_s  pytest_s")
        for name, verdict, expect, wall, pyt in rows:
            wall_s = f"{wall:6.1f}" if isinstance(wall, (int, float)) else "     ?"
            pyt_s = f"{pyt:8.1f}" if pyt is not None else "       ?"
            print(f"{name:<{width}}  {verdict!s:<7}  {expect!s:<7} {wall_s}  {pyt_s}")
        walls = [r[3] for r in rows if isinstance(r[3], (int, float))]
        print(f"{len(rows)} scenarios, sum of wall_s {sum(walls):.1f} s, "
              f"max {max(walls, default=0):.1f} s; pytest total {total:.1f} s (exit {code})")
        if args.keep:
            shutil.copytree(tmp / "runs", args.keep, dirs_exist_ok=True)
        return code
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
