"""The one runner: a :class:`~celery_chaos.spec.model.ScenarioSpec` executed on a scenario.

``run_spec`` deploys what the spec describes on the scenario's backend, starts the main
load, runs the fault schedule (every step in a thread of its own, windows recorded in the
history), then drains and judges the history with the spec's checkers. The resolved spec
is stored as ``spec.json`` beside the history, so a run can be replayed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from celery_chaos.checks.registry import UnknownChecker, rebuild
from celery_chaos.checks.verdict import InvariantResult
from celery_chaos.deployment.netns import netns_unavailable
from celery_chaos.errors import UsageError
from celery_chaos.faults.context import Window
from celery_chaos.faults.schedule import ScheduleRun
from celery_chaos.history.schema import Record
from celery_chaos.results import ScenarioResult, write_json
from celery_chaos.runner.scenario import Scenario
from celery_chaos.spec.model import ScenarioSpec

SPEC_FILE = "spec.json"


class NotApplicable(Exception):  # noqa: N818 - a skip, not an error
    """The scenario does not apply to the app under test (said with the reason)."""


@dataclass
class ScenarioRun:
    """What a run of one spec produced: the result, the step windows, the live scenario."""

    spec: ScenarioSpec
    scenario: Scenario
    result: ScenarioResult
    windows: dict[str, Window] = field(default_factory=dict)

    def history(self) -> list[Record]:
        """The scenario's history."""
        return self.scenario.history()

    def window(self, step: str) -> Window:
        """One step's window (its times, detail and outputs)."""
        return self.windows[step]

    def hit(self, step: str) -> list[str]:
        """The tasks a kill step picked that were still running when its signal left."""
        return list(self.windows[step].detail.get("hit", []))

    def invariant(self, name: str) -> InvariantResult:
        """One invariant's result by name."""
        return next(i for i in self.result.invariants if i.name == name)

    def add_metrics(self, **metrics: Any) -> None:
        """Add scenario-specific figures to ``result.json``."""
        self.result.metrics.update(metrics)
        self.scenario.save()


def check_applicable(spec: ScenarioSpec, scenario: Scenario) -> None:
    """Raise :class:`NotApplicable` when the spec needs the sample app and another runs."""
    if spec.deployment.needs_sample_app and not scenario.app.is_sample:
        raise NotApplicable(
            f"{spec.name} drives the sample app's own tasks or beat entries; "
            f"the app under test is {scenario.app.spec}"
        )
    if (why := scenario.backend.unsupported(spec.deployment)) is not None:
        raise NotApplicable(f"{spec.name} on the {scenario.backend.kind} backend: {why}")
    if spec.deployment.network == "netns" and (missing := netns_unavailable()):
        raise NotApplicable(f"{spec.name}: {missing}")


def resolved(spec: ScenarioSpec, scenario: Scenario) -> ScenarioSpec:
    """The spec as it runs: the app under test named, and every load's workload written out
    (so that a replay publishes the same mix, whatever ``--chaos-workload`` says then)."""
    data = spec.to_json()
    data["app"] = scenario.app.spec
    mix = [t.model_dump(mode="json") for t in scenario.app.workload.tasks]
    if data.get("load") and data["load"].get("workload") is None:
        data["load"]["workload"] = mix
    for step in data["schedule"]:
        if step["do"].get("op") == "load" and step["do"].get("workload") is None:
            step["do"]["workload"] = mix
    return ScenarioSpec.model_validate(data)


def run_spec(spec: ScenarioSpec, scenario: Scenario) -> ScenarioRun:
    """Deploy, load, run the schedule, drain and check; ``result.json`` and ``spec.json``
    (the resolved spec) are written. The caller closes the scenario (teardown)."""
    check_applicable(spec, scenario)
    if spec.app is not None and spec.app != scenario.app.spec:
        raise UsageError(
            f"{spec.name} was recorded with the app {spec.app}: run it with --chaos-app {spec.app}"
        )
    spec = resolved(spec, scenario)
    write_json(scenario.dir / SPEC_FILE, spec.to_json())
    scenario.result.description = scenario.result.description or spec.description
    scenario.deploy_spec(spec.deployment, expect=spec.expect)
    if spec.load is not None:
        scenario.start_load(spec.load)
    sched = ScheduleRun(spec.schedule, scenario)
    scenario.phase = "load and faults"
    windows = sched.run()
    checkers = []
    for c in spec.checks.invariants:
        try:
            checkers.append(rebuild({"checker": c.checker, "params": sched.resolve(c.params)}))
        except UnknownChecker as exc:
            raise UsageError(f"{spec.name}: {exc}") from None
    result = scenario.check(
        exactly_once=spec.checks.exactly_once,
        invariants=checkers,
        drain_timeout=spec.checks.drain_timeout,
        settle=spec.checks.settle,
    )
    run = ScenarioRun(spec=spec, scenario=scenario, result=result, windows=windows)
    run.add_metrics(schedule=[_window_summary(w, scenario) for w in windows.values()])
    return run


def _window_summary(win: Window, scenario: Scenario) -> dict[str, Any]:
    """A step as run, for ``result.json``: times in seconds since the scenario began."""
    t0 = scenario.started * 1e9

    def rel(ns: int | None) -> float | None:
        return None if ns is None else round((ns - t0) / 1e9, 3)

    out: dict[str, Any] = {"step": win.step, "name": win.name, "target": win.target,
                           "start_s": rel(win.start_ns), "end_s": rel(win.end_ns)}
    if win.task_ids:
        out["tasks"] = win.task_ids
    detail = win.public_detail()
    for key in ("picked", "hit", "pid", "skipped"):
        if key in detail:
            out[key] = detail[key]
    return out
