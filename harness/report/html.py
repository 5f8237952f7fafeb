"""The HTML reports: one page per run, the list of runs, and the reliability matrix.

:func:`write_index` (called at the end of every run) writes, atomically:

- ``<run>/index.html``: the verdict in words, the deployment, every scenario's
  invariants and numbers, timeline charts with the fault windows, Locust's statistics,
  the full history of every task behind a failure, and links to the raw files;
- ``<run>/junit.xml``: one test case per scenario, for CI systems;
- ``<reports>/index.html`` (every run, newest first) and ``<reports>/matrix.html``
  (configuration x fault -> verdict), rebuilt from every run's ``verdict.json``;
- ``<reports>/_assets/plotly-<version>.min.js`` once (the pages are offline).

Pages are rendered by jinja2 with autoescaping; chart data is embedded as escaped JSON.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from celery_chaos.checks.beat import BeatCheckResult
from celery_chaos.checks.hung import HungSummary
from celery_chaos.checks.queue import QueueCheckResult, QueueCounts
from celery_chaos.checks.verdict import QUEUE, Verdict
from celery_chaos.report import matrix as matrix_mod
from celery_chaos.report.charts import figure_json, plotly_asset, timeline_figure
from celery_chaos.report.junit import write_junit
from celery_chaos.report.locust_stats import LocustStats, scenario_loads
from celery_chaos.report.timeline import (
    MAX_TASK_HISTORIES,
    WORKER_FAULTS,
    FaultWindow,
    Timeline,
    build_timeline,
    read_records,
    task_histories,
)
from celery_chaos.results import RunVerdict, ScenarioResult, safe_name

_env = Environment(
    loader=PackageLoader("celery_chaos.report", "templates"),
    autoescape=select_autoescape(["html", "j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)

VERDICT_WORDS = {
    "valid": "Every invariant held: no task was lost under the faults injected.",
    "invalid": "An invariant was violated: tasks were lost, ran that nobody sent, or ran more "
               "than once where exactly once was required.",
    "unknown": "No verdict: the deployment never became quiet, so no loss can be asserted.",
}
#: Anomaly classes of the queue invariant, worst first: (QueueCheckResult field, words).
TASK_CLASSES: tuple[tuple[str, str], ...] = (
    ("lost", "Lost: acknowledged by the broker, never completed"),
    ("pending", "Pending: not completed when the run ended (no complete drain)"),
    ("unexpected", "Unexpected: completed but never published"),
    ("duplicated", "Duplicated: completed more than once"),
    ("indeterminate", "Indeterminate: the publish outcome is unknown"),
    ("publish_failed", "Publish failed: the broker refused them"),
    ("failed", "Failed: the task raised (an application error)"),
    ("rejected", "Rejected by a worker"),
    ("revoked", "Revoked"),
    ("reexecuted", "Re-executed: started more than once (redeliveries, retries)"),
    ("recovered", "Recovered: completed although the publish was not acknowledged"),
)
#: Headline numbers, in order (``None``: no invariant of the scenario measures it).
HEADLINE = (
    "attempted", "acknowledged", "completed", "lost", "duplicated", "hung", "recovered",
    "beat ticks expected", "beat ticks fired",
)
#: How many ids of one class a page lists (every id is in verdict.json).
MAX_IDS_LISTED = 200
#: The duplicated class's words when the scenario required exactly once (a violation).
DUPLICATED_REQUIRED = "Duplicated: completed more than once (exactly once required)"


@dataclass
class TaskView:
    """One task id with its outcome and its full history."""

    task_id: str
    anchor: str
    outcome: str
    records: list[dict[str, Any]]


#: A Celery task id (a UUID) inside an invariant's problem text.
_TASK_ID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


@dataclass
class ScenarioView:
    """Everything the run template shows about one scenario."""

    result: ScenarioResult
    anchor: str
    words: str
    headline: list[tuple[str, Any]]
    timeline: Timeline | None = None
    figure: str | None = None
    faults: list[FaultWindow] = field(default_factory=list)
    classes: list[tuple[str, str, list[str], int]] = field(default_factory=list)
    tasks: dict[str, TaskView] = field(default_factory=dict)
    loads: list[LocustStats] = field(default_factory=list)
    files: list[tuple[str, str]] = field(default_factory=list)
    logs: list[tuple[str, str]] = field(default_factory=list)
    result_json: str | None = None
    history_error: str | None = None
    violated: list[str] = field(default_factory=list)  # names of the invalid invariants
    #: The queue invariant required exactly once: a duplicate is a violation, not a note.
    exactly_once: bool = False
    #: A pass that rests on faults which reached almost no task (see :func:`reach_warning`).
    reach_warning: str = ""


def _rel(path: str | Path, base: Path) -> str:
    try:
        return Path(os.path.relpath(Path(path).resolve(), base.resolve())).as_posix()
    except ValueError:
        return Path(path).as_posix()


def _queue_counts(result: ScenarioResult) -> QueueCounts:
    queue = result.queue
    return queue.counts if queue is not None else QueueCounts()


def _headline(result: ScenarioResult) -> list[tuple[str, Any]]:
    """The headline numbers of the invariants the scenario checked (hung: every hung
    invariant's; beat: every beat invariant's)."""
    values: dict[str, Any] = {}
    queue = result.queue
    if queue is not None:
        c = queue.counts
        values.update(attempted=c.attempted, acknowledged=c.acknowledged, completed=c.completed,
                      lost=c.lost, duplicated=c.duplicated, recovered=c.recovered)
    for inv in result.invariants:
        hung = inv.summary_if(HungSummary)
        if hung is not None:
            values["hung"] = values.get("hung", 0) + len(hung.hung)
        if inv.name.startswith("beat"):
            beat = inv.summary_if(BeatCheckResult)
            rows = list(beat.entries.values()) if beat is not None else []
            values["beat ticks expected"] = sum(e.ticks for e in rows)
            values["beat ticks fired"] = sum(e.ok + e.late + e.early + e.extra for e in rows)
    return [(label, values.get(label)) for label in HEADLINE]


def scenario_words(result: ScenarioResult) -> str:
    """One sentence an operations lead reads for a scenario."""
    if result.error:
        return f"The scenario could not run: {result.error}"
    if not result.checked:
        return "The scenario stopped before its check ran: no verdict."
    q = _queue_counts(result)
    required = result.queue is not None and result.queue.exactly_once
    v = result.verdict.value
    control = " This is a negative control: the harness expects this setting to fail."
    if v == "valid":
        each = "each exactly once, as required" if required else f"{q.duplicated} more than once"
        return (f"Reliable under this fault: all {q.acknowledged} acknowledged tasks "
                f"completed ({each}).")
    if v == "invalid":
        parts = [f"{q.lost} acknowledged task(s) were lost"] if q.lost else []
        if required and q.duplicated:
            parts.append(f"{q.duplicated} task(s) ran more than once, and exactly once was "
                         "required")
        what = "; ".join(parts) or "an invariant was violated"
        return f"Not reliable under this fault: {what}." + (
            control if result.expect == "invalid" else ""
        )
    return VERDICT_WORDS["unknown"]


#: A fault that reached at most this many tasks proves little when its scenario passes.
WEAK_REACH = 1
#: Faults on one pool child (record names): it runs one task at a time, so only none reached
#: is weak.
CHILD_FAULTS = frozenset({"kill_pool_child", "stop_pool_child"})


def reach_warning(result: ScenarioResult, faults: list[FaultWindow]) -> str:
    """A warning when a scenario passed but a process fault aimed at a worker's tasks (a kill,
    a pause, a terminate) reached at most :data:`WEAK_REACH` of them; ``""`` otherwise.

    Network and broker faults are about connections (an idle worker cut off is the point of
    some scenarios), beat and service faults about other things: they are not judged here.
    """
    if result.verdict.value != "valid":
        return ""
    weak = [
        f"{matrix_mod.fault_label(f.name)} on {f.target} reached {len(f.touched)} "
        f"task{'' if len(f.touched) == 1 else 's'}"
        for f in faults
        # a pool child runs one task at a time: one is all it can reach
        if f.name in WORKER_FAULTS
        and len(f.touched) <= (0 if f.name in CHILD_FAULTS else WEAK_REACH)
    ]
    if not weak:
        return ""
    return (f"Weak evidence: {'; '.join(weak[:3])}{' ...' if len(weak) > 3 else ''}. A pass "
            "proves no more than the faults reached: a longer or denser load, longer tasks, "
            "or a fault timed on running tasks (a `running` trigger) reaches more.")


def detail_words(detail: dict[str, Any]) -> str:
    """A fault window's detail in plain words (``pid = 27585, worker = w1@chaos``); lists
    joined with commas, private keys left out."""
    parts = []
    for key, value in detail.items():
        if key.startswith("_"):
            continue
        shown = ", ".join(str(v) for v in value) if isinstance(value, list) else _fmt(value)
        parts.append(f"{key} = {shown}")
    return "; ".join(parts) or "—"


def settings_words(settings: dict[str, Any]) -> str:
    """The settings under test in plain words (``key = value``, nested keys dotted)."""
    flat = matrix_mod.flat_settings(settings)
    if not flat:
        return "nothing beyond the app's own configuration"
    return ", ".join(f"{k} = {_fmt(v)}" for k, v in sorted(flat.items()))


def run_words(run: RunVerdict) -> tuple[str, str]:
    """(headline, sentence) for the whole run."""
    v = run.verdict.value
    if run.exit_code == 2 or (v == "unknown" and not run.as_expected):
        return "NO VERDICT", (
            "The harness could not reach a verdict for every scenario (an infrastructure "
            "error, or a deployment that never became quiet). Nothing is proven either way."
        )
    if run.as_expected and run.exit_code == 1:
        return "FAIL", (
            "Every scenario's verdict was as declared, but a test of the same session failed "
            "(an assertion on a scenario's numbers, or a library test): see junit.xml and the "
            "pytest output."
        )
    if run.as_expected:
        if v == "invalid":
            return "PASS", (
                "Every configuration behaved as declared: the safe settings lost no "
                "acknowledged task under the faults, and every known-bad setting "
                "(negative control) was caught by its checker."
            )
        if v == "unknown":
            return "PUBLISH SIDE ONLY", (
                "The run measured publishing only (an existing deployment the harness does "
                "not own): no loss can be asserted."
            )
        return "PASS", "Every scenario kept every acknowledged task under the faults injected."
    bad = [s.name for s in run.scenarios if not s.as_expected]
    return "FAIL", (
        "At least one configuration did not behave as declared: " + ", ".join(bad[:5])
        + (" ..." if len(bad) > 5 else "")
    )


def _outcome(task_id: str, queue: QueueCheckResult | None) -> str:
    parts = []
    q = queue if queue is not None else QueueCheckResult(valid="unknown")
    for ids, label in (
        (q.lost, "lost"),
        (q.lost_worker_lost, "WorkerLostError"),
        (q.pending, "pending"),
        (q.unexpected, "never published"),
        (q.indeterminate, "publish outcome unknown"),
        (q.publish_failed, "publish failed"),
        (q.failed, "task raised"),
        (q.revoked, "revoked"),
        (q.rejected, "rejected"),
        (q.recovered, "recovered"),
    ):
        if task_id in ids:
            parts.append(label)
    dup = q.duplicated.get(task_id)
    if dup:
        parts.append(f"completed x{dup}")
    re_ = q.reexecuted.get(task_id)
    if re_:
        parts.append(f"started x{re_}")
    if not parts:
        parts.append("completed")
    return ", ".join(parts)


def build_scenario(result: ScenarioResult, run_dir: Path, index: int) -> ScenarioView:
    """Read a scenario's history and prepare its section of the run page."""
    view = ScenarioView(
        result=result,
        anchor=f"s{index}-{safe_name(result.name)}",
        words=scenario_words(result),
        headline=_headline(result),
    )
    queue = result.queue
    view.exactly_once = queue is not None and queue.exactly_once
    hist = Path(result.history_dir) if result.history_dir else None
    sdir = hist.parent if hist is not None else None
    records: list[dict[str, Any]] = []
    if hist is not None and hist.is_dir():
        try:
            records, torn = read_records(hist)
            view.timeline = build_timeline(records, torn)
            view.faults = view.timeline.faults
            view.figure = figure_json(timeline_figure(view.timeline))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            view.history_error = f"could not read the history: {type(exc).__name__}: {exc}"
        view.reach_warning = reach_warning(result, view.faults)
        view.files = [(p.name, _rel(p, run_dir)) for p in sorted(hist.glob("*.jsonl"))]
    elif hist is not None:
        view.history_error = f"no history directory at {hist}"
    if result.log_dir and Path(result.log_dir).is_dir():
        view.logs = [(p.name, _rel(p, run_dir)) for p in sorted(Path(result.log_dir).iterdir())]
    if sdir is not None:
        if (sdir / "result.json").is_file():
            view.result_json = _rel(sdir / "result.json", run_dir)
        if sdir.is_dir():
            view.loads = scenario_loads(sdir)
            for load in view.loads:
                load.html_href = _rel(load.html, run_dir) if load.html else None
                load.file_links = [(p.name, _rel(p, run_dir)) for p in load.files]
    # Which task ids get a full history: anomalies first, then tasks the faults touched.
    chosen: dict[str, None] = {}  # ordered, without repeats

    def choose(ids: list[str]) -> None:
        for t in ids:
            if len(chosen) >= MAX_TASK_HISTORIES:
                return
            chosen.setdefault(t, None)

    for key, label in TASK_CLASSES:
        ids = list(getattr(queue, key)) if queue is not None else []  # a dict: its ids
        if key == "duplicated" and view.exactly_once:
            label = DUPLICATED_REQUIRED
        if ids:
            view.classes.append((key, label, ids[:MAX_IDS_LISTED], len(ids)))
        choose(ids)
    hung_ids: dict[str, list[str]] = {}  # invariant -> its hung task ids
    for inv in result.invariants:
        hung = inv.summary_if(HungSummary)
        if hung is not None and hung.hung:
            ids = hung_ids[inv.name] = list(hung.hung)
            view.classes.insert(0, ("hung", f"Hung ({inv.name}): ran longer than the bound",
                                    ids[:MAX_IDS_LISTED], len(ids)))
            choose(ids)
    for inv in result.invariants:  # other invariants name their tasks in their problems
        if inv.name == QUEUE or inv.verdict is not Verdict.INVALID or inv.name in hung_ids:
            continue  # the queue's and the hung tasks' classes are listed above
        ids = list(dict.fromkeys(_TASK_ID.findall(" ".join(inv.problems))))
        if ids:
            view.classes.append(("named", f"Named by {inv.name}", ids[:MAX_IDS_LISTED], len(ids)))
            choose(ids)
    view.violated = [i.name for i in result.invariants if i.verdict is Verdict.INVALID]
    for fw in view.faults:
        choose(fw.touched)
    if records and chosen:
        t0 = view.timeline.t0_mono_ns if view.timeline else records[0]["mono_ns"]
        for tid, recs in task_histories(records, list(chosen), t0).items():
            view.tasks[tid] = TaskView(
                task_id=tid,
                anchor=f"{view.anchor}-task-{safe_name(tid)}",
                outcome=_outcome(tid, queue),
                records=recs,
            )
    return view


