"""Liveness after network faults on synthetic histories (no servers)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from celery_chaos.checks.liveness import (
    PublishSummary,
    ResumeSummary,
    check_publish_bounded,
    check_resume_consuming,
    end_to_end_latencies,
    heal_to_full_throughput,
    percentiles,
    resume_consuming,
    resume_reports,
)
from celery_chaos.checks.verdict import Verdict, check_history
from celery_chaos.history.schema import Kind, Record
from celery_chaos.history.store import History

S = 1_000_000_000
MAIN = 100
HARNESS = {"pid": 1, "host": "harness", "role": "harness"}


def rec(kind: Kind, t: float, tid: str | None = None, **kw: Any) -> Record:
    """A record at ``t`` seconds (worker w1's main process unless told otherwise)."""
    fields: dict[str, Any] = {"pid": MAIN, "host": "w1@chaos", "role": "worker"}
    if kind in (Kind.FAULT, Kind.DRAIN) or (kind is Kind.DEPLOYMENT and "name" in kw):
        fields = dict(HARNESS)
    fields.update(kw)
    if tid is not None:
        fields.setdefault("task_name", "celery_chaos.sample_app.tasks.send_email")
    mono = int(t * S)
    return Record(kind=kind, wall_ns=mono, mono_ns=mono, task_id=tid, **fields)


def hist(*records: Record) -> History:
    return History(records=sorted(records, key=lambda r: r.mono_ns))


def ready(t: float, n: int) -> Record:
    return rec(
        Kind.DEPLOYMENT, t, name="queue_depth", target="rabbitmq", detail={"ready": {"q": n}}
    )


def up(t: float, node: str = "w1@chaos") -> Record:
    return rec(Kind.DEPLOYMENT, t, name="worker_ready", target=node, host=node, role="worker")


def partition(t0: float, t1: float, links: str = "w1-broker,w2-broker") -> list[Record]:
    detail = {"links": links.split(","), "mode": "blackhole"}
    return [
        rec(Kind.FAULT, t0, name="partition_blackhole", phase="start", target=links, detail=detail),
        rec(Kind.FAULT, t1, name="partition_blackhole", phase="end", target=links, detail=detail),
    ]


def task(tid: str, t: float, node: str = "w1@chaos", run_s: float = 0.01) -> list[Record]:
    """Received, started and succeeded on ``node``."""
    return [
        rec(Kind.RECEIVED, t, tid, host=node),
        rec(Kind.STARTED, t, tid, host=node, pid=MAIN + 1),
        rec(Kind.SUCCEEDED, t + run_s, tid, host=node, pid=MAIN + 1),
    ]


def drain(t: float, complete: bool = True) -> Record:
    return rec(Kind.DRAIN, t, name="drain", detail={"complete": complete})


# -- workers resume consuming --------------------------------------------------------------


def test_workers_consuming_after_the_heal_are_valid() -> None:
    h = hist(
        up(0),
        up(0, "w2@chaos"),
        ready(0, 0),
        *partition(1, 16),
        ready(2, 30),
        *task("a", 16.4),
        *task("b", 16.9, "w2@chaos"),
        ready(16.95, 0),
        drain(20),
    )
    res = check_resume_consuming(h, bound_s=10)
    assert res.verdict is Verdict.VALID, res.problems
    s = res.summary_as(ResumeSummary)
    assert s.heals == 1
    assert s.resume_s == {"w1@chaos": 0.4, "w2@chaos": 0.9}
    assert s.longest_stall_s == 0.9  # w2, from the heal to its first task


def test_a_live_worker_idle_with_messages_ready_is_flagged() -> None:
    h = hist(up(0), ready(0, 0), *partition(1, 5), ready(2, 12), drain(20, complete=False))
    res = check_resume_consuming(h, bound_s=10)
    assert res.verdict is Verdict.INVALID
    assert "w1@chaos idle for 15.0 s" in res.problems[0]
    assert "still idle when the window closed" in res.problems[0]
    (report,) = res.summary_as(ResumeSummary).reports
    assert report.workers[0].first_activity_s is None
    assert report.workers[0].ready_at_heal == 12


def test_the_return_of_a_crashed_broker_is_a_heal_too() -> None:
    """A broker crash or stop ends with the broker back: workers must consume again then."""
    def outage(name: str, t0: float, t1: float) -> list[Record]:
        return [rec(Kind.FAULT, t, name=name, phase=phase, target="broker", detail={})
                for t, phase in ((t0, "start"), (t1, "end"))]

    stuck = hist(up(0), ready(0, 0), *outage("crash_broker", 1, 3), ready(4, 9), drain(20))
    res = check_resume_consuming(stuck, bound_s=10)
    assert res.verdict is Verdict.INVALID, res.problems
    assert "heal of crash_broker on broker" in res.problems[0]
    back = hist(up(0), ready(0, 0), *outage("stop_broker", 1, 3), ready(4, 9),
                *task("a", 5), ready(5.5, 0), drain(20))
    summary = check_resume_consuming(back, bound_s=10).summary_as(ResumeSummary)
    assert summary.heals == 1 and summary.resume_s == {"w1@chaos": 2.0}


def test_a_stall_that_ends_within_the_bound_or_an_empty_queue_is_valid() -> None:
    slow = hist(up(0), *partition(1, 5), ready(2, 5), *task("a", 12), ready(12.5, 0), drain(20))
    assert check_resume_consuming(slow, bound_s=10).verdict is Verdict.VALID
    late = hist(up(0), *partition(1, 5), ready(2, 5), *task("a", 16), ready(16.5, 0), drain(20))
    res = check_resume_consuming(late, bound_s=10)
    assert res.verdict is Verdict.INVALID
    assert "then resumed" in res.problems[0]
    empty = hist(up(0), ready(0, 0), *partition(1, 5), drain(60))
    assert check_resume_consuming(empty, bound_s=10).verdict is Verdict.VALID


def test_a_busy_worker_is_not_idle() -> None:
    long_run = [
        rec(Kind.RECEIVED, 4, "long"),
        rec(Kind.STARTED, 4, "long", pid=MAIN + 1),
        rec(Kind.SUCCEEDED, 30, "long", pid=MAIN + 1),
    ]
    h = hist(up(0), *partition(1, 3), ready(2, 8), *long_run, *task("a", 30.1), drain(40))
    res = check_resume_consuming(h, bound_s=10)
    assert res.verdict is Verdict.VALID, res.problems


def test_killed_paused_and_stopped_workers_are_not_expected_to_consume() -> None:
    kill = {"name": "kill_worker", "target": "w1@chaos", "detail": {"pid": MAIN}}
    killed = hist(
        up(0),
        *partition(1, 3),
        rec(Kind.FAULT, 4, phase="start", **kill),
        rec(Kind.FAULT, 4.1, phase="end", **kill),
        ready(5, 8),
        drain(30, complete=False),
    )
    assert check_resume_consuming(killed, bound_s=10).verdict is Verdict.VALID
    shutdown = hist(
        up(0),
        *partition(1, 3),
        rec(Kind.DEPLOYMENT, 4, name="worker_shutdown", target="w1@chaos", role="worker"),
        ready(5, 8),
        drain(30, complete=False),
    )
    assert check_resume_consuming(shutdown, bound_s=10).verdict is Verdict.VALID
    pause = {"name": "pause_worker", "target": "w1@chaos", "detail": {"pid": MAIN}}
    paused = hist(
        up(0),
        *partition(1, 3),
        ready(2, 8),
        rec(Kind.FAULT, 3.5, phase="start", **pause),
        rec(Kind.FAULT, 20, phase="end", **pause),
        drain(40, complete=False),
    )
    res = check_resume_consuming(paused, bound_s=10)
    assert res.verdict is Verdict.INVALID  # idle again from the SIGCONT on: 20 s
    assert "idle for 20.0 s" in res.problems[0]
    restarted = hist(up(0), *partition(1, 3), ready(2, 8), up(25), *task("a", 25.5), drain(30))
    res = check_resume_consuming(restarted, bound_s=10)
    assert res.verdict is Verdict.INVALID  # idle 22 s before the restart helped


def test_only_windows_after_a_heal_are_judged() -> None:
    during = hist(up(0), ready(0.5, 10), *partition(1, 20), *task("a", 20.5), drain(25))
    res = check_resume_consuming(during, bound_s=10)
    assert res.verdict is Verdict.VALID  # idle for 20 s, but the link was cut
    two = hist(up(0), ready(0.5, 10), *partition(1, 2), *partition(8, 30), *task("a", 30.5))
    res = check_resume_consuming(hist(*two.records, drain(31)), bound_s=10)
    assert res.verdict is Verdict.VALID  # 6 s, then cut again
    assert res.summary_as(ResumeSummary).heals == 2
    no_heal = hist(up(0), ready(0.5, 10), drain(60, complete=False))
    res = check_resume_consuming(no_heal, bound_s=10)
    assert res.verdict is Verdict.VALID and res.summary_as(ResumeSummary).heals == 0
    no_samples = hist(up(0), *partition(1, 2), drain(60))
    res = check_resume_consuming(no_samples, bound_s=10)
    assert res.verdict is Verdict.UNKNOWN
    assert "no queue_depth samples" in res.problems[0]


def test_broker_errors_in_samples_do_not_count_as_ready() -> None:
    err = rec(Kind.DEPLOYMENT, 3, name="queue_depth", target="redis", detail={"error": "down"})
    h = hist(up(0), ready(0.5, 4), *partition(1, 2), err, drain(30, complete=False))
    res = check_resume_consuming(h, bound_s=10)
    assert res.verdict is Verdict.VALID  # 1 s with messages ready, then unknown
    assert res.summary_as(ResumeSummary).longest_stall_s == 1.0


def test_the_checker_plugs_into_check_history() -> None:
    h = hist(up(0), *partition(1, 2), ready(2.5, 3), drain(30, complete=True))
    results = check_history(h, extra=[resume_consuming(5)])
    assert [r.name for r in results] == ["queue", "workers_resume_consuming"]
    assert results[1].verdict is Verdict.INVALID


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=2.01, max_value=39.99), max_size=12, unique=True))
def test_longest_stall_is_the_longest_gap_between_activities(acts: list[float]) -> None:
    """Always ready, never running: stalls are exactly the gaps heal/act/.../end."""
    records = [up(0), ready(0.5, 7), *partition(1, 2), drain(40, complete=False)]
    records += [rec(Kind.RECEIVED, t, f"t{i}") for i, t in enumerate(acts)]
    (report,) = resume_reports(hist(*records), min_report_s=0)
    points = [2.0, *sorted(acts), 40.0]
    gaps = [b - a for a, b in zip(points, points[1:], strict=False)]
    longest = max((s.duration_s for s in report.stalls), default=0.0)
    assert abs(longest - max(gaps)) < 2e-3
    assert all(s.end_s <= 38.0 + 1e-9 for s in report.stalls)


