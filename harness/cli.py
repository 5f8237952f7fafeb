"""The ``celery-chaos`` command.

- ``celery-chaos run [--schedule FILE] [PYTEST ARGS...]``: run scenarios (``./scenarios/``
  when there is one, else the shipped catalog), writing a run directory under ``reports/``;
  ``--schedule`` runs one fault schedule against the spec its file names.
- ``celery-chaos replay RUN_DIR/scenarios/NAME``: run a stored scenario's ``spec.json`` again.
- ``celery-chaos analyze RUN_DIR|HISTORY_DIR``: re-judge stored histories.
- ``celery-chaos explore --scenario NAME [--budget 10m] [--seed N] [--out DIR]``: generated
  fault schedules, shrunk to a minimal failing one (docs/explore.md).
- ``celery-chaos toxiproxy [--host H] [--port P] [--config FILE]``: the Toxiproxy-compatible
  fault proxy (Toxiproxy's own ``-host=``, ``-port=``, ``-config=`` spellings work too).
- ``celery-chaos load --users N --spawn-rate R --duration T [--fault SPEC ...]``: a load
  test with an optional fault schedule, writing the same report (docs/report.md).
- ``celery-chaos audit --chaos-app pkg.mod:app [--chaos-workload FILE]``: faults against
  the app's own configuration, and the fix the catalog proves safe (docs/audit.md).

Exit codes: 0 every invariant held (or every scenario ended as declared), 1 a
violation, 2 a usage or infrastructure error.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery_chaos.errors import ChaosError, UsageError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="celery-chaos",
        description="Chaos validation for Celery deployments: real brokers, real workers, "
        "real faults, a recorded history and a checker.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run", help="run chaos scenarios (pytest) and write a run directory", add_help=False
    )
    run.add_argument("pytest_args", nargs=argparse.REMAINDER)
    replay = sub.add_parser(
        "replay", help="run a stored scenario (RUN_DIR/scenarios/NAME) again", add_help=False
    )
    replay.add_argument("pytest_args", nargs=argparse.REMAINDER)
    analyze = sub.add_parser("analyze", help="re-judge the stored history of a run")
    analyze.add_argument("path", help="a run directory, a scenario directory or a history/ dir")
    analyze.add_argument(
        "--exactly-once", action="store_true", help="count duplicates as violations"
    )
    analyze.add_argument("--json", action="store_true", help="print the results as JSON")
    explore = sub.add_parser(
        "explore", help="draw fault schedules, run them, shrink a violation to a minimal one"
    )
    explore.error = _one_line_error  # type: ignore[method-assign]
    what = explore.add_mutually_exclusive_group()
    what.add_argument("--scenario", help="a catalog scenario whose deployment to explore")
    what.add_argument("--spec", help="a spec file (JSON/YAML) whose deployment to explore")
    explore.add_argument("--chaos-app", default=None, help="the app under test (module:app)")
    explore.add_argument("--chaos-workload", default=None, help="its workload YAML")
    explore.add_argument("--budget", default="10m", help="hard time limit (default 10m)")
    explore.add_argument("--max-examples", default="50", help="schedules to draw (50)")
    explore.add_argument("--seed", default="0", help="the search's seed (0)")
    explore.add_argument("--faults", default="", help="allow-list, comma-separated "
                         "(default kill_worker,kill_pool_child,pause_worker,crash_broker)")
    explore.add_argument("--max-faults", default="4", help="faults per schedule, at most (4)")
    explore.add_argument("--reruns", default="2", help="runs of a schedule, at most (2)")
    explore.add_argument("--min-fails", default="2",
                         help="failing runs that make a schedule fail (2)")
    explore.add_argument("--replays", default="3", help="replays of the minimal schedule (3)")
    explore.add_argument("--out", default=None,
                         help="output directory (default reports/explore/<timestamp>)")
    proxy = sub.add_parser("toxiproxy", help="run the Toxiproxy-compatible fault proxy")
    proxy.add_argument("--host", "-host", default="127.0.0.1",
                       help="listen address (default 127.0.0.1)")
    proxy.add_argument("--port", "-port", default="8474",
                       help="API port, 0 for any free port (8474)")
    proxy.add_argument("--config", "-config", default=None,
                       help="JSON file of proxies to create at start (Toxiproxy's -config)")
    from celery_chaos.runner.loadtest import add_arguments as add_load_arguments

    add_load_arguments(
        sub.add_parser("load", help="a Locust load test with optional faults, and its report")
    )
    from celery_chaos.runner.audit import add_arguments as add_audit_arguments

    audit = sub.add_parser(
        "audit", help="faults against your app's own configuration, and the fix that holds"
    )
    audit.error = _one_line_error  # type: ignore[method-assign]
    add_audit_arguments(audit)
    return parser


def pytest_paths(args: list[str]) -> list[str] | None:
    """The test paths (or node ids) named in ``args``, as pytest itself reads them.

    ``[]`` when pytest would fall back on the ini file's ``testpaths`` or the current
    directory; ``None`` when pytest cannot parse ``args`` (``pytest.main`` then reports it).

    Only pytest knows which options take a value: ``--chaos-workload w.yaml``, ``-k kill``,
    ``--chaos-reports DIR``, a plugin's or a conftest's own ``--env staging``, the
    ``--opt=value`` form, ``addopts`` and ``PYTEST_ADDOPTS``. So this builds the
    configuration ``pytest.main(args)`` would build (plugins, ini file, initial conftests and
    the options they add; ``_prepareconfig`` is what pytest-xdist calls for each worker),
    without configuring or running a session, and reads ``config.args_source``: ``ARGS``
    means the paths came from the command line; ``TESTPATHS``/``INVOCATION_DIR`` mean none
    did. Checking whether an argument exists on disk cannot tell a path from an option's
    value (``workload.yaml`` after ``--chaos-workload`` exists too).
    """
    import warnings

    import pytest
    from _pytest.config import _prepareconfig

    with warnings.catch_warnings():  # the real run issues pytest's config warnings
        warnings.simplefilter("ignore")
        try:
            config = _prepareconfig(list(args))
        except KeyboardInterrupt:
            raise
        except BaseException:  # noqa: BLE001 - a usage error, a conftest failing or calling
            return None  # pytest.exit(): the real run reports it
    try:
        if config.args_source is not pytest.Config.ArgsSource.ARGS:
            return []
        return list(config.args)  # [] after --help, which stops the parse
    finally:
        config._ensure_unconfigure()  # the assertion import hook, ini ``pythonpath``...


#: Makes the plugin exit 2 when the session ran no chaos scenario (a green run without chaos).
REQUIRE_SCENARIOS = "--chaos-require-scenarios"


def cmd_run(pytest_args: list[str]) -> int:
    """Run pytest with the plugin; default to the bundled ``scenarios/`` directory.

    The catalog is added only when :func:`pytest_paths` finds no test path in the arguments,
    and the session must run at least one scenario (:data:`REQUIRE_SCENARIOS`): pytest
    collecting the user's own tests, or ``-k`` matching nothing, is exit 2, never 0.
    """
    import pytest

    args = list(pytest_args)
    if args[:1] == ["--"]:
        args = args[1:]
    args, schedule = _take_option(args, "--schedule")
    spec_file: Path | None = None
    if schedule is not None:
        spec_file = _schedule_spec(Path(schedule))
        args = ["--chaos-spec-file", str(spec_file), *args, str(catalog_module())]
    elif pytest_paths(args) == []:  # None: a command line pytest rejects, as it will say
        here = Path("scenarios")
        args.append(str(here if here.is_dir() else catalog_module()))
    try:
        code = int(pytest.main([REQUIRE_SCENARIOS, *args]))  # first: `--` may end options
    finally:
        if spec_file is not None:
            spec_file.unlink(missing_ok=True)
    if code == 5:  # pytest.ExitCode.NO_TESTS_COLLECTED, the plugin not loaded to say more
        print(
            "celery-chaos: pytest collected no tests: pass a scenario file or directory "
            "(default scenarios/) and check -k/-m",
            file=sys.stderr,
        )
    return {0: 0, 1: 1}.get(code, 2)


def _one_line_error(message: str) -> None:
    """argparse's error, as one line and exit 2."""
    print(f"celery-chaos: {message}", file=sys.stderr)
    raise SystemExit(2)


