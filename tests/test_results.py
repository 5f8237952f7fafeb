"""The run's exit code, computed in one place for pytest runs, ``analyze`` and ``load``."""

from __future__ import annotations

import pytest

from harness.checks.verdict import Verdict
from harness.results import Expect, ScenarioResult, exit_code_for, exit_code_of

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