# -- publishes stay bounded ----------------------------------------------------------------


def pub(kind: Kind, t: float, tid: str, latency_s: float | None = None) -> Record:
    extra = {} if latency_s is None else {"latency_ns": int(latency_s * S)}
    return rec(kind, t, tid, pid=7, host="publisher", role="publisher", **extra)


def test_publishes_within_the_bound_are_valid_and_slow_ones_flagged() -> None:
    fast = hist(
        pub(Kind.INVOKE, 0, "a"),
        pub(Kind.OK, 0.01, "a", 0.01),
        pub(Kind.INVOKE, 1, "b"),
        pub(Kind.INFO, 3, "b", 2.0),
        drain(10),
    )
    res = check_publish_bounded(fast, bound_s=5)
    assert res.verdict is Verdict.VALID
    s = res.summary_as(PublishSummary)
    assert s.outcomes == {"ok": 1, "info": 1}
    assert s.longest_s == 2.0
    slow = hist(
        pub(Kind.INVOKE, 0, "a"),
        pub(Kind.OK, 8, "a", 8.0),
        pub(Kind.INVOKE, 1, "b"),  # never answered
        drain(20),
    )
    res = check_publish_bounded(slow, bound_s=5)
    assert res.verdict is Verdict.INVALID
    s = res.summary_as(PublishSummary)
    assert s.slow == 2 and s.outcomes == {"ok": 1, "open": 1}
    assert "b 19.0 s (open)" in res.problems[0] and "a 8.0 s (ok)" in res.problems[0]


