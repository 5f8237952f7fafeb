"""``celery-chaos audit``: the recommendation table, the scorecard's words and the exit code
(pure), then real audits (RabbitMQ, real workers) of an app with Celery's defaults and of
one already safe, bad input, and the scorecard in headless Chromium.

The apps are ``tests/auditapp`` (tasks of 1 s); ``--tasks 24`` keeps each scenario short.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from celery_chaos.checks.queue import QueueCheckResult, QueueCounts
from celery_chaos.checks.verdict import InvariantResult, Verdict
from celery_chaos.errors import UsageError
from celery_chaos.report.audit import (
    AuditResult,
    AuditRow,
    AuditRun,
    audit_exit_code,
    outcome_line,
    row_words,
    settings_text,
)
from celery_chaos.report.browser import Chromium, find_chromium
from celery_chaos.results import ScenarioResult
from celery_chaos.runner.audit import (
    ACKS_LATE,
    FAULTS,
    broker_of,
    judge,
    recommend,
    selected,
    smallest_change,
)

ROOT = Path(__file__).resolve().parent.parent
WORKLOAD = ROOT / "tests" / "auditapp" / "workload.yaml"


# -- pure parts ---------------------------------------------------------------------------


def test_recommendation_table() -> None:
    for fault in FAULTS:
        rec = recommend(fault, "rabbitmq")
        assert rec.settings == ACKS_LATE and rec.observe == {}
        assert "task_reject_on_worker_lost" in rec.why
    redis = recommend("worker_kill", "redis")
    assert redis.settings == ACKS_LATE
    assert redis.observe["broker_transport_options"]["visibility_timeout"] == 6
    assert "visibility_timeout" in redis.why
    with pytest.raises(UsageError, match="unknown audit fault"):
        recommend("flood", "rabbitmq")


def test_smallest_change_keeps_only_what_the_app_lacks() -> None:
    assert smallest_change(ACKS_LATE, {}) == ACKS_LATE
    assert smallest_change(ACKS_LATE, {"task_acks_late": None}) == ACKS_LATE  # None: off
    assert smallest_change(ACKS_LATE, {"task_acks_late": True}) == {
        "task_reject_on_worker_lost": True}
    assert smallest_change(ACKS_LATE, dict(ACKS_LATE)) == {}
    fix = {"broker_transport_options": {"visibility_timeout": 6, "x": 1}}
    have = {"broker_transport_options": {"visibility_timeout": 6}}
    assert smallest_change(fix, have) == {"broker_transport_options": {"x": 1}}


def test_broker_follows_the_apps_broker_url() -> None:
    assert broker_of(None) == "rabbitmq"
    assert broker_of("amqp://u:p@h:5672/v") == "rabbitmq"
    assert broker_of("pyamqp://h//") == "rabbitmq"
    assert broker_of("rediss://h:6379/0") == "redis"
    with pytest.raises(UsageError, match="'sqs'"):
        broker_of("sqs://key:secret@")


def test_selected_faults() -> None:
    assert [f.name for f in selected("")] == list(FAULTS)
    assert [f.name for f in selected("terminate, worker_kill")] == ["terminate", "worker_kill"]
    with pytest.raises(UsageError, match="--only flood: unknown fault"):
        selected("worker_kill,flood")


def _result(verdict: str, *, lost: int = 0, pending: int = 0, error: str | None = None,
            acknowledged: int = 24) -> ScenarioResult:
    queue = QueueCheckResult(valid=verdict, counts=QueueCounts(  # type: ignore[arg-type]
        acknowledged=acknowledged, completed=acknowledged - lost - pending, lost=lost,
        pending=pending))
    inv = InvariantResult(name="queue", verdict=Verdict(verdict),
                          problems=[f"{lost} lost"] if lost else [],
                          summary=queue.model_dump(mode="json"))
    return ScenarioResult(name="x", verdict=Verdict(verdict), checked=True, invariants=[inv],
                          error=error)


def test_judge_never_calls_an_untested_pass_safe() -> None:
    assert judge(_result("valid"), fired=True, reach=3) == ("safe", "")
    status, why = judge(_result("valid"), fired=True, reach=0)
    assert status == "unknown" and "nothing was tested" in why
    status, why = judge(_result("valid"), fired=False, reach=0, skip_reason="too short")
    assert (status, why) == ("not_applicable", "too short")
    assert judge(_result("invalid", lost=3), fired=True, reach=4)[0] == "unsafe"
    status, why = judge(_result("unknown", pending=2), fired=True, reach=4)
    assert status == "unknown" and "2 acknowledged tasks had not completed" in why
    assert judge(_result("valid", error="boom"), fired=True, reach=4) == ("error", "boom")


def _run(status: str, *, lost: int = 0, name: str = "worker_kill-your-config", index: int = 1,
         settings: dict | None = None) -> AuditRun:
    verdict = {"safe": "valid", "unsafe": "invalid"}.get(status, "unknown")
    return AuditRun(scenario=name, dir=f"scenarios/{name}", anchor=f"index.html#s{index}-{name}",
                    settings=settings or {}, verdict=Verdict(verdict), status=status,  # type: ignore[arg-type]
                    lost=lost, acknowledged=24, completed=24 - lost, reach=4)


def _row(status: str, fixed: str | None = "safe", fault: str = "worker_kill") -> AuditRow:
    return AuditRow(
        fault=fault, label=FAULTS[fault].label, what_ran="", status=status,  # type: ignore[arg-type]
        theirs=_run(status, lost=3 if status == "unsafe" else 0),
        recommended=dict(ACKS_LATE) if fixed else {},
        fixed=_run(fixed, name="worker_kill-with-fix", index=2, settings=dict(ACKS_LATE))
        if fixed else None,
    )


def test_scorecard_words() -> None:
    assert settings_text(ACKS_LATE) == "task_acks_late=True, task_reject_on_worker_lost=True"
    assert settings_text({"broker_transport_options": {"visibility_timeout": 6}}) == (
        "broker_transport_options.visibility_timeout=6")
    line = row_words(_row("unsafe"))
    assert line.startswith("Worker killed mid-task: your configuration LOST 3 tasks "
                           "(run index.html#s1-worker_kill-your-config). "
                           "Fix: task_acks_late=True, task_reject_on_worker_lost=True: "
                           "with it, nothing was lost")
    assert line.endswith("(run index.html#s2-worker_kill-with-fix).")
    assert "the fix did NOT hold" in row_words(_row("unsafe", fixed="unsafe"))
    assert "your configuration is SAFE" in row_words(_row("safe", fixed=None))
    na = AuditRow(fault="terminate", label="Stopped", what_ran="", status="not_applicable",
                  reason="no task long enough")
    assert row_words(na) == "Stopped: not applicable: no task long enough"


def test_exit_code_and_outcome_line() -> None:
    unsafe, safe = _row("unsafe"), _row("safe", fixed=None)
    unknown = _row("unknown", fixed=None)
    na = AuditRow(fault="terminate", label="x", what_ran="", status="not_applicable")
    assert audit_exit_code([safe, na]) == 0
    assert audit_exit_code([unsafe, safe]) == 1
    assert audit_exit_code([unsafe, unknown]) == 1  # a proven loss is the finding
    assert audit_exit_code([safe, unknown]) == 2
    assert audit_exit_code([na]) == 2  # nothing tried: nothing proven
    assert audit_exit_code([]) == 2
    assert audit_exit_code([safe], error="interrupted") == 2
    res = AuditResult(run_id="r", app="a:app", broker="rabbitmq", started="t",
                      rows=[unsafe, safe])
    line = outcome_line(res, "/r/audit.html")
    assert line.startswith("celery-chaos audit: UNSAFE: your configuration loses tasks under "
                           "1 of 2 faults (worker_kill); the recommended fix held for 1")
    assert line.endswith("report /r/audit.html")
    res.rows = [safe, na]
    assert outcome_line(res, "p").startswith("celery-chaos audit: SAFE:")
    res.rows = [na]
    assert "NO VERDICT: no fault reached your tasks" in outcome_line(res, "p")
    broken = _row("error", fixed=None)
    assert broken.theirs is not None
    broken.theirs.error = "rabbitmq did not start"
    res.rows = [broken, na]
    assert outcome_line(res, "p").startswith(
        "celery-chaos audit: NO VERDICT: the runs of worker_kill failed (worker_kill: "
        "rabbitmq did not start)")
    assert row_words(broken).startswith("Worker killed mid-task: the run failed: rabbitmq")


# -- real audits --------------------------------------------------------------------------


def audit(tmp: Path, *args: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess[str],
                                                                 Path | None]:
    """Run ``celery-chaos audit`` as a user would; return the process and the run dir."""
    reports = tmp / "reports"
    proc = subprocess.run(
        [sys.executable, "-m", "celery_chaos.cli", "audit", "--reports", str(reports), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )
    runs = sorted(p.parent for p in reports.glob("*/audit.json"))
    return proc, (runs[-1] if runs else None)


@pytest.fixture(scope="module")
def early_audit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """One audit of the early-ack app under a worker kill, shared by two tests."""
    tmp = tmp_path_factory.mktemp("early")
    proc, run_dir = audit(tmp, "--chaos-app", "tests.auditapp.early:app", "--chaos-workload",
                          str(WORKLOAD), "--only", "worker_kill", "--tasks", "24")
    assert run_dir is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, run_dir


@pytest.mark.slow
def test_defaults_lose_tasks_and_the_fix_holds(early_audit: tuple[Any, Path]) -> None:
    proc, run_dir = early_audit
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("celery-chaos audit: UNSAFE") and last.endswith(
        f"report {run_dir / 'audit.html'}")
    data = json.loads((run_dir / "audit.json").read_text())
    assert data["exit_code"] == 1 and data["broker"] == "rabbitmq"
    assert data["app_settings"]["acks_late"] is False
    (row,) = data["rows"]
    assert row["fault"] == "worker_kill" and row["status"] == "unsafe"
    assert row["theirs"]["settings"] == {} and row["theirs"]["lost"] >= 1
    assert row["recommended"] == {"task_acks_late": True, "task_reject_on_worker_lost": True}
    assert row["fixed"]["status"] == "safe" and row["fixed"]["verdict"] == "valid"
    assert row["fixed"]["lost"] == 0 and row["fixed"]["reach"] >= 1
    # The evidence: both scenario directories and their sections of the run report.
    for run in (row["theirs"], row["fixed"]):
        assert (run_dir / run["dir"] / "result.json").is_file()
        anchor = run["anchor"].split("#")[1]
        assert f'id="{anchor}"' in (run_dir / "index.html").read_text()
    verdict = json.loads((run_dir / "verdict.json").read_text())
    assert [s["verdict"] for s in verdict["scenarios"]] == ["invalid", "valid"]
    assert verdict["exit_code"] == 1


@pytest.mark.slow
def test_an_already_safe_app_exits_0(tmp_path: Path) -> None:
    proc, run_dir = audit(tmp_path, "--chaos-app", "tests.auditapp.safe:app",
                          "--chaos-workload", str(WORKLOAD), "--tasks", "24")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert run_dir is not None
    data = json.loads((run_dir / "audit.json").read_text())
    assert [r["fault"] for r in data["rows"]] == list(FAULTS)
    for row in data["rows"]:
        assert row["status"] == "safe", row
        assert row["theirs"]["reach"] >= 1 and row["fixed"] is None
    assert proc.stdout.strip().splitlines()[-1].startswith("celery-chaos audit: SAFE")


@pytest.mark.slow
def test_tasks_too_short_to_strike_are_not_applicable(tmp_path: Path) -> None:
    proc, run_dir = audit(tmp_path, "--chaos-app", "tests.auditapp.early:app",
                          "--chaos-workload", str(ROOT / "tests" / "auditapp" / "fast.yaml"),
                          "--tasks", "24")
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert run_dir is not None
    rows = json.loads((run_dir / "audit.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["not_applicable"] * len(FAULTS)
    assert "no task long enough" in rows[0]["reason"]
    assert rows[1]["theirs"] is None  # the same pick cannot fire: not run again
    assert "NO VERDICT: no fault reached your tasks" in proc.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--chaos-app", "nope.mod:app", "--chaos-workload", str(WORKLOAD)],
         "cannot import 'nope.mod'"),
        (["--chaos-app", "tests.auditapp.early:app"], "needs --chaos-workload FILE"),
        (["--chaos-app", "tests.auditapp.early:app", "--chaos-workload",
          str(ROOT / "tests" / "userapp" / "workload.yaml")], "does not register"),
        (["--chaos-app", "tests.auditapp.early:app", "--chaos-workload", "missing.yaml"],
         "cannot read workload file"),
        (["--chaos-app", "tests.auditapp.early:app", "--chaos-workload", str(WORKLOAD),
          "--only", "flood"], "--only flood: unknown fault"),
        (["--chaos-app", "tests.auditapp.early:app", "--chaos-workload", str(WORKLOAD),
          "--tasks", "0"], "--tasks '0': must be more than 0"),
        ([], "the following arguments are required: --chaos-app"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], words: str) -> None:
    proc, run_dir = audit(tmp_path, *args, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert run_dir is None and not (tmp_path / "reports").exists()  # nothing started


# In CI the set-up installs Chromium, so a missing one there is a failure, not a skip.
@pytest.mark.skipif(find_chromium() is None and os.environ.get("CI") != "true",
                    reason="chromium is not installed (scripts/setup.sh installs it)")
@pytest.mark.slow
def test_scorecard_in_headless_chromium(early_audit: tuple[Any, Path]) -> None:
    _, run_dir = early_audit
    with Chromium(timeout=60) as browser:
        page = browser.open(
            (run_dir / "audit.html").as_uri(),
            ready_expression="document.readyState === 'complete'",
            probes={
                "title": "document.querySelector('h1').textContent",
                "first": "document.querySelector('#scorecard li').innerText",
                "status": "document.querySelector('#scorecard li').dataset.status",
                "top": "document.querySelector('#scorecard').getBoundingClientRect().top",
            },
        )
    assert page.errors == []
    v = page.values
    assert v["title"].startswith("Your configuration loses tasks")
    assert v["status"] == "unsafe"
    assert v["first"].startswith("Worker killed mid-task: your configuration LOST ")
    assert ("Fix: task_acks_late=True, task_reject_on_worker_lost=True: with it, nothing was "
            "lost") in v["first"]
    assert v["top"] < 400  # the scorecard opens the page: on the first screen
