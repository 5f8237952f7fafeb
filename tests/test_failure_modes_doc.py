"""docs/failure-modes.md keeps up with the catalog.

The page maps the 47 failure modes of the research notes to catalog scenarios, one table row
per mode. Scenario names appear only in the tables' Scenarios (or Scenario) columns, as
backticked names after a label (``safe:``, ``control:``, ``also:``). These tests parse those
tables and hold them to ``harness/catalog/*.yaml``: every mode once, every name real, every
``modes:`` a spec declares listed against it, labels in step with each spec's ``expect``, and
the tally line true.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from celery_chaos.runner.catalog import specs
from celery_chaos.spec.model import ScenarioSpec

DOC = Path(__file__).resolve().parents[1] / "docs" / "failure-modes.md"
MODES = list(range(1, 48))
COVERAGE = ("full", "partial", "none")
#: Label -> the ``expect`` a scenario under it must declare (None: any).
LABELS: dict[str, str | None] = {"safe": "valid", "control": "invalid", "also": None}
TALLY = re.compile(r"(\d+) of 47 modes have a scenario: (\d+) full, (\d+) partial; (\d+) have none")
NAME = re.compile(r"`([^`]+)`")


@dataclass
class Row:
    """One mode's row: its scenarios by label, and its coverage."""

    mode: int
    line: int
    coverage: str
    labelled: dict[str, list[str]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [n for names in self.labelled.values() for n in names]


@dataclass
class Page:
    rows: list[Row]
    #: Names in the table of scenarios outside the list.
    others: list[str]
    tally: tuple[int, int, int, int] | None


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _labelled(cell: str, where: str) -> dict[str, list[str]]:
    """``safe: `a`, `b`; control: `c``` -> {"safe": ["a", "b"], "control": ["c"]}."""
    out: dict[str, list[str]] = {}
    if cell in ("", "—"):
        return out
    for part in cell.split(";"):
        label, sep, rest = part.partition(":")
        label = label.strip()
        assert sep and label in LABELS, f"{where}: {part.strip()!r} is not 'label: `names`'"
        assert label not in out, f"{where}: label {label!r} given twice"
        names = NAME.findall(rest)
        assert names, f"{where}: label {label!r} names no scenario"
        out[label] = names
    return out


def parse(text: str) -> Page:
    """The mode rows, the other scenarios and the tally of the page."""
    lines = text.splitlines()
    rows: list[Row] = []
    others: list[str] = []
    header: list[str] | None = None
    for i, line in enumerate(lines):
        if not line.startswith("|"):
            header = None
            continue
        if header is None:  # a table starts: its header, then the |---| line
            header = _cells(line)
            continue
        if set(line) <= set("|-: "):
            continue
        cells = dict(zip(header, _cells(line), strict=True))
        where = f"docs/failure-modes.md:{i + 1}"
        if "#" in cells:
            rows.append(
                Row(
                    mode=int(cells["#"]),
                    line=i + 1,
                    coverage=cells["Coverage"],
                    labelled=_labelled(cells["Scenarios"], where),
                )
            )
        elif "Scenario" in cells:
            others += NAME.findall(cells["Scenario"])
    m = TALLY.search(text)
    tally = (int(m[1]), int(m[2]), int(m[3]), int(m[4])) if m else None
    return Page(rows=rows, others=others, tally=tally)


@pytest.fixture(scope="module")
def page() -> Page:
    return parse(DOC.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def catalog() -> dict[str, ScenarioSpec]:
    return {s.name: s for s in specs()}


def test_every_mode_has_one_row_in_order(page: Page) -> None:
    modes = [r.mode for r in page.rows]
    twice = sorted(m for m, n in Counter(modes).items() if n > 1)
    assert not twice, f"modes with more than one row: {twice}"
    assert sorted(modes) == MODES, (
        f"missing {sorted(set(MODES) - set(modes))}, unknown {sorted(set(modes) - set(MODES))}"
    )
    assert modes == MODES, "rows are not in the notes' order"


def test_every_named_scenario_exists(page: Page, catalog: dict[str, ScenarioSpec]) -> None:
    unknown = [
        f"line {r.line} (mode {r.mode}): {n}"
        for r in page.rows
        for n in r.names
        if n not in catalog
    ]
    unknown += [f"scenarios outside the list: {n}" for n in page.others if n not in catalog]
    assert not unknown, "not in harness/catalog/*.yaml: " + "; ".join(unknown)


def test_every_catalog_scenario_is_named(page: Page, catalog: dict[str, ScenarioSpec]) -> None:
    named = {n for r in page.rows for n in r.names} | set(page.others)
    missing = sorted(set(catalog) - named)
    assert not missing, (
        f"catalog scenarios docs/failure-modes.md does not name: {missing} (list each "
        "against the modes it shows, or under 'Scenarios outside the list')"
    )


def test_declared_modes_are_listed(page: Page, catalog: dict[str, ScenarioSpec]) -> None:
    """Every mode in a spec's ``modes:`` names that spec in its row: the page cannot fall
    behind the catalog."""
    rows = {r.mode: r for r in page.rows}
    behind = []
    for spec in catalog.values():
        for mode in spec.modes:
            if mode not in rows:
                behind.append(f"{spec.name} declares mode {mode}, which has no row")
            elif spec.name not in rows[mode].names:
                behind.append(f"{spec.name} declares mode {mode}; row {mode} does not name it")
    assert not behind, "; ".join(behind)


def test_labels_match_expect(page: Page, catalog: dict[str, ScenarioSpec]) -> None:
    """``safe`` names only ``valid`` specs, ``control`` only ``invalid`` ones."""
    wrong = [
        f"mode {r.mode}: {n} is under {label!r} but declares expect={catalog[n].expect}"
        for r in page.rows
        for label, names in r.labelled.items()
        for n in names
        if n in catalog and LABELS[label] not in (None, catalog[n].expect)
    ]
    assert not wrong, "; ".join(wrong)


def test_coverage_and_tally(page: Page) -> None:
    bad = [f"mode {r.mode}: {r.coverage!r}" for r in page.rows if r.coverage not in COVERAGE]
    assert not bad, f"coverage must be one of {COVERAGE}: {bad}"
    for r in page.rows:
        assert (r.coverage == "none") == (not r.names), (
            f"mode {r.mode}: coverage {r.coverage!r} with scenarios {r.names}"
        )
    counts = Counter(r.coverage for r in page.rows)
    actual = (counts["full"] + counts["partial"], counts["full"], counts["partial"], counts["none"])
    assert page.tally is not None, "no tally line ('N of 47 modes have a scenario: ...')"
    assert page.tally == actual, f"tally says {page.tally}, the rows give {actual}"


def test_parse_reads_labels_and_rejects_bad_cells() -> None:
    text = (
        "**Tally: 1 of 47 modes have a scenario: 0 full, 1 partial; 0 have none.**\n\n"
        "| # | Failure mode | Scenarios | Coverage | Notes |\n|---|---|---|---|---|\n"
        "| 7 | x | safe: `a`, `b`; control: `c` | partial | `not_a_scenario` here |\n\n"
        "| Scenario | What it shows |\n|---|---|\n| `d` | y |\n"
    )
    got = parse(text)
    (row,) = got.rows
    assert (row.mode, row.coverage) == (7, "partial")
    assert row.labelled == {"safe": ["a", "b"], "control": ["c"]}
    assert got.others == ["d"] and got.tally == (1, 0, 1, 0)
    with pytest.raises(AssertionError, match="is not 'label"):
        parse(text.replace("safe: `a`", "good: `a`"))
