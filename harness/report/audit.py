"""``celery-chaos audit``: its result model (``audit.json``), the scorecard in words, the exit
code, and the page ``<run>/audit.html``.

The runner (:mod:`celery_chaos.runner.audit`) fills an :class:`AuditResult`; everything here is a
pure function of it, so the words and the exit code are tested without servers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import BaseModel, Field

from celery_chaos.checks.verdict import Verdict

AUDIT_SCHEMA_VERSION = 1
AUDIT_FILE = "audit.json"
AUDIT_PAGE = "audit.html"

#: ``safe``: valid and the fault reached at least one running task; ``unsafe``: invalid;
#: ``unknown``: no verdict, or a pass on a fault that reached no task; ``not_applicable``:
#: the fault cannot hit this app's workload; ``error``: the run failed (infrastructure).
Status = Literal["safe", "unsafe", "unknown", "not_applicable", "error"]

_env = Environment(
    loader=PackageLoader("celery_chaos.report", "templates"),
    autoescape=select_autoescape(["html", "j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


class AuditRun(BaseModel):
    """One scenario the audit ran: under the app's configuration, or with the fix."""

    scenario: str
    #: The scenario directory, relative to the run directory.
    dir: str
    #: The scenario's section of the run's ``index.html`` (``index.html#s1-...``).
    anchor: str
    #: The settings applied over the app's own configuration (``{}``: the app's alone).
    settings: dict[str, Any] = Field(default_factory=dict)
    verdict: Verdict = Verdict.UNKNOWN
    status: Status = "unknown"
    reason: str = ""
    #: Tasks the fault touched: those its worker held (running or prefetched) when it struck,
    #: as the run report counts them (``celery_chaos.report.timeline``).
    reach: int = 0
    acknowledged: int = 0
    completed: int = 0
    lost: int = 0
    duplicated: int = 0
    pending: int = 0
    exactly_once: bool = False
    wall_s: float = 0.0
    error: str | None = None


class AuditRow(BaseModel):
    """One fault: what ran, the verdict on the app's configuration, the fix and its verdict."""

    fault: str
    label: str
    #: What ran, in words (the op, its trigger, the load).
    what_ran: str
    status: Status
    reason: str = ""
    theirs: AuditRun | None = None
    #: The smallest change to the app's settings the catalog proves safe for this fault
    #: (``{}`` when none is needed or none is known).
    recommended: dict[str, Any] = Field(default_factory=dict)
    #: Why, and the catalog scenarios that prove it.
    why: str = ""
    evidence_catalog: list[str] = Field(default_factory=list)
    #: Extra settings the re-run applied only to observe the fix within the run (not advice).
    observe: dict[str, Any] = Field(default_factory=dict)
    fixed: AuditRun | None = None
    fix_note: str = ""


class AuditResult(BaseModel):
    """The content of ``audit.json``."""

    schema_version: int = AUDIT_SCHEMA_VERSION
    run_id: str
    command: str = ""
    app: str
    workload: list[dict[str, Any]] = Field(default_factory=list)
    broker: str
    #: The app's own reliability settings, by report label (``acks_late``...).
    app_settings: dict[str, Any] = Field(default_factory=dict)
    started: str
    finished: str | None = None
    elapsed_s: float = 0.0
    rows: list[AuditRow] = Field(default_factory=list)
    exit_code: int = 2
    outcome: str = ""
    error: str | None = None


