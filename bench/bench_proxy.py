"""Benchmark the embedded fault proxy: direct vs proxied round trips and bulk throughput.

Run: ``.venv/bin/python bench/bench_proxy.py [--messages N] [--bulk-mib M]``

The proxy runs as its own process (``python -m celery_chaos.faults.proxy --port 0``), the upstream
echo/sink servers in another, the client here; everything stays on 127.0.0.1. Targets: added p50
round trip <= 50 us, proxied bulk >= 50 % of direct, a 50 ms latency toxic within +-2 ms or +-5 %.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from celery_chaos.faults.proxy.client import ToxiproxyClient  # noqa: E402

MSG_SIZE = 200
BULK_BLOCK = 256 * 1024


# --------------------------------------------------------------------------- upstream servers


def _serve(listener: socket.socket, handler: Callable[[socket.socket], None]) -> None:
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handler, args=(conn,), daemon=True).start()


def _echo(conn: socket.socket) -> None:
    buf = bytearray(65536)
    with conn:
        while True:
            n = conn.recv_into(buf)
            if not n:
                return
            conn.sendall(memoryview(buf)[:n])


def _sink(conn: socket.socket) -> None:
    """Read an 8-byte length, then that many bytes, then answer one byte."""
    buf = bytearray(1 << 20)
    with conn:
        header = b""
        while len(header) < 8:
            chunk = conn.recv(8 - len(header))
            if not chunk:
                return
            header += chunk
        remaining = int.from_bytes(header, "big")
        while remaining > 0:
            n = conn.recv_into(buf, min(len(buf), remaining))
            if not n:
                return
            remaining -= n
        conn.sendall(b"k")


def _upstreams(ports: mp.Queue) -> None:  # runs in a child process
    servers = []
    for handler in (_echo, _sink):
        listener = socket.create_server(("127.0.0.1", 0))
        servers.append(listener)
        threading.Thread(target=_serve, args=(listener, handler), daemon=True).start()
    ports.put([s.getsockname()[1] for s in servers])
    threading.Event().wait()


# --------------------------------------------------------------------------- measurements


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def round_trips(port: int, count: int, warmup: int = 300) -> list[float]:
    """Round-trip times (microseconds) of ``count`` 200-byte messages over one connection."""
    payload = os.urandom(MSG_SIZE)
    buf = bytearray(MSG_SIZE)
    view = memoryview(buf)
    out: list[float] = []
    with _connect(port) as sock:
        for i in range(warmup + count):
            start = time.perf_counter_ns()
            sock.sendall(payload)
            got = 0
            while got < MSG_SIZE:
                n = sock.recv_into(view[got:])
                if not n:
                    raise RuntimeError("connection closed during round trip")
                got += n
            if i >= warmup:
                out.append((time.perf_counter_ns() - start) / 1000.0)
    return out


def bulk(port: int, total: int) -> float:
    """Throughput in MB/s (10^6 bytes) of sending ``total`` bytes to the sink."""
    block = os.urandom(BULK_BLOCK)
    with _connect(port) as sock:
        start = time.perf_counter()
        sock.sendall(total.to_bytes(8, "big"))
        sent = 0
        while sent < total:
            n = min(BULK_BLOCK, total - sent)
            sock.sendall(block if n == BULK_BLOCK else block[:n])
            sent += n
        if sock.recv(1) != b"k":
            raise RuntimeError("sink did not confirm")
        return total / (time.perf_counter() - start) / 1e6


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_proxy() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery_chaos.faults.proxy", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if "http://" not in line:
        proc.kill()
        raise RuntimeError(f"proxy did not start: {line!r}")
    return proc, line.split(" on ", 1)[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000, help="round trips per case")
    parser.add_argument("--bulk-mib", type=int, default=256, help="MiB per bulk run")
    parser.add_argument("--runs", type=int, default=3, help="bulk runs per case (best is kept)")
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    ports_q: mp.Queue = ctx.Queue()
    upstream_proc = ctx.Process(target=_upstreams, args=(ports_q,), daemon=True)
    upstream_proc.start()
    echo_port, sink_port = ports_q.get(timeout=10)
    proxy_proc, url = start_proxy()
    try:
        client = ToxiproxyClient(url)
        echo = client.create_proxy("bench_echo", "127.0.0.1:0", f"127.0.0.1:{echo_port}")
        sink = client.create_proxy("bench_sink", "127.0.0.1:0", f"127.0.0.1:{sink_port}")

        direct_rt: list[float] = []
        proxy_rt: list[float] = []
        for _ in range(2):  # interleave so drift on a shared machine hits both alike
            direct_rt += round_trips(echo_port, args.messages // 2)
            proxy_rt += round_trips(echo.listen_port, args.messages // 2)
        total = args.bulk_mib * 1024 * 1024
        direct_bw = proxy_bw = 0.0
        for _ in range(args.runs):
            direct_bw = max(direct_bw, bulk(sink_port, total))
            proxy_bw = max(proxy_bw, bulk(sink.listen_port, total))

        time.sleep(0.5)
        client.add_toxic("bench_echo", "latency", {"latency": 50, "jitter": 0})
        toxic_rt = round_trips(echo.listen_port, 100, warmup=5)
        client.remove_toxic("bench_echo", "latency_downstream")
        added_ms = [(t - statistics.median(proxy_rt)) / 1000.0 for t in toxic_rt]
    finally:
        proxy_proc.terminate()
        proxy_proc.wait(10)
        upstream_proc.terminate()

    d50, d99 = pct(direct_rt, 0.5), pct(direct_rt, 0.99)
    p50, p99 = pct(proxy_rt, 0.5), pct(proxy_rt, 0.99)
    ratio = proxy_bw / direct_bw
    lat_med = statistics.median(added_ms)
    lat_p99 = pct([abs(x - 50.0) for x in added_ms], 0.99)
    print(f"{'measure':<36}{'direct':>10}{'proxy':>10}{'result':>18}")
    print(f"{'200 B round trip p50 (us)':<36}{d50:>10.1f}{p50:>10.1f}{f'+{p50 - d50:.1f} us':>18}")
    print(f"{'200 B round trip p99 (us)':<36}{d99:>10.1f}{p99:>10.1f}{f'+{p99 - d99:.1f} us':>18}")
    print(f"{'bulk throughput (MB/s)':<36}{direct_bw:>10.0f}{proxy_bw:>10.0f}{f'{ratio:.0%}':>18}")
    print(
        f"{'latency toxic 50 ms: added (ms)':<36}{'':>10}{lat_med:>10.2f}"
        f"{f'p99 err {lat_p99:.2f} ms':>18}"
    )
    ok_rt = p50 - d50 <= 50.0
    ok_bw = ratio >= 0.5
    ok_lat = max(abs(lat_med - 50.0), lat_p99) <= max(2.0, 0.05 * 50)
    print(
        f"targets: added p50 <= 50 us: {'met' if ok_rt else 'MISSED'}; "
        f"bulk >= 50 % of direct: {'met' if ok_bw else 'MISSED'}; "
        f"latency within +-2 ms / 5 %: {'met' if ok_lat else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
