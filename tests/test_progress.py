"""Live progress lines (harness/runner/progress.py): counted from the history as it grows."""

from __future__ import annotations

import time
from pathlib import Path

from celery_chaos.history.reader import HistoryTail
from celery_chaos.history.schema import Kind
from celery_chaos.history.store import HistoryWriter
from celery_chaos.runner.progress import Progress


def test_a_line_says_the_phase_the_figures_and_the_open_faults(tmp_path: Path) -> None:
    pub = HistoryWriter(tmp_path, "publisher", "publisher")
    worker = HistoryWriter(tmp_path, "worker", "w1@chaos")
    harness = HistoryWriter(tmp_path, "harness", "harness")
    name = "celery_chaos.sample_app.chaos_tasks.nap"
    for i in range(3):
        pub.write(Kind.INVOKE, task_id=f"t{i}", task_name=name)
        pub.write(Kind.OK, task_id=f"t{i}", task_name=name)
    worker.write(Kind.SUCCEEDED, task_id="t0", task_name=name)
    worker.write(Kind.FAILED, task_id="t1", task_name=name, exc_type="ValueError")
    harness.write(Kind.DEPLOYMENT, name="queue_depth", target="redis",
                  detail={"ready": {"default": 1, "emails": 0}})
    harness.write(Kind.FAULT, name="kill_worker", phase="start", target="w1@chaos")
    phase = ["load and faults"]
    progress = Progress("s1", HistoryTail(tmp_path), lambda _: None, phase=lambda: phase[0])
    line = progress.line()
    assert line.startswith("celery-chaos: [")
    assert line.endswith(
        "s1: load and faults; published 3 (3 acknowledged), completed 2 (1 failed), 1 ready in "
        "the broker, faults open: kill_worker(w1@chaos)"
    )
    harness.write(Kind.FAULT, name="kill_worker", phase="end", target="w1@chaos")
    worker.write(Kind.SUCCEEDED, task_id="t2", task_name=name)
    phase[0] = "draining (up to 60 s)"
    assert progress.line().endswith(  # only what was appended is read
        "s1: draining (up to 60 s); published 3 (3 acknowledged), completed 3 (1 failed), "
        "1 ready in the broker, no fault open"
    )


def test_lines_come_every_interval_until_stopped(tmp_path: Path) -> None:
    HistoryWriter(tmp_path, "harness", "harness").write(Kind.SCENARIO, name="s", phase="start")
    lines: list[str] = []
    progress = Progress("s", HistoryTail(tmp_path), lines.append, interval=0.1).start()
    time.sleep(0.45)
    progress.stop()
    n = len(lines)
    assert 2 <= n <= 5, lines
    time.sleep(0.25)
    assert len(lines) == n  # stopped
    silent = Progress("s", HistoryTail(tmp_path), lines.append, interval=0).start()
    time.sleep(0.2)
    silent.stop()
    assert len(lines) == n
