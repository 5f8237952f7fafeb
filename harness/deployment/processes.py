"""Child processes that never outlive the harness.

Every :class:`ManagedProcess` runs in its own session (so terminal signals and ``killpg`` on the
harness never reach it by accident), logs stdout+stderr to ``<run_dir>/<name>.log`` and carries two
environment markers that every descendant inherits, even one that double-forks out of the process
group (epmd, ``erl_child_setup``, daemons):

* ``CHAOS_RUN_ID``: one value per harness process (nested as ``parent/child`` when a harness process
  was itself started by a harness), found with psutil by :func:`find_processes`;
* ``CHAOS_PROC_ID``: one value per :class:`ManagedProcess`, so one process tree can be reaped alone.

Teardown layers: ``stop()``/``kill_tree()`` per process; :func:`kill_all` (registered with atexit
and run by the SIGTERM/SIGINT/SIGHUP handlers that :func:`install_signal_handlers` installs once);
``PR_SET_PDEATHSIG=SIGKILL`` on direct children started from the main thread, which covers a
SIGKILL of the harness itself (the kernel delivers it when the *thread* that forked exits, so it is
not set on children started from other threads: their cleanup relies on the layers above).

Spawning comes from :class:`mirakuru.SimpleExecutor` (minus its pid-substring marker, see
``_Executor.envvars``); process-tree inspection and killing from psutil; ports from port-for.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal as _signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import port_for
import psutil
from mirakuru import SimpleExecutor
from mirakuru.base import ENV_UUID

from celery_chaos.errors import InfrastructureError

__all__ = [
    "PROC_ENV",
    "RUN_ENV",
    "RUN_ID",
    "ManagedProcess",
    "check_port_free",
    "count_processes",
    "find_processes",
    "free_port",
    "install_signal_handlers",
    "kill_all",
    "kill_marked",
    "marker_env",
    "registered",
    "wait_for",
]

RUN_ENV = "CHAOS_RUN_ID"
PROC_ENV = "CHAOS_PROC_ID"
_inherited = os.environ.get(RUN_ENV)
_own = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
RUN_ID: str = f"{_inherited}/{_own}" if _inherited else _own
"""This harness process's marker; every managed descendant carries it in ``CHAOS_RUN_ID``."""

_PR_SET_PDEATHSIG = 1
_libc: Any = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
        _prctl = _libc.prctl
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        _libc = None

# Ports this process handed out: never hand one out twice, even before its server binds it.
_issued_ports: set[int] = set()
# Ports other local software is likely to want (default AMQP/dist/epmd/Redis/management and
# the rabbitmqctl CLI's distribution range 35672-35682, which we leave at its default).
_AVOID_PORTS = {4369, 5672, 6379, 15672, 25672, *range(35672, 35683)}
_port_lock = threading.Lock()


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``check`` until it returns true (True) or ``timeout`` seconds pass (False).

    Exceptions raised by ``check`` count as "not yet".
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return True
        except Exception:  # noqa: BLE001 - a failing probe means "not ready"
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


# --------------------------------------------------------------------------------------------
# Ports


def free_port(exclude: Iterable[int] = ()) -> int:
    """A free loopback TCP port (port-for), never one this process already handed out."""
    with _port_lock:
        try:
            port = port_for.select_random(
                exclude_ports=_issued_ports | _AVOID_PORTS | set(exclude)
            )
        except port_for.PortForException as exc:
            raise InfrastructureError(
                f"no free TCP port on 127.0.0.1 ({exc}): stop leftover servers (`ss -ltnp`)"
            ) from None
        _issued_ports.add(port)
        return port


def check_port_free(port: int, what: str) -> None:
    """Raise a one-line :class:`InfrastructureError` if ``port`` is taken on 127.0.0.1."""
    if port_for.port_is_used(port, "127.0.0.1"):
        raise InfrastructureError(
            f"port {port} for {what} is already in use on 127.0.0.1: pass port=None to pick a "
            f"free one, or stop its owner (`ss -ltnp 'sport = :{port}'`)"
        )


# --------------------------------------------------------------------------------------------
# Finding processes by marker


def _run_matches(run_id: str | None, marker: str) -> bool:
    return run_id is not None and (run_id == marker or run_id.startswith(marker + "/"))


def _matches(env: Mapping[str, str], marker: str) -> bool:
    return _run_matches(env.get(RUN_ENV), marker) or env.get(PROC_ENV) == marker


