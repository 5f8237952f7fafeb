"""Benchmark the network fault path: the proxy's own cost and Celery's throughput through it.

Run: ``.venv/bin/python bench/bench_network.py [--tasks 3000] [--rounds 3] [--messages 5000]``

All in one run, everything on 127.0.0.1:

1. Sockets (``bench/bench_proxy.py``'s functions): 200-byte round trips and bulk throughput,
   direct vs through the embedded proxy with no toxic; the accuracy of a 50 ms and a 200 ms
   ``latency`` toxic. Targets: added p50 <= 50 us, bulk >= 50 % of direct, toxic within
   +-2 ms or +-5 %.
2. Celery: one prefork worker (``-c 2``) drains ``--tasks`` pre-published trivial tasks from
   a private Redis and a private RabbitMQ, connected directly or through a proxy link (as
   ``deploy(proxied=True)`` does), rounds interleaved. Throughput is taken from the recorded
   history: first ``started`` to last ``succeeded``, so worker start-up is left out.
   Target: proxied >= 95 % of direct.

When ``socat`` is on the PATH, round trips and Celery drains also go through a socat relay (a
C relay with no fault logic), interleaved with the others: it shows what any user-space relay
costs here, and two more targets are judged against it: the proxy's added p50 round trip
<= 1.25x socat's, and proxied Celery throughput >= 95 % of socat's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
from celery import Celery

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_proxy  # noqa: E402

from celery_chaos.deployment.brokers import RabbitMQServer, RedisServer  # noqa: E402
from celery_chaos.deployment.links import LinkProxies, with_host_port  # noqa: E402
from celery_chaos.deployment.processes import ManagedProcess, free_port, kill_all  # noqa: E402
from celery_chaos.faults.proxy.client import ToxiproxyClient  # noqa: E402
from celery_chaos.history.schema import Kind  # noqa: E402
from celery_chaos.history.store import read_history  # noqa: E402

QUEUE = "bench"


# --------------------------------------------------------------------------- sockets


def socat_relay(run_dir: Path, upstream_port: int) -> int | None:
    """Start a socat relay to ``upstream_port`` (reaped by ``kill_all``); its port, or None
    when socat is not installed."""
    exe = shutil.which("socat")
    if exe is None:
        return None
    port = free_port()
    cmd = [
        exe,
        f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,nodelay",
        f"TCP:127.0.0.1:{upstream_port},nodelay",
    ]
    proc = ManagedProcess(f"socat-{upstream_port}", cmd, run_dir)
    proc.start().wait_ready(
        lambda: any(
            c.laddr.port == port and c.status == psutil.CONN_LISTEN
            for c in psutil.net_connections("tcp4")
        ),
        timeout=10,
    )
    return port


def socket_figures(messages: int, bulk_mib: int, runs: int, run_dir: Path) -> dict[str, float]:
    """Round trips, bulk and latency-toxic accuracy, direct vs proxied (bench_proxy's code),
    and round trips through socat when it is installed."""
    ctx = mp.get_context("spawn")
    ports: mp.Queue = ctx.Queue()
    upstream = ctx.Process(target=bench_proxy._upstreams, args=(ports,), daemon=True)
    upstream.start()
    echo_port, sink_port = ports.get(timeout=10)
    proc, url = bench_proxy.start_proxy()
    out: dict[str, float] = {}
    try:
        api = ToxiproxyClient(url)
        echo = api.create_proxy("bench_echo", "127.0.0.1:0", f"127.0.0.1:{echo_port}")
        sink = api.create_proxy("bench_sink", "127.0.0.1:0", f"127.0.0.1:{sink_port}")
        socat_port = socat_relay(run_dir, echo_port)
        direct_rt: list[float] = []
        proxy_rt: list[float] = []
        socat_rt: list[float] = []
        blocks = max(2, messages // 500)
        for _ in range(blocks):  # interleaved, so drift on a shared machine hits all alike
            direct_rt += bench_proxy.round_trips(echo_port, messages // blocks, warmup=50)
            proxy_rt += bench_proxy.round_trips(echo.listen_port, messages // blocks, warmup=50)
            if socat_port is not None:
                socat_rt += bench_proxy.round_trips(socat_port, messages // blocks, warmup=50)
        total = bulk_mib * 1024 * 1024
        direct_bw = proxy_bw = 0.0
        for _ in range(runs):
            direct_bw = max(direct_bw, bench_proxy.bulk(sink_port, total))
            proxy_bw = max(proxy_bw, bench_proxy.bulk(sink.listen_port, total))
        base = statistics.median(proxy_rt)
        for ms in (50, 200):
            api.add_toxic("bench_echo", "latency", {"latency": ms, "jitter": 0}, name="lat")
            rts = bench_proxy.round_trips(echo.listen_port, 40 if ms > 50 else 100, warmup=3)
            api.remove_toxic("bench_echo", "lat")
            added = [(t - base) / 1000.0 for t in rts]
            out[f"toxic_{ms}_median_ms"] = statistics.median(added)
            out[f"toxic_{ms}_p99_err_ms"] = bench_proxy.pct([abs(x - ms) for x in added], 0.99)
    finally:
        proc.terminate()
        proc.wait(10)
        upstream.terminate()
    out.update(
        direct_p50_us=bench_proxy.pct(direct_rt, 0.5),
        proxy_p50_us=bench_proxy.pct(proxy_rt, 0.5),
        direct_p99_us=bench_proxy.pct(direct_rt, 0.99),
        proxy_p99_us=bench_proxy.pct(proxy_rt, 0.99),
        direct_mb_s=direct_bw,
        proxy_mb_s=proxy_bw,
    )
    if socat_rt:
        out["socat_p50_us"] = bench_proxy.pct(socat_rt, 0.5)
    return out


# --------------------------------------------------------------------------- celery


def _worker_env(broker: str, history: Path) -> dict[str, str]:
    return {
        "CHAOS_APP": "tests.userapp.app:app",
        "CHAOS_BROKER_URL": broker,
        "CHAOS_RESULT_BACKEND": "",
        "CHAOS_CONF": json.dumps(
            {"task_acks_late": True, "task_ignore_result": True, "worker_prefetch_multiplier": 16}
        ),
        "CHAOS_NODE_NAME": "bench@chaos",
        "CHAOS_ROLE": "worker",
        "CHAOS_HISTORY_DIR": str(history),
        "PYTHONPATH": str(ROOT),
    }


def _succeeded(history: Path) -> int:
    n = 0
    for path in history.glob("*.jsonl"):
        with path.open() as fh:
            n += sum(1 for line in fh if '"succeeded"' in line)
    return n


def _cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def drain_rate(
    publish_url: str,
    worker_url: str,
    n: int,
    run_dir: Path,
    label: str,
    proxy_pid: int | None = None,
) -> tuple[float, float, float]:
    """Publish ``n`` trivial tasks on ``publish_url``; a worker on ``worker_url`` drains them.

    Returns tasks/s between the first ``started`` and the last ``succeeded`` record, the
    machine's busy share over the drain (all cores), and the proxy's CPU seconds per 1000
    tasks (0 without ``proxy_pid``).
    """
    client = Celery("bench", broker=publish_url, set_as_current=False)
    client.conf.task_default_queue = QUEUE
    with client.producer_or_acquire() as producer:
        for i in range(n):
            client.send_task("userapp.add", args=[i, 1], producer=producer)
    client.close()
    history = run_dir / f"history-{label}-{time.monotonic_ns()}"
    history.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "celery_chaos.deployment.celery_app:app",
        "worker",
        "-n",
        "bench@chaos",
        "-Q",
        QUEUE,
        "-c",
        "2",
        "-P",
        "prefork",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-l",
        "WARNING",
    ]
    proc = ManagedProcess(
        f"bench-worker-{label}", cmd, run_dir, env=_worker_env(worker_url, history)
    )
    proc.start()
    cpu0, proxy0 = psutil.cpu_times(), _cpu_s(proxy_pid)
    deadline = time.monotonic() + 120
    while _succeeded(history) < n:
        if not proc.is_running() or time.monotonic() > deadline:
            proc.stop(timeout=10)
            raise RuntimeError(f"bench worker did not drain {n} tasks; see {proc.log_path}")
        time.sleep(0.2)
    cpu1, proxy1 = psutil.cpu_times(), _cpu_s(proxy_pid)
    proc.stop(timeout=10)
    recs = read_history(history).records
    first = min(r.mono_ns for r in recs if r.kind is Kind.STARTED)
    last = max(r.mono_ns for r in recs if r.kind is Kind.SUCCEEDED)
    idle = (cpu1.idle - cpu0.idle) + (cpu1.iowait - cpu0.iowait)
    total = sum(cpu1) - sum(cpu0)
    busy = 1 - idle / total if total > 0 else 0.0
    return (n - 1) / ((last - first) / 1e9), busy, (proxy1 - proxy0) * 1000 / n


Rounds = list[tuple[float, float, float]]


def celery_figures(
    tasks: int, rounds: int, run_dir: Path, brokers: list[str]
) -> dict[str, tuple[Rounds, Rounds, Rounds]]:
    """Per broker: (direct, proxied, socat) rounds of (tasks/s, machine busy, proxy CPU
    s/1000); the socat rounds are empty without socat."""
    out: dict[str, tuple[Rounds, Rounds, Rounds]] = {}
    links = LinkProxies(run_dir / "proxy").start()
    try:
        for kind in brokers:
            server: RedisServer | RabbitMQServer
            if kind == "redis":
                server = RedisServer(run_dir).start()
                url = server.url(0)
            else:
                server = RabbitMQServer(run_dir).start()
                url = server.add_vhost("bench")
            try:
                proxied = links.url(f"{kind}-broker", url)
                drain_rate(url, url, tasks // 4, run_dir, f"{kind}-warmup")  # imports, cache
                direct: Rounds = []
                via: Rounds = []
                ref: Rounds = []
                pid = links.proc.pid if links.proc is not None else None
                modes = [(direct, url, "direct"), (via, proxied, "proxied")]
                socat_port = socat_relay(run_dir, server.port)
                if socat_port is not None:
                    modes.append((ref, with_host_port(url, "127.0.0.1", socat_port), "socat"))
                for i in range(rounds):  # alternate which mode goes first
                    for sink, worker_url, label in modes if i % 2 == 0 else modes[::-1]:
                        sink.append(
                            drain_rate(url, worker_url, tasks, run_dir, f"{kind}-{label}-{i}", pid)
                        )
                out[kind] = (direct, via, ref)
            finally:
                server.stop()
    finally:
        links.stop()
        kill_all()
    return out


# --------------------------------------------------------------------------- report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=3000, help="tasks per Celery round")
    parser.add_argument("--rounds", type=int, default=3, help="Celery rounds per mode")
    parser.add_argument("--messages", type=int, default=5000, help="round trips per case")
    parser.add_argument("--bulk-mib", type=int, default=256, help="MiB per bulk run")
    parser.add_argument("--brokers", default="redis,rabbitmq", help="comma-separated")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        try:
            sock = socket_figures(args.messages, args.bulk_mib, 3, Path(tmp) / "sockets")
        finally:
            kill_all()
        celery = celery_figures(args.tasks, args.rounds, Path(tmp), args.brokers.split(","))

    added = sock["proxy_p50_us"] - sock["direct_p50_us"]
    added99 = sock["proxy_p99_us"] - sock["direct_p99_us"]
    ratio = sock["proxy_mb_s"] / sock["direct_mb_s"]
    print(f"{psutil.cpu_count()} cores; load average before: {psutil.getloadavg()[0]:.2f}")
    print(f"{'measure':<40}{'direct':>10}{'proxy':>10}{'result':>20}")
    print(
        f"{'200 B round trip p50 (us)':<40}{sock['direct_p50_us']:>10.1f}"
        f"{sock['proxy_p50_us']:>10.1f}{f'+{added:.1f} us':>20}"
    )
    ok_socat_rt: bool | None = None
    if "socat_p50_us" in sock:
        ref = sock["socat_p50_us"]
        ref_added = ref - sock["direct_p50_us"]
        ok_socat_rt = added <= 1.25 * ref_added
        print(
            f"{'  reference: socat relay p50 (us)':<40}{'':>10}{ref:>10.1f}"
            f"{f'+{ref_added:.1f} us':>20}"
        )
        print(f"{'  proxy added / socat added':<40}{'':>10}{'':>10}{added / ref_added:>20.2f}")
    print(
        f"{'200 B round trip p99 (us)':<40}{sock['direct_p99_us']:>10.1f}"
        f"{sock['proxy_p99_us']:>10.1f}"
        f"{f'+{added99:.1f} us':>20}"
    )
    print(
        f"{'bulk throughput (MB/s)':<40}{sock['direct_mb_s']:>10.0f}{sock['proxy_mb_s']:>10.0f}"
        f"{f'{ratio:.0%}':>20}"
    )
    ok_lat = True
    for ms in (50, 200):
        med, p99 = sock[f"toxic_{ms}_median_ms"], sock[f"toxic_{ms}_p99_err_ms"]
        ok_lat &= max(abs(med - ms), p99) <= max(2.0, 0.05 * ms)
        print(
            f"{f'latency toxic {ms} ms: added (ms)':<40}{'':>10}{med:>10.2f}"
            f"{f'p99 err {p99:.2f} ms':>20}"
        )
    ok_celery = True
    ok_socat_celery: bool | None = None
    for kind, (direct, via, ref_rounds) in celery.items():
        d = statistics.median(r[0] for r in direct)
        p = statistics.median(r[0] for r in via)
        ok_celery &= p >= 0.95 * d
        rounds = " / ".join(f"{a[0]:.0f}:{b[0]:.0f}" for a, b in zip(direct, via, strict=True))
        busy_d = statistics.median(r[1] for r in direct)
        busy_p = statistics.median(r[1] for r in via)
        proxy_cpu = statistics.median(r[2] for r in via)
        print(f"{f'Celery tasks/s, {kind}':<40}{d:>10.0f}{p:>10.0f}{f'{p / d:.1%}':>20}")
        print(f"{'  rounds (direct:proxied)':<40}{rounds}")
        if ref_rounds:
            r = statistics.median(x[0] for x in ref_rounds)
            ok_socat_celery = (ok_socat_celery is not False) and p >= 0.95 * r
            print(f"{'  reference: socat relay':<40}{'':>10}{r:>10.0f}{f'{r / d:.1%}':>20}")
            print(f"{'  socat rounds':<40}{' / '.join(f'{x[0]:.0f}' for x in ref_rounds)}")
            print(f"{'  proxied / socat':<40}{'':>10}{'':>10}{f'{p / r:.1%}':>20}")
        print(
            f"{'  machine busy (all cores)':<40}{busy_d:>10.0%}{busy_p:>10.0%}"
            f"{f'proxy {proxy_cpu:.2f} cpu-s/1k':>20}"
        )
    print(
        f"targets: added p50 <= 50 us: {'met' if added <= 50 else 'MISSED'}; "
        f"bulk >= 50 %: {'met' if ratio >= 0.5 else 'MISSED'}; "
        f"latency within +-2 ms / 5 %: {'met' if ok_lat else 'MISSED'}; "
        f"Celery >= 95 % of direct: {'met' if ok_celery else 'MISSED'}"
    )
    if ok_socat_rt is not None:
        line = f"added p50 <= 1.25x socat's: {'met' if ok_socat_rt else 'MISSED'}"
        if ok_socat_celery is not None:
            line += f"; Celery >= 95 % of socat: {'met' if ok_socat_celery else 'MISSED'}"
        print(f"targets against socat: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
