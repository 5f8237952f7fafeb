"""Across runs: the list of runs and the reliability matrix (configuration x fault).

Both are rebuilt from every ``<reports>/<run>/verdict.json``. A configuration is the
broker plus the reliability settings that decide what a fault does (acks_late,
reject_on_worker_lost, prefetch, time limits, visibility timeout, confirms); a fault is
the set of faults a scenario injected. Each cell holds the newest verdict and a tally.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from celery_chaos.results import (
    RELIABILITY_SETTINGS,
    RunVerdict,
    ScenarioResult,
    safe_name,
    settings_over_defaults,
)

#: Setting columns in reports, in order, with their labels.
SETTING_LABELS: tuple[tuple[str, str], ...] = (
    ("acks_late", "acks_late"),
    ("reject_on_worker_lost", "reject_on_worker_lost"),
    ("prefetch_multiplier", "prefetch"),
    ("time_limit", "time limit"),
    ("soft_time_limit", "soft time limit"),
    ("visibility_timeout", "visibility timeout"),
    ("confirm_publish", "confirms"),
)
FAULT_LABELS = {
    "kill_worker": "worker killed (SIGKILL)",
    "kill_pool_child": "pool child killed (OOM)",
    "pause_worker": "worker paused (SIGSTOP)",
    "stop_pool_child": "pool child paused (SIGSTOP)",
    "kill_beat": "beat killed (SIGKILL)",
    "terminate_worker": "worker terminated (SIGTERM, SIGKILL after a grace)",
    "crash_broker": "broker crash",
    "stop_broker": "broker restart",
    "pause_broker": "broker frozen (SIGSTOP)",
    "memory_alarm": "RabbitMQ memory alarm",
    "disk_alarm": "RabbitMQ disk alarm",
    "partition_blackhole": "network partition (blackhole)",
    "partition_refuse": "network partition (refused)",
    "partition_reset": "connections reset",
    # packet faults (network namespaces): a column beside the proxy's partitions, so that one
    # configuration's row shows what each fault model does to it
    "packet_partition": "packet partition (both ways)",
    "packet_partition_outbound": "packet partition (not heard)",
    "packet_partition_inbound": "packet partition (deaf)",
    "packet_loss": "packet loss",
    "latency": "network latency",
    "bandwidth": "bandwidth cap",
}
NO_FAULT = "no fault"


def fault_label(name: str) -> str:
    """People's words for a fault name."""
    return " + ".join(FAULT_LABELS.get(n, n.replace("_", " ")) for n in name.split("+"))


def duplicates_note(s: ScenarioResult) -> str:
    """A cell's words on duplicates when the scenario required exactly once, else ``""``."""
    queue = s.queue
    if queue is None or not queue.exactly_once:
        return ""
    return f"exactly once required: {queue.counts.duplicated} duplicated"


@dataclass
class RunSummary:
    """One run, as the runs index lists it."""

    run: RunVerdict
    path: str  # relative link to the run page
    counts: Counter[str] = field(default_factory=Counter)


def load_runs(root: Path) -> tuple[list[RunSummary], list[str]]:
    """Every run under ``root`` with a readable ``verdict.json``, newest first; and skips."""
    runs: list[RunSummary] = []
    skipped: list[str] = []
    for vpath in sorted(root.glob("*/verdict.json")):
        try:
            run = RunVerdict.model_validate_json(vpath.read_text(encoding="utf-8"))
        except (OSError, ValueError, ValidationError) as exc:
            skipped.append(f"{vpath.parent.name}: {str(exc).splitlines()[0][:120]}")
            continue
        summary = RunSummary(run=run, path=f"{vpath.parent.name}/index.html")
        summary.counts.update(s.verdict.value for s in run.scenarios)
        runs.append(summary)
    runs.sort(key=lambda r: (r.run.started, r.run.run_id), reverse=True)
    return runs, skipped


def scenario_settings(s: ScenarioResult) -> dict[str, Any]:
    """The effective reliability settings of a scenario (recorded, else derived)."""
    recorded = s.deployment.get("settings")
    if isinstance(recorded, dict) and recorded:
        return recorded
    return settings_over_defaults(s.settings, s.broker)


