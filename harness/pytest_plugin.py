"""The celery-chaos pytest plugin (entry point ``pytest11``).

Adds ``--chaos-app``, ``--chaos-workload`` and ``--chaos-reports``, the
``chaos`` fixture (one :class:`~harness.scenario.Scenario` per test), and
writes the run directory (``verdict.json``, ``index.html``) at the end of a
session that ran at least one scenario. Exit status: 0 when every scenario
ended as declared, 1 on an unexpected verdict, 2 on an infrastructure error.

Under pytest-xdist (``-n 2``) the controller creates the run directory and hands it to
every worker; each worker runs its scenarios on brokers of its own and leaves its results
in ``<run>/.xdist/<worker>.json``; the controller joins them into one ``verdict.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from harness.errors import ChaosError, InfrastructureError
from harness.report.results import ScenarioResult

DEFAULT_APP = "sample_app.app:app"
DEFAULT_WORKLOAD = Path(__file__).resolve().parent.parent / "sample_app" / "workload.yaml"
#: Where an xdist controller tells its workers the run directory (``workerinput``).
RUN_DIR_KEY = "chaos_run_dir"
#: The run directory's folder of worker results under xdist (removed once joined).
XDIST_DIR = ".xdist"


class ChaosSession:
    """Per-session state: the run directory, shared brokers and every scenario's result."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.run_dir: Path | None = None
        self.brokers = None
        self.app = None
        self.results: list[ScenarioResult] = []
        self.infra_error = False
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")

    @property
    def workerinput(self) -> dict[str, object]:
        """What the pytest-xdist controller gave this worker; empty when not a worker."""
        return getattr(self.config, "workerinput", None) or {}

    @property
    def worker_id(self) -> str | None:
        """The pytest-xdist worker this session is (``gw0``...), None when not one."""
        return self.workerinput.get("workerid")  # type: ignore[return-value]

    def ensure_run_dir(self) -> Path:
        """Create the run directory on first use (unit-test-only sessions create none)."""
        if self.run_dir is None:
            from harness.report.results import new_run_dir

            shared = self.workerinput.get(RUN_DIR_KEY)
            if shared:  # an xdist worker: the controller's run directory
                self.run_dir = Path(str(shared))
                self.run_dir.mkdir(parents=True, exist_ok=True)
                return self.run_dir

            base = self.config.getoption("chaos_reports") or os.environ.get(
                "CHAOS_REPORTS_DIR", "reports"
            )
            self.run_dir = new_run_dir(base)
        return self.run_dir


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("celery-chaos")
    group.addoption(
        "--chaos-app",
        default=os.environ.get("CHAOS_APP", DEFAULT_APP),
        help="Celery app under test, package.module:app (default: the sample app)",
    )
    group.addoption(
        "--chaos-workload",
        default=os.environ.get("CHAOS_WORKLOAD"),
        help="workload YAML: a list of {name, args, kwargs, queue, weight}",
    )
    group.addoption(
        "--chaos-reports",
        default=None,
        help="where run directories go (default: ./reports or $CHAOS_REPORTS_DIR)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos: an end-to-end chaos scenario on real brokers and workers"
    )
    config._chaos = ChaosSession(config)  # type: ignore[attr-defined]


def _session(config: pytest.Config) -> ChaosSession:
    return config._chaos  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def chaos_session(request: pytest.FixtureRequest) -> Iterator[ChaosSession]:
    """The session's run directory, brokers and app under test."""
    from harness.load.workload import load_workload
    from harness.scenario import AppUnderTest, SharedBrokers

    sess = _session(request.config)
    run_dir = sess.ensure_run_dir()
    wl_path = request.config.getoption("chaos_workload")
    app_spec = request.config.getoption("chaos_app")
    if not wl_path and app_spec != DEFAULT_APP:
        pytest.exit(
            f"--chaos-app {app_spec} needs --chaos-workload FILE "
            "(a list of {name, args, kwargs, queue, weight})",
            returncode=2,
        )
    try:
        workload = load_workload(wl_path or DEFAULT_WORKLOAD)
        sess.app = AppUnderTest.resolve(app_spec, workload)
    except ChaosError as exc:
        pytest.exit(f"celery-chaos: {exc}", returncode=2)
    folder = f"brokers-{sess.worker_id}" if sess.worker_id else "brokers"
    sess.brokers = SharedBrokers(run_dir, folder)
    try:
        yield sess
    finally:
        sess.brokers.close()