def settings_text(settings: dict[str, Any]) -> str:
    """``task_acks_late=True, task_reject_on_worker_lost=True`` (nested keys dotted)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = value

    walk("", settings)
    return ", ".join(f"{k}={v!r}" for k, v in flat.items())


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def run_words(run: AuditRun) -> str:
    """What one run showed, in a few words (``LOST 3 tasks``, ``nothing was lost``...)."""
    if run.status == "error":
        return f"the run failed: {run.error or run.reason}"
    if run.status == "not_applicable":
        return f"not applicable: {run.reason}"
    if run.status == "unsafe":
        parts = []
        if run.lost:
            parts.append(f"LOST {_n(run.lost, 'task')}")
        if run.exactly_once and run.duplicated:
            parts.append(f"ran {_n(run.duplicated, 'task')} MORE THAN ONCE (exactly once "
                         "required)")
        return " and ".join(parts) or f"VIOLATED an invariant: {run.reason}"
    if run.status == "unknown":
        return f"NO VERDICT: {run.reason}"
    return (f"nothing was lost: all {run.acknowledged} acknowledged tasks completed; the "
            f"fault struck {_n(run.reach, 'task')} in flight")


def row_words(row: AuditRow) -> str:
    """The scorecard line of one fault, for an on-call engineer."""
    head = f"{row.label}:"
    theirs = row.theirs
    if row.status == "not_applicable":
        return f"{head} not applicable: {row.reason}"
    if theirs is None:
        return f"{head} {row.reason or 'not run'}"
    if row.status == "error":
        return f"{head} {run_words(theirs)} (run {theirs.anchor})."
    if row.status == "safe":
        return f"{head} your configuration is SAFE: {run_words(theirs)} (run {theirs.anchor})."
    verb = "" if row.status == "unsafe" else "gave "
    line = f"{head} your configuration {verb}{run_words(theirs)} (run {theirs.anchor})."
    if row.fixed is not None:
        fix = settings_text(row.recommended) or settings_text(row.fixed.settings)
        if row.fixed.status == "safe":
            tail = f"with it, {run_words(row.fixed)}"
        elif row.fixed.status == "unsafe":
            tail = f"with it, your tasks still: {run_words(row.fixed)}: the fix did NOT hold"
        else:
            tail = f"with it: {run_words(row.fixed)}"
        line += f" Fix: {fix}: {tail} (run {row.fixed.anchor})."
    elif row.fix_note:
        line += f" {row.fix_note}"
    return line


def audit_exit_code(rows: list[AuditRow], error: str | None = None) -> int:
    """0: safe under every fault tried (at least one); 1: a fault lost, duplicated or hung
    tasks under the app's configuration; 2: an error, or no verdict for a fault (or nothing
    tried at all). A proven loss wins over an error elsewhere: it is the finding."""
    statuses = [r.status for r in rows]
    if "unsafe" in statuses:
        return 1
    if error or any(s in ("unknown", "error") for s in statuses) or "safe" not in statuses:
        return 2
    return 0


def outcome_line(result: AuditResult, page: Path | str) -> str:
    """The last line ``celery-chaos audit`` prints: the outcome and where the page is."""
    rows = result.rows
    unsafe = [r.fault for r in rows if r.status == "unsafe"]
    safe = [r.fault for r in rows if r.status == "safe"]
    unknown = [r.fault for r in rows if r.status in ("unknown", "error")]
    na = [r.fault for r in rows if r.status == "not_applicable"]
    extra = (f"; no verdict for {', '.join(unknown)}" if unknown else "") + (
        f"; not applicable: {', '.join(na)}" if na else "")
    if unsafe:
        fixed = [r.fault for r in rows if r.status == "unsafe" and r.fixed is not None
                 and r.fixed.status == "safe"]
        return (f"celery-chaos audit: UNSAFE: your configuration loses tasks under "
                f"{len(unsafe)} of {len(rows)} faults ({', '.join(unsafe)}); the recommended "
                f"fix held for {len(fixed)} of them{extra}; report {page}")
    if result.error:
        return f"celery-chaos audit: NO VERDICT: {result.error}{extra}; report {page}"
    failed = [r for r in rows if r.status == "error"]
    if failed and not safe:
        first = failed[0].theirs.error if failed[0].theirs else failed[0].reason
        return (f"celery-chaos audit: NO VERDICT: the runs of {', '.join(r.fault for r in failed)}"
                f" failed ({failed[0].fault}: {first}){extra}; report {page}")
    if not safe:
        return (f"celery-chaos audit: NO VERDICT: no fault reached your tasks, nothing is "
                f"proven{extra}; report {page}")
    if unknown:
        return (f"celery-chaos audit: NO VERDICT for {len(unknown)} of {len(rows)} faults "
                f"(safe under {', '.join(safe)}){extra}; report {page}")
    return (f"celery-chaos audit: SAFE: your configuration kept every task under "
            f"{', '.join(safe)}{extra}; report {page}")


def headline(result: AuditResult) -> tuple[str, str]:
    """(banner title, banner class) of the page."""
    code = result.exit_code
    if code == 0:
        return "Your configuration is safe under every fault tried", "b-pass"
    if code == 1:
        return "Your configuration loses tasks", "b-fail"
    return "No verdict for every fault", "b-none"


def write_audit_page(run_dir: Path, result: AuditResult) -> Path:
    """Write ``<run>/audit.html`` atomically; return its path."""
    page = run_dir / AUDIT_PAGE
    title, css = headline(result)

    def rel(path: str) -> str:
        return Path(os.path.relpath(run_dir / path, run_dir)).as_posix()

    html = _env.get_template("audit.html.j2").render(
        r=result, title=title, css=css, row_words=row_words, run_words=run_words,
        settings_text=settings_text, rel=rel,
    )
    tmp = page.with_name(f".{page.name}.{os.getpid()}.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(page)
    return page
