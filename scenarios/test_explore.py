"""The explorer on a planted bug (docs/explore.md): early ack on RabbitMQ with 1-1.5 s tasks.

A small seeded exploration draws schedules of up to two faults, runs each for real, and must
find a loss and shrink it to one kill (of a worker or of a pool child); the minimal schedule
must fail again when replayed. To fit a CI run, a schedule here counts as failing on one
failing run (`reruns=1, min_fails=1`); the command's defaults (2 of 2) are for real searches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from celery_chaos.explore.search import MINIMAL_FILE, Explorer
from celery_chaos.explore.strategies import space_for
from celery_chaos.report.explorer import write_explorer_page
from celery_chaos.runner.catalog import get

KILLS = {"kill_worker", "kill_pool_child"}


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_explore_finds_and_shrinks_the_early_ack_loss(
    chaos_session: Any, tmp_path: Path
) -> None:
    base = get("rabbitmq_early_ack_loses_tasks-main")
    out = chaos_session.ensure_run_dir() / "explore"
    explorer = Explorer(
        base, chaos_session.app, out, space_for(base, None, 2),
        budget_s=300, max_examples=12, seed=1, reruns=1, min_fails=1, replays=2,
        brokers=chaos_session.brokers,
    )
    result = explorer.run()
    assert result.exit_code == 1, [(e.outcome, e.schedule) for e in result.examples]
    assert result.minimal is not None
    (step,) = result.minimal.schedule
    assert step["do"]["op"] in KILLS, step
    assert result.replays and all(r.verdict.value == "invalid" for r in result.replays), (
        result.replays
    )
    assert (out / MINIMAL_FILE).is_file()
    page = write_explorer_page(out, result, MINIMAL_FILE).read_text()
    assert "Violation found and shrunk" in page and "One fault is enough" in page
