"""From a history to the report's time series: rates, latencies, depths, workers, faults.

One pass over the records (read as plain dicts: twice as fast as validating every record,
which matters for 100,000-task runs) in monotonic order. Times are seconds since the
first record. Latencies are exact (nanoseconds from the history); percentiles are computed
from the exact values of each time bin, never from buckets.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left, bisect_right
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery_chaos.history.store import read_raw

NS = 1_000_000_000
#: Chart bins: the smallest of these widths giving at most ``MAX_BINS`` bins.
BIN_WIDTHS = (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600)
MAX_BINS = 150
#: Up to this many completed tasks, every end-to-end latency is also drawn as a point.
RAW_POINTS_LIMIT = 5000
#: How many task ids a report shows with their full history, per scenario.
MAX_TASK_HISTORIES = 300
PERCENTILES = (50, 95, 99)

_WORKER_END = {"succeeded", "failed", "retried", "revoked", "rejected"}
_COMPLETION = {"succeeded", "failed"}
#: Faults whose target is one worker: they touch the tasks that worker held.
WORKER_FAULTS = frozenset({
    "kill_worker", "kill_pool_child", "stop_pool_child", "pause_worker", "stop_worker",
    "terminate_worker",
})
_WORKER_NODE = re.compile(r"w\d+")


def read_records(history_dir: str | Path) -> tuple[list[dict[str, Any]], int]:
    """Every record of a history directory as a dict, in monotonic order, and torn lines."""
    raws, _, torn = read_raw(history_dir)
    records: list[dict[str, Any]] = []
    for rec in raws:
        if "mono_ns" in rec and "kind" in rec:
            records.append(rec)
        else:
            torn += 1
    records.sort(key=lambda r: (r["mono_ns"], r.get("wall_ns", 0)))
    return records, torn


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of sorted values, interpolated linearly (as numpy)."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(values: list[float]) -> dict[str, float | int]:
    """Count, min, p50, p90, p99, p99.9 and max of exact values (empty: count 0)."""
    if not values:
        return {"count": 0}
    v = sorted(values)
    out: dict[str, float | int] = {"count": len(v), "min": v[0]}
    for q in (50, 90, 99, 99.9):
        out[f"p{q:g}"] = percentile(v, q)
    out["max"] = v[-1]
    return out


@dataclass
class FaultWindow:
    """One fault, from its ``start`` record to its ``end`` (or the end of the history)."""

    index: int
    name: str
    target: str
    start: float
    end: float
    detail: dict[str, Any] = field(default_factory=dict)
    touched: list[str] = field(default_factory=list)
    open: bool = False  # no end record


@dataclass
class Timeline:
    """Everything the charts draw, in seconds since ``t0``."""

    t0_mono_ns: int = 0
    t0_wall_ns: int = 0
    span: float = 0.0
    bin_s: float = 1.0
    bins: list[float] = field(default_factory=list)  # bin centres
    rates: dict[str, list[float]] = field(default_factory=dict)  # per second
    publish_ms: dict[str, list[float | None]] = field(default_factory=dict)
    e2e_s: dict[str, list[float | None]] = field(default_factory=dict)
    raw_e2e: list[tuple[float, float, str]] = field(default_factory=list)
    raw_e2e_total: int = 0
    depth: dict[str, list[tuple[float, float | None]]] = field(default_factory=dict)
    in_flight: list[tuple[float, int]] = field(default_factory=list)
    workers: list[tuple[float, int]] = field(default_factory=list)
    faults: list[FaultWindow] = field(default_factory=list)
    publish_summary: dict[str, float | int] = field(default_factory=dict)
    e2e_summary: dict[str, float | int] = field(default_factory=dict)
    records: int = 0
    torn_lines: int = 0
    has_depth_samples: bool = False


def _bin_width(span: float) -> float:
    for width in BIN_WIDTHS:
        if span / width <= MAX_BINS:
            return float(width)
    return float(math.ceil(span / MAX_BINS))


def _binned_percentiles(
    points: list[tuple[float, float]], nbins: int, width: float
) -> dict[str, list[float | None]]:
    per_bin: list[list[float]] = [[] for _ in range(nbins)]
    for x, y in points:
        per_bin[min(nbins - 1, max(0, int(x / width)))].append(y)
    out: dict[str, list[float | None]] = {f"p{q}": [] for q in PERCENTILES}
    out["max"] = []
    for values in per_bin:
        values.sort()
        for q in PERCENTILES:
            out[f"p{q}"].append(percentile(values, q) if values else None)
        out["max"].append(values[-1] if values else None)
    return out


def build_timeline(records: list[dict[str, Any]], torn: int = 0) -> Timeline:
    """Compute every series of the report from records in monotonic order."""
    tl = Timeline(records=len(records), torn_lines=torn)
    if not records:
        return tl
    t0 = records[0]["mono_ns"]
    tl.t0_mono_ns, tl.t0_wall_ns = t0, records[0].get("wall_ns", 0)
    tl.span = max(1e-3, (records[-1]["mono_ns"] - t0) / NS)
    width = tl.bin_s = _bin_width(tl.span)
    nbins = max(1, math.ceil(tl.span / width + 1e-9))
    tl.bins = [round((i + 0.5) * width, 6) for i in range(nbins)]
    counters = {
        k: [0] * nbins for k in ("published", "publish_errors", "succeeded", "failed", "lost")
    }

    def sec(rec: dict[str, Any]) -> float:
        return (rec["mono_ns"] - t0) / NS

    def bin_of(x: float) -> int:
        return min(nbins - 1, max(0, int(x / width)))

    first_invoke: dict[str, float] = {}
    last_completion: dict[str, float] = {}
    publish_points: list[tuple[float, float]] = []
    holder: dict[str, tuple[str, int]] = {}  # task id -> (worker host, pid of the run)
    in_flight: list[tuple[float, int]] = [(0.0, 0)]
    alive: set[str] = set()
    workers: list[tuple[float, int]] = [(0.0, 0)]
    open_faults: dict[tuple[str, str], FaultWindow] = {}
    depth_points: dict[str, list[tuple[float, float | None]]] = defaultdict(list)

    def step(series: list[tuple[float, int]], x: float, value: int) -> None:
        if series[-1][1] != value:
            series.append((x, value))

    for rec in records:
        kind = rec["kind"]
        x = sec(rec)
        tid = rec.get("task_id")
        if kind == "invoke":
            if tid is not None:
                first_invoke.setdefault(tid, x)
        elif kind in ("ok", "fail", "info"):
            if rec.get("role") == "publisher":
                counters["published" if kind == "ok" else "publish_errors"][bin_of(x)] += 1
                lat = rec.get("latency_ns")
                if kind == "ok" and lat is not None:
                    publish_points.append((x - lat / NS, lat / 1e6))
        elif kind in ("received", "started"):
            if tid is not None:
                holder[tid] = (rec.get("host", ""), rec.get("pid", 0))
                step(in_flight, x, len(holder))
        elif kind in _WORKER_END:
            worker_lost = kind == "failed" and rec.get("exc_type") == "WorkerLostError"
            if kind in _COMPLETION and not worker_lost and tid is not None:
                counters["succeeded" if kind == "succeeded" else "failed"][bin_of(x)] += 1
                last_completion[tid] = x
            elif worker_lost:
                counters["lost"][bin_of(x)] += 1
            if tid is not None and holder.pop(tid, None) is not None:
                step(in_flight, x, len(holder))
        elif kind == "deployment":
            name = rec.get("name")
            node = rec.get("target") or rec.get("host", "")
            if name in ("worker_ready", "worker_started"):
                alive.add(node)
            elif name in ("worker_shutdown", "worker_stopped"):
                alive.discard(node)
            elif name == "queue_depth":
                tl.has_depth_samples = True
                ready = (rec.get("detail") or {}).get("ready") or {}
                if not ready and (rec.get("detail") or {}).get("error"):
                    for q in list(depth_points):
                        depth_points[q].append((x, None))
                for q, n in ready.items():
                    depth_points[str(q)].append((x, n))
            step(workers, x, len(alive))
        elif kind == "fault":
            name, target = rec.get("name") or "fault", rec.get("target") or ""
            key = (name, target)
            if rec.get("phase") == "start" or key not in open_faults:
                fw = FaultWindow(
                    index=len(tl.faults),
                    name=name,
                    target=target,
                    start=x,
                    end=x,
                    detail=dict(rec.get("detail") or {}),
                    open=True,
                )
                fw.touched = _touched_at_start(fw, holder)
                tl.faults.append(fw)
                open_faults[key] = fw
            if rec.get("phase") == "end":
                fw = open_faults.pop(key)
                fw.end, fw.open = x, False
                fw.detail.update(rec.get("detail") or {})
                if name in ("kill_worker", "stop_worker"):
                    alive.discard(target)
                    step(workers, x, len(alive))
                    for t_id in [t for t, (h, _) in holder.items() if h == target]:
                        del holder[t_id]  # back to the broker, or gone with the worker
                    step(in_flight, x, len(holder))
    end = tl.span
    for fw in open_faults.values():
        fw.end = end
    _touched_in_window(tl.faults, records, t0)

    for key, values in counters.items():
        if key in ("publish_errors", "failed", "lost") and not any(values):
            continue
        tl.rates[key] = [round(v / width, 3) for v in values]
    tl.publish_ms = _binned_percentiles(publish_points, nbins, width)
    tl.publish_summary = summarize([y for _, y in publish_points])
    e2e = [
        (first_invoke[t], last_completion[t] - first_invoke[t], t)
        for t in last_completion
        if t in first_invoke
    ]
    tl.e2e_s = _binned_percentiles([(x, y) for x, y, _ in e2e], nbins, width)
    tl.e2e_summary = summarize([y for _, y, _ in e2e])
    tl.raw_e2e_total = len(e2e)
    if len(e2e) <= RAW_POINTS_LIMIT:
        tl.raw_e2e = [(round(x, 4), round(y, 6), t) for x, y, t in e2e]
    in_flight.append((end, in_flight[-1][1]))
    workers.append((end, workers[-1][1]))
    tl.in_flight = _thin(in_flight, width)
    tl.workers = workers
    tl.depth = dict(depth_points)
    return tl


def _thin(series: list[tuple[float, int]], width: float) -> list[tuple[float, int]]:
    """At most one point per bin (the last value of the bin), keeping the last point."""
    out: list[tuple[float, int]] = []
    last_bin = -1
    for x, v in series:
        b = int(x / width)
        if out and b == last_bin:
            out[-1] = (out[-1][0], v)
        else:
            out.append((round(x, 4), v))
            last_bin = b
    return out


def fault_scope(fw: FaultWindow) -> tuple[set[str] | None, bool]:
    """(short names of the workers a fault targets, None for all; whether publishes count).

    A worker fault targets its node (``w1@chaos``); a network fault targets links named
    ``<node>-broker``/``<node>-backend`` (``w1-broker,publisher-broker``); anything else
    (a broker crash) touches every worker and every publish.
    """
    if fw.name in WORKER_FAULTS or "@" in fw.target:
        return {fw.target.split("@")[0]}, False
    nodes = {p.strip().split("-")[0] for p in fw.target.split(",") if p.strip()}
    workers = {n for n in nodes if _WORKER_NODE.fullmatch(n)}
    publishers = bool(nodes & {"publisher", "beat"})
    if workers or publishers:
        return workers, publishers
    return None, True


def _touched_at_start(fw: FaultWindow, holder: dict[str, tuple[str, int]]) -> list[str]:
    """Tasks the fault hit when it started: what its target workers held."""
    if fw.name == "kill_pool_child" and fw.detail.get("pid"):
        hit = [t for t, (_, pid) in holder.items() if pid == fw.detail["pid"]]
        if hit:
            return hit
    workers, _ = fault_scope(fw)
    if workers is None:
        return list(holder)  # a broker fault: everything in flight
    return [t for t, (host, _) in holder.items() if host.split("@")[0] in workers]


def _touched_in_window(
    faults: list[FaultWindow], records: list[dict[str, Any]], t0: int
) -> None:
    """Add the tasks its workers received, or that were published, during a window."""
    if not faults:
        return
    monos = [r["mono_ns"] for r in records]
    for fw in faults:
        lo, hi = t0 + int(fw.start * NS), t0 + int(fw.end * NS)
        seen = set(fw.touched)
        workers, publishes = fault_scope(fw)
        for i in range(bisect_left(monos, lo), bisect_right(monos, hi)):
            rec = records[i]
            tid = rec.get("task_id")
            if tid is None or tid in seen:
                continue
            kind = rec["kind"]
            received = kind == "received" and (
                workers is None or str(rec.get("host", "")).split("@")[0] in workers
            )
            if received or (publishes and kind == "invoke"):
                seen.add(tid)
                fw.touched.append(tid)


def task_histories(
    records: list[dict[str, Any]], ids: list[str], t0_mono_ns: int
) -> dict[str, list[dict[str, Any]]]:
    """Every record about each of ``ids``, in order, with ``t`` in seconds since ``t0``."""
    wanted = set(ids)
    out: dict[str, list[dict[str, Any]]] = {t: [] for t in ids}
    for rec in records:
        tid = rec.get("task_id")
        if tid in wanted:
            out[tid].append({**rec, "t": (rec["mono_ns"] - t0_mono_ns) / NS})
    return out