def test_publishes_from_workers_are_not_judged() -> None:
    h = hist(
        rec(Kind.INVOKE, 0, "r", retries=1),  # a retry published by a worker, no outcome
        drain(60),
    )
    assert check_publish_bounded(h, bound_s=5).verdict is Verdict.VALID


# -- heal to full throughput ---------------------------------------------------------------


def steady(start: float, stop: float, per_s: float, prefix: str) -> list[Record]:
    out: list[Record] = []
    n = int((stop - start) * per_s)
    for i in range(n):
        out.append(rec(Kind.SUCCEEDED, start + i / per_s, f"{prefix}{i}", pid=MAIN + 1))
    return out


def test_heal_to_full_throughput() -> None:
    h = hist(
        ready(0, 0),
        *steady(0, 5, 10, "pre"),
        *partition(5, 20),
        ready(6, 150),
        *steady(22, 26, 40, "post"),  # 2 s to reconnect, then the backlog at 40/s
        ready(26.2, 0),
        drain(30),
    )
    rec_ = heal_to_full_throughput(h)
    assert rec_.baseline_per_s is not None and rec_.baseline_per_s == 10.0
    assert rec_.during_per_s == 0.0
    assert rec_.heal_to_first_completion_s == 2.0
    assert rec_.heal_to_full_s == 2.0
    assert rec_.backlog_cleared_s == 6.2
    assert rec_.after_per_s is not None and rec_.after_per_s > 10