@pytest.fixture
def chaos(request: pytest.FixtureRequest, chaos_session: ChaosSession) -> Iterator[object]:
    """One scenario: deploy, load, inject faults, then ``check()`` for the verdict."""
    from harness.scenario import Scenario

    doc = (request.function.__doc__ or "").strip().splitlines()
    assert chaos_session.run_dir is not None and chaos_session.app is not None
    scenario = Scenario(
        request.node.nodeid.split("::", 1)[-1],
        chaos_session.run_dir,
        chaos_session.app,
        chaos_session.brokers,  # type: ignore[arg-type]
        description=doc[0] if doc else "",
    )
    error: str | None = None
    try:
        yield scenario
    except InfrastructureError as exc:
        error = str(exc)
        raise
    finally:
        rep = getattr(request.node, "_chaos_call_report", None)
        if error is None and rep is not None and rep.failed and rep.longrepr is not None:
            excinfo = getattr(rep, "_chaos_exc", None)
            if isinstance(excinfo, InfrastructureError):
                error = str(excinfo)
        scenario.close(error=error)
        if error:
            chaos_session.infra_error = True
        chaos_session.results.append(scenario.result)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    rep = yield
    if call.when == "call":
        item._chaos_call_report = rep  # type: ignore[attr-defined]
        if call.excinfo is not None and isinstance(call.excinfo.value, InfrastructureError):
            rep._chaos_exc = call.excinfo.value  # type: ignore[attr-defined]
            rep.longrepr = f"celery-chaos infrastructure error: {call.excinfo.value}"
    elif call.excinfo is not None and isinstance(call.excinfo.value, ChaosError):
        _session(item.config).infra_error = True
        rep.longrepr = f"celery-chaos: {call.excinfo.value}"
    return rep


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: object) -> None:
    """pytest-xdist controller: every worker writes into the controller's run directory."""
    sess = _session(node.config)  # type: ignore[attr-defined]
    node.workerinput[RUN_DIR_KEY] = str(sess.ensure_run_dir())  # type: ignore[attr-defined]


def _join_workers(sess: ChaosSession) -> None:
    """Controller: add the xdist workers' results (and infrastructure errors) to ``sess``."""
    assert sess.run_dir is not None
    folder = sess.run_dir / XDIST_DIR
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        sess.results.extend(ScenarioResult.model_validate(r) for r in data["results"])
        sess.infra_error |= bool(data["infra_error"])
    shutil.rmtree(folder, ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    sess = _session(session.config)
    if sess.run_dir is None:
        return
    if sess.worker_id is not None:  # xdist worker: the controller writes the verdict
        from harness.report.results import write_json

        folder = sess.run_dir / XDIST_DIR
        folder.mkdir(exist_ok=True)
        write_json(
            folder / f"{sess.worker_id}.json",
            {
                "results": [r.model_dump(mode="json") for r in sess.results],
                "infra_error": sess.infra_error,
            },
        )
        return
    if (sess.run_dir / XDIST_DIR).is_dir():
        _join_workers(sess)
    if not sess.results and not sess.infra_error and not any(sess.run_dir.iterdir()):
        sess.run_dir.rmdir()  # xdist made it, but no scenario ran
        return
    from harness.report.html import write_index
    from harness.report.results import RunVerdict, exit_code_for, run_verdict, versions, write_json

    verdict, as_expected = run_verdict(sess.results)
    status = int(exitstatus)
    code = exit_code_for(sess.results, sess.infra_error, tests_failed=status == 1)
    if code == 0 and status not in (0, 1, 5):
        code = 2  # interrupted, internal or usage error
    run = RunVerdict(
        run_id=sess.run_dir.name,
        started=sess.started,
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        verdict=verdict,
        as_expected=as_expected,
        exit_code=code,
        versions=versions(),
        scenarios=sess.results,
    )
    write_json(sess.run_dir / "verdict.json", run.model_dump(mode="json"))
    write_index(sess.run_dir, run)
    if code == 2:
        session.exitstatus = 2
    elif code == 1 and status == 0:
        session.exitstatus = 1  # a verdict not as declared, even with no failed assertion
    print(f"\ncelery-chaos: run directory {sess.run_dir} (verdict: {verdict.value})")
