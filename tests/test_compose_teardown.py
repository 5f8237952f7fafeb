"""Teardown on the compose backend leaves no container behind: after a pass, and when the
runner gets SIGINT or SIGTERM mid-scenario (containers found by the compose labels that name
the run directory's override file). Skipped, with the reason, where no engine answers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from celery_chaos.deployment.docker_engine import client, unavailable

ROOT = Path(__file__).resolve().parent.parent
SPEC = "rabbitmq_acks_late_survives_kill-main"

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=f"{unavailable()}")


def _ours(reports: Path) -> list[object]:
    """Containers whose compose files live under ``reports`` (this test's runs)."""
    c = client()
    assert c is not None
    return [x for x in c.containers.list(all=True)
            if str(reports) in x.labels.get("com.docker.compose.project.config_files", "")]


def _run(reports: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", str(ROOT / "scenarios" / "test_compose.py"), "-q",
         "-p", "no:cacheprovider", "-k", SPEC, "--chaos-reports", str(reports),
         "--chaos-progress", "0"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, env=dict(os.environ),
    )


def test_a_passing_compose_scenario_leaves_no_container(tmp_path: Path) -> None:
    proc = _run(tmp_path)
    assert proc.wait(300) == 0
    assert _ours(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signalled_compose_runner_leaves_no_container(tmp_path: Path, sig: int) -> None:
    proc = _run(tmp_path)
    try:
        deadline = time.monotonic() + 180
        # mid-scenario: the brokers and both workers' containers are up
        while len(_ours(tmp_path)) < 4 and time.monotonic() < deadline:
            assert proc.poll() is None, "the run ended before its workers started"
            time.sleep(0.2)
        assert len(_ours(tmp_path)) >= 4
        proc.send_signal(sig)
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _ours(tmp_path) == []


FAILING = """
def test_fail(chaos):
    chaos.deploy("redis", workers=1, concurrency=1)
    assert False, "a scenario that fails after deploying"
"""


def test_a_failing_compose_scenario_leaves_no_container(tmp_path: Path) -> None:
    (tmp_path / "test_failing.py").write_text(FAILING)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(tmp_path / "test_failing.py"), "-q",
         "-p", "no:cacheprovider", "--chaos-backend", "compose", "--chaos-reports",
         str(tmp_path / "reports"), "--chaos-progress", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert _ours(tmp_path) == []


def test_an_image_not_on_the_engine_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "scenarios" / "test_worker_kill.py"), "-q",
         "-p", "no:cacheprovider", "--chaos-backend", "compose", "--chaos-reports",
         str(tmp_path), "-k", SPEC],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "CHAOS_APP_IMAGE": "celery-chaos/no-such-image:0"},
    )
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert ("compose backend: image celery-chaos/no-such-image:0 (service worker) is not on "
            "the Docker engine") in proc.stdout + proc.stderr
