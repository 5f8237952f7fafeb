"""The HTML report, JUnit XML, runs index and reliability matrix, on synthetic histories."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from celery_chaos.checks.verdict import InvariantResult, Verdict
from celery_chaos.report.html import write_index, write_site
from celery_chaos.report.locust_stats import read_locust
from celery_chaos.report.matrix import build_matrix, dump_matrix, load_runs
from celery_chaos.report.synthetic import HOSTILE, SyntheticSpec, make_run, write_history
from celery_chaos.report.timeline import (
    FaultWindow,
    build_timeline,
    fault_scope,
    percentile,
    read_records,
)
from celery_chaos.results import RunVerdict, ScenarioResult

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunVerdict]:
    reports = tmp_path_factory.mktemp("reports")
    return make_run(
        reports,
        {"acks_late_kill": SyntheticSpec(acks_late=True),
         "early_ack_kill": SyntheticSpec(acks_late=False, seed=3)},
    )


def test_run_directory_holds_every_artefact(run: tuple[Path, RunVerdict]) -> None:
    run_dir, verdict = run
    for name in ("index.html", "junit.xml", "verdict.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir.parent / "index.html").is_file()
    assert (run_dir.parent / "matrix.html").is_file()
    assets = list((run_dir.parent / "_assets").glob("plotly-*.min.js"))
    assert len(assets) == 1 and assets[0].stat().st_size > 1_000_000
    html = (run_dir / "index.html").read_text()
    assert f'src="../_assets/{assets[0].name}"' in html
    assert "cdn" not in html.lower() and "https://" not in html  # offline


def test_hostile_task_text_is_inert(run: tuple[Path, RunVerdict]) -> None:
    history = "".join(p.read_text() for p in run[0].glob("scenarios/*/history/*.jsonl"))
    assert HOSTILE.replace("'", "\\'") in history or HOSTILE in history  # really planted
    html = (run[0] / "index.html").read_text()
    assert "<script>window.__pwned" not in html
    assert "&lt;script&gt;window.__pwned" in html  # shown, as text, in args and exc_message
    assert html.count("bad input &lt;script&gt;") >= 1  # exception message
    assert "(celery_chaos.sample_app.tasks.&lt;script&gt;window.__pwned" in html  # task name
    # Chart JSON and the fault data never carry a raw "<" that could close the script.
    for block in re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', html, re.S):
        assert "<" not in block
    assert html.count("<script") == html.count("</script>")


def test_page_shows_verdicts_numbers_and_failures(run: tuple[Path, RunVerdict]) -> None:
    run_dir, verdict = run
    html = (run_dir / "index.html").read_text()
    assert verdict.as_expected and verdict.verdict is Verdict.INVALID
    assert ">PASS <small>" in html  # a caught negative control is a pass for ops
    assert 'data-verdict="invalid"' in html
    early = next(s for s in verdict.scenarios if s.name == "early_ack_kill")
    assert early.queue is not None
    lost = early.queue.lost
    assert lost
    for task_id in lost:  # each lost id has its full history, expandable
        assert re.search(rf'<details id="[^"]*task-{re.escape(task_id)}"', html)
    for label in ("attempted", "acknowledged", "completed", "lost", "duplicated", "hung",
                  "recovered", "beat ticks expected", "beat ticks fired"):
        assert f'<th class="num">{label}</th>' in html
    assert "Publish latency (ms)" in html and "End-to-end latency" in html
    assert html.count('class="figure"') == 2
    for href in re.findall(r'href="(scenarios/[^"#]+)"', html):
        assert (run_dir / href).exists(), href


def test_fault_touches_the_tasks_running_on_the_killed_worker(tmp_path: Path) -> None:
    planted = write_history(tmp_path / "h", SyntheticSpec(acks_late=False))
    records, torn = read_records(tmp_path / "h")
    tl = build_timeline(records, torn)
    assert [f.name for f in tl.faults] == ["kill_worker"]
    assert set(planted["hit"]) <= set(tl.faults[0].touched)
    assert tl.workers[-1][1] == 1 and max(v for _, v in tl.workers) == 2
    assert round(sum(tl.rates["published"]) * tl.bin_s) == 200
    assert tl.e2e_summary["count"] == 200 - len(planted["lost"])
    assert tl.has_depth_samples


def test_latency_percentiles_are_exact() -> None:
    values = sorted([0.001 * i for i in range(1, 1001)])
    assert percentile(values, 50) == pytest.approx(0.5005)
    assert percentile(values, 99) == pytest.approx(0.99001)
    assert percentile(values, 100) == pytest.approx(1.0)
    assert percentile([], 50) != percentile([], 50)  # NaN for no data


def test_junit_xml_mirrors_the_exit_code(tmp_path: Path) -> None:
    run_dir, _ = make_run(
        tmp_path,
        {"declared_valid_but_lost": SyntheticSpec(acks_late=False)},
        write_report=False,
    )
    data = json.loads((run_dir / "verdict.json").read_text())
    data["scenarios"][0]["expect"] = "valid"  # a safe setting that lost tasks
    data.update(as_expected=False, exit_code=1)
    run = RunVerdict.model_validate(data)
    write_index(run_dir, run)
    suite = ET.parse(run_dir / "junit.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "1" and suite.get("failures") == "1"
    failure = suite.find("testcase/failure")
    assert failure is not None and "acknowledged tasks never completed" in (failure.text or "")
    assert ">FAIL <small>" in (run_dir / "index.html").read_text()


def test_a_failed_test_fails_the_run_even_with_every_verdict_as_declared(
    tmp_path: Path,
) -> None:
    run_dir, _ = make_run(tmp_path, {"safe": SyntheticSpec(acks_late=True)}, write_report=False)
    data = json.loads((run_dir / "verdict.json").read_text())
    data.update(as_expected=True, exit_code=1)  # e.g. an assertion on a scenario's numbers
    (run_dir / "verdict.json").write_text(json.dumps(data))
    write_index(run_dir, RunVerdict.model_validate(data))
    suite = ET.parse(run_dir / "junit.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1", ET.tostring(suite)[:500]
    assert ">FAIL <small>" in (run_dir / "index.html").read_text()
    write_site(tmp_path)
    assert ">FAIL</span>" in (tmp_path / "index.html").read_text()


def test_runs_index_newest_first_and_matrix(tmp_path: Path) -> None:
    first, _ = make_run(tmp_path, {"a": SyntheticSpec(acks_late=True)})
    second, _ = make_run(tmp_path, {"b": SyntheticSpec(acks_late=False)})
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "verdict.json").write_text("{not json")
    write_site(tmp_path)
    index = (tmp_path / "index.html").read_text()
    assert index.index(second.name) < index.index(first.name) or (
        # same second: ordered by run id, both listed
        first.name in index and second.name in index
    )
    assert "broken" in index  # listed as skipped, the page still renders
    runs, skipped = load_runs(tmp_path)
    assert len(runs) == 2 and len(skipped) == 1
    cells = dump_matrix(build_matrix(runs))
    by_acks = {c["settings"]["acks_late"]: c for c in cells}
    assert by_acks["on"]["verdict"] == "valid" and by_acks["on"]["fault"] == "kill_worker"
    assert by_acks["off"]["verdict"] == "invalid" and by_acks["off"]["expect"] == "invalid"
    matrix = (tmp_path / "matrix.html").read_text()
    assert "worker killed (SIGKILL)" in matrix and "negative control" in matrix


def test_runs_index_lists_interrupted_runs(tmp_path: Path) -> None:
    """A run killed by SIGKILL leaves scenarios and no verdict.json: listed as interrupted,
    never left out (nor in the matrix, which needs verdicts)."""
    from celery_chaos.report.html import interrupted_runs

    done, _ = make_run(tmp_path, {"a": SyntheticSpec(acks_late=True)})
    killed = tmp_path / "20300101T000000Z-dead01"
    (killed / "scenarios" / "x" / "history").mkdir(parents=True)
    (killed / "scenarios" / "y").mkdir()
    (tmp_path / "20300101T000001Z-empty1" / "scenarios").mkdir(parents=True)  # none started
    write_site(tmp_path)
    index = (tmp_path / "index.html").read_text()
    assert ">INTERRUPTED</span>" in index and f'href="{killed.name}/scenarios/"' in index
    assert index.index(killed.name) < index.index(done.name)  # newest first
    assert "empty1" not in index and done.name not in [r.run_id for r in
                                                       interrupted_runs(tmp_path)]
    (row,) = interrupted_runs(tmp_path)
    assert (row.run_id, row.started, row.scenarios, row.kind) == (
        killed.name, "2030-01-01T00:00:00+00:00", 2, "scenarios"
    )


def test_report_survives_a_missing_history(tmp_path: Path) -> None:
    run_dir = tmp_path / "20260101T000000Z-abcdef"
    run_dir.mkdir()
    result = ScenarioResult(
        name="broke <early>", history_dir=str(run_dir / "nope"), error="port clash <x>",
        invariants=[InvariantResult(name="queue", verdict=Verdict.UNKNOWN)],
    )
    run = RunVerdict(run_id=run_dir.name, started="2026-01-01T00:00:00+00:00",
                     scenarios=[result])
    html = write_index(run_dir, run).read_text()
    assert "NO VERDICT" in html and "port clash &lt;x&gt;" in html
    assert "no history directory" in html


def test_locust_percentiles_follow_locust(tmp_path: Path) -> None:
    entries = [{
        "name": "t.a", "num_requests": 10, "num_failures": 1, "total_response_time": 100.0,
        "min_response_time": 2.0, "max_response_time": 40.0, "start_time": 100.0,
        "last_request_timestamp": 105.0,
        "response_times": {"2": 5, "10": 3, "40": 2},
    }]
    (tmp_path / "locust.json").write_text(json.dumps(entries))
    stats = read_locust(tmp_path)
    row = stats.rows[0]
    # Locust's rule (stats.calculate_response_time_percentile): from the largest bucket
    # down, the first at which at most int(n * q) requests remain below.
    assert row.percentiles_ms == {"p50": 10.0, "p90": 40.0, "p95": 40.0, "p99": 40.0}
    assert row.requests == 10 and row.failures == 1 and row.rps == pytest.approx(2.0)


def test_verdict_json_fields_are_documented() -> None:
    doc = (ROOT / "docs" / "report.md").read_text() + (ROOT / "docs" / "verdict.md").read_text()
    for model in (RunVerdict, ScenarioResult):
        for name in model.model_fields:
            assert f"`{name}`" in doc, f"{model.__name__}.{name} is not documented"


@pytest.mark.parametrize(
    ("name", "target", "scope"),
    [
        ("kill_worker", "w1@chaos", ({"w1"}, False)),
        ("kill_pool_child", "w2@chaos", ({"w2"}, False)),
        ("partition_blackhole", "w1-broker,w1-backend", ({"w1"}, False)),
        ("latency", "publisher-broker", (set(), True)),
        ("crash_broker", "rabbitmq", (None, True)),
    ],
)
def test_which_tasks_a_fault_can_touch(name: str, target: str, scope: object) -> None:
    assert fault_scope(FaultWindow(0, name, target, 0.0, 1.0)) == scope


def test_matrix_rows_keep_configurations_apart() -> None:
    from celery_chaos.report.matrix import RunSummary, build_matrix

    def scenario(name: str, verdict: str, settings: dict, pool: str = "prefork") -> ScenarioResult:
        return ScenarioResult(
            name=name, broker="redis", settings=settings, verdict=Verdict(verdict),
            expect=verdict, checked=True, faults=["crash_broker"],
            deployment={"broker": "redis", "pool": pool},
        )

    timeouts = {"broker_transport_options": {"socket_timeout": 1}}
    run = RunVerdict(
        run_id="r1", started="2026-11-29T00:00:00+00:00", verdict=Verdict.INVALID,
        as_expected=True, exit_code=0,
        scenarios=[
            scenario("with_timeouts", "valid", timeouts),
            scenario("default", "invalid", {}),
            scenario("threads", "invalid", {}, pool="threads"),
            scenario("aof_always", "valid", {}),  # differs in the server, not a setting
        ],
    )
    m = build_matrix([RunSummary(run=run, path="r1/index.html")])
    assert len(m.rows) == 3, m.rows
    assert any(("broker_transport_options.socket_timeout", "1") in r[1] for r in m.rows)
    assert any(("pool", "threads") in r[1] for r in m.rows)
    shared = [c for c in m.cells.values() if len(c.current) == 2]
    assert len(shared) == 1
    assert {s.name for _, s, _ in shared[0].current} == {"default", "aof_always"}


def test_the_two_fault_models_sit_side_by_side_in_one_row() -> None:
    """A configuration cut through the proxy and packet by packet: one row, two neighbouring
    columns (what each fault model does to the same settings)."""
    from celery_chaos.report.matrix import RunSummary, build_matrix, fault_label

    settings = {"task_acks_late": True, "broker_transport_options": {"visibility_timeout": 6}}

    def scenario(name: str, verdict: str, fault: str) -> ScenarioResult:
        return ScenarioResult(
            name=name, broker="redis", settings=settings, verdict=Verdict(verdict),
            expect=verdict, checked=True, faults=[fault], deployment={"broker": "redis"},
        )

    run = RunVerdict(
        run_id="r1", started="2026-12-02T00:00:00+00:00", verdict=Verdict.INVALID,
        as_expected=True, exit_code=0,
        scenarios=[scenario("brpop_proxy", "invalid", "partition_blackhole"),
                   scenario("brpop_packets", "valid", "packet_partition"),
                   scenario("kill", "valid", "kill_worker")],
    )
    m = build_matrix([RunSummary(run=run, path="r1/index.html")])
    assert len(m.rows) == 1
    i = m.columns.index("partition_blackhole")
    assert m.columns[i + 1] == "packet_partition"
    assert fault_label("packet_partition") == "packet partition (both ways)"
    assert fault_label("packet_partition_outbound") == "packet partition (not heard)"


def test_ids_named_by_another_invariant_get_their_history(tmp_path: Path) -> None:
    run_dir, _ = make_run(tmp_path, {"beat_twice": SyntheticSpec(acks_late=True)},
                          write_report=False)
    data = json.loads((run_dir / "verdict.json").read_text())
    scenario = data["scenarios"][0]
    task_id = next(  # any task the history holds
        json.loads(line)["task_id"]
        for f in sorted(Path(scenario["history_dir"]).glob("*.jsonl"))
        for line in f.read_text().splitlines()
        if '"task_id"' in line
    )
    scenario["invariants"].append(
        {"name": "beat", "verdict": "invalid", "summary": {},
         "problems": [f"fast-report: extra fire at 12:00 by beat2 ({task_id})"]}
    )
    scenario.update(verdict="invalid", expect="invalid")
    write_index(run_dir, RunVerdict.model_validate(data))
    page = (run_dir / "index.html").read_text()
    assert "Named by beat: 1" in page
    assert f'<span class="mono">{task_id}</span> &mdash;' in page  # its full history
    assert "No anomaly" not in page


def _duplicated_scenario(name: str, exactly_once: bool, vt: int) -> ScenarioResult:
    """A Redis scenario whose one task completed twice (a redelivery), judged for real."""
    from celery_chaos.checks.verdict import check_history
    from celery_chaos.history.schema import Kind, Record
    from celery_chaos.history.store import History

    tid = "0f0e0d0c-0000-4000-8000-000000000001"
    mono = iter(range(1_000, 10**9, 1_000))

    def rec(kind: Kind, role: str = "worker", **fields: object) -> Record:
        return Record(kind=kind, wall_ns=0, mono_ns=next(mono), pid=1, host=role, role=role,
                      **fields)  # type: ignore[arg-type]

    history = History(records=[
        rec(Kind.INVOKE, "publisher", task_id=tid), rec(Kind.OK, "publisher", task_id=tid),
        rec(Kind.STARTED, task_id=tid), rec(Kind.STARTED, task_id=tid, redelivered=True),
        rec(Kind.SUCCEEDED, task_id=tid), rec(Kind.SUCCEEDED, task_id=tid),
        rec(Kind.DRAIN, "harness", detail={"complete": True}),
    ])
    invariants = check_history(history, exactly_once=exactly_once)
    verdict = Verdict.combine(i.verdict for i in invariants)
    return ScenarioResult(
        name=name, broker="redis", verdict=verdict, expect=verdict.value, checked=True,
        invariants=invariants, deployment={"broker": "redis"},
        settings={"task_acks_late": True,
                  "broker_transport_options": {"visibility_timeout": vt}},
    )


def test_duplicates_are_a_violation_when_exactly_once_is_required(tmp_path: Path) -> None:
    run_dir = tmp_path / "20260101T000000Z-abcdef"
    run_dir.mkdir()
    required = _duplicated_scenario("twice_required", exactly_once=True, vt=2)
    allowed = _duplicated_scenario("twice_allowed", exactly_once=False, vt=3)
    assert required.verdict is Verdict.INVALID and allowed.verdict is Verdict.VALID
    run = RunVerdict(run_id=run_dir.name, started="2026-01-01T00:00:00+00:00",
                     verdict=Verdict.INVALID, as_expected=True, exit_code=0,
                     scenarios=[required, allowed])
    (run_dir / "verdict.json").write_text(run.model_dump_json())
    html = write_index(run_dir, run).read_text()
    # the sentence, the invariant's line, the headline cell and the open class of ids
    assert "1 task(s) ran more than once, and exactly once was required" in html
    assert html.count("exactly once required</td>") == 1  # only the scenario requiring it
    assert '<td class="num bad">1</td>' in html
    assert "<details open><summary>Duplicated: completed more than once (exactly once " \
           "required): 1</summary>" in html
    assert "completed (1 more than once)" in html  # allowed: a note, not a violation
    cells = {c["settings"]["visibility timeout"]: c
             for c in dump_matrix(build_matrix(load_runs(tmp_path)[0]))}
    assert cells["2"]["exactly_once"] and cells["2"]["duplicated"] == 1
    assert not cells["3"]["exactly_once"] and cells["3"]["duplicated"] == 1
    matrix = (tmp_path / "matrix.html").read_text()
    assert '<strong class="dup">exactly once required: 1 duplicated</strong>' in matrix
    assert matrix.count("exactly once required:") == 1


def test_a_pass_on_a_fault_that_reached_one_task_is_flagged_as_weak() -> None:
    from celery_chaos.report.html import reach_warning, settings_words
    from celery_chaos.report.timeline import FaultWindow

    def result(verdict: str) -> ScenarioResult:
        return ScenarioResult(name="s", broker="redis", verdict=Verdict(verdict), expect=verdict,
                              checked=True, faults=["kill_worker"])

    one = FaultWindow(index=1, name="kill_worker", target="w1@chaos", start=1, end=1,
                      touched=["t1"])
    many = FaultWindow(index=2, name="partition_blackhole", target="w1-broker,w2-broker",
                       start=2, end=5, touched=["a", "b", "c"])
    beat = FaultWindow(index=3, name="kill_beat", target="beat1", start=1, end=1)
    warning = reach_warning(result("valid"), [one, many, beat])
    assert warning.startswith("Weak evidence: worker killed (SIGKILL) on w1@chaos reached 1 task")
    assert "partition" not in warning and "beat" not in warning  # enough, or not aimed at tasks
    assert reach_warning(result("valid"), [many, beat]) == ""
    assert reach_warning(result("invalid"), [one]) == ""  # a caught control needs no reach
    child = FaultWindow(index=4, name="kill_pool_child", target="w1@chaos", start=1, end=1,
                        touched=["t1"])
    assert reach_warning(result("valid"), [child]) == ""  # one task is all a child runs
    child.touched = []
    assert "pool child killed (OOM) on w1@chaos reached 0 tasks" in reach_warning(
        result("valid"), [child])
    assert settings_words({}) == "nothing beyond the app's own configuration"
    from celery_chaos.report.html import detail_words

    assert detail_words({"pid": 27585, "worker": "w1@chaos", "_cut": object(),
                         "links": ["w1-broker", "w2-broker"]}) == (
        "pid = 27585; worker = w1@chaos; links = w1-broker, w2-broker"
    )
    assert settings_words({"task_acks_late": True,
                           "broker_transport_options": {"visibility_timeout": 6}}) == (
        "broker_transport_options.visibility_timeout = 6, task_acks_late = on"
    )
