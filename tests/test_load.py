"""The load generator: publish outcomes, and the locustfile run standalone as a user would."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from kombu.exceptions import EncodeError, OperationalError

from celery_chaos.deployment.brokers import RedisServer
from celery_chaos.history.schema import Kind
from celery_chaos.history.store import read_history
from celery_chaos.load.publisher import classify_publish_error

ROOT = Path(__file__).resolve().parent.parent


def _chained(outer: Exception, inner: BaseException) -> Exception:
    outer.__cause__ = inner
    return outer


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), Kind.FAIL),
        (_chained(OperationalError("x"), ConnectionRefusedError()), Kind.FAIL),
        (EncodeError("cannot serialize"), Kind.FAIL),
        (TimeoutError("timed out"), Kind.INFO),
        (ConnectionResetError(errno.ECONNRESET, "reset"), Kind.INFO),
        (OperationalError("Connection lost mid-publish"), Kind.INFO),
    ],
)
def test_publish_outcome_classification(exc: BaseException, kind: Kind) -> None:
    assert classify_publish_error(exc) is kind


@pytest.mark.parametrize(
    ("app", "workload", "extra_env"),
    [
        ("tests.userapp.app:app", "tests/userapp/workload.yaml", {}),
        # The README's example: the sample workload's placeholders come from the environment.
        (
            "celery_chaos.sample_app.app:app",
            "sample_app/workload.yaml",
            {
                "CHAOS_HTTP_BASE": "http://127.0.0.1:9",
                "CHAOS_SMTP_HOST": "127.0.0.1",
                "CHAOS_SMTP_PORT": "9",
            },
        ),
    ],
)
def test_locustfile_runs_standalone(
    tmp_path: Path, app: str, workload: str, extra_env: dict[str, str]
) -> None:
    redis = RedisServer(tmp_path).start()
    try:
        hist = tmp_path / "history"
        env = {
            **os.environ,
            **extra_env,
            "CHAOS_APP": app,
            "CHAOS_BROKER_URL": redis.url(0),
            "CHAOS_RESULT_BACKEND": redis.url(1),
            "CHAOS_HISTORY_DIR": str(hist),
            "PYTHONPATH": str(ROOT),
        }
        cmd = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(ROOT / "harness" / "load" / "locustfile.py"),
            "--headless",
            "-u",
            "3",
            "-r",
            "3",
            "-t",
            "30s",
            "--only-summary",
            "--chaos-workload",
            str(ROOT / workload),
            "--chaos-tasks",
            "25",
            "--chaos-rate",
            "100",
            "--json-file",
            str(tmp_path / "stats"),
        ]
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=90)
        assert proc.returncode == 0, proc.stderr[-2000:]
        records = read_history(hist).records
        kinds = Counter(r.kind for r in records)
        assert kinds[Kind.INVOKE] == 25 and kinds[Kind.OK] == 25
        text = " ".join(f"{r.args} {r.kwargs}" for r in records if r.kind is Kind.INVOKE)
        # Every placeholder filled in.
        assert not any(f"{{{k}}}" in text for k in ("http_base", "smtp_host", "smtp_port")), text
        stats = json.loads((tmp_path / "stats.json").read_text())
        assert sum(e["num_requests"] for e in stats) == 25
        with redis.client(0) as client:  # the messages really are on the broker
            lists = [k for k in client.keys() if client.type(k) in (b"list", "list")]
            assert sum(client.llen(k) for k in lists) == 25
    finally:
        redis.stop()