def _own_sessions(marker: str) -> dict[int, float]:
    """``{session id: start time}`` of this process's registered processes matching ``marker``.

    A process that rewrites its title over its environment block (``redis-server`` unless
    ``--set-proc-title no``, Python's ``setproctitle``) hides its env marker from
    ``/proc/PID/environ``; it is still found if it stayed in its managed process's session.
    """
    sessions: dict[int, float] = {}
    for proc in registered():
        if proc._session is not None and (
            proc.marker == marker or _run_matches(RUN_ID, marker)
        ):
            sessions[proc._session[0]] = proc._session[1]
    return sessions


def find_processes(marker: str | None = None) -> list[psutil.Process]:
    """Live (non-zombie) processes whose ``CHAOS_RUN_ID`` is ``marker`` or nested under it, or
    whose ``CHAOS_PROC_ID`` is ``marker``. Default: this harness process's :data:`RUN_ID`.

    Also, for processes this harness started: any process still in their session (see
    :func:`_own_sessions`). The calling process and its ancestors are never returned.
    """
    marker = marker or RUN_ID
    skip = {os.getpid()}
    with contextlib.suppress(psutil.Error):
        skip.update(p.pid for p in psutil.Process().parents())
    sessions = _own_sessions(marker)
    found = []
    for proc in psutil.process_iter():
        if proc.pid in skip:
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if _matches(proc.environ(), marker):
                found.append(proc)
                continue
            if sessions:
                started = sessions.get(os.getsid(proc.pid))
                if started is not None and proc.create_time() >= started - 0.01:
                    found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


def count_processes(marker: str | None = None) -> int:
    """How many live processes carry ``marker`` (see :func:`find_processes`)."""
    return len(find_processes(marker))


def _sigkill_and_wait(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """SIGKILL ``procs``; return those still alive (and not zombies) after ``timeout``.

    Our own :class:`ManagedProcess` main pids are reaped through their ``Popen`` (so it keeps
    the real exit code); psutil reaps any other child of ours.
    """
    procs = list(procs)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    own = {p.pid: p for p in registered() if p.is_running()}
    deadline = time.monotonic() + timeout
    for proc in procs:
        if proc.pid in own:
            own[proc.pid].wait_exit(max(0.0, deadline - time.monotonic()))
    others = [p for p in procs if p.pid not in own]
    _, alive = psutil.wait_procs(others, timeout=max(0.0, deadline - time.monotonic()))
    still = []
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE:
                still.append(proc)
    return still


def kill_marked(marker: str | None = None, timeout: float = 5.0) -> int:
    """SIGKILL every process carrying ``marker`` until none is left (or ``timeout``).

    Returns how many processes were killed. Our own direct children are reaped on the way.
    """
    deadline = time.monotonic() + timeout
    killed: set[int] = set()
    while True:
        procs = find_processes(marker)
        if not procs:
            break
        killed.update(p.pid for p in procs)
        _sigkill_and_wait(procs, timeout=min(1.0, max(0.05, deadline - time.monotonic())))
        _reap_registered()
        if time.monotonic() >= deadline:
            break
    return len(killed)


def marker_env(proc_id: str | None = None) -> dict[str, str]:
    """The marker variables to add to the environment of a child started outside this module
    (e.g. a short ``subprocess.run``), so :func:`kill_all` finds it too."""
    env = {RUN_ENV: RUN_ID}
    if proc_id:
        env[PROC_ENV] = proc_id
    return env


# --------------------------------------------------------------------------------------------
# Spawning


def _pdeathsig_preexec(parent_pid: int) -> Callable[[], None]:
    def preexec() -> None:  # runs in the child between fork and exec
        _prctl(_PR_SET_PDEATHSIG, _signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), _signal.SIGKILL)

    return preexec


