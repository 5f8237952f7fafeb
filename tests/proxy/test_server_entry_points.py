"""Entry points: ``run()`` / ``python -m celery_chaos.faults.proxy`` and ``ProxyServer``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from celery_chaos.errors import InfrastructureError, UsageError
from celery_chaos.faults.proxy import ProxyServer, ToxiproxyClient, run

from .servers import can_connect

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[2]


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "celery_chaos.faults.proxy", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_run_rejects_bad_port() -> None:
    with pytest.raises(UsageError, match="invalid port"):
        run(port=70000)
    with pytest.raises(UsageError, match="invalid port"):
        run(port="abc")  # type: ignore[arg-type]


def test_run_reports_port_in_use() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        with pytest.raises(InfrastructureError, match="cannot listen on 127.0.0.1:") as err:
            run(port=busy.getsockname()[1])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "args,needle",
    [(["--port", "abc"], "invalid port 'abc'"), (["--host", "no such host!"], "invalid host")],
)
def test_cli_bad_input_is_one_line(args: list[str], needle: str) -> None:
    proc = spawn(*args)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 2
    assert err.strip().count("\n") == 0 and needle in err
    assert "Traceback" not in err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_serves_until_signal(signum: int) -> None:
    proc = spawn("--port", "0")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("toxiproxy-compatible API on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        client = ToxiproxyClient(url)
        assert client.version().startswith("2.12.0")
        port = client.create_proxy("x", "127.0.0.1:0", "127.0.0.1:9").listen_port
        assert can_connect(port)
        os.kill(proc.pid, signum)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        assert not can_connect(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_proxy_server_background_thread() -> None:
    server = ProxyServer(port=0)
    url = server.start()
    assert url == server.url and url.startswith("http://127.0.0.1:")
    assert server.start() == url  # idempotent
    assert requests.get(url + "/version", timeout=5).status_code == 200
    port = ToxiproxyClient(url).create_proxy("x", "127.0.0.1:0", "127.0.0.1:9").listen_port
    server.stop()
    server.stop()
    assert not can_connect(port)
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/version", timeout=2)


def test_proxy_server_port_in_use_and_bad_host() -> None:
    with ProxyServer() as first:
        port = int(first.url.rsplit(":", 1)[1])
        with pytest.raises(InfrastructureError, match="(?i)address already in use"):
            ProxyServer(port=port).start()
    with pytest.raises(UsageError):
        ProxyServer(host="no such host!").start()


def test_toxiproxy_flags_and_config_file(tmp_path: Path) -> None:
    """The real binary's spellings (``-host=``, ``-port=``, ``-config=``), so the server
    stands in for the Toxiproxy image with the same compose command; the file's proxies exist
    once the API line is printed."""
    with socket.create_server(("127.0.0.1", 0)) as upstream:
        up = upstream.getsockname()[1]
        config = tmp_path / "toxiproxy.json"
        config.write_text(
            f'[{{"name": "redis", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:{up}"}},'
            f' {{"name": "off", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:{up}",'
            ' "enabled": false}]'
        )
        proc = spawn("-host=127.0.0.1", "-port=0", f"-config={config}")
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().split(" on ")[-1].strip()
            proxies = requests.get(f"{url}/proxies", timeout=5).json()
            assert set(proxies) == {"redis", "off"}
            assert proxies["redis"]["enabled"] and not proxies["off"]["enabled"]
            assert proxies["redis"]["upstream"] == f"127.0.0.1:{up}"
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=10)


@pytest.mark.parametrize("content,needle", [(None, "No such file"), ("{}", "not a list")])
def test_a_bad_config_file_is_one_line(tmp_path: Path, content: str | None, needle: str) -> None:
    config = tmp_path / "toxiproxy.json"
    if content is not None:
        config.write_text(content)
    proc = spawn("-port=0", f"-config={config}")
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 2 and err.strip().count("\n") == 0 and needle in err, err
