"""The queue checker's time on a large history (not run by CI).

Builds N tasks (invoke, ok, received, started, succeeded; the last one ends in
WorkerLostError) without pydantic validation, so that only the checker is timed, then
times ``check_queue``. Target: 100,000 tasks (500,000 records) in under 5 s.
Run: ``.venv/bin/python bench/bench_checker.py [--tasks 100000] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from celery_chaos.checks.queue import check_queue  # noqa: E402
from celery_chaos.history.schema import Kind, Record  # noqa: E402
from celery_chaos.history.store import History  # noqa: E402

_TEMPLATE = dict(Record(kind=Kind.OK, wall_ns=0, mono_ns=0, pid=1, host="h", role="r").__dict__)


def _fast(kind: Kind, mono: int, task_id: str | None, **fields: Any) -> Record:
    """A Record built without validation: 500k validated records take 10+ s to build,
    which would hide the checker's own time."""
    rec = object.__new__(Record)
    values = {**_TEMPLATE, "kind": kind, "mono_ns": mono, "task_id": task_id, **fields}
    object.__setattr__(rec, "__dict__", values)
    object.__setattr__(rec, "__pydantic_fields_set__", set(values))
    object.__setattr__(rec, "__pydantic_extra__", {})
    object.__setattr__(rec, "__pydantic_private__", None)
    return rec


def big_history(n: int) -> tuple[History, list[str]]:
    """``n`` completed tasks, the last one ending in WorkerLostError, and a complete drain."""
    kinds = (Kind.INVOKE, Kind.OK, Kind.RECEIVED, Kind.STARTED, Kind.SUCCEEDED)
    ids = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(n)]
    records = [_fast(k, 5 * i + j, tid) for i, tid in enumerate(ids) for j, k in enumerate(kinds)]
    records[-1] = _fast(Kind.FAILED, 5 * n, ids[-1], exc_type="WorkerLostError")
    records.append(_fast(Kind.DRAIN, 5 * n + 1, None, detail={"complete": True}))
    return History(records=records), ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    history, _ = big_history(args.tasks)
    times = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        check_queue(history)
        times.append(time.perf_counter() - t0)
    best, worst = min(times), max(times)
    verdict = "ok" if worst < 5 else "OVER TARGET"
    print(f"check_queue, {args.tasks} tasks ({len(history.records)} records): "
          f"best {best:.2f} s, worst {worst:.2f} s over {args.rounds} rounds "
          f"(target < 5 s: {verdict})")


if __name__ == "__main__":
    main()
