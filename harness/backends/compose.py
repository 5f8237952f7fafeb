"""The compose backend: the same scenarios on containers of a docker-compose deployment.

The deployment comes up and goes down through the compose the machine has (``docker
compose`` v2, else ``docker-compose`` 1.29) on the user's compose file (the repository's
``docker-compose.yml`` by default), with one override written into the run directory that
puts every service on the host's network (and, for the app's containers, pid) namespace,
listening on free loopback ports. Brokers are its ``rabbitmq`` and ``redis`` services
(one of each per session, each RabbitMQ scenario in a vhost of its own, like the local
backend); network faults go through its ``toxiproxy`` service's API. A scenario's workers and
beats are services of their own in that override (the image of the file's ``worker1``
service, the scenario's settings, the run directory mounted at the same path), started
through compose; everything done to running containers afterwards goes through the Docker
SDK: signals (``docker kill -s``), the freezer (``docker pause``), restarts.

Host networking and the host's pid namespace keep the harness's contract unchanged: the
history's pids are host pids (a pool child is found and signalled by its host pid), the
monotonic clock is the host's, the SMTP sink and HTTP server on the host's loopback are
reachable, and nothing ever listens beyond 127.0.0.1 or needs a Docker network.

Not on this backend (the scenario is skipped, saying why): packet-level networks (the
namespaces are the local backend's), a RabbitMQ node of the scenario's own
(``broker_group``/``broker_config``) and a Redis broker's own options (``broker_config``).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import requests
import yaml

from celery_chaos.backends.base import BackendError
from celery_chaos.backends.local import LocalBackend, in_parallel
from celery_chaos.deployment.brokers import PERSISTENCE_ARGS, RabbitMQServer, RedisServer
from celery_chaos.deployment.docker_engine import REPO, client
from celery_chaos.deployment.links import LinkProxies
from celery_chaos.deployment.processes import free_port, wait_for
from celery_chaos.deployment.workers import APP_TARGET, Beat, Worker
from celery_chaos.errors import InfrastructureError
from celery_chaos.history.store import history_file
from celery_chaos.results import safe_name

#: The compose file a session runs (``--chaos-compose-file``; default: the repository's).
COMPOSE_FILE_ENV = "CHAOS_COMPOSE_FILE"
LOOPBACK = "127.0.0.1"
#: Services of the user's compose file the backend runs (the rest are the demo's).
BROKER_SERVICES = ("rabbitmq", "redis", "toxiproxy")
#: The app image's Python (workers and beats run the harness's shim with it).
APP_PYTHON = "python"


def compose_command() -> list[str]:
    """``docker compose`` (v2) when it works, else ``docker-compose`` (1.29)."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"],
                                 capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    raise InfrastructureError("neither `docker compose` nor docker-compose is installed")


def default_compose_file() -> Path:
    """``$CHAOS_COMPOSE_FILE``, else ``./docker-compose.yml`` with the services the backend
    needs, else the repository's."""
    if os.environ.get(COMPOSE_FILE_ENV):
        return Path(os.environ[COMPOSE_FILE_ENV]).resolve()
    here = Path("docker-compose.yml").resolve()
    return here if here.exists() else REPO / "docker-compose.yml"


