"""What the wheel installs: one import name, ``celery_chaos``, that a user's project cannot shadow.

The repository's folders ``harness/`` and ``sample_app/`` install as ``celery_chaos`` and
``celery_chaos.sample_app`` (``pyproject.toml``), so a project with its own ``harness`` or
``sample_app`` module keeps it. The end-to-end test builds the wheel from a copy of the
sources, installs it into a fresh venv, and runs the packaged catalog from a temporary
project of a user's own, as a new user would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"celery_chaos": ROOT / "harness", "celery_chaos.sample_app": ROOT / "sample_app"}


def test_package_list_matches_the_folders() -> None:
    """Every folder with an ``__init__.py`` is listed (a new subpackage would be left out of
    the wheel, silently), under the one mapping ``package-dir`` gives."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert conf["package-dir"] == {name: path.name for name, path in FOLDERS.items()}
    found = set()
    for name, folder in FOLDERS.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder).parts
            found.add(".".join([name, *rel]))
    assert set(conf["packages"]) == found


USER_APP = '''\
"""A team's app: Celery's defaults (early ack), a hard-coded production broker."""
import time

from celery import Celery

app = Celery("shop", broker="amqp://shop:secret@rabbitmq.prod.example:5672/shop")


@app.task(name="shop.tasks.charge")
def charge(order_id: int, seconds: float = 1.5) -> int:
    time.sleep(seconds)
    return order_id
'''

WORKLOAD = """\
- name: shop.tasks.charge
  args: [7, 1.5]
  weight: 1
"""

# The project's own module called `harness`, and its own passing test that uses it; the test
# leaves a file behind when it runs, so a run that collected it shows.
OWN_HARNESS = 'WHOSE = "the shop\'s own harness"\n'
OWN_TEST = '''\
from pathlib import Path

import harness


def test_own_harness() -> None:
    Path("own-test-ran").write_text("yes")
    assert harness.WHOSE == "the shop's own harness"
'''


def _fresh_venv(tmp: Path) -> Path:
    """A new venv whose only ``celery_chaos`` is the wheel built from a copy of the sources.

    Its dependencies are this environment's site-packages, added as a path (a ``.pth`` line:
    the ``.pth`` files there, the checkout's editable install among them, are not run), so
    the test needs no index."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in FOLDERS.values():
        shutil.copytree(folder, src / folder.name, ignore=ignore)
    dist = tmp / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
         "-w", str(dist), str(src)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    (wheel,) = dist.glob("celery_chaos-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    purelib = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    (Path(purelib) / "borrowed-dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    subprocess.run(
        [py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    return venv


def _user_project(tmp: Path) -> Path:
    project = tmp / "shop-project"
    (project / "shop").mkdir(parents=True)
    (project / "shop" / "__init__.py").write_text("")
    (project / "shop" / "tasks.py").write_text(USER_APP)
    (project / "harness.py").write_text(OWN_HARNESS)
    (project / "sample_app.py").write_text('WHOSE = "the shop\'s own sample_app"\n')
    (project / "test_own.py").write_text(OWN_TEST)
    (project / "workload.yaml").write_text(WORKLOAD)
    (project / "reports").mkdir()  # an existing directory as an option value
    return project


def _run(cmd: list[str | Path], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_runs_the_catalog_on_a_users_project(tmp_path: Path) -> None:
    venv = _fresh_venv(tmp_path)
    project = _user_project(tmp_path)
    bin_ = venv / "bin"

    # Our package comes from the wheel, theirs from their project: no name is shared.
    probe = _run([bin_ / "python", "-c",
                  "import celery_chaos, harness, sample_app; "
                  "print(celery_chaos.__file__); print(harness.WHOSE); print(sample_app.WHOSE)"],
                 project, 60)
    assert probe.returncode == 0, probe.stderr
    where, theirs, their_sample = probe.stdout.splitlines()
    assert where.startswith(str(venv)), where
    assert theirs == "the shop's own harness" and their_sample == "the shop's own sample_app"

    # Their own test suite still runs under the plugin pytest loads from the wheel.
    own = _run([bin_ / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_own.py"],
               project, 120)
    assert own.returncode == 0 and "1 passed" in own.stdout, own.stdout + own.stderr
    helped = _run([bin_ / "python", "-m", "pytest", "--help"], project, 60)
    assert "--chaos-app" in helped.stdout, helped.stdout[-2000:] + helped.stderr
    (project / "own-test-ran").unlink()
    cli = _run([bin_ / "celery-chaos", "--help"], project, 60)
    assert cli.returncode == 0, cli.stderr

    # Option values that are existing files and directories; the packaged catalog runs
    # against their app, and their own test is not collected.
    run = _run([bin_ / "celery-chaos", "run", "--chaos-app", "shop.tasks:app",
                "--chaos-workload", "workload.yaml", "--chaos-reports", "reports",
                "-k",
                "rabbitmq_acks_late_survives_kill-main or rabbitmq_early_ack_loses_tasks-main",
                "-q", "-p", "no:cacheprovider"], project, 300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert not (project / "own-test-ran").exists(), "the user's own test was collected"
    assert "test_own" not in run.stdout
    (run_dir,) = [p.parent for p in (project / "reports").glob("*/verdict.json")]
    verdict = json.loads((run_dir / "verdict.json").read_text())
    assert verdict["as_expected"] is True and verdict["exit_code"] == 0
    by_name = {s["name"]: s["verdict"] for s in verdict["scenarios"]}
    assert by_name == {"rabbitmq_acks_late_survives_kill-main": "valid",
                       "rabbitmq_early_ack_loses_tasks-main": "invalid"}
    ran = set()
    for path in run_dir.glob("scenarios/*/history/worker-*.jsonl"):
        for line in path.read_text().splitlines():
            ran.add(json.loads(line).get("task_name"))
    assert "shop.tasks.charge" in ran, ran
    assert (run_dir / "index.html").is_file()