class _Executor(SimpleExecutor):
    """mirakuru's executor with ``start_new_session`` and an optional ``PR_SET_PDEATHSIG``."""

    def __init__(self, *args: Any, pdeathsig: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pdeathsig = pdeathsig

    @property
    def envvars(self) -> dict[str, str]:
        # Drop mirakuru's own marker: its atexit hook kills every process whose marker merely
        # *contains* the exiting process's pid as a substring, which can hit another harness's
        # servers on a shared machine. Our exact CHAOS_RUN_ID/CHAOS_PROC_ID markers replace it.
        env = super().envvars
        env.pop(ENV_UUID, None)
        return env

    @property
    def _popen_kwargs(self) -> dict[str, Any]:
        kwargs = super()._popen_kwargs
        kwargs.pop("preexec_fn", None)  # mirakuru's os.setsid: replaced by the C-level equivalent
        kwargs["start_new_session"] = True
        kwargs["universal_newlines"] = False
        if self._pdeathsig:
            kwargs["preexec_fn"] = _pdeathsig_preexec(os.getpid())
        return kwargs


class ManagedProcess:
    """A child process in its own session, logged to ``<run_dir>/<name>.log``, registered for
    teardown. Can be started again after it exits (same log, appended; same marker)."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        run_dir: str | os.PathLike[str],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.name = name
        self.command = [str(c) for c in command]
        self.run_dir = Path(run_dir)
        self.log_path = self.run_dir / f"{name}.log"
        self.env = dict(env or {})
        self.cwd = str(cwd) if cwd is not None else None
        self.marker = f"{RUN_ID}:{name}:{uuid.uuid4().hex[:8]}"
        """This process's ``CHAOS_PROC_ID``: pass it to :func:`count_processes`."""
        self._popen: subprocess.Popen[bytes] | None = None
        self._session: tuple[int, float] | None = None  # (session id, start time) of last run

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} pid={self.pid} running={self.is_running()}>"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> ManagedProcess:
        """Spawn the command (stdin from /dev/null). Returns self; does not wait for readiness."""
        if self.is_running():
            raise InfrastructureError(f"{self.name} is already running (pid {self.pid})")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        env = {**self.env, RUN_ENV: RUN_ID, PROC_ENV: self.marker}
        main_thread = threading.current_thread() is threading.main_thread()
        _register(self)
        if main_thread:
            install_signal_handlers()
        with open(self.log_path, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"--- {stamp} start: {' '.join(self.command)}\n".encode())
            log.flush()
            executor = _Executor(
                self.command,
                cwd=self.cwd,
                envvars=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pdeathsig=main_thread and _libc is not None,
            )
            try:
                executor.start()
            except OSError as exc:
                raise InfrastructureError(
                    f"cannot start {self.name} ({self.command[0]}): {exc.strerror or exc}"
                ) from None
        # Take ownership of the Popen: mirakuru's __del__ would otherwise kill the process (and
        # scan /proc) whenever the executor is garbage-collected, even during interpreter exit.
        self._popen = executor.process
        executor.process = None
        with contextlib.suppress(psutil.Error):
            self._session = (self._popen.pid, psutil.Process(self._popen.pid).create_time())
        return self

    def wait_ready(self, check: Callable[[], bool], timeout: float = 30.0,
                   interval: float = 0.05) -> ManagedProcess:
        """Poll ``check`` until true. If the process exits first or ``timeout`` passes, kill its
        tree and raise a one-line :class:`InfrastructureError` naming the log file."""
        def ready() -> bool:
            if not self.is_running():
                raise _Exited
            return check()

        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready():
                    return self
            except _Exited:
                rc = self.returncode
                self.kill_tree()
                raise InfrastructureError(
                    f"{self.name} exited with code {rc} before it was ready: see "
                    f"{self.log_path}{self._log_tail()}"
                ) from None
            except Exception:  # noqa: BLE001 - a failing probe means "not ready yet"
                pass
            if time.monotonic() >= deadline:
                self.kill_tree()
                raise InfrastructureError(
                    f"{self.name} not ready after {timeout:g}s: see {self.log_path}"
                    f"{self._log_tail()}"
                )
            time.sleep(interval)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the main process only (no-op if it has exited)."""
        if self.is_running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._popen.pid, sig)  # type: ignore[union-attr]

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the process group (the session leader's group; daemons that left it
        are not included)."""
        if self._popen is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._popen.pid, sig)

    def kill(self, timeout: float = 10.0) -> int | None:
        """SIGKILL the main process only and reap it; descendants are left alone.

        Returns the exit code (``-9``), or None if it had not exited after ``timeout``.
        """
        self.signal(_signal.SIGKILL)
        return self.wait_exit(timeout)

    def kill_tree(self, timeout: float = 5.0) -> None:
        """SIGKILL the main process, its group and every descendant (found by process tree and
        by marker), wait until they are gone, and reap the main process."""
        procs: dict[int, psutil.Process] = {}
        if self._popen is not None:
            if self.is_running():
                with contextlib.suppress(psutil.Error):
                    main = psutil.Process(self._popen.pid)
                    procs[main.pid] = main
                    procs.update((p.pid, p) for p in main.children(recursive=True))
            self.signal_group(_signal.SIGKILL)
        procs.update((p.pid, p) for p in find_processes(self.marker))
        _sigkill_and_wait(procs.values(), timeout=timeout)
        if self._popen is not None:
            self.wait_exit(timeout)
        # A descendant may have forked while we were killing: sweep by marker until empty.
        kill_marked(self.marker, timeout=timeout)

    def stop(self, timeout: float = 10.0, sig: int = _signal.SIGTERM) -> int | None:
        """Graceful stop: ``sig`` (SIGTERM) to the main process, wait up to ``timeout``, then
        SIGKILL the group and every descendant. Returns the exit code (None if never started)."""
        if self._popen is None:
            kill_marked(self.marker, timeout=1.0)
            return None
        self.signal(sig)
        self.wait_exit(timeout)
        self.kill_tree()
        return self.returncode

    # -- state -------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """Main process id of the current (or last) run."""
        return self._popen.pid if self._popen is not None else None

    @property
    def returncode(self) -> int | None:
        """Exit code of the last run (negative: killed by that signal), None while running."""
        if self._popen is None:
            return None
        self._popen.poll()
        return self._popen.returncode

    def is_running(self) -> bool:
        """True while the main process has not exited."""
        return self._popen is not None and self._popen.poll() is None

    def children(self) -> list[psutil.Process]:
        """Live descendants of the main process (psutil, recursive; daemons that were
        reparented are not included: see :meth:`descendants`)."""
        if not self.is_running():
            return []
        try:
            return psutil.Process(self._popen.pid).children(recursive=True)  # type: ignore[union-attr]
        except psutil.NoSuchProcess:
            return []

    def descendants(self) -> list[psutil.Process]:
        """Every live process carrying this process's marker, except the main process."""
        return [p for p in find_processes(self.marker) if p.pid != self.pid]

    def wait_exit(self, timeout: float | None = None) -> int | None:
        """Wait for the main process to exit and reap it; exit code, or None on timeout."""
        if self._popen is None:
            return None
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
                lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines()]
        except OSError:
            return ""
        lines = [ln for ln in lines if ln and not ln.startswith("--- ")]
        if not lines:
            return ""
        last = lines[-1] if len(lines[-1]) <= 160 else lines[-1][:157] + "..."
        return f" (last line: {last})"


