"""Teardown leaves no process behind: after a passing scenario, a failing one, and when the
runner itself gets SIGTERM or SIGINT mid-scenario. Proven by counting processes that carry the
run's environment marker (every descendant inherits it, even daemons that leave the group)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from celery_chaos.deployment.processes import RUN_ENV, count_processes, find_processes, kill_marked
from tests import restore_sigint

ROOT = Path(__file__).resolve().parent.parent

SCENARIOS = """
import time


def _deploy(chaos):
    chaos.deploy("redis", workers=1, concurrency=1)


def test_pass(chaos):
    _deploy(chaos)
    chaos.load(tasks=5, rate=50)
    assert chaos.check(drain_timeout=30).verdict == "valid"


def test_fail(chaos):
    _deploy(chaos)
    assert False, "a scenario that fails after deploying"


def test_hang(chaos):
    _deploy(chaos)
    print("DEPLOYED", flush=True)
    time.sleep(600)
"""


def _run(tmp_path: Path, test: str, sig: int | None) -> tuple[int, str, Path, str]:
    """Run one tiny scenario in a child pytest; signal it mid-scenario when ``sig`` is given."""
    (tmp_path / "test_tiny.py").write_text(SCENARIOS)
    marker = f"teardown-{uuid.uuid4().hex[:8]}"
    reports = tmp_path / "reports"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(tmp_path / "test_tiny.py"),
        "-k",
        test,
        "-q",
        "-s",
        "-p",
        "no:cacheprovider",
        "--chaos-reports",
        str(reports),
        "-o",
        "timeout=300",
    ]
    env = {**os.environ, RUN_ENV: marker, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=restore_sigint,
    )
    try:
        if sig is not None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if "DEPLOYED" in line:
                    break
            assert count_processes(marker) >= 3, "redis, the worker and its pool child are up"
            proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # a failed assertion or a time-out: leave nothing behind
            proc.kill()
            proc.wait()
            kill_marked(marker)
    return proc.returncode, out or "", reports, marker


def _left_behind(marker: str, wait: float = 15.0) -> int:
    deadline = time.monotonic() + wait
    while (n := count_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return n


@pytest.mark.parametrize(
    ("test", "sig", "code"),
    [
        ("test_pass", None, 0),
        ("test_fail", None, 1),
        ("test_hang", signal.SIGTERM, 2),
        ("test_hang", signal.SIGINT, 2),
    ],
)
def test_no_process_left_behind(tmp_path: Path, test: str, sig: int | None, code: int) -> None:
    returncode, out, reports, marker = _run(tmp_path, test, sig)
    assert returncode == code, out[-3000:]
    assert _left_behind(marker) == 0, [p.cmdline() for p in find_processes(marker)]
    # The run directory is written even when the runner is stopped, and what was recorded stays.
    (run_dir,) = [p.parent for p in reports.glob("*/verdict.json")]
    verdict = json.loads((run_dir / "verdict.json").read_text())
    assert verdict["exit_code"] == code
    assert list(run_dir.glob("scenarios/*/history/*.jsonl")), "what was recorded is kept"
