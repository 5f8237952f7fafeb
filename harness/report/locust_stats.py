"""Locust's own statistics of a load (``load-N/locust.json`` and CSVs), for the report.

Percentiles here are Locust's, computed the way Locust computes them: from its rounded
response-time buckets (147 ms counts as 150). The report's own latency charts use the
exact latencies of the history instead.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QUANTILES = (0.5, 0.9, 0.95, 0.99)


@dataclass
class LocustRow:
    """One request name (or the aggregate) of Locust's statistics table."""

    name: str
    requests: int
    failures: int
    avg_ms: float
    min_ms: float
    max_ms: float
    rps: float
    percentiles_ms: dict[str, float]


@dataclass
class LocustStats:
    """One load directory: rows, failures and the files Locust wrote."""

    directory: Path
    rows: list[LocustRow] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    html: Path | None = None
    files: list[Path] = field(default_factory=list)
    error: str | None = None
    html_href: str | None = None  # links relative to the page, set by the page
    file_links: list[tuple[str, str]] = field(default_factory=list)


def _percentile(buckets: dict[int, int], total: int, q: float) -> float:
    """Locust's ``calculate_response_time_percentile``: from the top, over rounded buckets."""
    if not total:
        return 0.0
    processed = 0
    wanted = int(total * q)
    for bucket in sorted(buckets, reverse=True):
        processed += buckets[bucket]
        if total - processed <= wanted:
            return float(bucket)
    return 0.0


def _row(name: str, entries: list[dict[str, Any]]) -> LocustRow:
    requests = sum(int(e.get("num_requests", 0)) for e in entries)
    failures = sum(int(e.get("num_failures", 0)) for e in entries)
    total_time = sum(float(e.get("total_response_time", 0.0)) for e in entries)
    buckets: dict[int, int] = {}
    for e in entries:
        for k, v in (e.get("response_times") or {}).items():
            buckets[int(float(k))] = buckets.get(int(float(k)), 0) + int(v)
    mins = [float(e["min_response_time"]) for e in entries if e.get("min_response_time")]
    start = min((float(e.get("start_time", 0)) for e in entries), default=0.0)
    last = max((float(e.get("last_request_timestamp") or 0) for e in entries), default=0.0)
    return LocustRow(
        name=name,
        requests=requests,
        failures=failures,
        avg_ms=total_time / requests if requests else 0.0,
        min_ms=min(mins) if mins else 0.0,
        max_ms=max((float(e.get("max_response_time", 0)) for e in entries), default=0.0),
        rps=requests / (last - start) if last > start else float(requests),
        percentiles_ms={f"p{q * 100:g}": _percentile(buckets, requests, q) for q in QUANTILES},
    )


def read_locust(directory: Path) -> LocustStats:
    """Read one ``load-N`` directory; a missing or broken file is reported, not raised."""
    stats = LocustStats(directory=directory)
    stats.files = sorted(p for p in directory.iterdir() if p.is_file())
    html = directory / "locust.html"
    stats.html = html if html.is_file() else None
    try:
        entries = json.loads((directory / "locust.json").read_text())
    except FileNotFoundError:
        stats.error = "Locust wrote no locust.json (did the load start?)"
        return stats
    except (json.JSONDecodeError, OSError) as exc:
        stats.error = f"locust.json unreadable: {exc}"
        return stats
    if not isinstance(entries, list):
        stats.error = "locust.json is not a list of request statistics"
        return stats
    entries = [e for e in entries if isinstance(e, dict)]
    for e in sorted(entries, key=lambda e: str(e.get("name", ""))):
        stats.rows.append(_row(str(e.get("name", "?")), [e]))
    if len(entries) > 1:
        stats.rows.append(_row("Aggregated", entries))
    failures_csv = directory / "locust_failures.csv"
    if failures_csv.is_file():
        with failures_csv.open(newline="") as fh:
            stats.failures = [dict(r) for r in csv.DictReader(fh)]
    return stats


def scenario_loads(scenario_dir: Path) -> list[LocustStats]:
    """Every ``load-N`` directory of a scenario, in order."""
    dirs = [p for p in scenario_dir.glob("load-*") if p.is_dir()]
    dirs.sort(key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else 0)
    return [read_locust(d) for d in dirs]