def _duration(run: RunVerdict) -> str:
    try:
        a = datetime.fromisoformat(run.started)
        b = datetime.fromisoformat(run.finished) if run.finished else None
    except ValueError:
        return ""
    if b is None:
        return ""
    secs = int((b - a).total_seconds())
    return f"{secs // 60} min {secs % 60} s" if secs >= 60 else f"{secs} s"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def backend_words(deployment: dict[str, Any]) -> str:
    """Where a scenario ran, in words: ``local processes``, or the compose backend with the
    image of each service and the compose file."""
    kind = str(deployment.get("backend") or "local")
    if kind != "compose":
        return "local processes" if kind == "local" else kind
    images = deployment.get("images") or {}
    listed = ", ".join(f"{svc} {img}" for svc, img in images.items())
    where = f" from {deployment['compose_file']}" if deployment.get("compose_file") else ""
    words = f"containers (compose{where}: {listed})" if listed else f"containers (compose{where})"
    if "toxiproxy-standin" in str(images.get("toxiproxy", "")):
        words += ("; Toxiproxy is the harness's Toxiproxy-compatible server standing in for "
                  "the Toxiproxy image (no registry here)")
    return words


def render_run(run_dir: Path, run: RunVerdict, plotly_src: str) -> str:
    """The HTML of a run page."""
    views = [build_scenario(s, run_dir, i) for i, s in enumerate(run.scenarios, 1)]
    headline, sentence = run_words(run)
    seeds = sorted({str(s.deployment.get("seed")) for s in run.scenarios
                    if s.deployment.get("seed") is not None})
    brokers = sorted({
        f"{s.deployment.get('broker') or s.broker} {s.deployment.get('broker_version', '')}".strip()
        for s in run.scenarios if (s.deployment.get("broker") or s.broker)
    })
    backends = sorted({backend_words(s.deployment) for s in run.scenarios})
    fault_data = {
        v.anchor: [
            {
                "index": f.index,
                "name": f.name,
                "target": f.target,
                "start": round(f.start, 3),
                "end": round(f.end, 3),
                "tasks": [
                    {
                        "id": t,
                        "anchor": v.tasks[t].anchor if t in v.tasks else "",
                        "outcome": v.tasks[t].outcome if t in v.tasks else "",
                    }
                    for t in f.touched[:MAX_IDS_LISTED]
                ],
                "total": len(f.touched),
            }
            for f in v.faults
        ]
        for v in views
    }
    weak = [v for v in views if v.reach_warning]
    return _env.get_template("run.html.j2").render(
        weak=weak,
        max_ids=MAX_IDS_LISTED,
        run=run,
        views=views,
        headline=headline,
        sentence=sentence,
        words=VERDICT_WORDS,
        duration=_duration(run),
        seeds=seeds,
        brokers=brokers,
        backends=backends,
        backend_words=backend_words,
        plotly_src=plotly_src,
        fault_data=fault_data,
        settings_columns=matrix_mod.SETTING_LABELS,
    )


