"""The explorer's logic on a fake runner: drawn schedules are valid specs, k-of-n voting,
caching, the budget, flaky schedules, the minimal schedule and its file. No servers: the
real search runs in scenarios/test_explore.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_chaos.cli import _schedule_spec
from celery_chaos.errors import UsageError
from celery_chaos.explore import search
from celery_chaos.explore.search import MINIMAL_FILE, RESULT_FILE, Explorer
from celery_chaos.explore.strategies import coherent, complexity, schedules, space_for
from celery_chaos.load.workload import parse_workload
from celery_chaos.results import ExploreRun, Verdict
from celery_chaos.runner.app import AppUnderTest
from celery_chaos.runner.catalog import get
from celery_chaos.spec.model import ScenarioSpec

BASE = get("rabbitmq_early_ack_loses_tasks-main")
APP = AppUnderTest(spec="celery_chaos.sample_app.app:app",
                   workload=parse_workload([{"name": "celery_chaos.sample_app.tasks.send_email"}]),
                   queues=["default"])


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_every_drawn_schedule_is_a_valid_coherent_spec(data: st.DataObject) -> None:
    space = space_for(BASE, None, 4)
    steps = data.draw(schedules(space))
    assert 1 <= len(steps) <= 4 and coherent(steps, len(space.workers))
    killed = {s["do"]["worker"] for s in steps if s["do"]["op"] == "kill_worker"}
    assert len(killed) < len(space.workers), "a worker survives every schedule"
    assert sum(s["do"]["op"] in ("crash_broker", "stop_broker") for s in steps) <= 1
    spec = BASE.with_schedule([])  # the same deployment
    ScenarioSpec.model_validate({**spec.to_json(), "schedule": steps})


def test_bad_spaces_are_one_line_errors() -> None:
    with pytest.raises(UsageError, match="unknown fault 'melt'"):
        space_for(BASE, ["kill_worker", "melt"], 4)
    with pytest.raises(UsageError, match="needs proxied links"):
        space_for(BASE, ["partition"], 4)
    with pytest.raises(UsageError, match="cannot be explored"):
        space_for(BASE, ["http_failures"], 4)
    with pytest.raises(UsageError, match="at least 1"):
        space_for(BASE, None, 0)


def test_complexity_orders_fewer_shorter_earlier() -> None:
    one = [{"when": {"at": 2.0}, "do": {"op": "kill_worker", "worker": "w1"}}]
    two = [*one, {"when": {"at": 0.1}, "do": {"op": "pause_worker", "worker": "w2"},
                  "duration": 0.5}]
    assert complexity(one) < complexity(two)


def _fake(monkeypatch: pytest.MonkeyPatch, verdict_of: Any) -> list[str]:
    """Replace the real run: ``verdict_of(steps, name)`` decides each run's verdict."""
    ran: list[str] = []

    def run_once(self: Explorer, steps: list[dict[str, Any]], name: str) -> ExploreRun:
        ran.append(name)
        self._walls.append(0.01)
        self._runs += 1
        return ExploreRun(name=name, dir=str(self.out / "runs" / name),
                          verdict=Verdict(verdict_of(steps, name)))

    monkeypatch.setattr(Explorer, "run_once", run_once)
    class NoBrokers:
        def __init__(self, *args: Any) -> None:
            pass

        def close(self) -> None:
            pass

    monkeypatch.setattr(search, "SharedBrokers", NoBrokers)
    return ran


def _explorer(tmp_path: Path, **kw: Any) -> Explorer:
    opts: dict[str, Any] = {"budget_s": 60, "max_examples": 30, "seed": 3, "say": lambda s: None}
    opts.update(kw)
    return Explorer(BASE, APP, tmp_path / "out", space_for(BASE, None, 4), **opts)


def _kills(steps: list[dict[str, Any]]) -> bool:
    return any(s["do"]["op"] in ("kill_worker", "kill_pool_child") for s in steps)


