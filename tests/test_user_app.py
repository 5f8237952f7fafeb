"""The built-in scenarios run against a user's own app (not the sample), end to end.

``tests/userapp`` hard-codes a production broker and backend; the harness must
point it at its own deployment and apply the settings under test. This runs
real RabbitMQ and real workers through ``celery-chaos run``, as a user would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_worker_kill_scenarios_run_on_a_user_app(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    cmd = [
        sys.executable,
        "-m",
        "celery_chaos.cli",
        "run",
        str(ROOT / "scenarios" / "test_worker_kill.py"),
        "-k",
        "rabbitmq_acks_late_survives_kill-main or rabbitmq_early_ack_loses_tasks-main",
        "--chaos-app",
        "tests.userapp.app:app",
        "--chaos-workload",
        str(ROOT / "tests" / "userapp" / "workload.yaml"),
        "--chaos-reports",
        str(reports),
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = [p.parent for p in reports.glob("*/verdict.json")]
    verdict = json.loads((run_dir / "verdict.json").read_text())
    assert verdict["exit_code"] == 0 and verdict["as_expected"] is True
    by_name = {s["name"]: s for s in verdict["scenarios"]}
    assert by_name["rabbitmq_acks_late_survives_kill-main"]["verdict"] == "valid"
    assert by_name["rabbitmq_early_ack_loses_tasks-main"]["verdict"] == "invalid"
    # The user's tasks ran, on the harness's broker, not the hard-coded one.
    names = set()
    for path in run_dir.glob("scenarios/*/history/worker-*.jsonl"):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec["kind"] == "succeeded":
                names.add(rec["task_name"])
    assert "userapp.resize_image" in names
    assert "sample_app" not in " ".join(names)