def _fmt(value: Any, digits: int = 3) -> str:
    """Numbers for tables: ints as is, floats rounded, None as a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        if value != value:  # NaN
            return "—"
        return f"{value:.{digits}f}"
    return str(value)


_env.globals.update(fault_label=matrix_mod.fault_label, fmt=_fmt, settings_words=settings_words,
                    detail_words=detail_words,
                    duplicates_note=matrix_mod.duplicates_note)


def write_index(run_dir: Path, verdict: RunVerdict) -> Path:
    """Write the run's report, its JUnit XML, and refresh the reports index and matrix."""
    run_dir = Path(run_dir)
    root = run_dir.parent
    name = plotly_asset(root)
    out = run_dir / "index.html"
    _write(out, render_run(run_dir, verdict, f"../_assets/{name}"))
    write_junit(run_dir / "junit.xml", verdict)
    try:
        write_site(root)
    except OSError as exc:  # another run's files: never fail this run for them
        print(f"celery-chaos: could not refresh {root}/index.html: {exc}", file=sys.stderr)
    return out


@dataclass
class InterruptedRun:
    """A run directory with scenario directories but no ``verdict.json``: the run was killed
    before its end (or was still running when the index was written)."""

    run_id: str
    started: str  # from the directory's name (``<UTC timestamp>-<id>``), else its mtime
    path: str  # relative link: the directory
    scenarios: int
    kind: str = "scenarios"  # or "load" (``celery-chaos load``: one scenario called load)
    interrupted: bool = True