def host_override(ports: dict[str, int], history_dir: Path, proxy_config: Path) -> dict[str, Any]:
    """The one difference between the user's file and what the harness runs: every service on
    the host's network namespace (the app's also on its pid namespace), on loopback ports.

    ``ports``: ``amqp``, ``amqp_mgmt``, ``epmd``, ``erl_dist``, ``redis``, ``toxiproxy``,
    ``amqp_proxy``, ``redis_proxy``, ``smtp``, ``http``, ``flower``, ``locust_web``,
    ``locust_master``. The app services' URLs follow from them.
    """
    p = ports
    app_env = {
        "CHAOS_BROKER_URL": f"amqp://guest:guest@{LOOPBACK}:{p['amqp_proxy']}//",
        "CHAOS_RESULT_BACKEND": f"redis://{LOOPBACK}:{p['redis_proxy']}/1",
        "SAMPLE_SMTP_HOST": LOOPBACK,
        "SAMPLE_SMTP_PORT": str(p["smtp"]),
    }
    host = {"network_mode": "host"}
    app = {**host, "pid": "host", "volumes": [f"{history_dir}:/history"]}
    locust_env = {**app_env, "CHAOS_HTTP_BASE": f"http://{LOOPBACK}:{p['http']}",
                  "CHAOS_SMTP_HOST": LOOPBACK, "CHAOS_SMTP_PORT": str(p["smtp"])}
    locust_file = "/opt/venv/lib/python3.11/site-packages/celery_chaos/load/locustfile.py"
    workload = "/opt/venv/lib/python3.11/site-packages/celery_chaos/sample_app/workload.yaml"
    return {"services": {
        "rabbitmq": {**host, "environment": {
            "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
            "RABBITMQ_NODE_PORT": str(p["amqp"]),
            "RABBITMQ_DIST_PORT": str(p["erl_dist"]),
            "ERL_EPMD_PORT": str(p["epmd"]),
            "ERL_EPMD_ADDRESS": LOOPBACK,
            "RABBITMQ_NODENAME": f"rabbit-{p['amqp']}@localhost",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                f'-rabbitmq_management tcp_config [{{ip,"{LOOPBACK}"}},{{port,{p["amqp_mgmt"]}}}]',
        }},
        "redis": {**host, "command": [
            "redis-server", "--save", "", "--appendonly", "no", "--protected-mode", "no",
            "--bind", LOOPBACK, "--port", str(p["redis"]),
        ], "environment": {"REDIS_PORT": str(p["redis"])}},  # the health check's port
        "toxiproxy": {**host, "command": [
            f"-host={LOOPBACK}", f"-port={p['toxiproxy']}", "-config=/config/toxiproxy.json",
        ], "volumes": [f"{proxy_config}:/config/toxiproxy.json:ro"],
            # where /toxiproxy-cli (the health check) finds the API
            "environment": {"TOXIPROXY_URL": f"http://{LOOPBACK}:{p['toxiproxy']}"}},
        "sinks": {**app, "command": [
            "python", "-m", "celery_chaos.deployment.services", "--host", LOOPBACK,
            "--smtp-port", str(p["smtp"]), "--http-port", str(p["http"]),
            "--smtp-record", "/history/smtp.jsonl", "--ready", "/tmp/ready.json",
        ]},
        "worker1": {**app, "environment": app_env},
        "worker2": {**app, "environment": app_env},
        "beat": {**app, "environment": app_env},
        "flower": {**app, "environment": app_env, "command": [
            "celery", "-A", APP_TARGET, "flower", f"--address={LOOPBACK}",
            f"--port={p['flower']}",
        ]},
        "locust-master": {**app, "environment": locust_env, "command": [
            "locust", "-f", locust_file, "--master", "--web-host", LOOPBACK,
            "--web-port", str(p["locust_web"]), "--master-bind-host", LOOPBACK,
            "--master-bind-port", str(p["locust_master"]), "--chaos-workload", workload,
            "--chaos-rate", "5",
        ]},
        "locust-worker": {**app, "environment": locust_env, "command": [
            "locust", "-f", locust_file, "--worker", "--master-host", LOOPBACK,
            "--master-port", str(p["locust_master"]),
        ]},
    }}


def proxy_config(ports: dict[str, int]) -> list[dict[str, Any]]:
    """docker/toxiproxy.json's proxies, on loopback ports."""
    return [
        {"name": "rabbitmq", "listen": f"{LOOPBACK}:{ports['amqp_proxy']}",
         "upstream": f"{LOOPBACK}:{ports['amqp']}", "enabled": True},
        {"name": "redis", "listen": f"{LOOPBACK}:{ports['redis_proxy']}",
         "upstream": f"{LOOPBACK}:{ports['redis']}", "enabled": True},
    ]


PORT_NAMES = ("amqp", "amqp_mgmt", "epmd", "erl_dist", "redis", "toxiproxy", "amqp_proxy",
              "redis_proxy", "smtp", "http", "flower", "locust_web", "locust_master")


