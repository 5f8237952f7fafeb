"""The shipped catalog as pytest items: what ``celery-chaos run`` runs outside a checkout.

Every spec of ``harness/catalog/*.yaml`` runs through the one runner and must end as it
declares (a negative control must be flagged). ``--chaos-spec-file FILE`` runs one spec
instead: a run's ``spec.json`` (``celery-chaos replay``) or a schedule file
(``celery-chaos run --schedule``). The checkout's ``scenarios/`` run the same specs with
the assertions specific to each.
"""

from __future__ import annotations

from typing import Any

import pytest

from celery_chaos.runner.catalog import specs
from celery_chaos.spec.model import ScenarioSpec, load_spec

SPEC_FILE_OPTION = "chaos_spec_file"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "spec" not in metafunc.fixturenames:
        return
    path = metafunc.config.getoption(SPEC_FILE_OPTION)
    chosen = [load_spec(path)] if path else specs()
    metafunc.parametrize("spec", chosen, ids=[s.name for s in chosen])


@pytest.mark.chaos
def test_catalog(chaos_run: Any, spec: ScenarioSpec) -> None:
    """The scenario ends as declared: ``valid``, or ``invalid`` for a negative control."""
    run = chaos_run(spec)
    problems = [p for i in run.result.invariants for p in i.problems]
    assert run.result.verdict == spec.expect, problems
