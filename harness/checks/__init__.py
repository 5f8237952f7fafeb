"""Checks stage of the harness: pure functions from a history to verdicts."""

from celery_chaos.checks.queue import (
    QueueCheckResult,
    QueueCounts,
    RecoveryTime,
    check_queue,
    recovery_time,
    task_latencies,
)
from celery_chaos.checks.verdict import InvariantResult, Verdict, check_history, overall

__all__ = [
    "InvariantResult",
    "QueueCheckResult",
    "QueueCounts",
    "RecoveryTime",
    "Verdict",
    "check_history",
    "check_queue",
    "overall",
    "recovery_time",
    "task_latencies",
]
