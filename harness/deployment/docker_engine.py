"""A Docker engine for the compose backend, and its images, without a registry.

``python -m celery_chaos.deployment.docker_engine run [--require] -- CMD...`` gives ``CMD`` an
engine (``$DOCKER_HOST`` when it answers, else a private ``dockerd`` started here), builds the
images the compose deployment needs when they are missing or stale, runs ``CMD`` with
``DOCKER_HOST`` and the image variables of ``docker-compose.yml`` set, then stops the private
engine (also on SIGINT/SIGTERM), leaving no container, daemon or mount behind. Without
``--require``, an engine that cannot start is one line on stderr and ``CMD`` runs without it
(the compose scenarios then skip, saying why); with it, that is exit 2.

The private engine never touches the host's network: ``--bridge=none`` (no ``docker0``),
iptables, forwarding and masquerading off; every container runs with host networking and
listens on loopback. Its data root (``/var/tmp/celery-chaos/docker``) outlives the run, so a
second run finds the images built; its exec root and socket are its own.

Images (no registry is reachable here): a Debian base from ``mmdebstrap --variant=minbase``
imported as ``celery-chaos/base:bookworm``, then RabbitMQ, Redis, the app (celery-chaos, the
sample app, Flower, Locust) and a stand-in for the Toxiproxy image (the harness's own
Toxiproxy-compatible server), built with ``docker build --network host`` through the SDK.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery_chaos.errors import InfrastructureError, UsageError

#: Where the private engine keeps its images (kept between runs: the build cache).
DATA_ROOT = Path(os.environ.get("CHAOS_DOCKER_DATA_ROOT", "/var/tmp/celery-chaos/docker"))
#: Its exec root and socket (short paths: a Unix socket path has a 108-byte limit).
EXEC_ROOT = Path("/run/celery-chaos-docker")
SOCKET = Path("/run/celery-chaos-docker.sock")
DOCKERD = "/usr/sbin/dockerd"
#: The repository checkout (the build context of the app image).
REPO = Path(__file__).resolve().parents[2]

BASE_IMAGE = "celery-chaos/base:bookworm"


@dataclass(frozen=True)
class Image:
    """One image the compose deployment runs: its tag, the variable of docker-compose.yml
    that names it, and how it is built (a Dockerfile under ``docker/``)."""

    tag: str
    variable: str
    dockerfile: str
    context: str = "docker"  # relative to the repository


IMAGES = [
    Image("celery-chaos/rabbitmq:3.10", "RABBITMQ_IMAGE", "rabbitmq.Dockerfile"),
    Image("celery-chaos/redis:7.0", "REDIS_IMAGE", "redis.Dockerfile"),
    Image("celery-chaos/app:dev", "CHAOS_APP_IMAGE", "app.Dockerfile", context="."),
    Image("celery-chaos/toxiproxy-standin:dev", "TOXIPROXY_IMAGE", "toxiproxy.Dockerfile",
          context="."),
]


def image_env() -> dict[str, str]:
    """The image variables of docker-compose.yml, set to the locally built images."""
    return {i.variable: i.tag for i in IMAGES}


def client(base_url: str | None = None, timeout: float = 2.0) -> Any:
    """A ``docker.DockerClient`` that answers a ping (``$DOCKER_HOST`` by default), or None."""
    import docker

    url = base_url or os.environ.get("DOCKER_HOST")
    if not url:
        return None
    try:
        c = docker.DockerClient(base_url=url, timeout=max(timeout, 60))
        c.ping()
        return c
    except Exception:  # noqa: BLE001 - any failure means: no engine there
        return None


def unavailable() -> str | None:
    """Why the compose backend cannot run here (None when it can)."""
    if not os.environ.get("DOCKER_HOST"):
        return ("no Docker engine: DOCKER_HOST is unset (`make test-compose` or "
                "`python -m celery_chaos.deployment.docker_engine run -- CMD` starts one)")
    if client() is None:
        return f"the Docker engine at DOCKER_HOST={os.environ['DOCKER_HOST']} does not answer"
    if shutil.which("docker-compose") is None and shutil.which("docker") is None:
        return "neither docker-compose nor docker (compose v2) is on PATH"
    return None


class PrivateEngine:
    """A ``dockerd`` of the harness's own: no bridge, no iptables, its own roots and socket."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = DATA_ROOT.parent / "dockerd.log"

    @property
    def url(self) -> str:
        return f"unix://{SOCKET}"

    def start(self, timeout: float = 30.0) -> PrivateEngine:
        """Start the daemon and wait until it answers; one-line errors."""
        if not Path(DOCKERD).exists():
            raise InfrastructureError(
                f"{DOCKERD} is missing: install Debian's docker.io (scripts/setup.sh does)"
            )
        if os.geteuid() != 0:
            raise InfrastructureError("a private Docker engine needs root")
        if client(self.url) is not None:
            raise InfrastructureError(
                f"a Docker engine already answers on {SOCKET}: another run is using it"
            )
        for path in (DATA_ROOT, EXEC_ROOT, self.log.parent):
            path.mkdir(parents=True, exist_ok=True)
        SOCKET.unlink(missing_ok=True)
        cmd = [
            DOCKERD, "--bridge=none", "--iptables=false", "--ip6tables=false",
            "--ip-forward=false", "--ip-masq=false", "--userland-proxy=false",
            f"--data-root={DATA_ROOT}", f"--exec-root={EXEC_ROOT}",
            f"--pidfile={EXEC_ROOT}/dockerd.pid", f"--host={self.url}",
            "--shutdown-timeout=3", "--log-level=warn",
        ]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace").strip().splitlines()[-1:]
                raise InfrastructureError(f"dockerd exited: {' '.join(tail) or 'no output'}")
            if client(self.url) is not None:
                return self
            time.sleep(0.2)
        self.stop()
        raise InfrastructureError(f"dockerd did not answer within {timeout:.0f} s ({self.log})")

    def stop(self) -> None:
        """Remove every container, then stop the daemon (its mounts go with it)."""
        if self.proc is None:
            return
        c = client(self.url)
        if c is not None:
            for container in c.containers.list(all=True):
                try:
                    container.remove(force=True)
                except Exception:  # noqa: BLE001, S110 - gone already
                    pass
            c.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        SOCKET.unlink(missing_ok=True)
        self.proc = None
        # dockerd leaves its default network namespace bind-mounted under the exec root
        for mount in reversed(mounts_under(EXEC_ROOT)):
            subprocess.run(["umount", "-l", mount], capture_output=True)
        shutil.rmtree(EXEC_ROOT, ignore_errors=True)
        left = mounts_under(EXEC_ROOT) + mounts_under(DATA_ROOT)
        if left:
            raise InfrastructureError(f"the private Docker engine left mounts behind: {left}")


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root`` (from /proc/mounts)."""
    prefix = str(root)
    with open("/proc/mounts") as f:
        points = [line.split()[1] for line in f]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


# -- images ---------------------------------------------------------------------------------


def _context_files(image: Image) -> list[Path]:
    """The files an image is built from (its digest says when to rebuild)."""
    if image.context == "docker":
        return sorted((REPO / "docker").glob(image.dockerfile))
    roots = [REPO / "pyproject.toml", REPO / "README.md", REPO / "docker" / image.dockerfile,
             REPO / "docker" / "toxiproxy-cli"]
    for package in ("harness", "sample_app"):
        roots += sorted(p for p in (REPO / package).rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts)
    return roots


def _digest(image: Image) -> str:
    h = hashlib.sha256()
    for path in _context_files(image):
        h.update(str(path.relative_to(REPO)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _prepare_app_context() -> None:
    """``docker/.build/``: the app's requirements (from pyproject.toml) and this machine's CA
    bundle (pip inside the build needs it behind a TLS-inspecting proxy)."""
    build = REPO / "docker" / ".build"
    build.mkdir(exist_ok=True)
    import tomllib  # Python 3.11+: building images needs it, running scenarios does not

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (build / "requirements.txt").write_text("\n".join(deps) + "\n")
    ca = Path(os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")
    shutil.copyfile(ca, build / "ca-certificates.crt")


def _build_base(c: Any) -> float:
    """``mmdebstrap --variant=minbase bookworm`` imported as the base image; seconds taken."""
    if shutil.which("mmdebstrap") is None:
        raise InfrastructureError("mmdebstrap is missing: install it (scripts/setup.sh does)")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chaos-base-") as tmp:
        tar = Path(tmp) / "base.tar"
        out = subprocess.run(
            ["mmdebstrap", "--variant=minbase", "--quiet", "bookworm", str(tar),
             "http://deb.debian.org/debian"],
            capture_output=True, text=True,
        )
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["no output"])[-1]
            raise InfrastructureError(f"mmdebstrap failed: {last}")
        repo, tag = BASE_IMAGE.split(":")
        c.api.import_image_from_file(str(tar), repository=repo, tag=tag)
    return time.monotonic() - t0


def build_images(c: Any, *, log: Any = sys.stderr) -> dict[str, float]:
    """Build what is missing or stale; ``{image: seconds}`` of each build (0 when cached)."""
    import docker.errors

    took: dict[str, float] = {}
    try:
        c.images.get(BASE_IMAGE)
        took[BASE_IMAGE] = 0.0
    except docker.errors.ImageNotFound:
        print(f"celery-chaos: building {BASE_IMAGE} (mmdebstrap)", file=log, flush=True)
        took[BASE_IMAGE] = _build_base(c)
    _prepare_app_context()
    for image in IMAGES:
        digest = _digest(image)
        try:
            if c.images.get(image.tag).labels.get("celery-chaos.digest") == digest:
                took[image.tag] = 0.0
                continue
        except docker.errors.ImageNotFound:
            pass
        print(f"celery-chaos: building {image.tag}", file=log, flush=True)
        t0 = time.monotonic()
        try:
            c.images.build(
                path=str(REPO / image.context), dockerfile=f"{REPO}/docker/{image.dockerfile}",
                tag=image.tag, network_mode="host", rm=True, forcerm=True,
                labels={"celery-chaos.digest": digest},
                buildargs={"BASE_IMAGE": BASE_IMAGE, "APP_IMAGE": "celery-chaos/app:dev"},
            )
        except docker.errors.BuildError as exc:
            lines = [str(x.get("stream", x.get("error", ""))).strip() for x in exc.build_log]
            last = [ln for ln in lines if ln][-3:]
            raise InfrastructureError(f"building {image.tag} failed: {' | '.join(last)}") from None
        took[image.tag] = time.monotonic() - t0
    c.images.prune(filters={"dangling": True})
    return took


# -- the command ----------------------------------------------------------------------------


def run(cmd: list[str], *, require: bool) -> int:
    """Run ``cmd`` with an engine and the images (see the module docstring)."""
    engine: PrivateEngine | None = None
    env = dict(os.environ)

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            c = client()
            if c is None:
                t0 = time.monotonic()
                engine = PrivateEngine().start()
                env["DOCKER_HOST"] = engine.url
                c = client(engine.url)
                print(f"celery-chaos: private Docker engine up in {time.monotonic() - t0:.1f} s",
                      file=sys.stderr, flush=True)
            took = build_images(c)
            built = {k: round(v, 1) for k, v in took.items() if v}
            print(f"celery-chaos: images ready ({built or 'all cached'})", file=sys.stderr,
                  flush=True)
            env.update(image_env())
        except InfrastructureError as exc:
            if require:
                raise
            print(f"celery-chaos: compose backend unavailable: {exc}", file=sys.stderr)
            env.pop("DOCKER_HOST", None)
        proc = subprocess.Popen(cmd, env=env)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            try:
                return proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                return proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if engine is not None:
            engine.stop()  # raises (exit 2) if it left a mount behind
            print("celery-chaos: private Docker engine stopped, nothing left behind",
                  file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m celery_chaos.deployment.docker_engine")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a command with an engine and the images")
    r.add_argument("--require", action="store_true",
                   help="exit 2 when no engine can be had (default: run without one)")
    r.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        print("celery-chaos: run needs a command after --", file=sys.stderr)
        return 2
    try:
        return run(cmd, require=args.require)
    except (InfrastructureError, UsageError) as exc:
        print(f"celery-chaos: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
