"""Run directories and ``verdict.json``: what a run leaves behind for people and CI.

A run directory is ``reports/<UTC timestamp>-<id>/``, created exclusively so
no earlier run is ever overwritten. Each scenario writes under
``scenarios/<name>/`` (``history/``, ``logs/``, ``result.json``); the run's
``verdict.json`` and ``index.html`` summarise them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from harness.checks.verdict import InvariantResult, Verdict

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

    @property
    def as_expected(self) -> bool:
        """True when the verdict is the declared one (a negative control expects invalid)."""
        return self.checked and self.verdict.value == self.expect


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


def exit_code_for(
    results: list[ScenarioResult], infra_error: bool = False, tests_failed: bool = False
) -> int:
    """0: every scenario as declared; 1: a violation or a failed test; 2: infrastructure.

    A checked scenario whose verdict is ``unknown`` (the deployment never became quiet) is
    an infrastructure outcome, not a pass.
    """
    if infra_error or any(r.error for r in results):
        return 2
    checked = [r for r in results if r.checked]
    if any(r.verdict is Verdict.UNKNOWN and r.expect != "unknown" for r in checked):
        return 2
    if tests_failed or not all(r.as_expected for r in checked):
        return 1
    return 0


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
