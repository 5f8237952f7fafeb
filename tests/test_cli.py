"""The command line: one-line errors with exit 2, analyze's verdicts, run directories kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from celery_chaos.checks.queue import QueueCheckResult
from celery_chaos.checks.verdict import InvariantResult
from celery_chaos.cli import main
from celery_chaos.history.schema import Kind
from celery_chaos.history.store import HistoryWriter
from celery_chaos.results import new_run_dir

ROOT = Path(__file__).resolve().parent.parent


def _history(path: Path, *, lose: bool) -> Path:
    """A small history: three published tasks, one of them lost when ``lose``."""
    hist = path / "history"
    pub = HistoryWriter(hist, "publisher", "publisher")
    wrk = HistoryWriter(hist, "worker", "w1@chaos")
    for i in range(3):
        tid = f"t{i}"
        pub.write(Kind.INVOKE, task_id=tid, task_name="x")
        pub.write(Kind.OK, task_id=tid, task_name="x", confirmed=True)
        wrk.write(Kind.STARTED, task_id=tid, task_name="x")
        if not (lose and i == 0):
            wrk.write(Kind.SUCCEEDED, task_id=tid, task_name="x")
    HistoryWriter(hist, "harness", "harness").write(Kind.DRAIN, detail={"complete": True})
    return hist


def test_analyze_valid_and_invalid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(_history(tmp_path / "good", lose=False))]) == 0
    assert main(["analyze", str(_history(tmp_path / "bad", lose=True))]) == 1
    out = capsys.readouterr().out
    assert "BAD" in out and "t0" in out


def test_analyze_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "--json", str(tmp_path / "bad" / ".." / "bad")]) == 2
    capsys.readouterr()
    _history(tmp_path / "bad", lose=True)
    assert main(["analyze", "--json", str(tmp_path / "bad")]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data[0]["verdict"] == "invalid"
    queue = InvariantResult.model_validate(data[0]["invariants"][0])
    assert queue.summary_as(QueueCheckResult).lost == ["t0"]


@pytest.mark.parametrize(
    "argv",
    [
        ["analyze", "/no/such/run"],
        ["analyze", "/"],
        ["toxiproxy", "--port", "70000"],
    ],
)
def test_bad_input_is_one_line_exit_2(argv: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "celery_chaos.cli", *argv], capture_output=True, text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_run_directories_are_never_reused(tmp_path: Path) -> None:
    dirs = {new_run_dir(tmp_path) for _ in range(20)}
    assert len(dirs) == 20


def test_missing_broker_binary_is_one_line_exit_2(tmp_path: Path) -> None:
    """A missing redis-server: the scenario stops with one line naming the fix, exit 2."""
    (tmp_path / "test_one.py").write_text(
        "def test_redis(chaos):\n    chaos.deploy('redis', workers=1)\n"
    )
    env = {**os.environ, "CHAOS_REDIS_SERVER": "redis-server-not-installed-here"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery_chaos.cli",
            "run",
            str(tmp_path / "test_one.py"),
            "-q",
            "-p",
            "no:cacheprovider",
            "--chaos-reports",
            str(tmp_path / "reports"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if "not found" in line]
    assert lines and "apt-get install" in lines[0], out
    (run_dir,) = [p.parent for p in (tmp_path / "reports").glob("*/verdict.json")]
    assert json.loads((run_dir / "verdict.json").read_text())["exit_code"] == 2


def _scenario(run: Path, bound_s: float) -> Path:
    """A scenario directory whose result.json declares a publish_bounded checker and expects
    it to flag the one publish that took 10 s."""
    from celery_chaos.checks.liveness import publish_bounded
    from celery_chaos.checks.verdict import spec_of
    from celery_chaos.results import ScenarioResult

    sdir = run / "scenarios" / "slow_publish"
    hist = _history(sdir, lose=False)
    pub = HistoryWriter(hist, "publisher", "publisher-2")
    pub.write(Kind.INVOKE, task_id="slow", task_name="x", mono_ns=1, wall_ns=1)
    pub.write(Kind.OK, task_id="slow", task_name="x", mono_ns=10**10 + 1, wall_ns=10**10 + 1)
    HistoryWriter(hist, "worker", "w1@chaos").write(Kind.SUCCEEDED, task_id="slow", task_name="x")
    result = ScenarioResult(
        name="slow_publish", expect="invalid", checkers=[spec_of(publish_bounded(bound_s))]
    )
    (sdir / "result.json").write_text(result.model_dump_json())
    return run


def test_analyze_rebuilds_the_scenarios_own_checkers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Bound 6 s: the 10 s publish is flagged, as the scenario declared.
    assert main(["analyze", str(_scenario(tmp_path / "a", 6.0))]) == 0
    assert "publish_bounded" in capsys.readouterr().out
    # Bound 20 s: nothing to flag, so the run is not as declared: the checker really ran.
    assert main(["analyze", str(_scenario(tmp_path / "b", 20.0))]) == 1


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ('{"v": null, "kind": "ok"}', "schema version None"),
        ('{"v": 1, "kind": "nonsense", "wall_ns": 1, "mono_ns": 1, "pid": 1}', "kind"),
    ],
)
def test_analyze_bad_records_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, says: str
) -> None:
    hist = _history(tmp_path / "run", lose=False)
    (hist / "bad.jsonl").write_text(line + "\n")
    assert main(["analyze", str(hist)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err


def test_analyze_corrupt_result_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _scenario(tmp_path / "run", 6.0)
    (run / "scenarios" / "slow_publish" / "result.json").write_text('{"name": 3}')
    assert main(["analyze", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a scenario result" in err[0], err


@pytest.mark.parametrize(
    ("argv", "adds_default"),
    [
        (["-k", "kill"], True),
        (["--chaos-app", "mycompany.tasks:app", "-q"], True),
        (["scenarios/test_worker_kill.py::test_redis_early_ack_loses_tasks"], False),
        (["scenarios"], False),
    ],
)
def test_run_adds_the_scenarios_only_when_no_path_is_given(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], adds_default: bool
) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr("pytest.main", lambda args: seen.append(args) or 0)
    monkeypatch.chdir(ROOT)
    assert main(["run", *argv]) == 0
    assert seen[0] == ["--chaos-require-scenarios", *argv] + (
        ["scenarios"] if adds_default else []
    ), seen


@pytest.mark.parametrize(
    ("argv", "paths"),
    [
        (["--chaos-workload", "w.yaml", "-k", "kill"], []),
        (["--chaos-workload=w.yaml", "--chaos-reports", "out", "-p", "no:cacheprovider"], []),
        (["-n", "2", "--dist", "loadfile", "-m", "chaos", "-o", "timeout=5"], []),
        (["scenarios/test_x.py", "--chaos-app", "a:b"], ["scenarios/test_x.py"]),
        (["-k", "kill", "--", "w.yaml"], ["w.yaml"]),
        (["--no-such-option"], None),
    ],
)
def test_pytest_paths_never_takes_an_option_value_for_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], paths: list[str] | None
) -> None:
    """Option values that exist on disk (w.yaml, out/) are still option values."""
    from celery_chaos.cli import pytest_paths

    (tmp_path / "w.yaml").write_text("[]\n")
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    assert pytest_paths(argv) == paths


def _user_project(path: Path) -> Path:
    """A user's project: a workload file and a passing test of its own, which leaves a marker
    file when pytest imports it."""
    path.mkdir(exist_ok=True)
    (path / "workload.yaml").write_text("- name: sample.add\n  args: [1, 2]\n")
    (path / "test_mine.py").write_text(
        "from pathlib import Path\n"
        "Path(__file__).with_name('test_mine.imported').touch()\n\n"
        "def test_mine():\n    assert True\n"
    )
    return path


def _celery_chaos(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``celery-chaos ARGV`` as a user runs it: the console script, no PYTHONPATH."""
    script = Path(sys.executable).with_name("celery-chaos")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "celery_chaos.cli"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CHAOS_REPORTS_DIR")}
    return subprocess.run(
        [*cmd, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_run_with_a_workload_file_runs_the_catalog_not_the_users_tests(tmp_path: Path) -> None:
    """``workload.yaml`` after ``--chaos-workload`` exists, yet it is no test path: the
    catalog is collected (and deselected by ``-k``, so no scenario runs here), the user's
    test_mine.py is not, and a run that ran no scenario is exit 2, never 0."""
    project = _user_project(tmp_path / "project")
    reports = tmp_path / "reports"
    proc = _celery_chaos(
        project,
        "run",
        "--chaos-workload",
        "workload.yaml",
        "-k",
        "nothing_matches_this",
        "--chaos-reports",
        str(reports),
        "-p",
        "no:cacheprovider",
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert not (project / "test_mine.imported").exists(), out
    assert "test_mine" not in out
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("celery-chaos: no chaos scenario ran ("), out
    assert "deselected" in last and "Traceback" not in out
    assert not reports.exists() or not any(reports.iterdir())


def test_run_of_non_chaos_tests_is_exit_2_but_plain_pytest_is_not(tmp_path: Path) -> None:
    """The user's own passing tests through ``celery-chaos run``: no scenario ran, exit 2.
    Plain pytest on the same file (library tests) is unaffected: exit 0."""
    project = _user_project(tmp_path)
    proc = _celery_chaos(project, "run", "test_mine.py", "-p", "no:cacheprovider")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("celery-chaos: no chaos scenario ran (1 test collected)"), last
    plain = subprocess.run(
        [sys.executable, "-m", "pytest", "test_mine.py", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plain.returncode == 0, plain.stdout + plain.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"spec": "rabbitmq_acks_late_survives_kill-main",
          "schedule": [{"do": {"op": "melt_cpu"}}]}, "unknown op 'melt_cpu'"),
        ({"spec": "rabbitmq_acks_late_survives_kill-main",
          "schedule": [{"do": {"op": "latency", "ms": "slow"}}]}, "ms: Input should be"),
        ({"spec": "rabbitmq_acks_late_survives_kill-main",
          "schedule": [{"do": {"op": "kill_worker", "worker": "w5"}}]},
         "names worker 'w5@chaos', which the deployment does not have"),
        ({"spec": "no_such_scenario", "schedule": []}, "no catalog scenario 'no_such_scenario'"),
        ([1, 2], "a schedule file is a JSON object"),
    ],
)
def test_bad_schedules_are_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: object, message: str
) -> None:
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps(content))
    reports = tmp_path / "reports"
    code = main(["run", "--schedule", str(path), "--chaos-reports", str(reports)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not reports.exists(), "nothing started, no run directory"


def test_replay_needs_a_stored_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(tmp_path)]) == 2
    assert "no spec.json in" in capsys.readouterr().err
    (tmp_path / "spec.json").write_text(json.dumps({"name": "x", "expect": "maybe"}))
    assert main(["replay", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "expect: Input should be 'valid' or 'invalid'" in err and "\n" not in err, err
    assert main(["replay"]) == 2


def test_run_outside_a_checkout_collects_the_packaged_catalog(tmp_path: Path) -> None:
    """From a directory without scenarios/, `run` collects the catalog shipped in the package;
    `-k` selects by catalog name (collection only: no scenario runs here)."""
    exe = Path(sys.executable).parent / "celery-chaos"
    proc = subprocess.run(
        [str(exe), "run", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-k", "rabbitmq_acks_late_survives_kill and main"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "harness/catalog/test_catalog.py::test_catalog[rabbitmq_acks_late_survives_kill-main]" \
        in proc.stdout, proc.stdout
    assert "1/" in proc.stdout and not (tmp_path / "reports").exists()


def _garble(hist: Path, *, middle: bool, torn: bool) -> Path:
    """The worker's file of ``hist`` with a garbled line 2 (``middle``) and a torn last line."""
    (path,) = hist.glob("worker-*.jsonl")
    lines = path.read_text().splitlines(keepends=True)
    if middle:
        lines.insert(1, '{"v": 1, "kind": "succ\n')
    if torn:
        lines.append(lines[0][:25])  # SIGKILL mid-write: no line end
    path.write_text("".join(lines))
    return path


@pytest.mark.parametrize(
    ("lose", "middle", "code", "verdict"),
    [
        (False, True, 2, "unknown"),  # a lost line may hide a lost task: never valid
        (True, True, 1, "invalid"),  # a violation in the lines read stays a violation
        (False, False, 0, "valid"),  # only the torn last line of a killed writer: noted
    ],
)
def test_analyze_never_says_valid_on_lines_it_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lose: bool, middle: bool, code: int,
    verdict: str,
) -> None:
    hist = _history(tmp_path / "s", lose=lose)
    path = _garble(hist, middle=middle, torn=True)
    assert main(["analyze", str(hist)]) == code
    out = capsys.readouterr().out
    assert f"s: {verdict} (declared valid)" in out, out
    torn_at = f"{path.name}:{len(path.read_text().splitlines())}"  # the file's last line
    assert f"1 torn last line ({torn_at})" in out, out
    if middle:
        assert f"1 unreadable line ({path.name}:2)" in out, out
        assert f"history_complete: 1 unreadable history line ({path.name}:2)" in out, out
    else:
        assert "0 unreadable lines" in out and "history_complete" not in out, out
    assert main(["analyze", "--json", str(hist)]) == code
    (item,) = json.loads(capsys.readouterr().out)
    assert item["verdict"] == verdict
    assert item["history"]["torn"] == 1 and item["history"]["torn_at"] == [torn_at]
    assert item["history"]["unreadable"] == int(middle)
    assert item["history"]["unreadable_at"] == ([f"{path.name}:2"] if middle else [])


def _interrupted(run: Path, *, spec: bool) -> Path:
    """A run killed by SIGKILL: a scenario's history (started, a task lost so far) and its
    ``spec.json`` (a negative control) when ``spec``, but no ``result.json``."""
    from celery_chaos.runner.catalog import get

    sdir = run / "scenarios" / "rabbitmq_early_ack_loses_tasks-main"
    hist = _history(sdir, lose=True)
    HistoryWriter(hist, "harness", "harness").write(Kind.SCENARIO, name=sdir.name, phase="start")
    if spec:
        data = get("rabbitmq_early_ack_loses_tasks-main").to_json()
        data["checks"]["invariants"] = [
            {"checker": "no_hung_tasks", "params": {"bound_s": 30}},
            {"checker": "publish_bounded", "params": {"bound_s": 5, "ids": "${kill.tasks}"}},
        ]
        (sdir / "spec.json").write_text(json.dumps(data))
    return run


@pytest.mark.parametrize("spec", [True, False])
def test_analyze_an_interrupted_run_is_unknown_never_as_declared(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: bool
) -> None:
    run = _interrupted(tmp_path / "run", spec=spec)
    assert main(["analyze", str(run)]) == 2  # the run did not finish
    out = capsys.readouterr().out
    declared = "declared invalid" if spec else "declared nothing: no spec.json"
    assert ("INT rabbitmq_early_ack_loses_tasks-main: unknown (interrupted: the run did not "
            f"finish, no result.json; {declared})") in out, out
    assert "ok " not in out
    if spec:  # spec.json's checkers run, but one that names step outputs cannot
        assert "publish_bounded: not judged" in out, out
    assert main(["analyze", "--json", str(run)]) == 2
    (item,) = json.loads(capsys.readouterr().out)
    assert (item["verdict"], item["interrupted"], item["as_declared"]) == ("unknown", True, False)
    assert item["expect"] == ("invalid" if spec else None)
    names = [i["name"] for i in item["invariants"]]
    assert names == (["queue", "no_hung_task"] if spec else ["queue"])
