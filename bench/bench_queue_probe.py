"""Benchmark of RabbitMQ queue-depth probes (not run by CI; figures go in the closing note).

The harness asks a private node ``{queue: (ready, unacked)}`` while it waits (the drain, the
schedule's ``queued`` trigger). Each probe below is timed against a node started the way the
harness starts it (:class:`RabbitMQServer`), holding known depths: wall and CPU time per call
(the probe's own process and its child processes; the node's CPU is reported apart, less its
idle rate), repeated, as min / median / p90 / max.

- ``rabbitmqctl``: ``rabbitmqctl list_queues`` (the probe before issue 15: an Erlang VM start
  per call).
- ``erl_call``: :meth:`RabbitMQServer.queue_depths` (an RPC to the node through ``erl_call``,
  the same figures as ``rabbitmqctl``).
- ``amqp-passive``: a passive ``queue_declare`` per queue on a fresh py-amqp connection
  (ready and consumer counts only; no unacked figure).
- ``amqp-passive-kept``: the same on a connection kept open (as the sampler does).
- ``management``: ``GET /api/queues/<vhost>`` on a second node with ``rabbitmq_management``
  enabled (``collect_statistics_interval`` = ``--stats-interval-ms``), on a kept HTTP session.
  Also measured: how much longer that node takes to start, and how stale its figures are
  (publish one message, then poll until the API shows it).

Run: ``.venv/bin/python bench/bench_queue_probe.py [--calls 30] [--ctl-calls 10]
[--startups 2] [--stats-interval-ms 100] [--skip-management]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import amqp
import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from celery_chaos.deployment.brokers import RabbitMQServer  # noqa: E402
from celery_chaos.deployment.processes import free_port, kill_all  # noqa: E402

VHOST = "bench"
QUEUES = ["emails", "reports", "fetch", "default"]
READY = {"emails": 50, "reports": 20, "fetch": 7, "default": 0}
HELD = 5  # deliveries of "emails" held unacked by a consumer
EXPECTED = {q: (n - (HELD if q == "emails" else 0), HELD if q == "emails" else 0)
            for q, n in READY.items()}


class ManagementServer(RabbitMQServer):
    """A node like the harness's, with ``rabbitmq_management`` enabled."""

    def _prepare(self) -> None:
        super()._prepare()
        (self.base_dir / "enabled_plugins").write_text("[rabbitmq_management].\n")


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _node_cpu(server: RabbitMQServer) -> float:
    total = 0.0
    for pid in server.pids():
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _idle_cpu_rate(server: RabbitMQServer, seconds: float = 2.0) -> float:
    """The node's CPU seconds per second when nobody asks it anything."""
    c0 = _node_cpu(server)
    time.sleep(seconds)
    return (_node_cpu(server) - c0) / seconds


def _fill(server: RabbitMQServer) -> amqp.Connection:
    """Declare the queues in VHOST, publish READY, hold HELD deliveries of "emails" unacked on
    a connection that the caller keeps open."""
    conn = amqp.Connection(f"127.0.0.1:{server.port}", virtual_host=VHOST)
    conn.connect()
    ch = conn.channel()
    for q in QUEUES:
        ch.queue_declare(q, durable=True, auto_delete=False)
        for i in range(READY[q]):
            ch.basic_publish(amqp.Message(str(i)), routing_key=q)
    ch.basic_qos(0, HELD, False)
    got: list[Any] = []
    ch.basic_consume("emails", callback=got.append)
    deadline = time.monotonic() + 10
    while len(got) < HELD and time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=0.5)
        except TimeoutError:
            pass
    assert len(got) == HELD, got
    return conn


def _ctl_probe(server: RabbitMQServer) -> dict[str, tuple[int, int]]:
    """The probe before issue 15."""
    out = server.rabbitmqctl("list_queues", "-p", VHOST, "name", "messages_ready",
                             "messages_unacknowledged", "--formatter", "json")
    return {r["name"]: (int(r["messages_ready"] or 0), int(r["messages_unacknowledged"] or 0))
            for r in json.loads(out or "[]")}


def _passive(conn: amqp.Connection) -> dict[str, tuple[int, int]]:
    """Ready counts by passive declare; unacked unknown (reported as -1)."""
    out = {}
    ch = conn.channel()
    try:
        for q in QUEUES:
            _, ready, _consumers = ch.queue_declare(q, passive=True)
            out[q] = (ready, -1)
    finally:
        ch.close()
    return out


def _passive_fresh(server: RabbitMQServer) -> dict[str, tuple[int, int]]:
    conn = amqp.Connection(f"127.0.0.1:{server.port}", virtual_host=VHOST, connect_timeout=2)
    conn.connect()
    try:
        return _passive(conn)
    finally:
        conn.close()


def _mgmt_probe(session: requests.Session, port: int) -> dict[str, tuple[int, int]]:
    r = session.get(f"http://127.0.0.1:{port}/api/queues/{VHOST}",
                    params={"columns": "name,messages_ready,messages_unacknowledged"}, timeout=5)
    r.raise_for_status()
    return {q["name"]: (q.get("messages_ready", 0), q.get("messages_unacknowledged", 0))
            for q in r.json()}


