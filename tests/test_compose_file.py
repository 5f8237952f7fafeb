"""docker-compose.yml: valid, complete, and what the harness runs differs from what users run
only in networking and ports (no engine needed: ``docker-compose config`` resolves files)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from celery_chaos.backends.compose import (
    ComposeSession,
    compose_command,
    free_ports,
    host_override,
    proxy_config,
    unsupported,
)
from celery_chaos.deployment.docker_engine import REPO, image_env, unavailable
from celery_chaos.errors import InfrastructureError
from celery_chaos.runner.catalog import specs

ROOT_FILE = REPO / "docker-compose.yml"
DEMO_OVERRIDE = REPO / "docker-compose.override.yml"
SERVICES = {"rabbitmq", "redis", "toxiproxy", "sinks", "worker1", "worker2", "beat", "flower",
            "locust-master", "locust-worker"}

needs_compose = pytest.mark.skipif(
    shutil.which("docker-compose") is None and shutil.which("docker") is None,
    reason="docker-compose is not installed (scripts/setup.sh installs it)",
)


def _config(*files: Path) -> dict[str, Any]:
    args = [a for f in files for a in ("-f", str(f))]
    out = subprocess.run(
        [*compose_command(), "--project-directory", str(REPO), *args, "config"],
        capture_output=True, text=True, check=True,
        # the file's own defaults, not the local images `make test` points it at
        env={**{k: v for k, v in os.environ.items() if k not in image_env()},
             "CHAOS_APP_IMAGE": "app"},
    )
    return yaml.safe_load(out.stdout)["services"]


@needs_compose
def test_root_file_is_valid_and_has_every_service() -> None:
    env = {k: v for k, v in os.environ.items() if k not in image_env()}
    out = subprocess.run([*compose_command(), "-f", str(ROOT_FILE), "config", "-q"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    services = _config(ROOT_FILE)
    assert set(services) == SERVICES
    # real upstream images by default; each service that depends on another waits for health
    assert services["rabbitmq"]["image"].startswith("rabbitmq:3.13")
    assert services["redis"]["image"].startswith("redis:7")
    assert services["toxiproxy"]["image"].startswith("ghcr.io/shopify/toxiproxy:")
    assert services["worker1"]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert all("healthcheck" in services[s] for s in ("rabbitmq", "redis", "toxiproxy"))
    # the demo's published ports are on loopback only, and only in the demo's override
    demo = _config(ROOT_FILE, DEMO_OVERRIDE)
    published = [p for s in demo.values() for p in s.get("ports", [])]
    assert published and all(_host_ip(p) == "127.0.0.1" for p in published)
    assert not [p for s in services.values() for p in s.get("ports", [])]


def _host_ip(port: Any) -> str:
    """The host address of a published port (compose prints a mapping or a short string)."""
    return str(port.get("host_ip")) if isinstance(port, dict) else str(port).split(":")[0]


def _target(volume: Any) -> str:
    """A volume's path in the container (a mapping, or ``source:target[:mode]``)."""
    return str(volume["target"]) if isinstance(volume, dict) else str(volume).split(":")[1]


_HOSTS = {"127.0.0.1", "0.0.0.0", "localhost", "sinks", "toxiproxy", "rabbitmq", "redis",
          "locust-master"}
#: Variables that carry an address or a port (or a management listener, which is both).
_NETWORK_ENV = re.compile(r"^(CHAOS_(BROKER_URL|RESULT_BACKEND|HTTP_BASE|SMTP_HOST|SMTP_PORT)|"
                          r"SAMPLE_SMTP_(HOST|PORT)|TOXIPROXY_URL|REDIS_PORT|RABBITMQ_(NODE_IP_ADDRESS|NODE_PORT|"
                          r"DIST_PORT|NODENAME|SERVER_ADDITIONAL_ERL_ARGS)|ERL_EPMD_\w+)$")


def _norm(tokens: list[str]) -> list[str]:
    """A command with its addresses and port numbers blanked, and the address/port flags
    that only the loopback override needs taken out."""
    out: list[str] = []
    for t in tokens:
        for h in _HOSTS:
            t = t.replace(h, "H")
        out.append(re.sub(r"\d+", "N", t))
    for flag in ("--bind", "--port", "--master-bind-host"):
        while flag in out and out.index(flag) + 1 < len(out) and out[out.index(flag) + 1] in "HN":
            i = out.index(flag)
            del out[i:i + 2]
    return out


