"""``celery-chaos load``: ``--fault`` parsed into steps of the fault vocabulary, the options
as a scenario spec, a schedule whose pause never delays the next fault (a fake deployment),
a local run with a fault and Locust's ``--processes`` (one history, one report), and a
publish-only run against an existing deployment."""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from celery_chaos.deployment.brokers import RedisServer
from celery_chaos.errors import UsageError
from celery_chaos.faults.schedule import ScheduleRun, Trigger
from celery_chaos.faults.vocabulary import (
    CrashBroker,
    KillPoolChild,
    KillWorker,
    PausePoolChild,
    PauseWorker,
    StartWorker,
    StopBroker,
    StopConsuming,
)
from celery_chaos.history.store import HistoryWriter
from celery_chaos.results import RunVerdict, ScenarioResult
from celery_chaos.runner.loadtest import (
    add_arguments,
    parse_duration,
    parse_fault,
    run_schedule,
    scenario_spec,
    validate,
)
from celery_chaos.spec.model import ScenarioSpec, load_spec

ROOT = Path(__file__).resolve().parent.parent


def _cli(*argv: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery_chaos.cli", "load", *argv],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_each_fault_name_parses_into_a_step_of_the_vocabulary() -> None:
    step = parse_fault("kill-worker:w1@10s")
    assert step.when == Trigger(at=10) and step.do == KillWorker(worker="w1")
    assert step.duration is None
    step = parse_fault("pause-worker:w2@1m5s+2.5s")
    assert isinstance(step.do, PauseWorker) and step.do.worker == "w2@chaos"
    assert (step.when.at, step.duration) == (65.0, 2.5)
    assert parse_fault("kill-child:w1@3s").do == KillPoolChild(worker="w1@chaos")
    assert parse_fault("restart-worker:w1@4s").do == StartWorker(worker="w1")
    step = parse_fault("crash-broker@10s+2s")
    assert step.do == CrashBroker() and (step.when.at, step.duration) == (10.0, 2.0)
    assert parse_fault("crash-broker@10s").duration is None  # restarted at once
    # The op names of the vocabulary (and their hyphenated spelling) work too.
    assert parse_fault("kill_worker:w1@10s") == parse_fault("kill-worker:w1@10s")
    assert parse_fault("kill_pool_child:w1@3s").do == KillPoolChild(worker="w1")
    assert parse_fault("pause_worker:w2@5s+3s").duration == 3.0
    assert parse_fault("stop-broker@1s+2s").do == StopBroker()
    assert parse_fault("stop_consuming@2s").do == StopConsuming()
    assert parse_fault("stop_consuming:w2@2s").do == StopConsuming(nodes=["w2"])
    assert parse_fault("pause_pool_child:w1@1s").do == PausePoolChild(worker="w1")
    assert parse_duration("500ms") == 0.5 and parse_duration("90") == 90.0


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("kill-worker@3s", "needs a worker: kill-worker:w1@3s"),
        ("explode:w1@3s", "use one of kill-worker, kill-child"),
        ("partition@5s+3s", "kill_worker, kill_pool_child"),  # needs proxies: not here
        ("kill-worker:w1", "use NAME[:TARGET]@AT[+DURATION]"),
        ("pause-worker:w1@3s", "needs +DURATION"),
        ("pause_worker:w1@3s+0s", "needs +DURATION"),
        ("crash-broker:w1@3s", "takes no target"),
        ("kill-worker:w1@3s+2s", "instantaneous"),
        ("kill-worker:w1@3x", "bad fault time"),
    ],
)
def test_bad_fault_is_one_line(bad: str, says: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_fault(bad)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_options_become_a_scenario_spec() -> None:
    args = _args("--broker", "redis", "--workers", "3", "--concurrency", "4", "--users", "2",
                 "--rate", "8", "--duration", "20s", "--seed", "7", "--drain-timeout", "30s",
                 "--setting", "task_acks_late=true", "--env", "SAMPLE_X=1",
                 "--fault", "kill-worker:w3@10s", "--fault", "pause-worker:w1@2s+3s")
    opts = validate(args)
    spec = scenario_spec(args, opts, "d")
    dep = spec.deployment
    assert (dep.broker, dep.workers, dep.concurrency, dep.pool) == ("redis", 3, 4, "prefork")
    assert dep.settings == {"task_acks_late": True} and dep.env == {"SAMPLE_X": "1"}
    assert spec.load is not None
    assert (spec.load.users, spec.load.rate, spec.load.duration, spec.load.seed) == (2, 8, 20, 7)
    assert spec.checks.drain_timeout == 30.0
    # In time order, each with its --fault text for the printed lines.
    assert [s.do.op for s in spec.schedule.steps] == ["pause_worker", "kill_worker"]
    assert opts.fault_texts == {"fault1": "pause-worker:w1@2s+3s", "fault2": "kill-worker:w3@10s"}
    again = ScenarioSpec.model_validate(spec.to_json())  # what spec.json replays
    assert again.schedule.dump() == spec.schedule.dump()


def test_a_worker_the_deployment_lacks_is_refused_by_the_spec() -> None:
    args = _args("--workers", "2", "--fault", "kill-worker:w3@1s")
    with pytest.raises(UsageError, match="names worker 'w3@chaos'.*w1@chaos, w2@chaos"):
        scenario_spec(args, validate(args))
    # start_worker adds a new worker, which a later fault may then name.
    args = _args("--workers", "2", "--fault", "restart-worker:w3@1s",
                 "--fault", "kill-worker:w3@2s")
    assert len(scenario_spec(args, validate(args)).schedule.steps) == 2


class FakeDeployment:
    """The few Deployment methods worker faults call: signals are recorded with their time."""

    broker_kind = "redis"

    def __init__(self, history: Path) -> None:
        self.writer = HistoryWriter(history, "harness", "harness")
        self.signals: list[tuple[float, str, str]] = []
        self.t0 = time.monotonic()

    def worker_pid(self, name: str) -> int:
        return 4242

    def signal_worker(self, name: str, sig: int, *, wait_exit: float | None = None) -> None:
        self.signals.append((time.monotonic() - self.t0, name, signal.Signals(sig).name))

    def running_on(self, name: str, until_ns: int | None = None) -> dict[str, Any]:
        return {}


def test_a_pause_never_delays_the_next_fault(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    args = _args("--duration", "10s", "--fault", "pause-worker:w2@1s+3s",
                 "--fault", "kill-worker:w1@2s")
    opts = validate(args)
    spec = scenario_spec(args, opts)
    dep = FakeDeployment(tmp_path)
    windows = run_schedule(ScheduleRun(spec.schedule, dep), opts.fault_texts)  # type: ignore[arg-type]
    at = {(name, sig): t for t, name, sig in dep.signals}
    assert 1.0 <= at["w2@chaos", "SIGSTOP"] < 1.5
    assert 2.0 <= at["w1@chaos", "SIGKILL"] < 2.5  # while w2 is still paused
    assert 4.0 <= at["w2@chaos", "SIGCONT"] < 4.5
    assert windows["fault1"].detail["pid"] == 4242
    out = capsys.readouterr().out
    assert re.search(r"fault pause-worker:w2@1s\+3s at 1\.\ds", out), out
    assert re.search(r"fault kill-worker:w1@2s at 2\.\ds", out), out
    assert re.search(r"fault pause-worker:w2@1s\+3s ended at 4\.\ds", out), out
    faults = [json.loads(line) for f in tmp_path.glob("harness-*.jsonl") for line in f.open()]
    assert [(r["name"], r["phase"]) for r in faults] == [
        ("pause_worker", "start"), ("kill_worker", "start"), ("kill_worker", "end"),
        ("pause_worker", "end"),
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["--duration", "soon"],
        ["--fault", "kill-worker:w9@1s"],
        ["--fault", "kill-worker:w1@40s", "--duration", "10s"],
        ["--users", "0"],
        ["--broker-url", "redis://127.0.0.1:1/0", "--fault", "kill-worker:w1@1s"],
        ["--broker-url", "redis://127.0.0.1:1/0"],  # the default workload needs local services
        ["--app", "no_such_module:app"],
    ],
)
def test_bad_input_is_one_line_exit_2(argv: list[str], tmp_path: Path) -> None:
    proc = _cli(*argv, "--reports", str(tmp_path / "r"), timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


@pytest.mark.slow
def test_local_load_with_a_fault_and_two_locust_processes(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    proc = _cli(
        "--users", "4", "--spawn-rate", "4", "--duration", "6s", "--rate", "16",
        "--broker", "redis", "--workers", "2", "--processes", "2",
        "--fault", "kill-child:w1@3s",
        "--setting", "task_acks_late=true", "--setting", "task_reject_on_worker_lost=true",
        "--env", "SAMPLE_EMAIL_SEND_SECONDS=0.3", "--reports", str(reports),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"fault kill-child:w1@3s at 3\.\ds", proc.stdout), proc.stdout
    # live figures every 5 s: the phase, publishes, completions, queue depth, open faults
    assert re.search(r"^celery-chaos: \[ +\d+ s\] load: .*; published \d+ \(\d+ acknowledged\), "
                     r"completed \d+", proc.stdout, re.M), proc.stdout
    (run_dir,) = [p for p in reports.iterdir() if p.name[0].isdigit()]
    verdict = json.loads((run_dir / "verdict.json").read_text())
    assert verdict["kind"] == "load" and verdict["verdict"] == "valid"
    spec = load_spec(run_dir / "scenarios" / "load" / "spec.json")  # for celery-chaos replay
    assert [s.do for s in spec.schedule.steps] == [KillPoolChild(worker="w1")]
    assert spec.load is not None and spec.load.rate == 16
    assert spec.app == "celery_chaos.sample_app.app:app"
    assert verdict["command"].startswith("celery-chaos load --users 4")
    (scenario,) = verdict["scenarios"]
    assert scenario["faults"] == ["kill_pool_child"]
    assert scenario["deployment"]["settings"]["acks_late"] is True
    queue = ScenarioResult.model_validate(scenario).queue
    assert queue is not None and queue.counts.lost == 0 and queue.counts.acknowledged > 20
    history = run_dir / "scenarios" / "load" / "history"
    publishers = sorted(history.glob("publisher-*.jsonl"))
    assert len(publishers) == 2, publishers  # two Locust processes, one history
    html = (run_dir / "index.html").read_text()
    assert "kill_pool_child" in html and "Locust's own HTML report" in html
    assert (run_dir / "junit.xml").is_file()
    assert run_dir.name in (reports / "index.html").read_text()


def test_existing_deployment_is_publish_only(tmp_path: Path) -> None:
    workload = tmp_path / "workload.yaml"
    workload.write_text(
        "- name: celery_chaos.sample_app.tasks.generate_report\n"
        "  args: [1]\n  queue: reports\n  weight: 1\n"
    )
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        proc = _cli(
            "--broker-url", redis.url(0), "--result-backend", redis.url(1),
            "--users", "2", "--duration", "3s", "--rate", "20", "--workload", str(workload),
            "--reports", str(tmp_path / "reports"),
        )
    finally:
        redis.stop()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run_dir,) = [p for p in (tmp_path / "reports").iterdir() if p.name[0].isdigit()]
    verdict = json.loads((run_dir / "verdict.json").read_text())
    (scenario,) = verdict["scenarios"]
    assert scenario["expect"] == "unknown" and scenario["verdict"] == "unknown"
    assert scenario["deployment"]["existing"] is True and scenario["faults"] == []
    assert "no drain" in verdict["notes"][0]
    files = {p.name.split("-")[0] for p in (run_dir / "scenarios/load/history").iterdir()}
    assert files == {"harness", "publisher"}
    depths = [
        json.loads(line)["detail"].get("ready", {}).get("reports", 0)
        for line in next((run_dir / "scenarios/load/history").glob("harness-*")).open()
        if '"queue_depth"' in line
    ]
    assert max(depths) > 0  # nobody consumes: the sampler saw the queue grow
    assert "PUBLISH SIDE ONLY" in (run_dir / "index.html").read_text()


@pytest.mark.slow
def test_master_with_a_worker_started_from_the_printed_script(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    master = subprocess.Popen(
        [sys.executable, "-m", "celery_chaos.cli", "load", "--users", "2", "--duration", "4s",
         "--rate", "10", "--broker", "redis", "--workers", "1", "--master",
         "--expect-workers", "1", "--reports", str(reports)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert master.stdout is not None
        script = ""
        for line in master.stdout:
            m = re.search(r"with: sh (\S+locust-worker\.sh)", line)
            if m:
                script = m.group(1)
                break
        assert script, "the master never printed the worker script"
        worker = subprocess.run(["sh", script], cwd=ROOT, capture_output=True, text=True,
                                timeout=120)
        assert worker.returncode == 0, worker.stderr[-500:]
        out = master.stdout.read()
        assert master.wait(120) == 0, out
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()
    (run_dir,) = [p.parent for p in reports.glob("*/verdict.json")]
    history = run_dir / "scenarios" / "load" / "history"
    assert len(list(history.glob("publisher-*.jsonl"))) == 1  # the worker's, in this history
    run = RunVerdict.model_validate_json((run_dir / "verdict.json").read_text())
    queue = run.scenarios[0].queue
    assert queue is not None and 20 <= queue.counts.acknowledged <= 60 and queue.counts.lost == 0


def test_a_drain_that_ran_out_says_why_and_what_to_change(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from celery_chaos.runner.loadtest import drain_advice

    def result(drain: str, pending: int, completed: int) -> SimpleNamespace:
        queue = SimpleNamespace(drain=drain, pending=[f"t{i}" for i in range(pending)],
                                counts=SimpleNamespace(completed=completed))
        return SimpleNamespace(queue=queue)

    assert drain_advice(result("complete", 0, 100), 20, 60, tmp_path) == ""
    slow = drain_advice(result("incomplete", 1500, 800), 20, 60, tmp_path)
    assert "1500 acknowledged tasks not completed" in slow
    assert "~10.0 tasks/s" in slow and "~150 s more" in slow
    assert "--drain-timeout" in slow and "--workers" in slow and "--rate" in slow
    stuck = drain_advice(result("incomplete", 5, 0), 20, 60, tmp_path)
    assert "no task completing" in stuck and str(tmp_path) in stuck
    assert "\n" not in slow + stuck
