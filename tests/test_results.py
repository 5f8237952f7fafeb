"""The run's exit code, computed in one place for pytest runs, ``analyze`` and ``load``."""

from __future__ import annotations

from pathlib import Path

import pytest

from celery_chaos.checks.verdict import Verdict
from celery_chaos.results import Expect, ScenarioResult, exit_code_for, exit_code_of

OK, BAD, NONE = Verdict.VALID, Verdict.INVALID, Verdict.UNKNOWN


@pytest.mark.parametrize(
    ("outcomes", "code"),
    [
        ([], 0),
        ([(OK, "valid"), (BAD, "invalid")], 0),  # a caught negative control is as declared
        ([(OK, "valid"), (BAD, "valid")], 1),
        ([(OK, "invalid")], 1),  # a negative control that was not caught
        ([(NONE, "valid"), (BAD, "valid")], 2),  # no verdict beats a violation
        ([(NONE, "invalid")], 2),
        ([(NONE, "unknown")], 0),  # an existing deployment: unknown by design
        ([(OK, "unknown")], 1),
    ],
)
def test_outcomes(outcomes: list[tuple[Verdict, Expect]], code: int) -> None:
    assert exit_code_of(outcomes) == code


@pytest.mark.parametrize(
    ("status", "as_declared", "code"),
    [(0, 0, 0), (5, 0, 0), (1, 0, 1), (2, 0, 2), (3, 0, 2), (4, 0, 2), (2, 1, 1), (1, 1, 1)],
)
def test_pytest_status(status: int, as_declared: int, code: int) -> None:
    """Failed tests are a 1; an interrupted, internal or usage error makes a clean run a 2."""
    outcomes: list[tuple[Verdict, Expect]] = [(OK, "valid") if as_declared == 0 else (BAD, "valid")]
    assert exit_code_of(outcomes, tests_status=status) == code


def test_scenario_results() -> None:
    ok = ScenarioResult(name="ok", checked=True, verdict=OK)
    unchecked = ScenarioResult(name="stopped")  # stopped before its check: only pytest says
    assert exit_code_for([ok, unchecked]) == 0
    assert exit_code_for([ok, unchecked], tests_status=1) == 1
    assert exit_code_for([ok], infra_error=True) == 2
    assert exit_code_for([ok, ScenarioResult(name="e", error="port clash")]) == 2
    assert exit_code_for([ScenarioResult(name="bad", checked=True, verdict=BAD)]) == 1


def test_the_last_line_says_what_happened_and_where_the_report_is(tmp_path: Path) -> None:
    from celery_chaos.results import run_summary_line

    def r(name: str, verdict: str, expect: str, **kw: object) -> ScenarioResult:
        return ScenarioResult(name=name, verdict=Verdict(verdict), expect=expect,  # type: ignore[arg-type]
                              checked=kw.pop("checked", True), **kw)  # type: ignore[arg-type]

    page = tmp_path / "index.html"
    ok = [r("a", "valid", "valid"), r("b", "invalid", "invalid"), r("c", "invalid", "invalid")]
    assert run_summary_line(ok, 0, tmp_path) == (
        "celery-chaos: 3 scenarios, every one as declared: 1 safe configuration held, "
        f"2 negative controls caught their bug; report {page}"
    )
    off = [*ok, r("d", "invalid", "valid")]
    assert run_summary_line(off, 1, tmp_path) == (
        f"celery-chaos: 1 of 4 scenarios NOT as declared (d); report {page}"
    )
    broken = [*ok, r("e", "unknown", "valid", error="broker did not start")]
    assert run_summary_line(broken, 2, tmp_path).startswith(
        "celery-chaos: NO VERDICT for 1 of 4 scenarios (e): nothing is proven for them"
    )
    assert "a test of the session failed" in run_summary_line(ok, 1, tmp_path)
