"""``celery-chaos explore``: draw fault schedules, run each for real, shrink a violation.

Hypothesis (``find``) draws schedules from :mod:`celery_chaos.explore.strategies`; each one runs
on a fresh deployment through the one runner (:func:`celery_chaos.runner.run.run_spec`) and is
judged by every invariant of the base spec. A violation is an ``invalid`` verdict. Real runs
are not deterministic, so a candidate counts as failing only when it fails ``min_fails`` of
up to ``reruns`` runs; Hypothesis sees a cached, deterministic answer per schedule, so it
never meets a flaky condition. A schedule that fails fewer times than that is recorded as
flaky with its runs. The smallest failing schedule (fewer faults, shorter windows, earlier
triggers) is replayed and saved as ``minimal-schedule.json``.

The budget is a hard limit on starting work: no run starts that the median run so far would
not finish within it, and each run's drain is capped by what remains; the explorer then
stops, tears down, and reports what it has.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, find, settings
from hypothesis.errors import NoSuchExample

from celery_chaos.backends.local import SharedBrokers
from celery_chaos.errors import ChaosError, UsageError
from celery_chaos.explore.strategies import Space, complexity, schedules, validate
from celery_chaos.faults.schedule import describe_steps
from celery_chaos.results import (
    ExplorationResult,
    ExploreExample,
    ExploreRun,
    write_json,
)
from celery_chaos.runner.app import AppUnderTest
from celery_chaos.runner.run import NotApplicable, run_spec
from celery_chaos.runner.scenario import Scenario
from celery_chaos.spec.model import ScenarioSpec

MINIMAL_FILE = "minimal-schedule.json"
RESULT_FILE = "exploration.json"


class _Stop(Exception):  # noqa: N818 - control flow, never shown
    """The budget or the example count ran out: stop the search where it is."""


class Explorer:
    """One exploration of a base spec's deployment under generated fault schedules."""

    def __init__(
        self,
        base: ScenarioSpec,
        app: AppUnderTest,
        out: Path,
        space: Space,
        *,
        budget_s: float,
        max_examples: int,
        seed: int,
        reruns: int = 2,
        min_fails: int = 2,
        replays: int = 3,
        say: Callable[[str], None] = print,
        brokers: SharedBrokers | None = None,
    ) -> None:
        if budget_s <= 0:
            raise UsageError(f"--budget {budget_s:g}: must be more than 0 seconds")
        if max_examples < 1:
            raise UsageError(f"--max-examples {max_examples}: at least 1")
        if not 1 <= min_fails <= reruns:
            raise UsageError(f"--min-fails {min_fails} of --reruns {reruns}: need "
                             "1 <= min-fails <= reruns")
        self.base = base.model_copy(update={"expect": "valid"})
        self.app = app
        self.out = out
        self.space = space
        self.budget_s = budget_s
        self.max_examples = max_examples
        self.seed = seed
        self.reruns = reruns
        self.min_fails = min_fails
        self.replays = replays
        self.say = say
        self.examples: list[ExploreExample] = []
        self._cache: dict[str, ExploreExample] = {}
        self._walls: list[float] = []
        self._t0 = 0.0
        self._first_failure_s: float | None = None
        self._runs = 0
        #: Brokers to run on: the caller's (kept running), or the exploration's own.
        self.brokers: SharedBrokers | None = brokers
        self._own_brokers = brokers is None

    # -- the budget -------------------------------------------------------------------------

    def remaining(self) -> float:
        """Seconds left of the budget."""
        return self.budget_s - (time.monotonic() - self._t0)

    def _fits(self) -> bool:
        need = statistics.median(self._walls) if self._walls else 0.0
        return self.remaining() > need

    # -- running one schedule ---------------------------------------------------------------

    def _spec(self, steps: list[dict[str, Any]], name: str) -> ScenarioSpec:
        spec = self.base.with_schedule(validate(steps))
        drain = min(spec.checks.drain_timeout, max(5.0, self.remaining() - 5.0))
        checks = spec.checks.model_copy(update={"drain_timeout": drain})
        # The verdict is in before teardown: a short grace keeps many runs cheap.
        grace = min(spec.deployment.stop_grace_s, 1.0)
        deployment = spec.deployment.model_copy(update={"stop_grace_s": grace})
        return spec.model_copy(update={"name": name, "checks": checks,
                                       "deployment": deployment})

    def run_once(self, steps: list[dict[str, Any]], name: str) -> ExploreRun:
        """Run ``steps`` on a fresh deployment; the verdict or the error, never a raise."""
        assert self.brokers is not None
        spec = self._spec(steps, name)
        scenario = Scenario(name, self.out / "runs", self.app, self.brokers,
                            description=f"explore: {self.base.name}")
        t0 = time.monotonic()
        error: str | None = None
        try:
            run_spec(spec, scenario)
        except NotApplicable as exc:
            raise UsageError(str(exc)) from None
        except UsageError:
            raise
        except ChaosError as exc:
            error = str(exc)
        finally:
            scenario.close(error=error)
        wall = round(time.monotonic() - t0, 2)
        self._walls.append(wall)
        self._runs += 1
        res = scenario.result
        problems = [p for i in res.invariants for p in i.problems][:5]
        return ExploreRun(name=name, dir=str(scenario.dir), verdict=res.verdict.value,
                          error=res.error, wall_s=wall, problems=problems)

    def evaluate(self, steps: list[dict[str, Any]], phase: str) -> ExploreExample:
        """Run a schedule up to ``reruns`` times; failing when ``min_fails`` runs fail."""
        key = json.dumps(steps, sort_keys=True)
        if key in self._cache:
            return self._cache[key]
        if len(self.examples) >= self.max_examples and phase == "generate":
            raise _Stop("max examples")
        index = len(self.examples) + 1
        runs: list[ExploreRun] = []
        for attempt in range(self.reruns):
            if not self._fits():
                raise _Stop("budget")
            name = f"example-{index:04d}" + (f"-r{attempt + 1}" if attempt else "")
            runs.append(self.run_once(steps, name))
            fails = sum(r.verdict == "invalid" for r in runs)
            if fails >= self.min_fails or fails + (self.reruns - attempt - 1) < self.min_fails:
                break
        fails = sum(r.verdict == "invalid" for r in runs)
        if fails >= self.min_fails:
            outcome = "violation"
        elif fails:
            outcome = "flaky"
        elif all(r.error or r.verdict == "unknown" for r in runs):
            outcome = "error"
        else:
            outcome = "valid"
        example = ExploreExample(index=index, phase=phase, schedule=steps, runs=runs,
                                 outcome=outcome, complexity=list(complexity(steps)))
        self.examples.append(example)
        self._cache[key] = example
        if outcome == "violation" and self._first_failure_s is None:
            self._first_failure_s = round(time.monotonic() - self._t0, 1)
        self.say(f"celery-chaos explore: example {index} ({phase}): {outcome} "
                 f"[{', '.join(r.verdict for r in runs)}] {describe_steps(steps)}")
        return example

    # -- the search -------------------------------------------------------------------------

    def run(self) -> ExplorationResult:
        """Search, shrink, replay the minimal schedule; write the result and return it."""
        self.out.mkdir(parents=True, exist_ok=True)
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._t0 = time.monotonic()
        if self.brokers is None:
            self.brokers = SharedBrokers(self.out / "runs", "brokers")
        stopped = "search complete"
        found = False

        def failing(steps: list[dict[str, Any]]) -> bool:
            nonlocal found
            phase = "shrink" if found else "generate"
            ok = self.evaluate(steps, phase).outcome == "violation"
            found = found or ok
            return ok

        conf = settings(
            max_examples=self.max_examples,
            deadline=None,
            database=None,
            derandomize=False,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.generate, Phase.shrink],
        )
        minimal: ExploreExample | None = None
        replays: list[ExploreRun] = []
        try:
            try:
                find(schedules(self.space), failing, settings=conf,
                     random=random.Random(self.seed))
            except NoSuchExample:
                stopped = "no violation within the examples"
            except _Stop as why:
                stopped = f"stopped: {why} reached"
            violations = [e for e in self.examples if e.outcome == "violation"]
            if violations:
                minimal = min(violations, key=lambda e: (tuple(e.complexity), e.index))
                for i in range(self.replays):
                    if not self._fits():
                        break
                    replays.append(self.run_once(minimal.schedule, f"replay-{i + 1}"))
        finally:
            if self._own_brokers:
                self.brokers.close()
        result = ExplorationResult(
            base=self.base.name,
            app=self.app.spec,
            seed=self.seed,
            budget_s=self.budget_s,
            max_examples=self.max_examples,
            reruns=self.reruns,
            min_fails=self.min_fails,
            started=started,
            elapsed_s=round(time.monotonic() - self._t0, 1),
            runs=self._runs,
            stopped=stopped,
            examples=self.examples,
            first_failure_s=self._first_failure_s,
            shrink_runs=sum(len(e.runs) for e in self.examples if e.phase == "shrink"),
            minimal=minimal,
            replays=replays,
            flaky=[e.index for e in self.examples if e.outcome == "flaky"],
        )
        result.exit_code = exit_code(result)
        write_json(self.out / RESULT_FILE, result.model_dump(mode="json"))
        if minimal is not None:
            spec = self.base.with_schedule(validate(minimal.schedule))
            spec = spec.model_copy(update={
                "name": f"{self.base.name}-minimal",
                "description": f"Found by celery-chaos explore (seed {self.seed}): the "
                               f"smallest schedule that failed {self.base.name}.",
                "app": self.app.spec,
            })
            write_json(self.out / MINIMAL_FILE, {"spec": spec.to_json()})
        return result


def exit_code(result: ExplorationResult) -> int:
    """0: no violation; 1: a violation found (and shrunk); 2: nothing ran cleanly."""
    if result.minimal is not None:
        return 1
    if result.examples and all(e.outcome == "error" for e in result.examples):
        return 2
    return 0