def _int(value: str, option: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{option} {value!r}: not a whole number") from None


def cmd_explore(args: argparse.Namespace) -> int:
    """``celery-chaos explore``: see :mod:`celery_chaos.explore.search`."""
    from celery_chaos.deployment.app_loader import DEFAULT_APP
    from celery_chaos.explore.search import MINIMAL_FILE, Explorer
    from celery_chaos.explore.strategies import space_for
    from celery_chaos.load.workload import load_workload
    from celery_chaos.report.explorer import write_explorer_page
    from celery_chaos.results import new_run_dir
    from celery_chaos.runner.app import SAMPLE_WORKLOAD, AppUnderTest
    from celery_chaos.runner.catalog import get
    from celery_chaos.runner.loadtest import parse_duration
    from celery_chaos.spec.model import load_spec

    budget = parse_duration(args.budget, "--budget")
    if budget <= 0:
        raise UsageError(f"--budget {args.budget}: must be more than 0 seconds")
    seed = _int(args.seed, "--seed")
    ints = {o: _int(getattr(args, o.replace("-", "_")), f"--{o}")
            for o in ("max-examples", "max-faults", "reruns", "min-fails", "replays")}
    if not args.scenario and not args.spec:
        raise UsageError("explore needs --scenario NAME (a catalog scenario) or --spec FILE")
    base = get(args.scenario) if args.scenario else load_spec(args.spec)
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    space = space_for(base, faults, ints["max-faults"])
    app_spec = args.chaos_app or base.app or DEFAULT_APP
    if app_spec != DEFAULT_APP and not args.chaos_workload:
        raise UsageError(f"--chaos-app {app_spec} needs --chaos-workload FILE")
    app = AppUnderTest.resolve(app_spec, load_workload(args.chaos_workload or SAMPLE_WORKLOAD))
    if args.out:
        out = Path(args.out)
        if out.exists() and any(out.iterdir()):
            raise UsageError(f"--out {out} is not empty: an exploration never overwrites one")
    else:
        out = new_run_dir(Path("reports") / "explore")
    explorer = Explorer(
        base, app, out, space, budget_s=budget, max_examples=ints["max-examples"],
        seed=seed, reruns=ints["reruns"], min_fails=ints["min-fails"],
        replays=ints["replays"],
        say=lambda line: print(line, flush=True),
    )
    print(f"celery-chaos explore: {base.name}, faults {', '.join(space.faults)}, budget "
          f"{budget:.0f} s, seed {seed}; output in {out}", flush=True)
    result = explorer.run()
    page = write_explorer_page(out, result, MINIMAL_FILE)
    if result.minimal is not None:
        fails = sum(r.verdict.value == "invalid" for r in result.replays)
        print(f"celery-chaos explore: violation, shrunk to {len(result.minimal.schedule)} "
              f"fault(s); replays failed {fails} of {len(result.replays)}; "
              f"{out / MINIMAL_FILE}; report {page}", flush=True)
    else:
        print(f"celery-chaos explore: no violation in {len(result.examples)} example(s) "
              f"({result.stopped}); report {page}", flush=True)
    return result.exit_code


def catalog_module() -> Path:
    """The packaged catalog's pytest module (every shipped spec, or ``--chaos-spec-file``)."""
    import celery_chaos.catalog

    return Path(celery_chaos.catalog.__file__).resolve().parent / "test_catalog.py"


def _take_option(args: list[str], name: str) -> tuple[list[str], str | None]:
    """Remove ``name VALUE`` / ``name=VALUE`` from ``args``; return the rest and the value."""
    out: list[str] = []
    value: str | None = None
    it = iter(args)
    for arg in it:
        if arg == name:
            value = next(it, None)
            if value is None:
                raise UsageError(f"{name} needs a file: {name} FILE.json")
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
        else:
            out.append(arg)
    return out, value


def _schedule_spec(path: Path) -> Path:
    """Validate a schedule file (``{"spec": NAME | {...}, "schedule": [...]}``, or a whole
    spec) and write the spec it names, with that schedule, to a fresh file for the run."""
    import tempfile

    from celery_chaos.runner.catalog import get
    from celery_chaos.spec.model import parse_spec, read_data

    data = read_data(path)
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a schedule file is a JSON object with `spec` and `schedule`")
    if "spec" in data:
        base = data["spec"]
        spec_data = get(base).to_json() if isinstance(base, str) else base
        if not isinstance(spec_data, dict):
            raise UsageError(f"{path}: `spec` is a catalog scenario name or a spec object")
        if "schedule" in data:
            spec_data = {**spec_data, "schedule": data["schedule"]}
    else:
        spec_data = data
    spec = parse_spec(spec_data, str(path))
    fd, name = tempfile.mkstemp(prefix="celery-chaos-spec-", suffix=".json")
    with open(fd, "w") as fh:
        json.dump(spec.to_json(), fh)
    return Path(name)


def cmd_replay(target: str, pytest_args: list[str]) -> int:
    """Run a stored scenario again (its ``spec.json``) into a new run directory."""
    from celery_chaos.runner.run import SPEC_FILE
    from celery_chaos.spec.model import load_spec

    path = Path(target)
    spec_file = path / SPEC_FILE if path.is_dir() else path
    if not spec_file.is_file():
        raise UsageError(
            f"no {SPEC_FILE} in {path}: give a scenario directory of a run "
            "(RUN_DIR/scenarios/NAME) or a spec file"
        )
    spec = load_spec(spec_file)  # bad input: one line, exit 2, before anything starts
    args = ["--chaos-spec-file", str(spec_file.resolve())]
    if spec.app and "--chaos-app" not in " ".join(pytest_args):
        args += ["--chaos-app", spec.app]
    return cmd_run([*args, *pytest_args, str(catalog_module())])


def _scenario_dirs(path: Path) -> list[Path]:
    if (path / "scenarios").is_dir():
        return sorted(p for p in (path / "scenarios").iterdir() if (p / "history").is_dir())
    if (path / "history").is_dir():
        return [path]
    if any(path.glob("*.jsonl")):
        return [path.parent if path.name == "history" else path]
    raise UsageError(
        f"{path} holds no history: give a run directory, a scenario directory "
        "or a history/ directory"
    )


@dataclass
class _Declared:
    """What a scenario directory says about how its history is judged."""

    expect: str | None = "valid"  # None: an interrupted run that recorded no spec.json
    exactly_once: bool = False
    checkers: list[Any] = field(default_factory=list)
    kept: list[Any] = field(default_factory=list)  # recorded results that cannot be re-judged
    interrupted: bool = False  # a history, no result.json: the run was killed mid-way
    notes: list[str] = field(default_factory=list)


def _declared(sdir: Path, history: Any, exactly_once: bool) -> _Declared:
    """The declared verdict and checkers of a scenario: its ``result.json``; for a run that
    was interrupted (no ``result.json``, a ``spec.json`` or a scenario record in its history)
    its ``spec.json`` if it has one; for a bare history, ``valid`` and the queue invariant."""
    from pydantic import ValidationError

    from celery_chaos.checks.registry import UnknownChecker, rebuild
    from celery_chaos.history.schema import Kind
    from celery_chaos.results import ScenarioResult

    result_file = sdir / "result.json"
    if result_file.is_file():
        try:
            stored = ScenarioResult.model_validate_json(result_file.read_text())
            checkers = [rebuild(spec) for spec in stored.checkers]
            queue = stored.queue
        except (ValidationError, UnknownChecker) as exc:
            first = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else exc
            raise UsageError(f"{result_file} is not a scenario result: {first}") from None
        return _Declared(
            expect=stored.expect,
            exactly_once=exactly_once or (queue is not None and queue.exactly_once),
            checkers=checkers,
            kept=stored.invariants,
        )
    from celery_chaos.runner.run import SPEC_FILE  # celery, the deployment: 0.4 s of imports
    from celery_chaos.spec.model import load_spec

    spec_file = sdir / SPEC_FILE
    started = any(r.kind is Kind.SCENARIO and r.phase == "start" for r in history)
    if not spec_file.is_file():
        return _Declared(interrupted=started, expect=None if started else "valid",
                         exactly_once=exactly_once)
    spec = load_spec(spec_file)  # bad input: one line, exit 2
    out = _Declared(expect=spec.expect, interrupted=True,
                    exactly_once=exactly_once or spec.checks.exactly_once)
    for check in spec.checks.invariants:
        if "${" in json.dumps(check.params):
            out.notes.append(f"{check.checker}: not judged (its parameters name outputs of "
                             "steps the interrupted run may not have reached)")
            continue
        try:
            out.checkers.append(rebuild(check.model_dump(mode="json")))
        except UnknownChecker as exc:
            raise UsageError(f"{spec_file}: {exc}") from None
    return out


def cmd_analyze(path_str: str, exactly_once: bool, as_json: bool) -> int:
    """Re-check every history under ``path``; compare with what each scenario declared.

    A scenario whose run was interrupted (killed: a history but no ``result.json``) is
    ``unknown`` and never as declared (exit 2); a history with unreadable lines is never
    ``valid`` (:func:`celery_chaos.checks.verdict.check_complete`)."""
    from celery_chaos.checks.verdict import Verdict, check_history
    from celery_chaos.history.store import open_history
    from celery_chaos.results import exit_code_of

    path = Path(path_str)
    if not path.exists():
        raise UsageError(f"no such directory: {path}")
    outcomes: list[tuple[Verdict, Any]] = []
    interrupted = False
    out = []
    for sdir in _scenario_dirs(path):
        hist_dir = sdir / "history" if (sdir / "history").is_dir() else sdir
        try:
            history = open_history(hist_dir)  # streamed: memory flat in the history's size
        except ValueError as exc:
            raise UsageError(f"{hist_dir}: {exc}") from None
        declared = _declared(sdir, history, exactly_once)
        invariants = check_history(
            history, exactly_once=declared.exactly_once, extra=declared.checkers
        )
        # A checker stored without a spec (a custom function): its recorded result stands.
        judged = {i.name for i in invariants}
        invariants += [
            i.model_copy(update={"problems": [*i.problems, "(as recorded: not re-judged)"]})
            for i in declared.kept
            if i.name not in judged
        ]
        verdict = Verdict.combine(i.verdict for i in invariants)
        if declared.interrupted:  # the run did not finish: whatever the lines read say
            verdict = Verdict.UNKNOWN
            interrupted = True
        outcomes.append((verdict, declared.expect or "unknown"))
        out.append(
            {
                "scenario": sdir.name,
                "verdict": verdict.value,
                "expect": declared.expect,
                "as_declared": not declared.interrupted and verdict.value == declared.expect,
                "interrupted": declared.interrupted,
                "history": {
                    "records": len(history),
                    "files": len(history.files),
                    **history.skipped().model_dump(mode="json"),
                },
                "invariants": [i.model_dump(mode="json") for i in invariants],
                "notes": declared.notes,
            }
        )
    if as_json:
        print(json.dumps(out, indent=2))
    else:
        for item in out:
            _print_analyzed(item)
    return exit_code_of(outcomes, infra_error=interrupted)


def _print_analyzed(item: dict[str, Any]) -> None:
    """One scenario of ``analyze``'s text output."""
    from celery_chaos.history.store import SkippedLines

    declared = f"declared {item['expect'] or 'nothing: no spec.json'}"
    if item["interrupted"]:
        print(f"INT {item['scenario']}: unknown (interrupted: the run did not finish, no "
              f"result.json; {declared})")
    else:
        mark = "ok " if item["as_declared"] else "BAD"
        print(f"{mark} {item['scenario']}: {item['verdict']} ({declared})")
    hist = item["history"]
    skipped = SkippedLines.model_validate({k: v for k, v in hist.items()
                                           if k in SkippedLines.model_fields})
    print(f"      history: {hist['records']} records in {hist['files']} files; "
          f"{skipped.describe()}")
    for inv in item["invariants"]:
        for problem in inv["problems"]:
            print(f"      {inv['name']}: {problem}")
    for note in item["notes"]:
        print(f"      {note}")


def cmd_audit(args: argparse.Namespace, argv: list[str]) -> int:
    """``celery-chaos audit``: see :mod:`celery_chaos.runner.audit`."""
    from celery_chaos.runner.audit import main as audit_main

    args.argv = argv
    return audit_main(args)


def cmd_load(args: argparse.Namespace, argv: list[str]) -> int:
    """``celery-chaos load``: see :mod:`celery_chaos.runner.loadtest`."""
    from celery_chaos.runner.loadtest import main as load_main

    args.argv = argv
    return load_main(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``celery-chaos`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if argv[:1] in (["run"], ["replay"]):  # the rest belongs to pytest, --help included
        try:
            if argv[0] == "replay":
                if len(argv) < 2 or argv[1].startswith("-"):
                    raise UsageError("replay needs a scenario directory: "
                                     "celery-chaos replay RUN_DIR/scenarios/NAME")
                return cmd_replay(argv[1], argv[2:])
            return cmd_run(argv[1:])
        except ChaosError as exc:
            print(f"celery-chaos: {exc}", file=sys.stderr)
            return exc.exit_code
    args = parser.parse_args(argv)
    try:
        if args.command == "analyze":
            return cmd_analyze(args.path, args.exactly_once, args.json)
        if args.command == "load":
            return cmd_load(args, argv[1:])
        if args.command == "audit":
            return cmd_audit(args, argv[1:])
        if args.command == "explore":
            return cmd_explore(args)
        if args.command == "toxiproxy":  # the same entry as `python -m celery_chaos.faults.proxy`
            from celery_chaos.faults.proxy.__main__ import main as proxy_main

            return proxy_main(argv[1:])
    except ChaosError as exc:
        print(f"celery-chaos: {exc}", file=sys.stderr)
        return exc.exit_code
    except (OSError, ValueError) as exc:
        print(f"celery-chaos: {exc}", file=sys.stderr)
        return 2
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
