"""The app under test: every task a workload names must be registered, checked before anything
starts (one line, exit 2, naming the unknown task and the close matches)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from celery_chaos.errors import UsageError
from celery_chaos.load.workload import Workload, load_workload
from celery_chaos.runner.app import SAMPLE_APP, SAMPLE_WORKLOAD, AppUnderTest, close_tasks

ROOT = Path(__file__).resolve().parent.parent


def _workload(*names: str) -> Workload:
    return Workload.model_validate({"tasks": [{"name": n} for n in names]})


def test_the_sample_app_and_the_user_app_register_their_workloads() -> None:
    sample = AppUnderTest.resolve(SAMPLE_APP, load_workload(SAMPLE_WORKLOAD))
    assert sample.queues == ["emails", "reports", "fetch", "default"]
    # the sample app's chaos_tasks are only in the app's `include`: imported as a worker does
    AppUnderTest.resolve(SAMPLE_APP, _workload("celery_chaos.sample_app.chaos_tasks.nap"))
    user = AppUnderTest.resolve(
        "tests.userapp.app:app", load_workload(ROOT / "tests" / "userapp" / "workload.yaml")
    )
    assert user.queues == ["images", "celery"]


def _package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, include: str = "included") -> str:
    """A user's package: one task in the app module, one in a module of the app's `include`,
    one in a `tasks` module found by `autodiscover_tasks`. Returns the package name."""
    name = f"chaos_pkg_{uuid.uuid4().hex[:8]}"
    root = tmp_path / name
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("")
    (root / "app.py").write_text(
        "from celery import Celery\n"
        f"app = Celery({name!r}, include=[{f'{name}.{include}'!r}])\n"
        f"app.autodiscover_tasks([{f'{name}.sub'!r}])\n\n"
        f"@app.task(name={f'{name}.inline'!r})\n"
        "def inline():\n    return 1\n"
    )
    for module, task in (("included.py", "included"), ("sub/tasks.py", "found")):
        (root / module).write_text(
            f"from {name}.app import app\n\n"
            f"@app.task(name={f'{name}.{task}'!r})\n"
            "def task():\n    return 1\n"
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_included_and_autodiscovered_tasks_are_registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = _package(tmp_path, monkeypatch)
    AppUnderTest.resolve(f"{pkg}.app:app", _workload(f"{pkg}.inline", f"{pkg}.included",
                                                     f"{pkg}.found"))


def test_a_task_module_that_fails_to_import_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = _package(tmp_path, monkeypatch, include="missing")
    with pytest.raises(UsageError) as err:
        AppUnderTest.resolve(f"{pkg}.app:app", _workload(f"{pkg}.inline"))
    message = str(err.value)
    assert "importing the task modules of --chaos-app" in message and "missing" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("names", "says"),
    [
        (["celery_chaos.sample_app.tasks.send_emails"],
         "task 'celery_chaos.sample_app.tasks.send_emails' "
         "(did you mean celery_chaos.sample_app.tasks.send_email?)"),
        (["celery_chaos.sample_app.tasks.send_email", "generate_report"],
         "task 'generate_report' (did you mean celery_chaos.sample_app.tasks.generate_report?)"),
        (["nothing.like.it"], "(it registers "),  # no close match: what it registers
    ],
)
def test_an_unknown_task_is_one_line_with_close_matches(names: list[str], says: str) -> None:
    with pytest.raises(UsageError) as err:
        AppUnderTest.resolve(SAMPLE_APP, _workload(*names))
    message = str(err.value)
    assert says in message and "does not register" in message, message
    assert "\n" not in message


def test_close_tasks_match_the_whole_name_or_its_last_part() -> None:
    known = ["a.tasks.send_email", "a.tasks.generate_report", "b.add"]
    assert close_tasks("a.tasks.send_emial", known) == ["a.tasks.send_email"]
    assert close_tasks("add", known) == ["b.add"]
    assert close_tasks("zzz", known) == []


def _cli(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery_chaos.cli", *argv], cwd=cwd, capture_output=True, text=True,
        timeout=120,
    )


def test_load_and_run_refuse_an_unknown_task_before_anything_starts(tmp_path: Path) -> None:
    """``celery-chaos load`` and the pytest plugin's session set-up: exit 2 in seconds, one
    line naming the task, no run directory."""
    (tmp_path / "w.yaml").write_text(
        "- name: celery_chaos.sample_app.tasks.send_emails\n  args: [a]\n")
    reports = tmp_path / "reports"
    load = _cli(tmp_path, "load", "--workload", "w.yaml", "--duration", "5s", "--reports",
                str(reports))
    assert load.returncode == 2, load.stdout + load.stderr
    (line,) = load.stderr.strip().splitlines()
    assert ("'celery_chaos.sample_app.tasks.send_emails' "
            "(did you mean celery_chaos.sample_app.tasks.send_email?)") in line
    run = _cli(tmp_path, "run", "--chaos-workload", "w.yaml", "-k", "early_ack_loses_tasks-main",
               "--chaos-reports", str(reports), "-p", "no:cacheprovider", "-q")
    out = run.stdout + run.stderr
    assert run.returncode == 2, out
    assert "does not register" in out and "Traceback" not in out
    assert not reports.exists()
