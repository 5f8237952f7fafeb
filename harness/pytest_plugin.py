"""The celery-chaos pytest plugin (entry point ``pytest11``).

Adds ``--chaos-app``, ``--chaos-workload`` and ``--chaos-reports``, the
``chaos`` fixture (one :class:`~celery_chaos.runner.scenario.Scenario` per test), and
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
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from celery_chaos.errors import ChaosError, InfrastructureError
from celery_chaos.results import ScenarioResult
from celery_chaos.runner.app import SAMPLE_APP, SAMPLE_WORKLOAD

DEFAULT_APP = SAMPLE_APP
DEFAULT_WORKLOAD = SAMPLE_WORKLOAD
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
        self.no_scenario: str | None = None  # why --chaos-require-scenarios failed the run
        self.summary = ""  # the run's last line: what happened and where the report is
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
            from celery_chaos.results import new_run_dir

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
        "--chaos-spec-file",
        default=None,
        help="run this one scenario spec (a run's spec.json, a schedule file) instead of "
        "the catalog (celery-chaos replay / run --schedule)",
    )
    group.addoption(
        "--chaos-reports",
        default=None,
        help="where run directories go (default: ./reports or $CHAOS_REPORTS_DIR)",
    )
    group.addoption(
        "--chaos-progress",
        type=float,
        default=float(os.environ.get("CHAOS_PROGRESS", "10")),
        metavar="SECONDS",
        help="a progress line per running scenario every SECONDS (10; 0: none)",
    )
    group.addoption(
        "--chaos-backend",
        choices=["local", "compose"],
        default=os.environ.get("CHAOS_BACKEND", "local"),
        help="where scenarios run: local processes (default) or containers of a "
        "docker-compose deployment (needs DOCKER_HOST; see README, Compose)",
    )
    group.addoption(
        "--chaos-compose-file",
        default=None,
        help="the compose file of --chaos-backend compose (default ./docker-compose.yml, "
        "else the checkout's)",
    )
    group.addoption(
        "--chaos-require-scenarios",
        action="store_true",
        default=False,
        help="exit 2 when no chaos scenario (a test using the `chaos` fixture) ran; "
        "set by `celery-chaos run`",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos: an end-to-end chaos scenario on real brokers and workers"
    )
    config.addinivalue_line(
        "markers", "negative_control: a scenario spec that declares `expect: invalid`"
    )
    config.addinivalue_line(
        "markers", "slow: a long scenario or end-to-end run; `make test` runs it only in CI"
    )
    config.addinivalue_line("markers", "compose: a scenario on the compose backend (containers)")
    config._chaos = ChaosSession(config)  # type: ignore[attr-defined]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark items parametrized with a spec: ``negative_control`` for ``expect: invalid``, and
    the spec's own ``marks`` (``slow``), so ``-m negative_control`` selects every control."""
    for item in items:
        spec = getattr(getattr(item, "callspec", None), "params", {}).get("spec")
        if spec is None or not hasattr(spec, "expect"):
            continue
        if spec.expect == "invalid":
            item.add_marker("negative_control")
        for mark in getattr(spec, "marks", []):
            item.add_marker(mark)


def _session(config: pytest.Config) -> ChaosSession:
    return config._chaos  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def chaos_session(request: pytest.FixtureRequest) -> Iterator[ChaosSession]:
    """The session's run directory, brokers and app under test."""
    from celery_chaos.backends.local import SharedBrokers
    from celery_chaos.load.workload import load_workload
    from celery_chaos.runner.app import AppUnderTest

    sess = _session(request.config)
    wl_path = request.config.getoption("chaos_workload")
    app_spec = request.config.getoption("chaos_app")
    if not wl_path and app_spec != DEFAULT_APP:
        pytest.exit(
            f"--chaos-app {app_spec} needs --chaos-workload FILE "
            "(a list of {name, args, kwargs, queue, weight})",
            returncode=2,
        )
    try:  # the app imports and registers every task the workload names, before anything starts
        workload = load_workload(wl_path or DEFAULT_WORKLOAD)
        sess.app = AppUnderTest.resolve(app_spec, workload)
    except ChaosError as exc:
        pytest.exit(f"celery-chaos: {exc}", returncode=2)
    run_dir = sess.ensure_run_dir()
    if request.config.getoption("chaos_backend") == "compose":
        sess.brokers = _compose_session(request.config, run_dir, sess.worker_id, exit_on_error=True)
    else:
        folder = f"brokers-{sess.worker_id}" if sess.worker_id else "brokers"
        sess.brokers = SharedBrokers(run_dir, folder)
    try:
        yield sess
    finally:
        sess.brokers.close()