@needs_compose
def test_harness_override_differs_only_in_networking_and_ports(tmp_path: Path) -> None:
    ports = free_ports()
    override = tmp_path / "compose.host.yml"
    override.write_text(yaml.safe_dump(host_override(ports, tmp_path / "h", tmp_path / "t.json")))
    users = _config(ROOT_FILE, DEMO_OVERRIDE)
    ours = _config(ROOT_FILE, override)
    assert set(users) == set(ours)
    for name in users:
        a, b = users[name], ours[name]
        differing = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
        assert differing <= {"network_mode", "networks", "ports", "pid", "environment",
                             "command", "volumes"}, (name, differing)
        assert b["network_mode"] == "host" and "ports" not in b, name
        env_a, env_b = a.get("environment") or {}, b.get("environment") or {}
        env_diff = {k for k in set(env_a) | set(env_b) if env_a.get(k) != env_b.get(k)}
        assert all(_NETWORK_ENV.match(k) for k in env_diff), (name, env_diff)
        assert _norm(list(a.get("command") or [])) == _norm(list(b.get("command") or [])), name
        targets_a = sorted(_target(v) for v in a.get("volumes", []))
        targets_b = sorted(_target(v) for v in b.get("volumes", []))
        assert targets_a == targets_b, name  # only where the history and the proxies' file live
    # the loopback Toxiproxy file has the same proxies as docker/toxiproxy.json
    shipped = yaml.safe_load((REPO / "docker" / "toxiproxy.json").read_text())
    assert [p["name"] for p in shipped] == [p["name"] for p in proxy_config(ports)]
    assert all(p["listen"].startswith("127.0.0.1:") for p in proxy_config(ports))


@needs_compose
def test_a_compose_file_without_a_broker_service_is_one_line(tmp_path: Path) -> None:
    data = yaml.safe_load(ROOT_FILE.read_text())
    del data["services"]["toxiproxy"]
    for svc in data["services"].values():
        deps = svc.get("depends_on")
        if isinstance(deps, dict):
            deps.pop("toxiproxy", None)
        elif isinstance(deps, list) and "toxiproxy" in deps:
            deps.remove("toxiproxy")
    bad = tmp_path / "docker-compose.yml"
    shutil.copytree(REPO / "docker", tmp_path / "docker")
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(InfrastructureError, match=r"has no service toxiproxy") as err:
        ComposeSession(tmp_path / "run", compose_file=bad)
    assert "\n" not in str(err.value)
    with pytest.raises(InfrastructureError, match="does not exist"):
        ComposeSession(tmp_path / "run2", compose_file=tmp_path / "nope.yml")


def test_no_engine_is_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert "DOCKER_HOST is unset" in (unavailable() or "")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert "does not answer" in (unavailable() or "")


def test_compose_backend_without_an_engine_exits_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", str(REPO / "scenarios" / "test_worker_kill.py"),
         "-q", "-p", "no:cacheprovider", "--chaos-backend", "compose",
         "--chaos-reports", str(tmp_path), "-k", "acks_late_survives_kill-main"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "compose backend: no Docker engine: DOCKER_HOST is unset" in out.stdout + out.stderr


def test_specs_the_compose_backend_cannot_run_say_why() -> None:
    reasons = {s.name: unsupported(s.deployment) for fam in ("packets", "worker_kill",
                                                             "broker_restart", "duplicates")
               for s in specs(fam)}
    assert all("namespaces" in (reasons[s.name] or "") for s in specs("packets"))
    assert all(reasons[s.name] is None for s in specs("worker_kill"))
    assert reasons["redis_restart_with_queued_tasks-aof-always-valid"] is None
    assert any("broker_group" in (r or "") for r in reasons.values())


def test_the_report_says_where_a_scenario_ran() -> None:
    from celery_chaos.report.html import backend_words

    assert backend_words({"backend": "local"}) == "local processes"
    assert backend_words({}) == "local processes"
    words = backend_words({"backend": "compose", "compose_file": "/x/docker-compose.yml",
                           "images": {"rabbitmq": "rabbitmq:3.13-management",
                                      "toxiproxy": "celery-chaos/toxiproxy-standin:dev"}})
    assert "rabbitmq rabbitmq:3.13-management" in words and "/x/docker-compose.yml" in words
    assert "standing in for the Toxiproxy image" in words


def test_load_on_compose_without_an_engine_exits_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    out = subprocess.run(
        [sys.executable, "-m", "celery_chaos.cli", "load", "--chaos-backend", "compose",
         "--duration", "5s", "--reports", str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(
        "celery-chaos: compose backend: no Docker engine")
