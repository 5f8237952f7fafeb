"""Wall time of each beat scenario (``scenarios/test_beat.py``), with its beat numbers.

Runs the scenarios once with ``--chaos-reports`` into a temporary directory and prints, per
scenario, the verdict against the declared one, ``metrics.wall_s`` from its ``result.json``
(deploy to teardown of the scenario itself), pytest's call+setup+teardown time, and the beat
checker's numbers (ticks ok, extra fires, missing/dropped ticks, fail-over gap). Not run by CI.

Run: ``.venv/bin/python bench/bench_beat.py [-k EXPR] [--repeat N]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios" / "test_beat.py"



def _scenario_name(test: str) -> str:
    """``test_beat[one_beat_fires_every_tick_once]`` -> the catalog name in brackets."""
    return test.split("[", 1)[1][:-1] if test.endswith("]") and "[" in test else test

def run_once(expr: str | None) -> tuple[list[dict[str, Any]], dict[str, float], int, float]:
    """Run the beat scenarios; return their results, pytest times, exit code, total wall s."""
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [
            sys.executable, "-m", "pytest", str(SCENARIOS), "-q", "-p", "no:cacheprovider",
            "--chaos-reports", str(Path(tmp) / "reports"), f"--junitxml={junit}",
        ]
        if expr:
            cmd += ["-k", expr]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, check=False, capture_output=True, text=True)
        total = time.monotonic() - t0
        results = [
            json.loads(p.read_text())
            for p in sorted((Path(tmp) / "reports").glob("*/scenarios/*/result.json"))
        ]
        times: dict[str, float] = defaultdict(float)
        if junit.exists():
            for tc in ET.parse(junit).iter("testcase"):
                times[_scenario_name(tc.get("name", ""))] += float(tc.get("time", 0))
        if proc.returncode != 0:
            print(proc.stdout[-3000:], file=sys.stderr)
        return results, times, proc.returncode, total


def _beat_line(metrics: dict[str, Any]) -> str:
    beat = metrics.get("beat") or {}
    entry = (beat.get("entries") or {}).get("fast-report", {})
    parts = [
        f"ok {entry.get('ok', 0)}/{entry.get('ticks', 0)}",
        f"extra {beat.get('extra_fires', 0)}",
    ]
    lost = sum(entry.get(k, 0) for k in ("missing", "dropped", "late", "early"))
    if lost:
        parts.append(f"missing/dropped/late/early {lost}")
    if entry.get("coalesced"):
        parts.append(f"coalesced {entry['coalesced']}")
    gaps = [d["first_fire_s"] for d in beat.get("disruptions", []) if d.get("first_fire_s")]
    if gaps:
        parts.append("gap " + ",".join(f"{g:.2f}s" for g in gaps))
    for fault in beat.get("faults", []):
        parts.append(f"{fault['name']} ticks {fault['ticks']} resumed {fault['resumed_s']}s")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", dest="expr", default=None, help="pytest -k expression")
    parser.add_argument("--repeat", type=int, default=1, help="run the scenarios N times")
    args = parser.parse_args()
    for n in range(1, args.repeat + 1):
        results, times, code, total = run_once(args.expr)
        print(f"run {n}: pytest exit {code}, {len(results)} scenarios, {total:.1f} s in all")
        print(f"{'scenario':58} {'expect':>7} {'verdict':>7} {'wall_s':>7} {'pytest_s':>8}  beat")
        for r in sorted(results, key=lambda r: r["name"]):
            name = r["name"]
            mark = "" if r["verdict"] == r["expect"] else "  <-- NOT AS DECLARED"
            print(
                f"{name:58} {r['expect']:>7} {r['verdict']:>7} "
                f"{r['metrics'].get('wall_s', float('nan')):7.2f} {times.get(name, 0.0):8.2f}"
                f"  {_beat_line(r['metrics'])}{mark}"
            )
        walls = sum(r["metrics"].get("wall_s", 0.0) for r in results)
        print(f"{'sum of scenario wall_s':58} {'':>7} {'':>7} {walls:7.2f}")


if __name__ == "__main__":
    main()
