"""The run's results: what the runner produces and the report reads.

:class:`ScenarioResult` (one scenario's ``result.json``), :class:`RunVerdict`
(``verdict.json``), the run's exit code, and its run directory. A run directory is
``reports/<UTC timestamp>-<id>/``, created exclusively so no earlier run is ever
overwritten. Each scenario writes under ``scenarios/<name>/`` (``history/``, ``logs/``,
``result.json``); the run's ``verdict.json`` and ``index.html`` summarise them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from celery_chaos.checks.queue import QueueCheckResult
from celery_chaos.checks.verdict import QUEUE, InvariantResult, Verdict
from celery_chaos.history.store import SkippedLines

VERDICT_SCHEMA_VERSION = 1
#: What a scenario declares; ``unknown`` only for runs that cannot drain (an existing deployment).
Expect = Literal["valid", "invalid", "unknown"]

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(name: str) -> str:
    """A file-system-safe version of a scenario (pytest node) name."""
    return _SAFE.sub("_", name).strip("_")[:150] or "scenario"


class ScenarioResult(BaseModel):
    """The outcome of one scenario: its verdict, what was expected, and the numbers."""

    name: str
    description: str = ""
    broker: str = ""
    settings: dict[str, Any] = Field(default_factory=dict)
    expect: Expect = "valid"
    verdict: Verdict = Verdict.UNKNOWN
    checked: bool = False  # False: the scenario stopped before its check ran
    invariants: list[InvariantResult] = Field(default_factory=list)
    #: The scenario's own checkers as ``{"checker": name, "params": {...}}``, so that
    #: ``celery-chaos analyze`` rebuilds them (harness/checks/registry.py).
    checkers: list[dict[str, Any]] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(default_factory=dict)
    history_dir: str = ""
    log_dir: str = ""
    error: str | None = None
    #: The deployment as run: broker and its version, workers, pool, effective settings, seed.
    deployment: dict[str, Any] = Field(default_factory=dict)
    #: Names of the faults injected (``kill_worker``, ...), in order of first use.
    faults: list[str] = Field(default_factory=list)
    #: Lines of the history that were not records: torn last lines of files (noted) and
    #: unreadable lines (the verdict is then never valid); None before the check ran.
    history_lines: SkippedLines | None = None

    @property
    def as_expected(self) -> bool:
        """True when the verdict is the declared one (a negative control expects invalid)."""
        return self.checked and self.verdict.value == self.expect

    def invariant(self, name: str) -> InvariantResult | None:
        """The result of the invariant called ``name``, None if it was not checked."""
        return next((i for i in self.invariants if i.name == name), None)

    @property
    def queue(self) -> QueueCheckResult | None:
        """The queue invariant's result (counts and the ids behind each anomaly), typed;
        None before the check ran."""
        inv = self.invariant(QUEUE)
        return inv.summary_as(QueueCheckResult) if inv is not None else None


class RunVerdict(BaseModel):
    """The content of ``verdict.json`` (schema documented in ``docs/report.md``)."""

    schema_version: int = VERDICT_SCHEMA_VERSION
    run_id: str
    started: str
    finished: str | None = None
    verdict: Verdict = Verdict.UNKNOWN
    as_expected: bool = False
    exit_code: int = 2
    versions: dict[str, str] = Field(default_factory=dict)
    scenarios: list[ScenarioResult] = Field(default_factory=list)
    #: ``scenarios`` (pytest / ``celery-chaos run``) or ``load`` (``celery-chaos load``).
    kind: Literal["scenarios", "load"] = "scenarios"
    #: The command that made the run, for people (``celery-chaos load ...``), if known.
    command: str = ""
    notes: list[str] = Field(default_factory=list)


def new_run_dir(base: str | os.PathLike[str] = "reports") -> Path:
    """Create and return a fresh ``<base>/<timestamp>-<id>/``; never reuses an existing one."""
    root = Path(base)
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(20):
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = root / f"{stamp}-{secrets.token_hex(3)}"
        try:
            path.mkdir()
        except FileExistsError:
            time.sleep(0.01)
            continue
        return path
    raise RuntimeError(f"could not create a new run directory under {root}")


def run_verdict(results: list[ScenarioResult]) -> tuple[Verdict, bool]:
    """The run's combined verdict and whether every scenario ended as it declared."""
    verdict = Verdict.combine(r.verdict for r in results) if results else Verdict.UNKNOWN
    return verdict, bool(results) and all(r.as_expected for r in results)


def run_summary_line(results: list[ScenarioResult], code: int, report: Path) -> str:
    """The last line a run prints: what happened, in words, and where the report is."""
    n = len(results)
    page = report / "index.html"
    off = [r.name for r in results if r.checked and not r.as_expected]
    broken = [r.name for r in results if r.error or not r.checked]
    if not n:
        return f"celery-chaos: no scenario ran; report {page}"
    if broken:
        return (f"celery-chaos: NO VERDICT for {len(broken)} of {n} scenarios "
                f"({', '.join(broken[:3])}{' ...' if len(broken) > 3 else ''}): nothing is "
                f"proven for them; report {page}")
    if off:
        return (f"celery-chaos: {len(off)} of {n} scenarios NOT as declared "
                f"({', '.join(off[:3])}{' ...' if len(off) > 3 else ''}); report {page}")
    controls = sum(1 for r in results if r.expect == "invalid")
    safe = n - controls
    tail = "" if code == 0 else " (but a test of the session failed: see the pytest output)"
    return (f"celery-chaos: {n} scenario{'s' if n != 1 else ''}, every one as declared: "
            f"{safe} safe configuration{'s' if safe != 1 else ''} held, {controls} negative "
            f"control{'s' if controls != 1 else ''} caught {'their' if controls != 1 else 'its'} "
            f"bug{tail}; report {page}")


