"""Scenario specs and the fault vocabulary: validation, one-line errors, JSON round trips,
and the shipped catalog."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from celery_chaos.errors import UsageError
from celery_chaos.faults.vocabulary import fault_names, parse_op, registry
from celery_chaos.runner.catalog import families, specs
from celery_chaos.spec.model import load_spec, parse_spec

BASE = {"name": "s", "deployment": {"workers": 2}, "load": {"tasks": 10, "rate": 5}}


def _spec(*steps: dict) -> dict:
    return {**BASE, "schedule": list(steps)}


def test_overlapping_schedule_round_trips_through_json() -> None:
    spec = parse_spec(_spec(
        {"id": "pause", "when": {"at": 1}, "do": {"op": "pause_worker", "worker": "w2"},
         "duration": 6},
        {"when": {"after_start": "pause", "delay": 1},
         "do": {"op": "partition", "links": "w*-broker"}, "duration": 5},
    ))
    again = parse_spec(json.loads(json.dumps(spec.to_json())))
    assert again.to_json() == spec.to_json()
    assert [s.id for s in again.schedule.steps] == ["pause", "step2"]
    assert again.schedule.steps[0].do.worker == "w2@chaos"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"do": {"op": "explode"}}, "unknown op 'explode': use one of"),
        ({"do": {"op": "latency", "ms": -1}}, "op 'latency': ms: Input should be greater"),
        ({"do": {"op": "kill_worker", "worker": "w9"}}, "names worker 'w9@chaos', which"),
        ({"when": {"running": {"worker": "w7"}}, "do": {"op": "checkpoint"}},
         "names worker 'w7@chaos'"),
        ({"do": {"op": "kill_beat", "beat": "beat1"}}, "names beat 'beat1', which"),
        ({"do": {"op": "kill_worker", "worker": "w1"}, "duration": 2}, "is instantaneous"),
        ({"when": {"after": "nope"}, "do": {"op": "checkpoint"}}, "refers to no other step"),
        ({"when": {"at": -1}, "do": {"op": "checkpoint"}}, "at: Input should be greater"),
        ({"do": {"op": "kill_worker", "worker": "w1", "signal": "SIGFOO"}}, "signal"),
    ],
)
def test_bad_specs_are_one_line_usage_errors(step: dict, message: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_spec(_spec(step), "my.yaml")
    text = str(err.value)
    assert message in text and "\n" not in text and text.startswith("my.yaml: "), text


def test_a_started_worker_may_be_named_later() -> None:
    spec = parse_spec(_spec({"id": "up", "do": {"op": "start_worker", "worker": "w3"}},
                            {"when": {"after": "up"}, "do": {"op": "kill_worker",
                                                             "worker": "w3"}}))
    assert len(spec.schedule.steps) == 2


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(UsageError, match="is not valid YAML"):
        load_spec(bad)
    with pytest.raises(UsageError, match="cannot read"):
        load_spec(tmp_path / "missing.json")
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**BASE, "version": 99}))
    with pytest.raises(UsageError, match="reads up to"):
        load_spec(newer)


def test_every_op_has_a_label_and_faults_are_listed() -> None:
    ops = registry()
    assert all(cls.label for cls in ops.values())
    assert {"kill_worker", "kill_pool_child", "pause_worker", "crash_broker", "partition",
            "latency", "kill_beat", "http_failures"} <= set(fault_names())
    assert "load" not in fault_names() and "publish" not in fault_names()
    assert parse_op({"op": "partition"}).record_name == "partition_blackhole"


def test_the_catalog_is_valid_and_round_trips() -> None:
    names = [s.name for s in specs()]
    assert len(names) == len(set(names)) and names
    assert "worker_kill" in families()
    for spec in specs():
        assert parse_spec(spec.to_json()).to_json() == spec.to_json(), spec.name
    assert any(s.expect == "invalid" for s in specs()), "the catalog has negative controls"


def test_the_docs_list_every_op_of_the_vocabulary() -> None:
    """docs/scenarios.md's table is the registry: a new op must be documented."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "scenarios.md").read_text()
    for name, cls in registry().items():
        fields = [f for f in cls.model_fields if f != "op"]
        params = ", ".join(f"`{f}`" for f in fields) or "—"
        row = (f"| `{name}` | {cls.category} | {params} | {'held' if cls.held else ''} | "
               f"{cls.label} |")
        assert row in doc, row
