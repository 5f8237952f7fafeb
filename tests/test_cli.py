"""The command line: one-line errors with exit 2, analyze's verdicts, run directories kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.history.schema import Kind
from harness.history.store import HistoryWriter
from harness.report.results import new_run_dir

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
    assert data[0]["invariants"][0]["summary"]["lost"] == ["t0"]


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
        [sys.executable, "-m", "harness.cli", *argv], capture_output=True, text=True, timeout=60
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
            "harness.cli",
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
    from harness.checks.liveness import publish_bounded
    from harness.checks.verdict import spec_of
    from harness.report.results import ScenarioResult

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
    assert seen[0] == argv + (["scenarios"] if adds_default else []), seen