def config_key(s: ScenarioResult) -> tuple[str, tuple[tuple[str, str], ...]]:
    """(broker, ((setting, value), ...)): the row of a scenario in the matrix.

    The reliability settings come first; then a pool other than prefork and every other
    setting the scenario put under test (``broker_transport_options.socket_timeout=1``,
    ``beat_sync_every=1``, ...), so that different configurations never share a row.
    """
    settings = scenario_settings(s)
    broker = s.deployment.get("broker") or s.broker or "?"
    if s.deployment.get("existing"):
        broker = f"{broker} (existing deployment)"
    values = [(label, _word(settings[key])) for key, label in SETTING_LABELS if key in settings]
    pool = s.deployment.get("pool")
    if pool and pool != "prefork":
        values.append(("pool", str(pool)))
    values += sorted(
        (key, _word(value))
        for key, value in flat_settings(s.settings).items()
        if key not in _COVERED
    )
    return broker, tuple(values)


#: Settings under test that the reliability columns (SETTING_LABELS) already show.
_COVERED = {
    key.replace("transport:", "broker_transport_options.")
    for label, key in RELIABILITY_SETTINGS
    if label in dict(SETTING_LABELS)
}


def flat_settings(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            out.update(flat_settings(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _word(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


@dataclass
class Cell:
    """The scenarios of one (configuration, fault) pair across runs, newest first."""

    entries: list[tuple[RunSummary, ScenarioResult, str]] = field(default_factory=list)

    @property
    def latest(self) -> tuple[RunSummary, ScenarioResult, str]:
        """The newest (run, scenario, link)."""
        return self.entries[0]

    @property
    def current(self) -> list[tuple[RunSummary, ScenarioResult, str]]:
        """Every scenario of the newest run in this cell (one, unless scenarios differ in
        something that is not a setting, e.g. Redis persistence or two beats)."""
        newest = self.entries[0][0]
        return [e for e in self.entries if e[0] is newest]

    @property
    def tally(self) -> Counter[str]:
        """Verdicts over every run."""
        return Counter(s.verdict.value for _, s, _ in self.entries)


@dataclass
class Matrix:
    """Rows (configurations) x columns (faults) -> cells."""

    columns: list[str]
    rows: list[tuple[str, tuple[tuple[str, str], ...]]]
    cells: dict[tuple[Any, str], Cell]


def build_matrix(runs: list[RunSummary]) -> Matrix:
    """The reliability matrix of every scenario of every run (``runs`` newest first)."""
    cells: dict[tuple[Any, str], Cell] = {}
    columns: set[str] = set()
    rows: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for summary in runs:
        for i, s in enumerate(summary.run.scenarios, 1):
            if not s.checked:
                continue
            row = config_key(s)
            col = "+".join(s.faults) if s.faults else NO_FAULT
            link = f"{summary.run.run_id}/index.html#s{i}-{safe_name(s.name)}"
            cells.setdefault((row, col), Cell()).entries.append((summary, s, link))
            columns.add(col)
            rows.add(row)
    order = list(FAULT_LABELS) + [NO_FAULT]
    cols = sorted(columns, key=lambda c: (order.index(c) if c in order else len(order), c))
    return Matrix(columns=cols, rows=sorted(rows), cells=cells)


def dump_matrix(m: Matrix) -> list[dict[str, Any]]:
    """The matrix as JSON-able rows (for tests and tools)."""
    out = []
    for row in m.rows:
        for col in m.columns:
            cell = m.cells.get((row, col))
            if cell is None:
                continue
            _, s, _ = cell.latest
            out.append(
                {
                    "broker": row[0],
                    "settings": dict(row[1]),
                    "fault": col,
                    "verdict": s.verdict.value,
                    "expect": s.expect,
                    "runs": sum(cell.tally.values()),
                    "exactly_once": bool(s.queue and s.queue.exactly_once),
                    "duplicated": s.queue.counts.duplicated if s.queue else None,
                }
            )
    return out


def matrix_json(m: Matrix) -> str:
    """:func:`dump_matrix` as a JSON string."""
    return json.dumps(dump_matrix(m), indent=2)
