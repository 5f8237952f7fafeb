"""Hypothesis strategies over the fault vocabulary: fault schedules to explore.

A drawn schedule has 1 to ``max_faults`` faults, each a registered fault op on a target of
the deployment, fired by an ``at`` trigger (seconds into the load) or a ``running`` trigger
(the target runs a task 0.1-0.6 s old), held for a drawn duration when the op is held.
Every choice is drawn so that Hypothesis shrinks toward a simpler schedule: fewer faults,
the first op of the allow-list, the first worker, for a worker fault the ``running`` trigger
(timed from the history, so the minimal schedule replays the same way), earlier triggers and
shorter windows (integers in tenths of a second shrink toward their lower bound).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from celery_chaos.errors import UsageError
from celery_chaos.faults.schedule import Step
from celery_chaos.faults.vocabulary import fault_names, registry
from celery_chaos.spec.model import ScenarioSpec

#: Faults an exploration draws from by default: process and broker faults that need no
#: proxied links. ``partition`` and ``latency`` join when the deployment is proxied.
DEFAULT_FAULTS = ("kill_worker", "kill_pool_child", "pause_worker", "crash_broker")
LINK_FAULTS = ("partition", "latency")
#: Faults that target a worker (the others act on the broker or on links).
_WORKER_FAULTS = {"kill_worker", "kill_pool_child", "pause_worker", "pause_pool_child"}
#: Faults that take the broker down: one a schedule (two overlapping would crash it while
#: the other restarts it: an error of the harness, not a finding).
_BROKER_FAULTS = {"crash_broker", "stop_broker"}
_BROKER = "<broker>"
#: Ops an exploration can build from a target and a duration alone.
EXPLORABLE = (*DEFAULT_FAULTS, *LINK_FAULTS)


@dataclass(frozen=True)
class Space:
    """What an exploration may draw: faults, targets, and time bounds (s)."""

    faults: tuple[str, ...]
    workers: tuple[str, ...]
    max_faults: int = 4
    horizon_s: float = 4.0
    max_duration_s: float = 6.0


def space_for(spec: ScenarioSpec, faults: list[str] | None, max_faults: int) -> Space:
    """The space of ``spec``'s deployment; bad allow-lists are one-line usage errors."""
    known = set(fault_names())
    proxied = spec.deployment.proxied
    chosen = list(faults) if faults else [
        *DEFAULT_FAULTS, *(LINK_FAULTS if proxied else ())
    ]
    for name in chosen:
        if name not in known:
            raise UsageError(f"unknown fault {name!r} in --faults: use one of "
                             f"{', '.join(f for f in EXPLORABLE)}")
        if name not in EXPLORABLE:
            raise UsageError(f"fault {name!r} cannot be explored (it needs parameters a "
                             f"schedule must give): use {', '.join(EXPLORABLE)}")
        if name in LINK_FAULTS and not proxied:
            raise UsageError(f"fault {name!r} needs proxied links: the spec's deployment "
                             "has proxied: false")
    workers = tuple(w.split("@")[0] for w in spec.deployment.worker_names())
    if not workers and any(f in _WORKER_FAULTS for f in chosen):
        raise UsageError("the deployment has no worker to fault")
    if max_faults < 1:
        raise UsageError(f"--max-faults {max_faults}: at least 1")
    load = spec.load
    horizon = 4.0
    if load is not None and load.tasks and load.rate:
        horizon = max(1.0, load.tasks / load.rate)
    elif load is not None and load.duration:
        horizon = load.duration
    return Space(faults=tuple(chosen), workers=workers, max_faults=max_faults,
                 horizon_s=horizon)