def test_finds_and_shrinks_to_one_kill_and_writes_a_replayable_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake(monkeypatch, lambda steps, name: "invalid" if _kills(steps) else "valid")
    ex = _explorer(tmp_path)
    result = ex.run()
    assert result.exit_code == 1 and result.minimal is not None
    assert len(result.minimal.schedule) == 1 and _kills(result.minimal.schedule)
    assert len(result.replays) == 3 and result.first_failure_s is not None
    assert all(len(e.runs) == 2 for e in result.examples if e.outcome == "violation")
    saved = json.loads((tmp_path / "out" / RESULT_FILE).read_text())
    assert saved["minimal"]["schedule"] == result.minimal.schedule
    spec_file = _schedule_spec(tmp_path / "out" / MINIMAL_FILE)  # what run --schedule reads
    replay = json.loads(spec_file.read_text())
    assert replay["schedule"][0]["do"]["op"] in ("kill_worker", "kill_pool_child")
    assert replay["expect"] == "valid" and replay["app"] == APP.spec


def test_shrinking_reaches_the_boundary_of_the_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a kill of w2 at 1 s or later fails: the minimum is exactly that one step."""

    def verdict(steps: list[dict[str, Any]], name: str) -> str:
        late_w2 = [s for s in steps if s["do"] == {"op": "kill_worker", "worker": "w2"}
                   and s["when"].get("at", 0) >= 1.0]
        return "invalid" if late_w2 else "valid"

    _fake(monkeypatch, verdict)
    result = _explorer(tmp_path, max_examples=200, seed=5, replays=0).run()
    assert result.minimal is not None, [e.schedule for e in result.examples][:5]
    (step,) = result.minimal.schedule
    assert step["do"] == {"op": "kill_worker", "worker": "w2"}
    assert step["when"] == {"at": 1.0}
    assert result.shrink_runs > 0


def test_a_schedule_failing_once_of_two_is_flaky_not_a_violation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake(monkeypatch, lambda steps, name: "invalid" if "-r" not in name else "valid")
    result = _explorer(tmp_path, max_examples=5).run()
    assert result.minimal is None and result.exit_code == 0
    assert result.flaky and all(e.outcome == "flaky" for e in result.examples)


def test_nothing_ran_cleanly_is_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(monkeypatch, lambda steps, name: "unknown")
    result = _explorer(tmp_path, max_examples=3).run()
    assert result.exit_code == 2 and result.minimal is None


def test_the_budget_stops_the_search_and_the_result_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = _fake(monkeypatch, lambda steps, name: "valid")
    ex = _explorer(tmp_path, budget_s=0.5)
    ex._walls.append(10.0)  # a run takes longer than the whole budget: none may start
    result = ex.run()
    assert ran == [] and result.stopped == "stopped: budget reached" and result.exit_code == 0


def test_bad_options(tmp_path: Path) -> None:
    space = space_for(BASE, None, 4)
    for kw, msg in (({"budget_s": 0}, "--budget"), ({"max_examples": 0}, "--max-examples"),
                    ({"min_fails": 3, "reruns": 2}, "--min-fails")):
        opts: dict[str, Any] = {"budget_s": 10, "max_examples": 5, "seed": 0, **kw}
        with pytest.raises(UsageError, match=msg):
            Explorer(BASE, APP, tmp_path, space, **opts)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--budget", "0"], "--budget 0: must be more than 0 seconds"),
        (["--faults", "kill_worker,melt_cpu"], "unknown fault 'melt_cpu' in --faults"),
        (["--seed", "twelve"], "--seed 'twelve': not a whole number"),
        (["--max-examples", "x"], "--max-examples 'x': not a whole number"),
        (["--budget", "10 minutes"], "bad --budget '10 minutes'"),
    ],
)
def test_bad_explore_input_is_one_line_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from celery_chaos.cli import main

    out = tmp_path / "out"
    code = main(["explore", "--scenario", BASE.name, "--out", str(out), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not out.exists(), "nothing started"


def test_explore_never_overwrites_an_output_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from celery_chaos.cli import main

    (tmp_path / "kept.txt").write_text("recorded by the user")
    assert main(["explore", "--scenario", BASE.name, "--out", str(tmp_path)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert (tmp_path / "kept.txt").read_text() == "recorded by the user"
