"""What a look at the history costs: ``HistoryTail.records()`` against ``read_history`` (not
run by CI).

Writes N records with :class:`HistoryWriter` (a publisher and four workers, one file each)
into a temporary directory, then times ``read_history`` (what the waits and the drain did
on every look), the tail's first read, a ``records()`` call when nothing changed (the
usual case between two looks 50-250 ms apart) and one after 100 appended records.
Run: ``.venv/bin/python bench/bench_history_tail.py [--records 200000] [--rounds 20]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from celery_chaos.history.reader import HistoryTail  # noqa: E402
from celery_chaos.history.schema import Kind  # noqa: E402
from celery_chaos.history.store import HistoryWriter, read_history  # noqa: E402


def write_history(directory: Path, n: int) -> list[HistoryWriter]:
    """``n`` records: each task is a publisher's ``ok`` then a worker's started/succeeded."""
    pub = HistoryWriter(directory, "publisher", "publisher")
    workers = [HistoryWriter(directory, "worker", f"w{i}@chaos") for i in range(1, 5)]
    for i in range(n // 3 + 1):
        tid = f"task-{i}"
        w = workers[i % len(workers)]
        for writer, kind in ((pub, Kind.OK), (w, Kind.STARTED), (w, Kind.SUCCEEDED)):
            if n <= 0:
                break
            writer.append(kind._value_,
                          {"task_id": tid, "task_name": "celery_chaos.sample_app.tasks.add"})
            n -= 1
    return [pub, *workers]


def timed(fn: Callable[[], object], rounds: int = 1) -> float:
    """Median seconds of ``rounds`` calls."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        t0 = time.perf_counter()
        writers = write_history(directory, args.records)
        print(f"wrote {args.records} records in {time.perf_counter() - t0:.2f} s")
        full = timed(lambda: read_history(directory), rounds=3)
        tail = HistoryTail(directory)
        first = timed(tail.records)
        assert tail.records() == read_history(directory).records
        same = timed(tail.records, rounds=args.rounds)

        grown = []
        for r in range(args.rounds):
            for i in range(100):
                writers[1 + i % 4].append("started", {"task_id": f"more-{r}-{i}"})
            grown.append(timed(tail.records))
        assert tail.records() == read_history(directory).records
        print(f"read_history:                    {full * 1000:9.1f} ms")
        print(f"HistoryTail first records():     {first * 1000:9.1f} ms")
        print(f"records(), nothing changed:      {same * 1000:9.3f} ms  ({full / same:,.0f}x less)")
        print(f"records() after 100 new records: {statistics.median(grown) * 1000:9.3f} ms")


if __name__ == "__main__":
    main()
