"""Combining invariants into one verdict.

Each invariant checker returns an :class:`InvariantResult`; :func:`check_history`
runs them all. The overall verdict is :meth:`Verdict.combine` of theirs:
``invalid`` beats ``unknown`` beats ``valid``. A history with unreadable lines (not a record,
and not the torn last line of a file) adds :data:`HISTORY_COMPLETE`, ``unknown``: a lost line
can hide a lost task, so the run is never ``valid``, while a violation found in the lines
that were read still makes it ``invalid``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any, TypeVar

from pydantic import BaseModel, Field, ValidationError

from celery_chaos.checks.queue import check_queue
from celery_chaos.history.store import History

M = TypeVar("M", bound=BaseModel)


class Verdict(str, Enum):
    """The outcome of one invariant, or of a whole run."""

    VALID = "valid"
    INVALID = "invalid"
    UNKNOWN = "unknown"

    @classmethod
    def combine(cls, verdicts: Iterable[Verdict | str]) -> Verdict:
        """The worst verdict: invalid > unknown > valid (``valid`` for no verdicts)."""
        seen = {cls(v) for v in verdicts}
        for worst in (cls.INVALID, cls.UNKNOWN):
            if worst in seen:
                return worst
        return cls.VALID


class InvariantResult(BaseModel):
    """One invariant's verdict, a JSON-serialisable summary, and human-readable problems."""

    name: str
    verdict: Verdict
    summary: dict[str, Any] = Field(default_factory=dict)
    problems: list[str] = Field(default_factory=list)

    def summary_as(self, model: type[M]) -> M:
        """The summary read as ``model``, the model of the checker that wrote it
        (``QueueCheckResult``, ``BeatCheckResult``, ``HungSummary``...).

        A ``valid`` or ``problems`` field the checker left out of the summary is filled from
        this result. Raises ``pydantic.ValidationError`` when the summary is not of that shape.
        """
        data = dict(self.summary)
        if "valid" in model.model_fields:
            data.setdefault("valid", self.verdict.value)
        if "problems" in model.model_fields:
            data.setdefault("problems", list(self.problems))
        return model.model_validate(data)

    def summary_if(self, model: type[M]) -> M | None:
        """:meth:`summary_as`, or None when the summary is not of that shape, for readers that
        go through every invariant of a scenario. Only a model with required fields
        (``HungSummary``) tells another checker's summary apart."""
        try:
            return self.summary_as(model)
        except ValidationError:
            return None


def overall(results: Iterable[InvariantResult]) -> Verdict:
    """The combined verdict of several invariant results."""
    return Verdict.combine(r.verdict for r in results)


#: The name of the queue invariant's result (:func:`check_history` always runs it first).
QUEUE = "queue"
#: The invariant :func:`check_history` adds when lines of the history were unreadable.
HISTORY_COMPLETE = "history_complete"

#: An invariant: a pure function from a history to its result.
Checker = Callable[[History], InvariantResult]

#: Attribute a checker factory sets on what it returns: ``{"checker": factory, "params": {}}``,
#: stored in ``result.json`` so that ``celery-chaos analyze`` can rebuild the checker.
SPEC_ATTR = "chaos_spec"


def with_spec(checker: Checker, factory: str, **params: Any) -> Checker:
    """Tag ``checker`` with the factory and JSON parameters that rebuild it
    (:func:`celery_chaos.checks.registry.rebuild`)."""
    setattr(checker, SPEC_ATTR, {"checker": factory, "params": params})
    return checker


def spec_of(checker: Checker) -> dict[str, Any] | None:
    """The stored form of ``checker``, or None for one that cannot be rebuilt."""
    return getattr(checker, SPEC_ATTR, None)


def check_complete(history: History) -> InvariantResult | None:
    """``unknown`` when lines of the history were unreadable (a lost line may have been the
    record of a lost task); None when every line but the torn last line of a file (a writer
    killed mid-write, expected after SIGKILL) was a record."""
    if not history.unreadable_lines:
        return None
    skipped = history.skipped()
    n, places = skipped.unreadable, skipped.unreadable_at
    more = f", +{n - len(places)} more" if n > len(places) else ""
    return InvariantResult(
        name=HISTORY_COMPLETE,
        verdict=Verdict.UNKNOWN,
        summary=skipped.model_dump(mode="json"),
        problems=[
            f"{n} unreadable history line{'' if n == 1 else 's'} ({', '.join(places)}{more}): "
            "not a record, nor a writer's torn last line; a lost line may hide a lost task, "
            "so the history cannot prove the run valid"
        ],
    )


def check_history(
    history: History, *, exactly_once: bool = False, extra: Iterable[Checker] = ()
) -> list[InvariantResult]:
    """Run the queue invariant, then every ``extra`` invariant a scenario declares, then
    :func:`check_complete` when lines of the history were unreadable."""
    queue = check_queue(history, exactly_once=exactly_once)
    results = [
        InvariantResult(
            name=QUEUE,
            verdict=Verdict(queue.valid),
            summary=queue.model_dump(mode="json", exclude={"valid", "problems"}),
            problems=queue.problems,
        )
    ]
    results.extend(check(history) for check in extra)
    complete = check_complete(history)
    if complete is not None:
        results.append(complete)
    return results