def _tenths(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.integers(round(lo * 10), max(round(lo * 10), round(hi * 10))).map(
        lambda n: n / 10
    )


@st.composite
def fault_step(
    draw: st.DrawFn, space: Space, index: int, killed: set[str], targeted: set[str]
) -> dict[str, Any]:
    """One step: a fault on a target with a trigger (and a window when held).

    ``killed``/``targeted``: workers that earlier steps kill / aim at. The triggers are
    independent, so a schedule stays coherent by construction: no fault aims at a worker
    another step kills (it would find its target gone: an error, not a finding), and one
    worker at least survives (with none, nothing drains: a verdict of unknown); the broker
    is taken down by one step at most."""
    alive = [w for w in space.workers if w not in killed]
    killable = [w for w in alive if w not in targeted]
    ops = [
        op for op in space.faults
        if not (op in _WORKER_FAULTS and not alive)
        and not (op == "kill_worker" and (not killable or len(killed) + 1 >= len(space.workers)))
        and not (op in _BROKER_FAULTS and _BROKER in targeted)
    ]
    op = draw(st.sampled_from(ops))
    do: dict[str, Any] = {"op": op}
    worker: str | None = None
    if op in _WORKER_FAULTS:
        worker = draw(st.sampled_from(killable if op == "kill_worker" else alive))
        do["worker"] = worker
        (killed if op == "kill_worker" else targeted).add(worker)
    elif op in _BROKER_FAULTS:
        targeted.add(_BROKER)  # one broker fault a schedule: a crash during another's restart
    elif op in LINK_FAULTS:
        link = draw(st.sampled_from([*space.workers, "*"])) if space.workers else "*"
        do["links"] = f"{link}-broker"
        if op == "latency":
            do["ms"] = draw(st.integers(50, 500))
    when: dict[str, Any]
    # A worker fault shrinks toward the `running` trigger (False is the simpler boolean):
    # timed from the history, it replays the same way; a time trigger is luck.
    if worker is not None and not draw(st.booleans()):
        min_age = draw(_tenths(0.1, 0.6))
        # Not required: when the worker never runs such a task (the load ended, the broker
        # was down), the fault does not fire and the run goes on.
        when = {"running": {"worker": worker, "n": 1, "min_age": min_age,
                            "max_age": round(min_age + 0.3, 1)},
                "timeout": round(space.horizon_s + 5.0, 1), "required": False}
    else:
        when = {"at": draw(_tenths(0.0, space.horizon_s))}
    step: dict[str, Any] = {"id": f"f{index + 1}", "when": when, "do": do}
    if registry()[op].held:
        step["duration"] = draw(_tenths(0.5, space.max_duration_s))
    return step


def coherent(steps: list[dict[str, Any]], workers: int | None = None) -> bool:
    """Whether a schedule keeps the rules :func:`fault_step` draws by (for tests and for
    schedules from elsewhere)."""
    killed = [s["do"]["worker"] for s in steps if s["do"]["op"] == "kill_worker"]
    if len(killed) != len(set(killed)):
        return False
    if workers is not None and workers and len(killed) >= workers:
        return False
    for s in steps:
        worker = s["do"].get("worker") or s["when"].get("running", {}).get("worker")
        if worker in killed and s["do"]["op"] != "kill_worker":
            return False
    return True


@st.composite
def schedules(draw: st.DrawFn, space: Space) -> list[dict[str, Any]]:
    """1 to ``space.max_faults`` fault steps, each on its own trigger (they may overlap)."""
    n = draw(st.integers(1, space.max_faults))
    killed: set[str] = set()
    targeted: set[str] = set()
    return [draw(fault_step(space, i, killed, targeted)) for i in range(n)]


def complexity(steps: list[dict[str, Any]]) -> tuple[float, ...]:
    """A sort key: fewer faults, then shorter windows, then earlier triggers."""
    total = sum(float(s.get("duration", 0)) for s in steps)
    late = sum(float(s["when"].get("at", 0)) for s in steps)
    return (len(steps), total, late)


def validate(steps: list[dict[str, Any]]) -> list[Step]:
    """The drawn steps as validated schedule steps."""
    return [Step.model_validate(s) for s in steps]
