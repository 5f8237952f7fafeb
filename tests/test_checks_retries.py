"""The "retry policy" invariant on synthetic histories (no servers)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_chaos.checks.retries import (
    Backoff,
    Expected,
    Fixed,
    RetryPolicy,
    RetrySummary,
    check_retries,
)
from celery_chaos.checks.verdict import Verdict
from celery_chaos.history.schema import Kind, Record
from celery_chaos.history.store import History

S = 1_000_000_000
WALL0 = 1_800_000_000 * S  # wall clock = WALL0 + mono in these histories
TASK = "celery_chaos.sample_app.tasks.fetch_url"
FIXED = RetryPolicy(TASK, Fixed(1.0), max_retries=3)


def rec(kind: Kind, t: float, tid: str = "x", **kw: Any) -> Record:
    fields: dict[str, Any] = {"pid": 101, "host": "w1@chaos", "role": "worker", "task_name": TASK}
    if kind is Kind.DRAIN:
        fields = {"pid": 1, "host": "harness", "role": "harness", "task_name": None}
        tid = None  # type: ignore[assignment]
    fields.update(kw)
    mono = int(t * S)
    return Record(kind=kind, wall_ns=WALL0 + mono, mono_ns=mono, task_id=tid, **fields)


def eta(t: float) -> str:
    """The ISO ETA Celery puts in the headers, for history time ``t``."""
    return datetime.fromtimestamp((WALL0 + int(t * S)) / S, tz=timezone.utc).isoformat()


def chain(
    countdowns: list[float],
    *,
    delays: list[float] | None = None,
    outcome: str = "succeeded",
    tid: str = "x",
    publish_ok: bool = True,
    start_last: bool = True,
) -> list[Record]:
    """A task retried once per countdown; ``delays``: how late each retry starts (>= 0)."""
    delays = delays or [0.01] * len(countdowns)
    pub = {"pid": 1, "host": "publisher", "role": "publisher"}
    out = [rec(Kind.INVOKE, 0, tid, **pub), rec(Kind.OK, 0, tid, **pub)]
    t = 0.1
    out.append(rec(Kind.STARTED, t, tid, retries=0))
    for i, (c, d) in enumerate(zip(countdowns, delays, strict=True)):
        t += 0.01
        out.append(rec(Kind.INVOKE, t, tid, retries=i + 1, eta=eta(t + c) if c else None))
        if publish_ok:
            out.append(rec(Kind.OK, t, tid))
        out.append(rec(Kind.RETRIED, t + 0.001, tid, retries=i, exc_type="Retry"))
        t += c + d
        if i == len(countdowns) - 1 and not start_last:
            return out
        out.append(rec(Kind.STARTED, t, tid, retries=i + 1))
    if outcome == "succeeded":
        out.append(rec(Kind.SUCCEEDED, t + 0.01, tid, retries=len(countdowns)))
    else:
        out.append(rec(Kind.FAILED, t + 0.01, tid, retries=len(countdowns), exc_type=outcome))
    return out


def hist(records: list[Record], complete: bool = True) -> History:
    end = max((r.mono_ns for r in records), default=0) / S + 1
    drain = rec(Kind.DRAIN, end, name="drain", detail={"complete": complete})
    return History(records=sorted([*records, drain], key=lambda r: r.mono_ns))


def test_k_retries_then_success_is_valid_and_matches_the_expectation() -> None:
    h = hist(chain([1, 1, 1]) + chain([], tid="k0"))
    res = check_retries(h, [FIXED], expect={"x": Expected(3, "succeeded"),
                                            "k0": Expected(0, "succeeded")})
    assert res.verdict is Verdict.VALID, res.problems
    x = res.summary_as(RetrySummary).tasks["x"]
    assert x.retries == 3 and x.retried_records == 3 and x.outcome == "succeeded"
    assert x.countdowns_s == pytest.approx([1, 1, 1], abs=0.002)
    assert all(g is not None and g >= 1 for g in x.gaps_s)


def test_a_retry_sooner_than_its_countdown_is_flagged() -> None:
    # the negative control: the worker retries with countdown 0, the policy wants 1 s
    res = check_retries(hist(chain([0, 0])), [FIXED])
    assert res.verdict is Verdict.INVALID
    assert any("retry 1 has a countdown of 0.000 s, outside [1, 1]" in p for p in res.problems)
    assert any("retry 2 started" in p and "sooner than its countdown" in p for p in res.problems)


def test_a_retry_that_starts_before_its_eta_is_flagged() -> None:
    res = check_retries(hist(chain([1.0], delays=[-0.5])), [FIXED])
    assert res.verdict is Verdict.INVALID
    assert "sooner than its countdown (1.000 s)" in res.problems[0]


def test_late_starts_are_fine_only_early_ones_fail() -> None:
    res = check_retries(hist(chain([1, 1], delays=[3.0, 0.2])), [FIXED])
    assert res.verdict is Verdict.VALID, res.problems


def test_more_retries_than_max_and_a_wrong_outcome_are_flagged() -> None:
    res = check_retries(
        hist(chain([1, 1, 1, 1], outcome="HTTPError")),
        [FIXED],
        expect={"x": Expected(3, "failed:HTTPError")},
    )
    assert res.verdict is Verdict.INVALID
    assert any("retried 4 times, more than max_retries=3" in p for p in res.problems)
    assert any("expected 3 retries then failed:HTTPError, saw 4" in p for p in res.problems)


def test_a_retry_dropped_by_a_failed_publish_is_a_lost_retry() -> None:
    # broker down during self.retry: Celery raises Reject(requeue=False); 5.7 records FAILURE
    records = chain([1.0], publish_ok=False, start_last=False)
    records = [r for r in records if r.kind is not Kind.RETRIED]  # no task_retry signal
    records.append(rec(Kind.FAILED, 5, pid=100, exc_type="Reject"))
    res = check_retries(hist(records), [FIXED])
    assert res.verdict is Verdict.INVALID
    assert res.summary_as(RetrySummary).lost_retries == 1
    assert res.problems == [
        "lost retry: x: retry 1 never started; its publish was never acknowledged "
        "(publish failed); the task ended failed:Reject"
    ]


def test_an_unstarted_retry_is_pending_without_a_complete_drain() -> None:
    res = check_retries(hist(chain([1.0], start_last=False), complete=False), [FIXED])
    assert res.verdict is Verdict.UNKNOWN
    assert any("its publish was acknowledged" in p for p in res.problems)


def test_other_task_names_are_ignored_and_missing_expectations_flagged() -> None:
    other = [r.model_copy(update={"task_name": "x.other"}) for r in chain([0, 0], tid="other")]
    h = hist(other)
    assert check_retries(h, [FIXED]).verdict is Verdict.VALID
    res = check_retries(h, [FIXED], expect={"ghost": Expected(0, "succeeded")})
    assert res.problems == ["ghost: expected by the scenario but absent from the history"]


def test_backoff_bounds() -> None:
    assert [Backoff(1, 2, jitter=False).bounds(n) for n in range(3)] == [(1, 1), (2, 2), (2, 2)]
    assert [Backoff(2, 600, jitter=True).bounds(n) for n in range(3)] == [(0, 2), (0, 4), (0, 8)]
    no_jitter = RetryPolicy(TASK, Backoff(1, 2, jitter=False))
    assert check_retries(hist(chain([1, 2, 2])), [no_jitter]).verdict is Verdict.VALID
    bad = check_retries(hist(chain([1, 1, 2])), [no_jitter])
    assert bad.verdict is Verdict.INVALID
    assert "retry 2 has a countdown of 1.000 s, outside [2, 2]" in bad.problems[0]


# -- property: jittered countdowns are valid iff each lies in [0, min(max, f*2^n)] ----------


@settings(max_examples=200, deadline=None)
@given(
    factor=st.integers(1, 3),
    maximum=st.integers(1, 8),
    draws=st.lists(st.integers(0, 12), min_size=1, max_size=4),
    delays=st.lists(st.integers(0, 300), min_size=4, max_size=4),
)
def test_jitter_bounds_property(factor: int, maximum: int, draws: list[int],
                                delays: list[int]) -> None:
    policy = RetryPolicy(TASK, Backoff(factor, maximum, jitter=True), max_retries=None)
    within = all(c <= min(maximum, factor * 2**n) for n, c in enumerate(draws))
    h = hist(chain([float(c) for c in draws], delays=[d / 100 for d in delays[: len(draws)]]))
    res = check_retries(h, [policy])
    assert res.verdict is (Verdict.VALID if within else Verdict.INVALID), res.problems