class _Exited(Exception):
    pass


# --------------------------------------------------------------------------------------------
# Registry and process-wide cleanup

_registry: list[ManagedProcess] = []
_registry_lock = threading.RLock()
_handlers_installed = False
_previous_handlers: dict[int, Any] = {}
_cleaning = False
_atexit_registered = False


def _register(proc: ManagedProcess) -> None:
    global _atexit_registered
    with _registry_lock:
        if proc not in _registry:
            _registry.append(proc)
        if not _atexit_registered:
            atexit.register(kill_all)
            _atexit_registered = True


def registered() -> list[ManagedProcess]:
    """Every :class:`ManagedProcess` started by this harness process."""
    with _registry_lock:
        return list(_registry)


def _reap_registered() -> None:
    for proc in registered():
        if proc._popen is not None:
            proc._popen.poll()


def kill_all(timeout: float = 10.0) -> int:
    """SIGKILL every registered process tree and every process carrying :data:`RUN_ID`, until
    none is left (bounded by ``timeout``). Safe to call repeatedly; returns how many processes
    carrying the marker were found and killed."""
    global _cleaning
    with _registry_lock:
        if _cleaning:
            return 0
        _cleaning = True
        try:
            procs = list(_registry)
            for proc in procs:
                if proc.is_running():
                    proc.signal_group(_signal.SIGKILL)
            killed = kill_marked(RUN_ID, timeout=timeout)
            for proc in procs:
                proc.wait_exit(1.0)
            return killed
        finally:
            _cleaning = False


def _on_signal(signum: int, frame: Any) -> None:
    kill_all()
    previous = _previous_handlers.get(signum)
    if callable(previous):
        previous(signum, frame)  # e.g. Python's default SIGINT handler raises KeyboardInterrupt
        return
    raise KeyboardInterrupt(f"signal {_signal.Signals(signum).name}")


def install_signal_handlers() -> None:
    """Once per process, from the main thread: make SIGTERM, SIGINT and SIGHUP kill every
    managed process, then raise KeyboardInterrupt in the main thread (or call the handler that
    was there before) so pytest and ``with`` blocks unwind. Ignored signals stay ignored."""
    global _handlers_installed
    if _handlers_installed or threading.current_thread() is not threading.main_thread():
        return
    for sig in (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP):
        previous = _signal.getsignal(sig)
        if previous is _signal.SIG_IGN or previous is _on_signal:
            continue
        _previous_handlers[sig] = previous
        _signal.signal(sig, _on_signal)
    _handlers_installed = True
