"""The ``celery-chaos`` command.

- ``celery-chaos run [PYTEST ARGS...]``: run scenarios (default ``scenarios/``), writing a
  run directory under ``reports/``.
- ``celery-chaos analyze RUN_DIR|HISTORY_DIR``: re-judge stored histories.
- ``celery-chaos toxiproxy [--host H] [--port P]``: the Toxiproxy-compatible fault proxy.
- ``celery-chaos load --users N --spawn-rate R --duration T [--fault SPEC ...]``: a load
  test with an optional fault schedule, writing the same report (docs/report.md).

Exit codes: 0 every invariant held (or every scenario ended as declared), 1 a
violation, 2 a usage or infrastructure error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.errors import ChaosError, UsageError


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
    analyze = sub.add_parser("analyze", help="re-judge the stored history of a run")
    analyze.add_argument("path", help="a run directory, a scenario directory or a history/ dir")
    analyze.add_argument(
        "--exactly-once", action="store_true", help="count duplicates as violations"
    )
    analyze.add_argument("--json", action="store_true", help="print the results as JSON")
    proxy = sub.add_parser("toxiproxy", help="run the Toxiproxy-compatible fault proxy")
    proxy.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    proxy.add_argument("--port", default="8474", help="API port, 0 for any free port (8474)")
    from harness.load.command import add_arguments as add_load_arguments

    add_load_arguments(
        sub.add_parser("load", help="a Locust load test with optional faults, and its report")
    )
    return parser


def cmd_run(pytest_args: list[str]) -> int:
    """Run pytest with the plugin; default to the bundled ``scenarios/`` directory."""
    import pytest

    args = list(pytest_args)
    if args[:1] == ["--"]:
        args = args[1:]
    # Option values (`-k kill`, `--chaos-app pkg:app`) are not paths: look for a real one.
    if not any(Path(a.split("::")[0]).exists() for a in args if not a.startswith("-")):
        bundled = Path(__file__).resolve().parent.parent / "scenarios"  # a checkout's
        default = next((d for d in (Path("scenarios"), bundled) if d.is_dir()), None)
        if default is None:
            raise UsageError(
                "no scenarios/ directory here: pass a path, e.g. "
                "`celery-chaos run path/to/scenarios`"
            )
        args.append(str(default))
    code = int(pytest.main(args))
    return {0: 0, 1: 1}.get(code, 2)


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


def cmd_analyze(path_str: str, exactly_once: bool, as_json: bool) -> int:
    """Re-check every history under ``path``; compare with what each scenario declared."""
    from pydantic import ValidationError

    from harness.checks.registry import UnknownChecker, rebuild
    from harness.checks.verdict import Verdict, check_history
    from harness.history.store import read_history
    from harness.report.results import ScenarioResult

    path = Path(path_str)
    if not path.exists():
        raise UsageError(f"no such directory: {path}")
    code = 0
    out = []
    for sdir in _scenario_dirs(path):
        hist_dir = sdir / "history" if (sdir / "history").is_dir() else sdir
        try:
            history = read_history(hist_dir)
        except ValueError as exc:
            raise UsageError(f"{hist_dir}: {exc}") from None
        expect = "valid"
        declared_once = exactly_once
        extra = []
        kept = []
        result_file = sdir / "result.json"
        if result_file.is_file():
            try:
                stored = ScenarioResult.model_validate_json(result_file.read_text())
                extra = [rebuild(spec) for spec in stored.checkers]
            except (ValidationError, UnknownChecker) as exc:
                first = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else exc
                raise UsageError(f"{result_file} is not a scenario result: {first}") from None
            expect = stored.expect
            declared_once = exactly_once or any(
                i.summary.get("exactly_once") for i in stored.invariants
            )
            kept = stored.invariants
        invariants = check_history(history, exactly_once=declared_once, extra=extra)
        # A checker stored without a spec (a custom function): its recorded result stands.
        judged = {i.name for i in invariants}
        invariants += [
            i.model_copy(update={"problems": [*i.problems, "(as recorded: not re-judged)"]})
            for i in kept
            if i.name not in judged
        ]
        verdict = Verdict.combine(i.verdict for i in invariants)
        as_declared = verdict.value == expect
        if not as_declared:
            code = max(code, 2 if verdict is Verdict.UNKNOWN else 1)
        out.append(
            {
                "scenario": sdir.name,
                "verdict": verdict.value,
                "expect": expect,
                "as_declared": as_declared,
                "invariants": [i.model_dump(mode="json") for i in invariants],
            }
        )
    if as_json:
        print(json.dumps(out, indent=2))
    else:
        for item in out:
            mark = "ok " if item["as_declared"] else "BAD"
            print(f"{mark} {item['scenario']}: {item['verdict']} (declared {item['expect']})")
            for inv in item["invariants"]:
                for problem in inv["problems"]:
                    print(f"      {inv['name']}: {problem}")
    return code


def cmd_load(args: argparse.Namespace, argv: list[str]) -> int:
    """``celery-chaos load``: see :mod:`harness.load.command`."""
    from harness.load.command import main as load_main

    args.argv = argv
    return load_main(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``celery-chaos`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if argv[:1] == ["run"]:  # everything after `run` belongs to pytest, --help included
        try:
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
        if args.command == "toxiproxy":  # the same entry as `python -m harness.faults.proxy`
            from harness.faults.proxy.__main__ import main as proxy_main

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