def free_ports() -> dict[str, int]:
    """A free loopback port for each of :data:`PORT_NAMES`, all different."""
    out: dict[str, int] = {}
    for name in PORT_NAMES:
        out[name] = free_port(exclude=out.values())
    return out


class ComposeProject:
    """One compose project: the user's file, the host override, and the harness's services."""

    def __init__(self, name: str, compose_file: Path, folder: Path) -> None:
        self.name = name
        self.file = compose_file
        self.dir = folder
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ports = free_ports()
        (self.dir / "history").mkdir(exist_ok=True)
        self.proxy_config = self.dir / "toxiproxy.json"
        self.proxy_config.write_text(json.dumps(proxy_config(self.ports), indent=2))
        self.override = self.dir / "compose.host.yml"
        self.override.write_text(yaml.safe_dump(
            host_override(self.ports, self.dir / "history", self.proxy_config), sort_keys=False))
        self.extra = self.dir / "compose.scenarios.yml"
        self.services: dict[str, dict[str, Any]] = {}
        self._write_extra()
        self.cmd = compose_command()
        self._docker: Any = None
        self._config: dict[str, Any] | None = None

    @property
    def docker(self) -> Any:
        """The SDK client of the engine at ``$DOCKER_HOST``."""
        if self._docker is None:
            self._docker = client()
            if self._docker is None:
                raise InfrastructureError(
                    f"no Docker engine answers at DOCKER_HOST={os.environ.get('DOCKER_HOST', '')}"
                )
        return self._docker

    def _write_extra(self) -> None:
        self.extra.write_text(yaml.safe_dump({"services": self.services}, sort_keys=False)
                              if self.services else "services: {}\n")

    def compose(self, *args: str, timeout: float = 180) -> str:
        """Run compose on this project's files; a failure is one line."""
        extra = ["-f", str(self.extra)] if self.services else []
        cmd = [*self.cmd, "-p", self.name, "--project-directory", str(self.file.parent),
               "-f", str(self.file), "-f", str(self.override), *extra, *args]
        # the other scenarios' services are not in every run's files: not orphans to warn of
        env = {**os.environ, **({"COMPOSE_IGNORE_ORPHANS": "1"} if args[0] == "up" else {})}
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        with open(self.dir / "compose.log", "a") as log:
            log.write(f"$ {' '.join(args)}\n{out.stdout}{out.stderr}\n")
        if out.returncode != 0:
            lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
            raise InfrastructureError(
                f"compose {' '.join(args[:2])} failed: {lines[-1] if lines else out.returncode}"
            )
        return out.stdout

    def config(self) -> dict[str, Any]:
        """The resolved configuration (``compose config``)."""
        if self._config is None:
            self._config = yaml.safe_load(self.compose("config"))
        return self._config

    def user_services(self) -> list[str]:
        """The services of the user's file alone."""
        out = subprocess.run([*self.cmd, "-f", str(self.file), "config", "--services"],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
            raise InfrastructureError(f"{self.file}: {lines[-1] if lines else 'invalid'}")
        return out.stdout.split()

    def up(self, *services: str) -> None:
        """Start services (not their dependencies: the harness starts what it needs)."""
        self.compose("up", "-d", "--no-deps", "--no-build", *services)

    def add_service(self, name: str, definition: dict[str, Any]) -> None:
        """A service of the harness's own (a scenario's worker), written to the override."""
        self.services[name] = definition
        self._write_extra()

    def container(self, service: str) -> Any:
        """The service's container (SDK object)."""
        found = self.docker.containers.list(all=True, filters={"label": [
            f"com.docker.compose.project={self.name}", f"com.docker.compose.service={service}"]})
        if not found:
            raise BackendError(f"no container for service {service} in project {self.name}")
        return found[0]

    def containers(self) -> list[Any]:
        return self.docker.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={self.name}"})

    def save_logs(self, log_dir: Path) -> None:
        """Each container's log into ``log_dir/<service>.log``."""
        log_dir.mkdir(parents=True, exist_ok=True)
        for c in self.containers():
            service = c.labels.get("com.docker.compose.service", c.name)
            try:
                (log_dir / f"{service}.log").write_bytes(c.logs())
            except Exception:  # noqa: BLE001, S110 - a log is best effort
                pass

    def down(self) -> None:
        """Take the project down through compose, then make sure nothing of it is left."""
        try:
            self.compose("down", "-v", "--remove-orphans", "-t", "2")
        finally:
            for c in self.containers():
                try:
                    c.remove(force=True, v=True)
                except Exception:  # noqa: BLE001, S110 - gone already
                    pass


def _wait_http(url: str, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            r = requests.get(url, auth=("guest", "guest"), timeout=2)
            if r.ok:
                return r.json()  # type: ignore[no-any-return]
            last = f"HTTP {r.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    raise InfrastructureError(f"{what} did not answer within {timeout:.0f} s ({last})")


class ContainerRabbitMQ(RabbitMQServer):
    """The compose project's RabbitMQ service: the local class's probes (queue depths and
    vhosts through ``erl_call`` on the node's distribution port, live figures, no statistics
    interval), a container's life. Ready when its management API and AMQP port answer."""

    def __init__(self, project: ComposeProject) -> None:  # noqa: D107 - no local node here
        self.project = project
        self.port = project.ports["amqp"]
        self.dist_port = project.ports["erl_dist"]
        self.node_name = f"rabbit-{self.port}@localhost"  # as the host override names it
        self.api = f"http://{LOOPBACK}:{project.ports['amqp_mgmt']}/api"
        self.base_dir = project.dir / "rabbitmq"
        self.prefix: list[str] = []
        self.access = None
        self.config: dict[str, str] = {}
        self._version = ""
        self._erl_call_bin = next(
            iter(sorted(glob.glob("/usr/lib/erlang/erts-*/bin/erl_call"))), None
        ) or shutil.which("erl_call")

    def _env(self) -> dict[str, str]:
        """``HOME`` holding the node's Erlang cookie (copied out of the container)."""
        return {"HOME": str(self.base_dir / "home")}

    def start(self, timeout: float = 90.0) -> ContainerRabbitMQ:  # type: ignore[override]
        """Start the service (compose the first time, the SDK after) and wait for it."""
        try:
            c = self.project.container("rabbitmq")
            c.start()
        except BackendError:
            self.project.up("rabbitmq")
        overview = _wait_http(f"{self.api}/overview", timeout, "RabbitMQ's management API")
        self._version = str(overview.get("rabbitmq_version", ""))
        # the API can answer a moment before AMQP does
        if not wait_for(self._amqp_open, timeout, interval=0.1):
            raise InfrastructureError(f"RabbitMQ's AMQP port {self.port} did not open")
        self._copy_cookie()
        return self

    def _copy_cookie(self) -> None:
        home = self.base_dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        if cookie.exists():
            return
        code, out = self.project.container("rabbitmq").exec_run(
            ["cat", "/var/lib/rabbitmq/.erlang.cookie"])
        if code != 0:
            raise InfrastructureError("cannot read the RabbitMQ container's Erlang cookie")
        cookie.write_bytes(out.strip())
        cookie.chmod(0o400)

    def _amqp_open(self) -> bool:
        import socket

        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex((LOOPBACK, self.port)) == 0

    def crash(self) -> None:
        """SIGKILL the node's container."""
        self.project.container("rabbitmq").kill()

    def stop(self, timeout: float = 10.0) -> None:  # type: ignore[override]
        """Graceful stop (SIGTERM, then SIGKILL after ``timeout``)."""
        self.project.container("rabbitmq").stop(timeout=int(timeout))

    def pause(self) -> None:
        self.project.container("rabbitmq").pause()

    def unpause(self) -> None:
        self.project.container("rabbitmq").unpause()

    def version(self) -> str:
        return self._version


class ContainerRedis(RedisServer):
    """A Redis service of the compose project (the session's ``redis`` for results, or a
    scenario's own broker): the local class's client and queue reading, a container's life."""

    def __init__(self, project: ComposeProject, service: str, port: int) -> None:  # noqa: D107
        self.project = project
        self.service = service
        self.port = port
        self.access = None
        self.persistence = "none"
        self._version = None
        self.start_timeout = 30.0

    def start(self) -> ContainerRedis:  # type: ignore[override]
        try:
            self.project.container(self.service).start()
        except BackendError:
            self.project.up(self.service)
        if not wait_for(self._alive, self.start_timeout, interval=0.05):
            raise InfrastructureError(f"Redis ({self.service}) did not answer PING")
        return self

    def _alive(self) -> bool:
        try:
            return self._ping()
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def stop(self, timeout: float = 10.0) -> None:
        self.project.container(self.service).stop(timeout=int(timeout))

    def crash(self) -> None:
        self.project.container(self.service).kill()

    def pause(self) -> None:
        self.project.container(self.service).pause()

    def unpause(self) -> None:
        self.project.container(self.service).unpause()

    def is_running(self) -> bool:
        try:
            c = self.project.container(self.service)
            c.reload()
            return bool(c.status == "running")
        except BackendError:
            return False


class ComposeSession:
    """The compose project of one session (one per xdist worker): the broker services,
    started on first use, like :class:`~celery_chaos.backends.local.SharedBrokers`."""

    kind = "compose"

    def __init__(self, root: Path, folder: str = "compose",
                 compose_file: Path | None = None) -> None:
        self.root = root.resolve()
        self.compose_file = (compose_file or default_compose_file()).resolve()
        if not self.compose_file.exists():
            raise InfrastructureError(f"compose file {self.compose_file} does not exist")
        tag = hashlib.sha1(f"{self.root}/{folder}".encode()).hexdigest()[:8]
        self.project = ComposeProject(f"chaos-{tag}", self.compose_file, self.root / folder)
        missing = [s for s in BROKER_SERVICES if s not in self.project.user_services()]
        if missing:
            raise InfrastructureError(
                f"{self.compose_file} has no service {', '.join(missing)}: the compose backend "
                f"runs its {', '.join(BROKER_SERVICES)} services")
        self._check_images()
        self.startup_s = 0.0
        self._rabbit: ContainerRabbitMQ | None = None
        self._redis: ContainerRedis | None = None
        self._toxiproxy = ""
        self._vhosts = 0
        self._seq = 0
        self._closed = False
        # however the session ends (an interrupted run included), its containers go
        atexit.register(self.close)

    def _check_images(self) -> None:
        """Every image the backend runs is on the engine (no pull: a registry may be out of
        reach, and a pull that hangs is worse than a line saying what is missing)."""
        import docker.errors

        for service, image in self.images().items():
            try:
                self.project.docker.images.get(image)
            except docker.errors.ImageNotFound:
                raise InfrastructureError(
                    f"image {image} (service {service}) is not on the Docker engine: build or "
                    "pull it (`python -m celery_chaos.deployment.docker_engine run` builds the "
                    "defaults)") from None

    def _timed(self, start: Any) -> Any:
        t0 = time.monotonic()
        try:
            return start()
        finally:
            self.startup_s += time.monotonic() - t0

    def rabbitmq(self, group: str = "shared",
                 config: dict[str, str] | None = None) -> ContainerRabbitMQ:
        if group != "shared" or config:
            raise BackendError("the compose backend runs one RabbitMQ service: no broker_group "
                               "or broker_config of a scenario's own")
        if self._rabbit is None:
            self._rabbit = self._timed(ContainerRabbitMQ(self.project).start)
        return self._rabbit

    def results_redis(self) -> ContainerRedis:
        if self._redis is None:
            self._redis = self._timed(
                ContainerRedis(self.project, "redis", self.project.ports["redis"]).start)
        return self._redis

    def toxiproxy_url(self) -> str:
        """The API of the project's Toxiproxy service (started on first use)."""
        if not self._toxiproxy:
            url = f"http://{LOOPBACK}:{self.project.ports['toxiproxy']}"
            self._timed(lambda: (self.project.up("toxiproxy"),
                                 _wait_http(f"{url}/version", 30, "Toxiproxy")))
            self._toxiproxy = url
        return self._toxiproxy

    def new_vhost(self, name: str, group: str = "shared") -> str:
        self._vhosts += 1
        vhost = f"s{self._vhosts}-{safe_name(name)[-40:]}"
        self.rabbitmq(group).add_vhost(vhost)
        return vhost

    def next_prefix(self) -> str:
        """A service-name prefix for one scenario's own services (``s3-``)."""
        self._seq += 1
        return f"s{self._seq}"

    def app_image(self) -> str:
        """The image of the file's ``worker1`` service (the app under test)."""
        services = self.project.config()["services"]
        svc = services.get("worker1") or services.get("worker") or {}
        if not svc.get("image"):
            raise InfrastructureError(f"{self.compose_file}: no worker1 service with an image")
        return str(svc["image"])

    def images(self) -> dict[str, str]:
        """``{service: image}`` of the services the backend runs."""
        services = self.project.config()["services"]
        out = {s: str(services[s].get("image", "")) for s in BROKER_SERVICES}
        out["worker"] = self.app_image()
        return out

    def backend(self, sdir: Path, queues: list[str]) -> ComposeBackend:
        return ComposeBackend(sdir, queues, self)

    def close(self) -> None:
        """Save every container's log, then take the project down (once)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.project.save_logs(self.project.dir / "logs")
        finally:
            self.project.down()


def unsupported(deployment: Any) -> str | None:
    """Why the compose backend cannot run a deployment spec (None: it can)."""
    if deployment.network == "netns":
        return "packet-level networks run on the local backend (network namespaces)"
    if deployment.broker_group != "shared" or deployment.broker_config:
        return ("a RabbitMQ node of the scenario's own (broker_group/broker_config) or a Redis "
                "broker's own options (broker_config) are local-only")
    return None


class ContainerProcess:
    """A worker's or beat's container: what :class:`Worker` reads of its process.

    Its log is followed into ``log_path`` while it runs (the file a local process writes), so
    what reads a worker's log reads it the same way on both backends. Signals go to the
    process's host pid (the app's containers share the host's pid namespace), at once, as on
    the local backend: ``docker kill -s`` took ~0.4 s, long enough for a task picked 0.2 s
    before its end to finish first.
    """

    def __init__(self, project: ComposeProject, service: str, log_path: Path) -> None:
        self.project = project
        self.service = service
        self.log_path = log_path
        self._pid: int | None = None
        self._follower: threading.Thread | None = None

    def container(self) -> Any:
        return self.project.container(self.service)

    def launch(self, log_path: Path, start: Any) -> None:
        """Run ``start()`` (compose up, or the SDK's start) and follow this run's log."""
        self._join_follower()
        self.log_path = log_path
        self._pid = None
        since = time.time() - 0.05
        start()
        c = self.container()

        def follow() -> None:
            with open(log_path, "ab") as out:
                try:
                    for chunk in c.logs(stream=True, follow=True, since=since):
                        out.write(chunk)
                        out.flush()
                except Exception:  # noqa: BLE001, S110 - the container is gone: log ends
                    pass

        self._follower = threading.Thread(target=follow, name=f"log-{self.service}",
                                          daemon=True)
        self._follower.start()

    def _join_follower(self, timeout: float = 2.0) -> None:
        if self._follower is not None:
            self._follower.join(timeout)

    @property
    def pid(self) -> int | None:
        """The host pid of the container's process; once it has exited, the last one (as a
        local process keeps its pid after it exits)."""
        c = self.container()
        c.reload()
        pid = int(c.attrs["State"]["Pid"] or 0)
        if pid:
            self._pid = pid
        return self._pid

    def is_running(self) -> bool:
        c = self.container()
        c.reload()
        return bool(c.status in ("running", "paused"))

    def signal(self, sig: int) -> None:
        pid = self.pid
        if pid is None or not self.is_running():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def wait_ready(self, check: Any, timeout: float = 30.0, interval: float = 0.05) -> None:
        """Wait until ``check()`` holds; a container that exits first is a one-line error."""
        def ready() -> bool:
            if check():
                return True
            if not self.is_running():
                raise InfrastructureError(f"{self.service} exited before it was ready: see "
                                          f"{self.log_path}")
            return False

        if not wait_for(ready, timeout, interval=0.05):
            raise InfrastructureError(f"{self.service} not ready within {timeout:.0f} s: see "
                                      f"{self.log_path}")

    def wait_exit(self, timeout: float | None = None) -> int | None:
        if not wait_for(lambda: not self.is_running(), timeout or 60, interval=0.02):
            return None
        self._join_follower()
        c = self.container()
        return int(c.attrs["State"]["ExitCode"])

    def stop(self, timeout: float = 10.0) -> int | None:
        self.container().stop(timeout=max(1, int(timeout)))
        return self.wait_exit(5)


def _service(image: str, command: list[str], env: dict[str, str], mounts: list[Path],
             grace: float) -> dict[str, Any]:
    return {
        "image": image, "command": command, "environment": env,
        "network_mode": "host", "pid": "host", "working_dir": os.getcwd(),
        "volumes": [f"{m}:{m}" for m in mounts], "stop_grace_period": f"{max(1, int(grace))}s",
        "stop_signal": "SIGTERM",
    }


class ContainerWorker(Worker):
    """A ``celery worker`` in a container of its own (a service of the scenario)."""

    def __init__(self, name: str, *, backend: ComposeBackend, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.backend = backend
        self.service = f"{backend.prefix}-{name.split('@')[0]}"

    @property
    def command(self) -> list[str]:
        return [APP_PYTHON, *super().command[1:]]

    def start(self, timeout: float = 60.0) -> None:
        self.starts += 1
        short = self.name.split("@")[0]
        log = self.log_dir / f"worker-{short}-{self.starts}.log"
        proc = self.backend.container_process(self, log)
        self.proc = proc  # type: ignore[assignment]
        if not wait_for(self._ready_now, timeout, interval=0.05):
            raise InfrastructureError(f"worker {self.name} ({self.service}) not ready within "
                                      f"{timeout:.0f} s: see {log}")

    def _ready_now(self) -> bool:
        pid = self.proc.pid if self.proc is not None else None
        if not pid:
            return False
        path = history_file(self.history_dir, "worker", self.name, pid)
        try:
            return '"worker_ready"' in path.read_text()
        except FileNotFoundError:
            return False

    def child_pids(self) -> list[int]:
        try:
            return [c.pid for c in psutil.Process(self.pid).children()]
        except (psutil.NoSuchProcess, AssertionError):
            return []


class ContainerBeat(Beat):
    """A ``celery beat`` in a container of its own."""

    def __init__(self, name: str, *, backend: ComposeBackend, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.backend = backend
        self.service = f"{backend.prefix}-{safe_name(name)}"

    @property
    def command(self) -> list[str]:
        return [APP_PYTHON, *super().command[1:]]

    def spawn(self) -> None:
        self.starts += 1
        log = self.log_dir / f"beat-{self.name}-{self.starts}.log"
        self.proc = self.backend.container_process(self, log)  # type: ignore[assignment]


class ComposeBackend(LocalBackend):
    """One scenario's deployment on the session's compose project."""

    kind = "compose"

    def __init__(self, sdir: Path, queues: list[str], session: ComposeSession) -> None:
        super().__init__(sdir, queues, session)  # type: ignore[arg-type]
        self.session = session
        self.project = session.project
        self.prefix = session.next_prefix()
        self._own: list[str] = []  # this scenario's services

    def mounts(self) -> list[Path]:
        """Paths the app's containers see at the same place: the run and the working dir."""
        return sorted({self.session.root, Path.cwd()})

    def add_service(self, name: str, definition: dict[str, Any]) -> None:
        self._own.append(name)
        self.project.add_service(name, definition)

    def container_process(self, node: Any, log: Path) -> ContainerProcess:
        """Start (compose the first time, the SDK after) the container of a worker or beat
        ``node`` (its ``service``, ``command``, ``env``), following its log into ``log``."""
        proc = node.proc if isinstance(node.proc, ContainerProcess) else None
        if proc is None:
            self.add_service(node.service, _service(
                self.session.app_image(), node.command, node.env, self.mounts(),
                self.stop_grace_s))
            proc = ContainerProcess(self.project, node.service, log)
            proc.launch(log, lambda: self.project.up(node.service))
        else:
            proc.launch(log, lambda: proc.container().start())
        return proc

    def start_network(self, sysctls: dict[str, dict[str, int]] | None = None) -> None:
        raise BackendError("packet-level networks run on the local backend")

    def start_broker_node(
        self, kind: str, *, name: str, group: str = "shared", persistence: str = "none",
        config: dict[str, str] | None = None,
    ) -> None:
        if kind == "redis":
            if config:
                raise BackendError("the compose backend runs Redis brokers with the image's "
                                   "defaults: no broker_config")
            self.broker_kind = kind
            service, port = f"{self.prefix}-redis", free_port()
            self.add_service(service, {
                "image": self.project.config()["services"]["redis"]["image"],
                "network_mode": "host",
                # data in the container's own layer, which a kill and a start keep
                "command": ["redis-server", *PERSISTENCE_ARGS[persistence],
                            "--dir", "/var/lib/redis", "--bind", LOOPBACK, "--port", str(port)],
            })
            self.broker = ContainerRedis(self.project, service, port).start()
            self.own_broker = True
            self.broker_url, self.backend_url = self.broker.url(0), self.broker.url(1)
            return
        super().start_broker_node(kind, name=name, group=group, persistence=persistence,
                                  config=config)

    def start_links(self) -> None:
        self.links = LinkProxies(self.dir / "proxy", api_url=self.session.toxiproxy_url()).start()

    def pause_broker(self) -> None:
        """The freezer on the broker's container (``docker pause``)."""
        self.broker.pause()

    def resume_broker(self) -> None:
        self.broker.unpause()

    def new_worker(self, name: str, env: dict[str, str], log_dir: Path, history_dir: Path,
                   *, concurrency: int, pool: str) -> Worker:
        worker = ContainerWorker(name, backend=self, queues=self.queues, env=env,
                                 log_dir=log_dir, history_dir=history_dir,
                                 concurrency=concurrency, pool=pool)
        self.workers[name] = worker
        return worker

    def new_beat(self, name: str, *, env: dict[str, str], log_dir: Path,
                 state_dir: Path) -> Beat:
        beat = ContainerBeat(name, backend=self, env=env, log_dir=log_dir, state_dir=state_dir)
        self.beats[name] = beat
        return beat

    def signal_worker(self, name: str, sig: int, *, wait_exit: float | None = None) -> None:
        w = self.worker(name)
        w.signal(sig)
        if wait_exit is not None and w.proc is not None:
            w.proc.wait_exit(wait_exit)

    def worker_log(self, name: str) -> str:
        w = self.worker(name)
        if w.proc is None:
            return ""
        try:
            return w.proc.container().logs().decode(errors="replace")  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - a log is best effort
            return ""

    def close_steps(self) -> list[Any]:
        steps = super().close_steps()
        steps.append(self._remove_own)
        return steps

    def _remove_own(self) -> None:
        """Remove this scenario's containers (their logs are saved first)."""
        def remove(service: str) -> None:
            try:
                c = self.project.container(service)
            except BackendError:
                return
            try:
                (self.dir / "logs").mkdir(exist_ok=True)
                (self.dir / "logs" / f"container-{service}.log").write_bytes(c.logs())
            finally:
                c.remove(force=True, v=True)

        in_parallel([partial(remove, s) for s in self._own])

    @staticmethod
    def unsupported(deployment: Any) -> str | None:
        return unsupported(deployment)

    def facts(self) -> dict[str, Any]:
        return {"backend": self.kind, "images": self.session.images(),
                "compose_file": str(self.session.compose_file)}

    def versions(self) -> dict[str, str]:
        out = super().versions()
        out.update({f"image:{k}": v for k, v in self.session.images().items()})
        return out