def _compose_session(config: pytest.Config, run_dir: Path, worker_id: str | None, *,
                     exit_on_error: bool) -> Any:
    """A :class:`~celery_chaos.backends.compose.ComposeSession`; where none can be had, exit 2 with
    the reason (``--chaos-backend compose``) or skip with it (the compose scenarios)."""
    from celery_chaos.backends.compose import ComposeSession
    from celery_chaos.deployment.docker_engine import unavailable

    folder = f"compose-{worker_id}" if worker_id else "compose"
    file = config.getoption("chaos_compose_file")
    try:
        if (why := unavailable()) is not None:
            raise InfrastructureError(why)
        return ComposeSession(run_dir, folder, Path(file) if file else None)
    except ChaosError as exc:
        if exit_on_error:
            pytest.exit(f"celery-chaos: compose backend: {exc}", returncode=2)
        pytest.skip(f"compose backend: {exc}")


@pytest.fixture(scope="session")
def compose_session(request: pytest.FixtureRequest, chaos_session: ChaosSession) -> Iterator[Any]:
    """The session's compose project, for scenarios that run on containers whatever
    ``--chaos-backend`` says (``scenarios/test_compose.py``); skipped, with the reason, where
    no Docker engine can be had."""
    assert chaos_session.run_dir is not None
    if request.config.getoption("chaos_backend") == "compose":
        yield chaos_session.brokers
        return
    session = _compose_session(request.config, chaos_session.run_dir, chaos_session.worker_id,
                               exit_on_error=False)
    try:
        yield session
    finally:
        session.close()


@pytest.fixture
def chaos(request: pytest.FixtureRequest, chaos_session: ChaosSession) -> Iterator[object]:
    """One scenario: deploy, load, inject faults, then ``check()`` for the verdict."""
    from celery_chaos.runner.scenario import Scenario

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
    progress = _progress(request.config, scenario)
    try:
        yield scenario
    except InfrastructureError as exc:
        error = str(exc)
        raise
    finally:
        progress.stop()
        _finish(request, chaos_session, scenario, error)


def _finish(
    request: pytest.FixtureRequest, sess: ChaosSession, scenario: Any, error: str | None
) -> None:
    """Tear a scenario down and keep its result (with the infrastructure error, if any)."""
    rep = getattr(request.node, "_chaos_call_report", None)
    if error is None and rep is not None and rep.failed and rep.longrepr is not None:
        error = getattr(rep, "_chaos_infra_error", None)
    scenario.close(error=error)
    if error:
        sess.infra_error = True
    sess.results.append(scenario.result)


def _progress(config: pytest.Config, scenario: Any) -> Any:
    """Live progress lines for one scenario on the terminal (an xdist worker's go to its
    stderr, the controller's terminal); none with ``--chaos-progress 0``."""
    from celery_chaos.runner.progress import Progress

    reporter = config.pluginmanager.getplugin("terminalreporter")
    capman = config.pluginmanager.getplugin("capturemanager")
    interval = float(config.getoption("chaos_progress") or 0)
    worker = getattr(config, "workerinput", {}).get("workerid")
    if capman is None or (reporter is None and worker is None):
        interval = 0

    def emit(line: str) -> None:
        with capman.global_and_fixture_disabled():  # the test's output stays captured
            if worker is None:
                reporter.write_line(line)
            else:  # an xdist worker's stderr is the controller's terminal
                sys.stderr.write(f"[{worker}] {line}\n")  # one write: whole lines
                sys.stderr.flush()

    return Progress(scenario.name, scenario.tail, emit, interval=interval,
                    phase=lambda: scenario.phase).start()


@pytest.fixture
def chaos_run(
    request: pytest.FixtureRequest, chaos_session: ChaosSession
) -> Iterator[Callable[[Any], Any]]:
    """Run one catalog spec: ``run = chaos_run(spec)`` deploys, loads, runs the schedule and
    checks (:func:`celery_chaos.runner.run.run_spec`); the scenario is torn down after the test.
    A spec that does not apply to the app under test is skipped with the reason."""
    yield from _spec_runner(request, chaos_session, chaos_session.brokers)


@pytest.fixture
def compose_run(
    request: pytest.FixtureRequest, chaos_session: ChaosSession, compose_session: Any
) -> Iterator[Callable[[Any], Any]]:
    """``chaos_run`` on the compose backend, whatever ``--chaos-backend`` says."""
    yield from _spec_runner(request, chaos_session, compose_session, suffix="-compose")


