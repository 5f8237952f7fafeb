"""Scenarios under pytest-xdist (``-n 2``) write one run directory, as a plain run does."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCENARIOS = """
def _run(chaos, tasks):
    chaos.deploy("redis", workers=1, concurrency=1)
    chaos.load(tasks=tasks, rate=50)
    assert chaos.check(drain_timeout=30).verdict == "valid"


def test_a(chaos):
    _run(chaos, 3)


def test_b(chaos):
    _run(chaos, 4)


def test_plain():
    assert True
"""


def _pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "2", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_workers_join_one_run_directory(tmp_path: Path) -> None:
    (tmp_path / "test_two.py").write_text(SCENARIOS)
    reports = tmp_path / "reports"
    proc = _pytest(tmp_path, str(tmp_path / "test_two.py"), "--chaos-reports", str(reports),
                   "--chaos-progress", "0.5")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # live progress from each worker, whole lines on the terminal
    assert re.search(r"^\[gw[01]\] celery-chaos: \[ +\d+ s\] test_[ab]: ", proc.stderr, re.M), \
        proc.stderr[-2000:]
    (run_dir,) = [p for p in reports.iterdir() if p.is_dir() and p.name != "_assets"]
    verdict = json.loads((run_dir / "verdict.json").read_text())
    assert sorted(s["name"] for s in verdict["scenarios"]) == ["test_a", "test_b"]
    assert verdict["exit_code"] == 0 and verdict["as_expected"] is True
    assert (run_dir / "index.html").is_file() and (run_dir / "junit.xml").is_file()
    assert not (run_dir / ".xdist").exists()
    # each worker had brokers of its own, in a folder of its own
    assert {p.name for p in run_dir.glob("brokers-gw*")} <= {"brokers-gw0", "brokers-gw1"}
    # the last line says what happened and where the report is
    last = proc.stdout.strip().splitlines()[-1]
    assert last == (f"celery-chaos: 2 scenarios, every one as declared: 2 safe configurations "
                    f"held, 0 negative controls caught their bug; report {run_dir}/index.html")


def test_unit_tests_alone_leave_no_run_directory(tmp_path: Path) -> None:
    (tmp_path / "test_units.py").write_text("def test_x():\n    pass\n\ndef test_y():\n    pass\n")
    reports = tmp_path / "reports"
    proc = _pytest(tmp_path, str(tmp_path / "test_units.py"), "--chaos-reports", str(reports))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not reports.exists() or not [p for p in reports.iterdir() if p.is_dir()]


INFRA = """
from celery_chaos.errors import InfrastructureError


def test_infra(chaos):
    chaos.deploy("redis", workers=1, concurrency=1)
    raise InfrastructureError("a broker that would not start")


def test_other(chaos):
    chaos.deploy("redis", workers=1, concurrency=1)
    chaos.load(tasks=3, rate=50)
    assert chaos.check(drain_timeout=30).verdict == "valid"
"""


@pytest.mark.slow
def test_an_infrastructure_error_on_a_worker_is_exit_2_not_an_internal_error(
    tmp_path: Path,
) -> None:
    """The report a worker sends its controller carries the error as text (an exception
    object cannot cross to the controller: it was an INTERNALERROR)."""
    (tmp_path / "test_infra.py").write_text(INFRA)
    reports = tmp_path / "reports"
    proc = _pytest(tmp_path, str(tmp_path / "test_infra.py"), "--chaos-reports", str(reports),
                   "--chaos-progress", "0")
    out = proc.stdout + proc.stderr
    assert "INTERNALERROR" not in out, out[-3000:]
    assert proc.returncode == 2, out[-3000:]
    (run_dir,) = [p for p in reports.iterdir() if p.is_dir() and p.name != "_assets"]
    verdict = json.loads((run_dir / "verdict.json").read_text())
    errors = {s["name"]: s["error"] for s in verdict["scenarios"]}
    assert errors["test_infra"] == "a broker that would not start" and not errors["test_other"]
