"""ManagedProcess, the process registry and teardown of real brokers on every kind of exit."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from celery_chaos.deployment.processes import (
    RUN_ID,
    ManagedProcess,
    check_port_free,
    count_processes,
    find_processes,
    free_port,
    kill_marked,
    registered,
    wait_for,
)
from celery_chaos.errors import InfrastructureError
from tests import restore_sigint

# A shell that leaves two grandchildren: one in its process group, one double-forked into a new
# session (reparented to init, like `epmd -daemon`).
FORKER = "(setsid sleep 1000 &); sleep 1000 & echo started; wait"


def _own_session_sleepers(proc: ManagedProcess) -> int:
    """Marked processes, other than ``proc``, that lead a session (the setsid'd daemon)."""
    n = 0
    for p in find_processes(proc.marker):
        if p.pid == proc.pid:
            continue
        try:
            n += os.getsid(p.pid) == p.pid
        except ProcessLookupError:
            continue
    return n


def _started(proc: ManagedProcess) -> bool:
    return "started" in proc.log_path.read_text()


def test_start_logs_and_stop_kills_every_descendant(tmp_path: Path) -> None:
    proc = ManagedProcess("forker", ["sh", "-c", FORKER], tmp_path, env={"FOO": "bar"})
    proc.start().wait_ready(lambda: _started(proc), timeout=10)
    assert proc in registered()
    assert proc.is_running() and proc.pid is not None
    assert wait_for(lambda: len(proc.descendants()) == 2, 5)
    # the double-forked one is no longer a child once its parent subshell has exited
    assert wait_for(lambda: len(proc.children()) == 1, 5)
    assert psutil_env(proc.pid)["FOO"] == "bar"
    assert psutil_env(proc.pid)["CHAOS_RUN_ID"] == RUN_ID
    assert count_processes(proc.marker) == 3

    assert proc.stop(timeout=5) == -signal.SIGTERM
    assert count_processes(proc.marker) == 0
    assert not proc.is_running()
    assert proc.log_path.parent == tmp_path and "started" in proc.log_path.read_text()


def test_kill_hits_main_process_only_then_stop_cleans_up(tmp_path: Path) -> None:
    proc = ManagedProcess("forker", ["sh", "-c", FORKER], tmp_path)
    proc.start().wait_ready(lambda: _started(proc), timeout=10)
    assert wait_for(lambda: count_processes(proc.marker) == 3, 5)
    assert proc.kill() == -signal.SIGKILL
    assert count_processes(proc.marker) == 2  # descendants survive a SIGKILL of the main pid
    proc.stop()
    assert count_processes(proc.marker) == 0


def test_signal_group_reaches_the_group_but_not_daemons(tmp_path: Path) -> None:
    proc = ManagedProcess("forker", ["sh", "-c", FORKER], tmp_path)
    proc.start().wait_ready(lambda: _started(proc), timeout=10)
    assert wait_for(lambda: count_processes(proc.marker) == 3, 5)
    # The daemon has left the group only once setsid has run: wait for that, not just for it.
    assert wait_for(lambda: _own_session_sleepers(proc) == 1, 5)
    proc.signal_group(signal.SIGKILL)
    assert proc.wait_exit(5) == -signal.SIGKILL
    assert wait_for(lambda: count_processes(proc.marker) == 1, 5)  # the setsid'd sleep
    proc.kill_tree()
    assert count_processes(proc.marker) == 0


def test_wait_ready_reports_early_exit_with_log(tmp_path: Path) -> None:
    proc = ManagedProcess("dies", ["sh", "-c", "echo cannot bind; exit 3"], tmp_path).start()
    with pytest.raises(InfrastructureError) as err:
        proc.wait_ready(lambda: False, timeout=10)
    msg = str(err.value)
    assert "\n" not in msg and "code 3" in msg
    assert str(tmp_path / "dies.log") in msg and "cannot bind" in msg


def test_wait_ready_timeout_kills_the_process(tmp_path: Path) -> None:
    proc = ManagedProcess("slow", ["sleep", "1000"], tmp_path).start()
    with pytest.raises(InfrastructureError, match=r"not ready after 0.3s: see .*slow\.log"):
        proc.wait_ready(lambda: False, timeout=0.3)
    assert not proc.is_running() and count_processes(proc.marker) == 0


def test_missing_command_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(InfrastructureError, match="cannot start nope") as err:
        ManagedProcess("nope", ["/nonexistent/binary"], tmp_path).start()
    assert "\n" not in str(err.value)


def test_process_that_overwrites_its_environ_is_still_found(tmp_path: Path) -> None:
    """redis-server's default proc title overwrites /proc/PID/environ (so the env marker);
    processes this harness started are also found through their session."""
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--set-proc-title", "yes"]
    proc = ManagedProcess("titled", cmd, tmp_path).start()
    assert wait_for(lambda: "CHAOS_RUN_ID" not in psutil_env(proc.pid), 5)
    assert count_processes(proc.marker) == 1 and count_processes() >= 1
    proc.stop()
    assert count_processes(proc.marker) == 0


def test_free_port_and_clash() -> None:
    ports = {free_port() for _ in range(5)}
    assert len(ports) == 5
    port = ports.pop()
    check_port_free(port, "test")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        with pytest.raises(InfrastructureError, match=f"port {port} for test is already in use"):
            check_port_free(port, "test")


def psutil_env(pid: int | None) -> dict[str, str]:
    return psutil.Process(pid).environ()


# --------------------------------------------------------------------------------------------
# Teardown of real brokers when the harness process ends in every way it can.

CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from celery_chaos.deployment import processes
    from celery_chaos.deployment.brokers import RabbitMQServer, RedisServer

    run_dir = Path(sys.argv[1])
    RedisServer(run_dir, persistence="aof-always").start()
    RabbitMQServer(run_dir).start()
    (run_dir / "ready").write_text(processes.RUN_ID)
    command = sys.stdin.readline().strip()  # block until told (or signalled)
    if command == "raise":
        raise RuntimeError("boom")
    # "exit": return normally, leaving both servers running for atexit to clean up
    """
)
ENDINGS = ["exit", "raise", "SIGTERM", "SIGINT", "SIGKILL"]


@pytest.fixture(scope="module")
def harness_children(tmp_path_factory: pytest.TempPathFactory):
    """One harness child per ending, started together so the RabbitMQ boots overlap."""
    script = tmp_path_factory.mktemp("child") / "child.py"
    script.write_text(CHILD)
    children = {}
    for ending in ENDINGS:
        run_dir = tmp_path_factory.mktemp(f"child-{ending}")
        log = open(run_dir / "child.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [sys.executable, str(script), str(run_dir)],
            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k != "CHAOS_RUN_ID"},
            preexec_fn=restore_sigint,
        )
        children[ending] = (proc, run_dir, log)
    yield children
    for proc, run_dir, log in children.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        ready = run_dir / "ready"
        if ready.exists():
            kill_marked(ready.read_text())


@pytest.mark.parametrize("ending", ENDINGS)
def test_no_process_survives_the_harness(harness_children, ending: str) -> None:
    proc, run_dir, _ = harness_children[ending]
    ready = run_dir / "ready"
    assert wait_for(lambda: ready.exists() or proc.poll() is not None, 90), "child never ready"
    assert ready.exists(), (run_dir / "child.log").read_text()[-2000:]
    run_id = ready.read_text()
    names = {p.name() for p in find_processes(run_id)}
    assert {"redis-server", "epmd", "beam.smp", "erl_child_setup"} <= names

    if ending in ("exit", "raise"):
        proc.stdin.write(f"{ending}\n".encode())
        proc.stdin.flush()
    else:
        proc.send_signal(getattr(signal, ending))
    code = proc.wait(timeout=60)
    expected = {"exit": 0, "raise": 1, "SIGKILL": -signal.SIGKILL}
    if ending in expected:
        assert code == expected[ending]
    else:  # the handler cleaned up, then raised KeyboardInterrupt
        assert code != 0
        assert "KeyboardInterrupt" in (run_dir / "child.log").read_text()
    start = time.monotonic()
    left = wait_for(lambda: count_processes(run_id) == 0, 15)
    assert left, [p.cmdline() for p in find_processes(run_id)]
    print(f"{ending}: all gone {time.monotonic() - start:.2f}s after the child exited")