def _spec_runner(
    request: pytest.FixtureRequest, chaos_session: ChaosSession, brokers: Any, suffix: str = ""
) -> Iterator[Callable[[Any], Any]]:
    from celery_chaos.runner.run import NotApplicable, check_applicable, run_spec
    from celery_chaos.runner.scenario import Scenario

    assert chaos_session.run_dir is not None and chaos_session.app is not None
    made: list[Any] = []

    def run(spec: Any) -> Any:
        scenario = Scenario(
            spec.name + suffix,
            chaos_session.run_dir,  # type: ignore[arg-type]
            chaos_session.app,  # type: ignore[arg-type]
            brokers,
            description=spec.description,
        )
        try:
            check_applicable(spec, scenario)
        except NotApplicable as exc:
            scenario.result.error = None
            scenario.close()
            pytest.skip(str(exc))
        made.append(scenario)
        progress = _progress(request.config, scenario)
        try:
            return run_spec(spec, scenario)
        finally:
            progress.stop()

    error: str | None = None
    try:
        yield run
    except InfrastructureError as exc:
        error = str(exc)
        raise
    finally:
        for scenario in made:
            _finish(request, chaos_session, scenario, error)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    rep = yield
    if call.when == "call":
        item._chaos_call_report = rep  # type: ignore[attr-defined]
        if call.excinfo is not None and isinstance(call.excinfo.value, InfrastructureError):
            # a string: pytest-xdist sends reports to its controller, and cannot serialize an
            # exception (an infrastructure error in a scenario was an INTERNALERROR under -n 2)
            rep._chaos_infra_error = str(call.excinfo.value)  # type: ignore[attr-defined]
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


def _require_scenarios(session: pytest.Session, sess: ChaosSession, status: int) -> None:
    """``--chaos-require-scenarios``: a session that ran no scenario exits 2, never 0.

    Called on the controller once the xdist workers' results are joined. Sessions that
    stopped on their own error (interrupted, usage, infrastructure) keep it; sessions that
    only list (``--collect-only``, ``--setup-plan``, ``--fixtures``) are not meant to run any.
    """
    opt = session.config.option
    if (
        not session.config.getoption("chaos_require_scenarios")
        or sess.results
        or sess.infra_error
        or status not in (0, 1, 5)
        or any(
            getattr(opt, name, False)
            for name in ("collectonly", "setupplan", "showfixtures", "show_fixtures_per_test")
        )
    ):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    stats = getattr(reporter, "stats", {})
    collected = session.testscollected + len(stats.get("deselected", []))
    # An xdist controller counts what its workers kept after -k/-m, not what they deselected.
    what = "selected" if session.config.pluginmanager.has_plugin("dsession") else "collected"
    counts = [f"{collected} test{'' if collected == 1 else 's'} {what}"]
    counts += [f"{len(stats[k])} {k}" for k in ("deselected", "skipped") if stats.get(k)]
    sess.no_scenario = (
        f"celery-chaos: no chaos scenario ran ({', '.join(counts)}): a scenario is a test "
        "using the `chaos` fixture; pass scenario files or directories (default scenarios/) "
        "and check that -k/-m select some"
    )
    session.exitstatus = 2


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    sess = _session(session.config)
    if sess.worker_id is None:  # the controller (or no xdist): join, then require scenarios
        if sess.run_dir is not None and (sess.run_dir / XDIST_DIR).is_dir():
            _join_workers(sess)
        _require_scenarios(session, sess, int(exitstatus))
    if sess.run_dir is None:
        return
    if sess.worker_id is not None:  # xdist worker: the controller writes the verdict
        from celery_chaos.results import write_json

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
    if not sess.results and not sess.infra_error and not any(sess.run_dir.iterdir()):
        sess.run_dir.rmdir()  # xdist made it, but no scenario ran
        return
    from celery_chaos.report.html import write_index
    from celery_chaos.results import RunVerdict, exit_code_for, run_verdict, versions, write_json

    verdict, as_expected = run_verdict(sess.results)
    status = int(session.exitstatus)  # 2 when _require_scenarios failed the run
    code = exit_code_for(sess.results, sess.infra_error, tests_status=status)
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
    from celery_chaos.results import run_summary_line

    # printed last of all (pytest_unconfigure), after pytest's own summary
    sess.summary = run_summary_line(sess.results, code, sess.run_dir)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Say why ``--chaos-require-scenarios`` failed the run, as the output's last line."""
    sess: ChaosSession | None = getattr(config, "_chaos", None)
    if sess is not None and sess.summary:
        print(sess.summary, flush=True)
    if sess is not None and sess.no_scenario:
        print(sess.no_scenario, file=sys.stderr)