def test_heal_to_full_throughput_waits_for_the_rate() -> None:
    h = hist(
        *steady(0, 4, 10, "pre"),
        *partition(4, 6),
        *steady(6.5, 8.5, 2, "trickle"),  # one worker of five back: 2/s
        *steady(8.5, 12, 10, "full"),
        drain(13),
    )
    rec_ = heal_to_full_throughput(h)
    assert rec_.heal_to_first_completion_s == 0.5
    # The first 1 s window holding >= 9 completions starts at the first "full" one.
    assert rec_.heal_to_full_s is not None and 2.0 <= rec_.heal_to_full_s <= 2.5


def test_no_heal_or_no_completion_measures_nothing() -> None:
    assert heal_to_full_throughput(hist(drain(1))).heal_to_full_s is None
    h = hist(*partition(1, 2), drain(3))
    assert heal_to_full_throughput(h).baseline_per_s is None


# -- latencies -----------------------------------------------------------------------------


def test_end_to_end_latencies_and_percentiles() -> None:
    h = hist(
        pub(Kind.INVOKE, 0, "a"),
        pub(Kind.OK, 0.1, "a", 0.1),
        rec(Kind.SUCCEEDED, 0.5, "a"),
        pub(Kind.INVOKE, 1, "b"),
        rec(Kind.SUCCEEDED, 1.2, "b"),
        rec(Kind.SUCCEEDED, 3, "b"),  # a duplicate: the first completion counts
        pub(Kind.INVOKE, 2, "never"),
    )
    assert sorted(end_to_end_latencies(h)) == [int(0.2 * S), int(0.5 * S)]
    assert end_to_end_latencies(h, since_ns=int(0.5 * S)) == [int(0.2 * S)]
    assert percentiles([3.0, 1.0, 2.0, 4.0]) == {"p50": 3.0, "p95": 4.0, "p99": 4.0}
    assert percentiles([]) == {}