def _measure(name: str, probe: Callable[[], dict[str, tuple[int, int]]], calls: int,
             server: RabbitMQServer, idle_rate: float, check_unacked: bool = True) -> dict:
    first = probe()  # warm-up (and the answer, checked)
    want = {q: (r, u if check_unacked else -1) for q, (r, u) in EXPECTED.items()}
    ok = first == want
    walls, cpus = [], []
    node0, t_all = _node_cpu(server), time.perf_counter()
    for _ in range(calls):
        c0, k0, t0 = time.process_time(), _children_cpu(), time.perf_counter()
        probe()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0 + _children_cpu() - k0)
    span = time.perf_counter() - t_all
    node = max(0.0, _node_cpu(server) - node0 - idle_rate * span) / calls
    return {"probe": name, "calls": calls, "answer_ok": ok, "answer": first,
            "wall_ms": _spread(walls), "cpu_ms": _spread(cpus), "node_cpu_ms": node * 1e3}


def _spread(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, round(0.9 * (len(xs) - 1)))]
    return {k: round(v * 1e3, 2) for k, v in
            (("min", xs[0]), ("median", statistics.median(xs)), ("p90", p90), ("max", xs[-1]))}


def _start(cls: type[RabbitMQServer], run_dir: Path, **kw: Any) -> tuple[RabbitMQServer, float]:
    server = cls(run_dir, **kw)
    t0 = time.monotonic()
    server.start()
    return server, time.monotonic() - t0


def _staleness(server: RabbitMQServer, session: requests.Session, port: int,
               rounds: int = 5) -> list[float]:
    """Seconds from a confirmed publish to the management API showing it."""
    conn = amqp.Connection(f"127.0.0.1:{server.port}", virtual_host=VHOST, confirm_publish=True)
    conn.connect()
    ch = conn.channel()
    lags = []
    try:
        for _ in range(rounds):
            before = _mgmt_probe(session, port)["default"][0]
            ch.basic_publish(amqp.Message("x"), routing_key="default")
            t0 = time.perf_counter()
            while _mgmt_probe(session, port)["default"][0] == before:
                time.sleep(0.002)
            lags.append(round(time.perf_counter() - t0, 3))
            time.sleep(0.3)
    finally:
        ch.queue_purge("default")
        conn.close()
    return lags


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=30, help="calls per fast probe")
    ap.add_argument("--ctl-calls", type=int, default=10, help="calls of rabbitmqctl")
    ap.add_argument("--startups", type=int, default=2, help="node starts of each kind")
    ap.add_argument("--stats-interval-ms", type=int, default=100)
    ap.add_argument("--skip-management", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    print(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f}", flush=True)
    results: dict[str, Any] = {"probes": []}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            plain: list[float] = []
            for i in range(args.startups):
                server, s = _start(RabbitMQServer, Path(tmp) / f"plain-{i}")
                plain.append(round(s, 2))
                if i < args.startups - 1:
                    server.stop()
            results["startup_s_plain"] = plain
            server.add_vhost(VHOST)
            holder = _fill(server)
            idle = _idle_cpu_rate(server)
            results["node_idle_cpu_ms_per_s"] = round(idle * 1e3, 1)
            kept = amqp.Connection(f"127.0.0.1:{server.port}", virtual_host=VHOST)
            kept.connect()
            runs = [
                ("rabbitmqctl", lambda: _ctl_probe(server), args.ctl_calls, True),
                ("erl_call", lambda: server.queue_depths(VHOST), args.calls, True),
                ("amqp-passive", lambda: _passive_fresh(server), args.calls, False),
                ("amqp-passive-kept", lambda: _passive(kept), args.calls, False),
            ]
            for name, probe, calls, unacked in runs:
                row = _measure(name, probe, calls, server, idle, unacked)
                results["probes"].append(row)
                print(_line(row), flush=True)
            kept.close()
            holder.close()
            server.stop()
            if not args.skip_management:
                mgmt_startups: list[float] = []
                for i in range(args.startups):
                    mport = free_port()
                    config = {"management.tcp.port": str(mport),
                              "management.tcp.ip": "127.0.0.1",
                              "collect_statistics_interval": str(args.stats_interval_ms)}
                    mserver, s = _start(ManagementServer, Path(tmp) / f"mgmt-{i}",
                                        config=config)
                    mgmt_startups.append(round(s, 2))
                    if i < args.startups - 1:
                        mserver.stop()
                results["startup_s_management"] = mgmt_startups
                mserver.add_vhost(VHOST)
                holder = _fill(mserver)
                session = requests.Session()
                session.auth = ("guest", "guest")
                # the figures appear after a statistics interval or two
                deadline = time.monotonic() + 30
                while _mgmt_probe(session, mport) != EXPECTED and time.monotonic() < deadline:
                    time.sleep(0.05)
                idle_m = _idle_cpu_rate(mserver)
                results["mgmt_node_idle_cpu_ms_per_s"] = round(idle_m * 1e3, 1)
                row = _measure("management", lambda: _mgmt_probe(session, mport), args.calls,
                               mserver, idle_m)
                results["probes"].append(row)
                print(_line(row), flush=True)
                results["mgmt_staleness_s"] = _staleness(mserver, session, mport)
                holder.close()
                mserver.stop()
        finally:
            kill_all()
    for key, value in results.items():
        if key != "probes":
            print(f"{key}: {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


def _line(row: dict) -> str:
    w, c = row["wall_ms"], row["cpu_ms"]
    return (f"{row['probe']:18} n={row['calls']:3} answer_ok={row['answer_ok']!s:5} "
            f"wall ms min/med/p90/max {w['min']}/{w['median']}/{w['p90']}/{w['max']}  "
            f"cpu ms {c['min']}/{c['median']}/{c['p90']}/{c['max']}  "
            f"node cpu ms/call {row['node_cpu_ms']:.1f}")


if __name__ == "__main__":
    main()