def exit_code_of(
    outcomes: Iterable[tuple[Verdict | str, Expect]],
    *,
    infra_error: bool = False,
    tests_status: int = 0,
) -> int:
    """The run's exit code from each checked scenario's ``(verdict, expect)``.

    0: every verdict as declared; 1: a verdict not as declared, or failed tests; 2: an
    infrastructure error, or a verdict of ``unknown`` where none was declared (the
    deployment never became quiet: not a pass). ``tests_status`` is pytest's exit status:
    1 means tests failed; anything but 0, 1 and 5 (an interruption, an internal or usage
    error) makes an otherwise clean run a 2.
    """
    if infra_error:
        return 2
    pairs = [(Verdict(verdict), expect) for verdict, expect in outcomes]
    if any(verdict is Verdict.UNKNOWN and expect != "unknown" for verdict, expect in pairs):
        return 2
    if tests_status == 1 or any(verdict.value != expect for verdict, expect in pairs):
        return 1
    return 0 if tests_status in (0, 5) else 2


def exit_code_for(
    results: list[ScenarioResult], infra_error: bool = False, tests_status: int = 0
) -> int:
    """:func:`exit_code_of` a run's scenario results: a scenario's error is an infrastructure
    error; scenarios that stopped before their check count only through ``tests_status``."""
    return exit_code_of(
        ((r.verdict, r.expect) for r in results if r.checked),
        infra_error=infra_error or any(r.error for r in results),
        tests_status=tests_status,
    )


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)


def versions() -> dict[str, str]:
    """Versions of the pieces that matter to a verdict."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for pkg in ("celery", "kombu", "amqp", "redis", "billiard", "locust", "celery-chaos"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def load_results(run_dir: Path) -> list[ScenarioResult]:
    """Every ``scenarios/*/result.json`` under a run directory."""
    out = []
    for path in sorted((run_dir / "scenarios").glob("*/result.json")):
        out.append(ScenarioResult.model_validate_json(path.read_text()))
    return out


#: (label in reports, Celery setting); ``transport:`` reads ``broker_transport_options``.
RELIABILITY_SETTINGS: tuple[tuple[str, str], ...] = (
    ("acks_late", "task_acks_late"),
    ("reject_on_worker_lost", "task_reject_on_worker_lost"),
    ("prefetch_multiplier", "worker_prefetch_multiplier"),
    ("time_limit", "task_time_limit"),
    ("soft_time_limit", "task_soft_time_limit"),
    ("visibility_timeout", "transport:visibility_timeout"),
    ("confirm_publish", "transport:confirm_publish"),
    ("broker_heartbeat", "broker_heartbeat"),
)
#: kombu's Redis transport default when ``visibility_timeout`` is not set.
REDIS_VISIBILITY_DEFAULT = 3600


def from_conf(values: dict[str, Any], broker: str) -> dict[str, Any]:
    """The reliability settings by report label, from Celery setting values."""
    out: dict[str, Any] = {}
    for label, key in RELIABILITY_SETTINGS:
        value = values.get(key)
        if label == "visibility_timeout":
            if broker != "redis":
                continue
            value = REDIS_VISIBILITY_DEFAULT if value is None else value
        if label == "confirm_publish" and broker == "redis":
            continue
        if label in ("acks_late", "reject_on_worker_lost", "confirm_publish"):
            value = bool(value)  # None is Celery's "off"
        out[label] = value
    return out


def settings_over_defaults(settings: dict[str, Any], broker: str) -> dict[str, Any]:
    """Celery's defaults with ``settings`` applied (when the app cannot be loaded)."""
    from celery.app.defaults import DEFAULTS

    values: dict[str, Any] = {}
    transport = dict(settings.get("broker_transport_options") or {})
    for _, key in RELIABILITY_SETTINGS:
        if key.startswith("transport:"):
            values[key] = transport.get(key.split(":", 1)[1])
        else:
            values[key] = settings.get(key, DEFAULTS.get(key))
    return from_conf(values, broker)


class ExploreRun(BaseModel):
    """One run of an explored schedule: where it is, its verdict or its error."""

    name: str
    dir: str
    verdict: Verdict
    error: str | None = None
    wall_s: float = 0.0
    problems: list[str] = Field(default_factory=list)


class ExploreExample(BaseModel):
    """One schedule an exploration tried, with every run of it."""

    index: int
    #: ``generate`` (drawn) or ``shrink`` (a smaller candidate of a failing one).
    phase: Literal["generate", "shrink"]
    schedule: list[dict[str, Any]]
    runs: list[ExploreRun] = Field(default_factory=list)
    #: ``violation``: failed min_fails of its runs; ``flaky``: failed fewer; ``valid``;
    #: ``error``: no run reached a verdict.
    outcome: Literal["violation", "flaky", "valid", "error"]
    #: The shrink order: faults, total window seconds, total trigger seconds.
    complexity: list[float] = Field(default_factory=list)


class ExplorationResult(BaseModel):
    """The content of ``exploration.json`` (``celery-chaos explore``)."""

    base: str
    app: str
    seed: int
    budget_s: float
    max_examples: int
    reruns: int
    min_fails: int
    started: str
    elapsed_s: float
    runs: int
    stopped: str
    examples: list[ExploreExample] = Field(default_factory=list)
    first_failure_s: float | None = None
    shrink_runs: int = 0
    minimal: ExploreExample | None = None
    replays: list[ExploreRun] = Field(default_factory=list)
    flaky: list[int] = Field(default_factory=list)
    exit_code: int = 2