_RUN_STAMP = re.compile(r"(\d{8}T\d{6}Z)-")


def interrupted_runs(root: Path) -> list[InterruptedRun]:
    """Every run directory under ``root`` with scenarios and no ``verdict.json``."""
    out: list[InterruptedRun] = []
    for sdir in sorted(root.glob("*/scenarios")):
        run_dir = sdir.parent
        if (run_dir / "verdict.json").exists():
            continue
        names = [p.name for p in sdir.iterdir() if p.is_dir()]
        if not names:
            continue
        m = _RUN_STAMP.match(run_dir.name)
        when = (
            datetime.strptime(m.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
            if m
            else datetime.fromtimestamp(run_dir.stat().st_mtime, timezone.utc)
        )
        out.append(InterruptedRun(
            run_id=run_dir.name,
            started=when.isoformat(timespec="seconds"),
            path=f"{run_dir.name}/scenarios/",
            scenarios=len(names),
            kind="load" if names == ["load"] else "scenarios",
        ))
    return out


def _started(row: matrix_mod.RunSummary | InterruptedRun) -> tuple[str, str]:
    if isinstance(row, InterruptedRun):
        return row.started, row.run_id
    return row.run.started, row.run.run_id


def write_site(root: Path) -> tuple[Path, Path]:
    """Rebuild ``<root>/index.html`` (every run, newest first, interrupted runs included) and
    ``<root>/matrix.html`` (runs with a verdict)."""
    runs, skipped = matrix_mod.load_runs(root)
    rows = sorted([*runs, *interrupted_runs(root)], key=_started, reverse=True)
    index = root / "index.html"
    _write(index, _env.get_template("runs.html.j2").render(runs=rows, skipped=skipped))
    table = matrix_mod.build_matrix(runs)
    mpath = root / "matrix.html"
    _write(mpath, _env.get_template("matrix.html.j2").render(m=table, runs=runs))
    return index, mpath
