"""``celery-chaos load``: option parsing, a local run with a fault and Locust's ``--processes``
(one history, one report), and a publish-only run against an existing deployment."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.deployment.brokers import RedisServer
from harness.errors import UsageError
from harness.load.command import parse_duration, parse_fault

ROOT = Path(__file__).resolve().parent.parent


def _cli(*argv: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", "load", *argv],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )


def test_fault_and_duration_specs() -> None:
    f = parse_fault("kill-worker:w1@10s", workers=2)
    assert (f.kind, f.target, f.at, f.duration) == ("kill-worker", "w1@chaos", 10.0, 0.0)
    f = parse_fault("pause-worker:w2@1m5s+2.5s", workers=2)
    assert (f.target, f.at, f.duration) == ("w2@chaos", 65.0, 2.5)
    f = parse_fault("crash-broker@5s+2s")
    assert (f.kind, f.target, f.duration) == ("crash-broker", None, 2.0)
    assert parse_duration("500ms") == 0.5 and parse_duration("90") == 90.0
    for bad in ("kill-worker@3s", "kill-worker:w3@3s", "explode:w1@3s", "kill-worker:w1",
                "pause-worker:w1@3s", "crash-broker:w1@3s"):
        with pytest.raises(UsageError):
            parse_fault(bad, workers=2)


@pytest.mark.parametrize(
    "argv",
    [
        ["--duration", "soon"],
        ["--fault", "kill-worker:w9@1s"],
        ["--fault", "kill-worker:w1@40s", "--duration", "10s"],
        ["--users", "0"],
        ["--broker-url", "redis://127.0.0.1:1/0", "--fault", "kill-worker:w1@1s"],
        ["--broker-url", "redis://127.0.0.1:1/0"],  # the default workload needs local services
        ["--app", "no_such_module:app"],
    ],
)
def test_bad_input_is_one_line_exit_2(argv: list[str], tmp_path: Path) -> None:
    proc = _cli(*argv, "--reports", str(tmp_path / "r"), timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_local_load_with_a_fault_and_two_locust_processes(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    proc = _cli(
        "--users", "4", "--spawn-rate", "4", "--duration", "6s", "--rate", "16",
        "--broker", "redis", "--workers", "2", "--processes", "2",
        "--fault", "kill-child:w1@3s",
        "--setting", "task_acks_late=true", "--setting", "task_reject_on_worker_lost=true",
        "--env", "SAMPLE_EMAIL_SEND_SECONDS=0.3", "--reports", str(reports),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run_dir,) = [p for p in reports.iterdir() if p.name[0].isdigit()]
    verdict = json.loads((run_dir / "verdict.json").read_text())
    assert verdict["kind"] == "load" and verdict["verdict"] == "valid"
    assert verdict["command"].startswith("celery-chaos load --users 4")
    (scenario,) = verdict["scenarios"]
    assert scenario["faults"] == ["kill_pool_child"]
    assert scenario["deployment"]["settings"]["acks_late"] is True
    counts = scenario["invariants"][0]["summary"]["counts"]
    assert counts["lost"] == 0 and counts["acknowledged"] > 20
    history = run_dir / "scenarios" / "load" / "history"
    publishers = sorted(history.glob("publisher-*.jsonl"))
    assert len(publishers) == 2, publishers  # two Locust processes, one history
    html = (run_dir / "index.html").read_text()
    assert "kill_pool_child" in html and "Locust's own HTML report" in html
    assert (run_dir / "junit.xml").is_file()
    assert run_dir.name in (reports / "index.html").read_text()


def test_existing_deployment_is_publish_only(tmp_path: Path) -> None:
    workload = tmp_path / "workload.yaml"
    workload.write_text(
        "- name: sample_app.tasks.generate_report\n  args: [1]\n  queue: reports\n  weight: 1\n"
    )
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        proc = _cli(
            "--broker-url", redis.url(0), "--result-backend", redis.url(1),
            "--users", "2", "--duration", "3s", "--rate", "20", "--workload", str(workload),
            "--reports", str(tmp_path / "reports"),
        )
    finally:
        redis.stop()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run_dir,) = [p for p in (tmp_path / "reports").iterdir() if p.name[0].isdigit()]
    verdict = json.loads((run_dir / "verdict.json").read_text())
    (scenario,) = verdict["scenarios"]
    assert scenario["expect"] == "unknown" and scenario["verdict"] == "unknown"
    assert scenario["deployment"]["existing"] is True and scenario["faults"] == []
    assert "no drain" in verdict["notes"][0]
    files = {p.name.split("-")[0] for p in (run_dir / "scenarios/load/history").iterdir()}
    assert files == {"harness", "publisher"}
    depths = [
        json.loads(line)["detail"].get("ready", {}).get("reports", 0)
        for line in next((run_dir / "scenarios/load/history").glob("harness-*")).open()
        if '"queue_depth"' in line
    ]
    assert max(depths) > 0  # nobody consumes: the sampler saw the queue grow
    assert "PUBLISH SIDE ONLY" in (run_dir / "index.html").read_text()


def test_master_with_a_worker_started_from_the_printed_script(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    master = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "load", "--users", "2", "--duration", "4s",
         "--rate", "10", "--broker", "redis", "--workers", "1", "--master",
         "--expect-workers", "1", "--reports", str(reports)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert master.stdout is not None
        script = ""
        for line in master.stdout:
            m = re.search(r"with: sh (\S+locust-worker\.sh)", line)
            if m:
                script = m.group(1)
                break
        assert script, "the master never printed the worker script"
        worker = subprocess.run(["sh", script], cwd=ROOT, capture_output=True, text=True,
                                timeout=120)
        assert worker.returncode == 0, worker.stderr[-500:]
        out = master.stdout.read()
        assert master.wait(120) == 0, out
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()
    (run_dir,) = [p.parent for p in reports.glob("*/verdict.json")]
    history = run_dir / "scenarios" / "load" / "history"
    assert len(list(history.glob("publisher-*.jsonl"))) == 1  # the worker's, in this history
    counts = json.loads((run_dir / "verdict.json").read_text())["scenarios"][0]["invariants"][0][
        "summary"]["counts"]
    assert 20 <= counts["acknowledged"] <= 60 and counts["lost"] == 0
