"""Workload files: format, placeholders, weighted choice, one-line errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from celery_chaos.errors import UsageError
from celery_chaos.load.workload import load_workload, parse_workload

SAMPLE = Path(__file__).resolve().parent.parent / "sample_app" / "workload.yaml"


def test_sample_workload_loads_and_renders() -> None:
    wl = load_workload(SAMPLE).render(
        {"http_base": "http://127.0.0.1:1", "smtp_host": "h", "smtp_port": 25}
    )
    assert set(wl.queues) == {"emails", "reports", "fetch"}
    urls = [t.args[0] for t in wl.tasks if t.name.endswith("fetch_url")]
    assert urls and all(u.startswith("http://127.0.0.1:1/") for u in urls)


def test_user_workload_loads() -> None:
    wl = load_workload(Path(__file__).parent / "userapp" / "workload.yaml")
    assert [t.name for t in wl.tasks] == ["userapp.resize_image", "userapp.add"]


def test_weighted_choice_follows_weights() -> None:
    wl = parse_workload([{"name": "a", "weight": 3}, {"name": "b", "weight": 1}])
    chooser = wl.chooser(seed=7)
    picks = Counter(chooser().name for _ in range(4000))
    assert 0.70 < picks["a"] / 4000 < 0.80


def test_same_seed_same_sequence() -> None:
    wl = parse_workload([{"name": "a"}, {"name": "b"}, {"name": "c"}])
    one, two = wl.chooser(seed=3), wl.chooser(seed=3)
    assert [one().name for _ in range(100)] == [two().name for _ in range(100)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- name: a\n  weight: 0\n", "weight"),
        ("- {args: [1]}\n", "name"),
        ("- name: a\n  colour: red\n", "colour"),
        ("[]\n", "tasks"),
        ("- name: a\n  args: [\n", "not valid YAML"),
    ],
)
def test_bad_workloads_give_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as err:
        load_workload(path)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file_and_unknown_placeholder(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read workload"):
        load_workload(tmp_path / "nope.yaml")
    wl = parse_workload([{"name": "a", "args": ["{nope}"]}])
    with pytest.raises(UsageError, match="placeholder"):
        wl.render({"http_base": "x"})
