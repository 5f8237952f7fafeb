"""The whole compose demo, as `docker compose up` runs it: Flower sees both workers, the
Locust UI answers, tasks flow through Toxiproxy, and nothing is left once it is down.

It runs the repository's docker-compose.yml with the harness's host-network override in place
of docker-compose.override.yml (the only difference, tests/test_compose_file.py), so the
ports are free loopback ports instead of the demo's fixed ones. Skipped, with the reason,
where no Docker engine can be had.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from celery_chaos.backends.compose import ComposeProject, default_compose_file
from celery_chaos.deployment.docker_engine import unavailable


def _get_json(url: str, timeout: float) -> object:
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        try:
            r = requests.get(url, timeout=5)
            if r.ok:
                return r.json()
            last = f"HTTP {r.status_code}"
        except (requests.RequestException, ValueError) as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s ({last})")


@pytest.mark.compose
def test_compose_demo_flower_sees_both_workers(tmp_path: Path) -> None:
    if (why := unavailable()) is not None:
        pytest.skip(f"compose backend: {why}")
    project = ComposeProject(f"chaos-demo-{int(time.time())}", default_compose_file(),
                             tmp_path / "compose")
    try:
        t0 = time.monotonic()
        project.compose("up", "-d", "--no-build", timeout=300)
        p = project.ports
        workers = _get_json(f"http://127.0.0.1:{p['flower']}/api/workers?refresh=1", 120)
        while set(workers) != {"w1@chaos", "w2@chaos"} and time.monotonic() - t0 < 120:  # type: ignore[arg-type]
            time.sleep(1)
            workers = _get_json(f"http://127.0.0.1:{p['flower']}/api/workers?refresh=1", 30)
        assert set(workers) == {"w1@chaos", "w2@chaos"}, workers  # type: ignore[arg-type]
        ready_s = time.monotonic() - t0
        stats = _get_json(f"http://127.0.0.1:{p['locust_web']}/stats/requests", 60)
        assert isinstance(stats, dict) and "stats" in stats
        proxies = _get_json(f"http://127.0.0.1:{p['toxiproxy']}/proxies", 30)
        assert set(proxies) == {"rabbitmq", "redis"}  # type: ignore[arg-type]
        print(f"compose demo: Flower saw both workers {ready_s:.1f} s after `up`")
    finally:
        project.save_logs(tmp_path / "logs")
        project.down()
    assert project.containers() == []
