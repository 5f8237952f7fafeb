"""Private RabbitMQ and Redis servers on free loopback ports, with their data and logs in a run
directory, that the harness can stop, crash and restart.

Both classes satisfy :class:`Broker`. Every server process is a
:class:`~celery_chaos.deployment.processes.ManagedProcess`, so the process registry tears it
down even when the harness is interrupted.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable
from urllib.parse import quote

import amqp
import redis
from kombu.transport.redis import PRIORITY_STEPS
from kombu.transport.redis import Channel as _RedisChannel

from celery_chaos.deployment.processes import (
    ManagedProcess,
    check_port_free,
    free_port,
    marker_env,
)
from celery_chaos.errors import InfrastructureError

__all__ = ["UNACKED_KEY", "Broker", "RabbitMQServer", "RedisServer"]

LOOPBACK = "127.0.0.1"
UNACKED_KEY = "__unacked__"
"""Key of :meth:`RedisServer.queue_depths` holding ``(0, HLEN unacked)``: every unacked entry."""

_INSTALL_HINT = "run `sudo apt-get install -y {pkg}` (or `make test`, which installs it)"


def _one_line(text: str, limit: int = 200) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    return last if len(last) <= limit else last[: limit - 3] + "..."


def _which(executable: str, search_path: str | None, pkg: str) -> str:
    found = shutil.which(executable, path=search_path)
    if found is None:
        raise InfrastructureError(
            f"{executable} not found: {_INSTALL_HINT.format(pkg=pkg)}"
        )
    return found


@runtime_checkable
class Broker(Protocol):
    """What scenarios need from a broker, whichever its kind."""

    kind: str

    def start(self) -> Broker: ...

    def stop(self) -> None: ...

    def crash(self) -> None: ...

    def restart(self, crash: bool = False) -> None: ...

    def url(self) -> str: ...

    def queue_depths(self) -> dict[str, tuple[int, int]]: ...

    def version(self) -> str: ...


# ============================================================================================
# RabbitMQ

# Prints the JSON ``[[name, ready, unacked], ...]`` of the queues of vhost VHOST (live and
# down ones, as ``rabbitmqctl list_queues`` lists them; a figure a down queue cannot give is
# null), or ``null`` when the vhost does not exist.
_QUEUE_DEPTHS_ERL = """V = VHOST,
N = fun(X) when is_integer(X) -> X; (_) -> null end,
io:put_chars(case rabbit_vhost:exists(V) of
    false -> <<"null">>;
    true -> rabbit_json:encode(
        [[element(4, proplists:get_value(name, I)),
          N(proplists:get_value(messages_ready, I)),
          N(proplists:get_value(messages_unacknowledged, I))]
         || I <- rabbit_amqqueue:info_all(V, [name, messages_ready, messages_unacknowledged])])
end),
io:nl()."""


def _erl_binary(text: str) -> str:
    """``text`` as an Erlang binary literal of its UTF-8 bytes (no quoting to get wrong)."""
    return "<<" + ",".join(str(b) for b in text.encode()) + ">>"


class RabbitMQServer:
    """A private RabbitMQ node: its own epmd, Erlang cookie, ports, data and logs.

    Layout under ``run_dir/<name>/``: ``rabbitmq.conf``, ``home/`` (cookie), ``mnesia/`` (data),
    ``log/`` (RabbitMQ's logs), ``rabbitmq-server.log`` and ``epmd.log`` (stdout+stderr).
    All listeners (AMQP, Erlang distribution, epmd) are bound to loopback.

    The node runs ``/usr/lib/rabbitmq/bin/rabbitmq-server`` with ``RUNNING_UNDER_SYSTEMD=true``,
    which makes the script ``exec`` the Erlang VM: the managed pid *is* ``beam.smp``, so
    :meth:`crash` is a SIGKILL of the node itself and SIGTERM is RabbitMQ's graceful stop.
    epmd runs in the foreground as a separate managed process (``-start_epmd false`` keeps the
    VM and the CLI tools from spawning a daemonized one); it survives :meth:`crash` and
    :meth:`restart`, like a host's epmd, and :meth:`stop` ends it.
    """

    kind = "rabbitmq"

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        dist_port: int | None = None,
        epmd_port: int | None = None,
        name: str = "rabbitmq",
        config: Mapping[str, str] | None = None,
        bin_dir: str | os.PathLike[str] = "/usr/lib/rabbitmq/bin",
        search_path: str | None = None,
        start_timeout: float = 60.0,
        prefix: Sequence[str] = (),
        listen: str = LOOPBACK,
        access: tuple[str, int] | None = None,
    ) -> None:
        """``config``: extra ``rabbitmq.conf`` lines (e.g. ``{"consumer_timeout": "60000"}``).
        ``bin_dir``/``search_path`` override where the RabbitMQ scripts and ``epmd`` are found.
        ``prefix`` runs every command of the node in another network namespace
        (:mod:`celery_chaos.deployment.netns`), where the AMQP listener binds ``listen`` and the
        harness connects through ``access`` (a relay on loopback)."""
        self.base_dir = Path(run_dir) / name
        self.prefix = list(prefix)
        self.listen = listen
        self.access = access
        self.start_timeout = start_timeout
        self.config = dict(config or {})
        bin_dir = Path(bin_dir)
        self._server_bin = bin_dir / "rabbitmq-server"
        self._ctl_bin = bin_dir / "rabbitmqctl"
        for binary in (self._server_bin, self._ctl_bin):
            if not os.access(binary, os.X_OK):
                raise InfrastructureError(
                    f"{binary} not found: {_INSTALL_HINT.format(pkg='rabbitmq-server')}"
                )
        epmd = shutil.which("epmd", path=search_path)
        if epmd is None and search_path is None:
            epmd = next(iter(sorted(glob.glob("/usr/lib/erlang/erts-*/bin/epmd"))), None)
        if epmd is None:
            raise InfrastructureError(
                f"epmd not found: {_INSTALL_HINT.format(pkg='rabbitmq-server erlang-base')}"
            )
        self._epmd_bin = epmd
        # erl_call (erlang-base, like epmd): found here, required only by erl_eval
        erl_call = shutil.which("erl_call", path=search_path)
        if erl_call is None and search_path is None:
            erl_call = next(iter(sorted(glob.glob("/usr/lib/erlang/erts-*/bin/erl_call"))), None)
        self._erl_call_bin = erl_call
        self._requested = {"AMQP": port, "Erlang distribution": dist_port, "epmd": epmd_port}
        self.port = port or 0
        self.dist_port = dist_port or 0
        self.epmd_port = epmd_port or 0
        self._ports_chosen = False
        self.node_name = f"chaos-{uuid.uuid4().hex[:8]}@localhost"
        self._version: str | None = None
        self._epmd: ManagedProcess | None = None
        self._node: ManagedProcess | None = None

    # -- paths -----------------------------------------------------------------------------

    @property
    def log_dir(self) -> Path:
        """RabbitMQ's own log directory (``<node>.log`` lives here)."""
        return self.base_dir / "log"

    @property
    def data_dir(self) -> Path:
        """The Mnesia base directory (queues, messages, definitions)."""
        return self.base_dir / "mnesia"

    @property
    def processes(self) -> list[ManagedProcess]:
        """The managed processes (epmd, node) once started."""
        return [p for p in (self._epmd, self._node) if p is not None]

    @property
    def markers(self) -> list[str]:
        """Process markers (see :func:`~celery_chaos.deployment.processes.count_processes`)."""
        return [p.marker for p in self.processes]

    def pids(self) -> list[int]:
        """Live pids of epmd, the node and all their descendants."""
        pids: list[int] = []
        for proc in self.processes:
            if proc.is_running():
                pids.append(proc.pid)  # type: ignore[arg-type]
            pids.extend(p.pid for p in proc.descendants())
        return pids

    def _env(self) -> dict[str, str]:
        b = self.base_dir
        loopback = "-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false"
        return {
            "HOME": str(b / "home"),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": LOOPBACK,
            "RABBITMQ_NODENAME": self.node_name,
            "RABBITMQ_NODE_IP_ADDRESS": self.listen,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.data_dir),
            "RABBITMQ_LOG_BASE": str(self.log_dir),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(b / "feature_flags"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(b / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(b / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(b / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(b / "rabbitmq-env.conf"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": f"{loopback} +B i",
            "RABBITMQ_CTL_ERL_ARGS": loopback,
            "RUNNING_UNDER_SYSTEMD": "true",
            "NOTIFY_SOCKET": "",
        }

    def _prepare(self) -> None:
        b = self.base_dir
        for sub in ("home", "mnesia", "log"):
            (b / sub).mkdir(parents=True, exist_ok=True)
        (b / "enabled_plugins").write_text("[].\n")
        (b / "rabbitmq-env.conf").write_text("")
        lines = {"listeners.tcp.1": f"{self.listen}:{self.port}", **self.config}
        if self.listen != LOOPBACK:  # clients on the namespace's bridge, not loopback
            lines["loopback_users"] = "none"
        (b / "rabbitmq.conf").write_text("".join(f"{k} = {v}\n" for k, v in lines.items()))
        # A timing knob: RabbitMQ checks consumer timeouts on its channel tick (every 60 s by
        # default); a scaled consumer_timeout needs a tick to match (measured: 3 s fired at 3.1 s).
        tick = "[{rabbit, [{channel_tick_interval, 1000}]}].\n" if "consumer_timeout" in \
            self.config else "[].\n"
        (b / "advanced.config").write_text(tick)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> RabbitMQServer:
        """Start epmd and the node; return once an AMQP login succeeds."""
        if self._node is not None and self._node.is_running():
            return self
        if not self._ports_chosen:
            for what, port in self._requested.items():
                if port:
                    check_port_free(port, f"RabbitMQ {what}")
            self.port = self.port or free_port()
            self.dist_port = self.dist_port or free_port()
            self.epmd_port = self.epmd_port or free_port()
            self._ports_chosen = True
        self._prepare()
        self._start_epmd()
        self._start_node()
        return self

    def _start_epmd(self) -> None:
        if self._epmd is None:
            self._epmd = ManagedProcess(
                "epmd",
                [*self.prefix, self._epmd_bin, "-port", str(self.epmd_port), "-address",
                 LOOPBACK],
                self.base_dir,
                env=self._env(),
            )
        if not self._epmd.is_running():
            self._epmd.start().wait_ready(self._epmd_up, timeout=10)

    def _epmd_up(self) -> bool:
        if self.prefix:  # in another namespace: ask it from there
            res = subprocess.run([*self.prefix, self._epmd_bin, "-port", str(self.epmd_port),
                                  "-names"], capture_output=True, timeout=5)
            return res.returncode == 0
        with socket.create_connection((LOOPBACK, self.epmd_port), timeout=0.5):
            return True

    def _start_node(self) -> None:
        if self._node is None:
            self._node = ManagedProcess(
                "rabbitmq-server", [*self.prefix, str(self._server_bin)], self.base_dir,
                env=self._env(),
            )
        self._node.start().wait_ready(self._amqp_login, timeout=self.start_timeout, interval=0.1)

    def _amqp_login(self) -> bool:
        host, port = self.access or (LOOPBACK, self.port)
        conn = amqp.Connection(
            host=f"{host}:{port}", userid="guest", password="guest",
            connect_timeout=1,
        )
        try:
            conn.connect()
            props = conn.server_properties
            self._version = str(props.get("version", "")) or self._version
        finally:
            conn.collect()
        # Our node, not another on the same port (two runs that chose the same free port at
        # the same instant: the loser's node exits, and its login must not pass on the
        # winner's). A node's default cluster name is its node name, with the machine's host
        # name after the @ (measured: chaos-5d00417b@vm for chaos-5d00417b@localhost).
        cluster = str(props.get("cluster_name", "") or "")
        return not cluster or cluster.split("@")[0] == self.node_name.split("@")[0]

    def stop(self, timeout: float = 60.0) -> None:
        """Graceful stop (SIGTERM, wait up to ``timeout``), then epmd; nothing is left."""
        if self._node is not None:
            self._node.stop(timeout)
        if self._epmd is not None:
            self._epmd.stop(5)

    def crash(self) -> None:
        """SIGKILL the node (``beam.smp``), then kill anything it left (``erl_child_setup``,
        port programs). The private epmd keeps running."""
        if self._node is not None:
            self._node.kill()
            self._node.kill_tree()

    def restart(self, crash: bool = False) -> None:
        """Stop (or :meth:`crash`) and start again on the same ports, node name and data."""
        if crash:
            self.crash()
        elif self._node is not None:
            self._node.stop(60)
        self._prepare()
        self._start_epmd()
        self._start_node()

    def is_running(self) -> bool:
        return self._node is not None and self._node.is_running()

    def server_pid(self) -> int | None:
        """The node's pid (``beam.smp``: the script execs the VM), None when not running."""
        return self._node.pid if self.is_running() else None  # type: ignore[union-attr]

    # -- clients ---------------------------------------------------------------------------

    def url(self, vhost: str = "/") -> str:
        """``amqp://guest:guest@127.0.0.1:PORT/<vhost>`` (``//`` for the default vhost): the
        harness's address of the node (its relay when the node is in another namespace)."""
        host, port = self.access or (LOOPBACK, self.port)
        return self.url_at(host, vhost, port)

    def url_at(self, host: str, vhost: str = "/", port: int | None = None) -> str:
        """The URL of ``vhost`` at ``host`` (a namespace's address of the node)."""
        path = "/" if vhost == "/" else quote(vhost, safe="")
        return f"amqp://guest:guest@{host}:{port or self.port}/{path}"

    def rabbitmqctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -n NODE -q ARGS`` with the node's private env; return stdout.
        A failure raises a one-line :class:`InfrastructureError`."""
        env = {**os.environ, **self._env(), **marker_env()}
        cmd = [*self.prefix, str(self._ctl_bin), "-n", self.node_name, "-q", *args]
        try:
            res = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=timeout,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            raise InfrastructureError(
                f"rabbitmqctl {' '.join(args)} timed out after {timeout:g}s: see {self.log_dir}"
            ) from None
        if res.returncode != 0:
            raise InfrastructureError(
                f"rabbitmqctl {' '.join(args)} failed (exit {res.returncode}): "
                f"{_one_line(res.stderr or res.stdout)}"
            )
        return res.stdout

    def add_vhost(self, name: str) -> str:
        """Create vhost ``name`` (if it does not exist) with full permissions for guest; return
        its URL: the calls ``rabbitmqctl add_vhost`` and ``set_permissions`` make, through
        :meth:`erl_eval` (milliseconds instead of two Erlang VM starts)."""
        v = _erl_binary(name)
        self.erl_eval(
            f'ok = rabbit_vhost:add({v}, <<"celery-chaos">>),'
            f' ok = rabbit_auth_backend_internal:set_permissions(<<"guest">>, {v},'
            ' <<".*">>, <<".*">>, <<".*">>, <<"celery-chaos">>), io:nl().'
        )
        return self.url(name)

    def delete_vhost(self, name: str) -> None:
        """Delete vhost ``name`` and everything in it (one that does not exist raises
        :class:`InfrastructureError`)."""
        self.erl_eval(f'ok = rabbit_vhost:delete({_erl_binary(name)}, <<"celery-chaos">>),'
                      " io:nl().")

    def erl_eval(self, expr: str, timeout: float = 60.0) -> str:
        """Evaluate the Erlang expressions ``expr`` (ending ``.``) on the node through
        ``erl_call`` and return what they printed, which must end with a newline (returned
        without it).

        ``erl_call`` is a C client of Erlang distribution (it connects straight to the
        node's distribution port): no Erlang VM starts, unlike ``rabbitmqctl``
        (``bench/bench_queue_probe.py`` measures both). A failure, an exception in ``expr``
        included, raises a one-line :class:`InfrastructureError`."""
        if self._erl_call_bin is None:
            raise InfrastructureError(
                f"erl_call not found: {_INSTALL_HINT.format(pkg='erlang-base')}"
            )
        env = {**os.environ, **self._env(), **marker_env()}  # HOME holds the node's cookie
        cmd = [*self.prefix, self._erl_call_bin, "-address", f"{LOOPBACK}:{self.dist_port}",
               "-timeout", str(max(1, math.ceil(timeout))), "-fetch_stdout", "-e"]
        try:
            res = subprocess.run(
                cmd, input=expr + "\n", env=env, capture_output=True, text=True,
                timeout=timeout + 5, start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            res = None
        if res is None or res.returncode != 0:  # erl_call's -timeout ends it with SIGALRM
            why = f"timed out after {timeout:g}s" if res is None or \
                res.returncode == -signal.SIGALRM else \
                f"failed (exit {res.returncode}): {_one_line(res.stderr or res.stdout)}"
            raise InfrastructureError(f"erl_call on {self.node_name} {why}: see {self.log_dir}")
        # stdout: what expr printed, then the result term: {ok, _} or {error, Reason}
        printed, _, term = res.stdout.rpartition("\n")
        if not term.startswith("{ok,"):
            raise InfrastructureError(
                f"erl_call on {self.node_name} failed: {_one_line(term, 300)}"
            )
        return printed

    def queue_depths(
        self, vhost: str = "/", queues: Iterable[str] | None = None
    ) -> dict[str, tuple[int, int]]:
        """``{queue: (messages_ready, messages_unacknowledged)}`` for the queues that exist in
        ``vhost`` (optionally only those named in ``queues``), asked of the node through
        :meth:`erl_eval`: the figures ``rabbitmqctl list_queues`` gives (each queue process
        answers; no statistics interval), in milliseconds. A queue that does not exist is
        absent (not ``(0, 0)``): a lost queue stays visible. A vhost that does not exist
        raises :class:`InfrastructureError`."""
        out = self.erl_eval(_QUEUE_DEPTHS_ERL.replace("VHOST", _erl_binary(vhost)))
        rows = json.loads(out)
        if rows is None:
            raise InfrastructureError(f"vhost {vhost!r} does not exist on {self.node_name}")
        wanted = set(queues) if queues is not None else None
        return {
            name: (int(ready or 0), int(unacked or 0))
            for name, ready, unacked in rows
            if wanted is None or name in wanted
        }

    def version(self) -> str:
        """The server's version (from the AMQP handshake, else ``rabbitmqctl version``)."""
        if not self._version:
            self._version = self.rabbitmqctl("version").strip()
        return self._version


# ============================================================================================
# Redis

Persistence = Literal["none", "aof-always", "default"]
PERSISTENCE_ARGS: dict[str, list[str]] = {
    "none": ["--save", "", "--appendonly", "no"],
    "aof-always": ["--save", "", "--appendonly", "yes", "--appendfsync", "always"],
    "default": [],  # Redis 7 built-in defaults: save 3600 1 300 100 60 10000, appendonly no
}
#: Redis options the harness sets itself (where the server listens and keeps its data, and
#: its persistence, which ``persistence`` chooses): a ``config`` may not give them.
REDIS_HARNESS_OPTIONS = frozenset({
    "port", "bind", "protected-mode", "dir", "daemonize", "logfile", "set-proc-title",
    "save", "appendonly", "appendfsync", "include", "unixsocket", "requirepass", "tls-port",
})


def redis_config_args(config: Mapping[str, str]) -> list[str]:
    """``redis-server`` arguments for ``config`` (``{"maxmemory": "2mb"}`` ->
    ``["--maxmemory", "2mb"]``); an option the harness sets itself raises ValueError."""
    taken = sorted(set(config) & REDIS_HARNESS_OPTIONS)
    if taken:
        raise ValueError(f"Redis option(s) {', '.join(taken)} are set by the harness "
                         "(persistence: redis_persistence), not by broker_config")
    return [arg for key, value in config.items() for arg in (f"--{key}", str(value))]


class RedisServer:
    """A private ``redis-server`` on a free loopback port, data in ``run_dir/<name>/data``,
    stdout log in ``run_dir/<name>/redis-server.log``. No config file is read.

    ``persistence``: ``"none"`` (``--save '' --appendonly no``: nothing survives a restart),
    ``"aof-always"`` (``--appendonly yes --appendfsync always``, RDB off), ``"default"``
    (Redis 7's built-in RDB save points, no AOF). ``config``: more options, given on the
    command line (``{"maxmemory": "2mb", "maxmemory-policy": "noeviction"}``).
    """

    kind = "redis"

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        persistence: Persistence = "none",
        port: int | None = None,
        *,
        name: str = "redis",
        config: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        executable: str = "redis-server",
        search_path: str | None = None,
        start_timeout: float = 30.0,
        prefix: Sequence[str] = (),
        bind: Sequence[str] = (LOOPBACK,),
        access: tuple[str, int] | None = None,
    ) -> None:
        """``executable``/``search_path`` override how ``redis-server`` is found on PATH.
        ``prefix`` runs the server in another network namespace, bound to ``bind`` there;
        the harness then connects through ``access`` (a relay on loopback)."""
        self.prefix = list(prefix)
        self.bind = list(bind)
        self.access = access
        if persistence not in PERSISTENCE_ARGS:
            raise ValueError(f"persistence must be one of {sorted(PERSISTENCE_ARGS)}")
        self.persistence = persistence
        self.base_dir = Path(run_dir) / name
        self.config = dict(config or {})
        self.extra_args = [*redis_config_args(self.config), *extra_args]
        self.start_timeout = start_timeout
        self._bin = _which(executable, search_path, "redis-server")
        self._requested_port = port
        self.port = 0
        self._proc: ManagedProcess | None = None
        self._version: str | None = None

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "redis-server.log"

    @property
    def processes(self) -> list[ManagedProcess]:
        return [self._proc] if self._proc is not None else []

    @property
    def markers(self) -> list[str]:
        return [p.marker for p in self.processes]

    def pids(self) -> list[int]:
        if self._proc is None or not self._proc.is_running():
            return []
        return [self._proc.pid, *(p.pid for p in self._proc.descendants())]  # type: ignore[list-item]

    def start(self) -> RedisServer:
        """Start the server; return once it answers PING."""
        if self._proc is not None and self._proc.is_running():
            return self
        if not self.port:
            if self._requested_port:
                check_port_free(self._requested_port, "Redis")
            self.port = self._requested_port or free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._proc is None:
            cmd = [
                *self.prefix, self._bin, "--port", str(self.port), "--bind", *self.bind,
                # bound beyond loopback only inside a namespace of the harness's own
                *(["--protected-mode", "no"] if self.bind != [LOOPBACK] else []),
                "--dir", str(self.data_dir), "--daemonize", "no", "--logfile", "",
                # keep /proc/PID/environ (and so the harness's process marker) readable
                "--set-proc-title", "no",
                *PERSISTENCE_ARGS[self.persistence], *self.extra_args,
            ]
            self._proc = ManagedProcess("redis-server", cmd, self.base_dir)
        self._proc.start().wait_ready(self._ping, timeout=self.start_timeout)
        return self

    def _ping(self) -> bool:
        with self.client(socket_timeout=1) as client:
            return bool(client.ping())

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop: SIGTERM (Redis saves/fsyncs per its persistence), wait, clean up."""
        if self._proc is not None:
            self._proc.stop(timeout)

    def crash(self) -> None:
        """SIGKILL: writes not yet persisted are lost."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.kill_tree()

    def restart(self, crash: bool = False) -> None:
        """Stop (or :meth:`crash`) and start again on the same port and data directory."""
        if crash:
            self.crash()
        else:
            self.stop()
        self.start()

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.is_running()

    def server_pid(self) -> int | None:
        """The ``redis-server`` pid, None when not running."""
        return self._proc.pid if self.is_running() else None  # type: ignore[union-attr]

    def url(self, db: int = 0) -> str:
        """``redis://127.0.0.1:PORT/<db>``: the harness's address of the server (its relay
        when the server is in another namespace)."""
        host, port = self.access or (LOOPBACK, self.port)
        return f"redis://{host}:{port}/{db}"

    def url_at(self, host: str, db: int = 0) -> str:
        """The URL of ``db`` at ``host`` (a namespace's address of the server)."""
        return f"redis://{host}:{self.port}/{db}"

    def client(self, db: int = 0, **kwargs: object) -> redis.Redis:
        """A redis-py client for ``db`` (the caller closes it)."""
        host, port = self.access or (LOOPBACK, self.port)
        return redis.Redis(host=host, port=port, db=db, socket_connect_timeout=1,
                           **kwargs)  # type: ignore[arg-type]

    def flushall(self) -> None:
        with self.client() as client:
            client.flushall()

    def version(self) -> str:
        """``redis_version`` from INFO (or ``redis-server --version`` when not running)."""
        if not self._version:
            if self.is_running():
                with self.client() as client:
                    self._version = str(client.info("server")["redis_version"])
            else:
                out = subprocess.run([self._bin, "--version"], capture_output=True, text=True)
                self._version = out.stdout.split("v=")[1].split()[0]
        return self._version

    def queue_depths(
        self,
        db: int = 0,
        queues: Iterable[str] | None = None,
        *,
        priority_steps: Sequence[int] = PRIORITY_STEPS,
        global_keyprefix: str = "",
    ) -> dict[str, tuple[int, int]]:
        """``{queue: (ready, unacked)}`` as kombu's Redis transport stores them, plus
        ``{"__unacked__": (0, HLEN unacked)}``.

        *ready* sums ``LLEN`` of the queue's list and of its priority lists
        (``queue + "\\x06\\x16" + step`` for steps 3, 6, 9; step 0 is the bare name).
        *unacked* counts entries of the ``unacked`` hash whose ``(exchange, routing_key)``
        resolves to the queue through the ``_kombu.binding.<exchange>`` table (direct routing,
        as Celery uses; the default exchange ``""`` routes to the queue named by the key).
        Entries that resolve to no queue are only in the ``__unacked__`` total.
        ``queues=None`` means every queue named in a binding table.
        """
        sep = _RedisChannel.sep
        pre = global_keyprefix
        with self.client(db) as client:
            bindings: dict[str, list[tuple[str, str]]] = {}
            binding_prefix = pre + _RedisChannel.keyprefix_queue % ""
            for key in client.scan_iter(match=binding_prefix + "*", count=1000):
                exchange = key.decode()[len(binding_prefix):]
                rows = []
                for member in client.smembers(key):
                    parts = member.decode().split(sep)
                    if len(parts) == 3:
                        rows.append((parts[0], parts[2]))  # (routing_key, queue)
                bindings[exchange] = rows
            names = list(queues) if queues is not None else sorted(
                {q for rows in bindings.values() for _, q in rows}
            )
            pipe = client.pipeline(transaction=False)
            for q in names:
                for step in priority_steps:
                    pipe.llen(f"{pre}{q}{sep}{step}" if step else f"{pre}{q}")
            lengths = pipe.execute()
            unacked_raw = client.hvals(pre + _RedisChannel.unacked_key)
        n = len(priority_steps)
        depths = {q: [sum(lengths[i * n:(i + 1) * n]), 0] for i, q in enumerate(names)}
        for raw in unacked_raw:
            try:
                _, exchange, routing_key = json.loads(raw)
            except (ValueError, TypeError):
                continue
            targets = [q for rk, q in bindings.get(exchange, []) if rk == routing_key]
            if not targets and exchange == "":
                targets = [routing_key]
            for q in targets:
                if q in depths:
                    depths[q][1] += 1
        result = {q: (r, u) for q, (r, u) in depths.items()}
        result[UNACKED_KEY] = (0, len(unacked_raw))
        return result
