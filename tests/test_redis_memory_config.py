"""``broker_config`` on a Redis broker: redis-server options for the scenario's own server."""

from __future__ import annotations

from pathlib import Path

import pytest

from celery_chaos.backends.compose import unsupported
from celery_chaos.backends.local import LocalBackend, SharedBrokers
from celery_chaos.deployment.brokers import RedisServer, redis_config_args
from celery_chaos.errors import UsageError
from celery_chaos.spec.model import DeploymentSpec, load_spec

MEMORY = {"maxmemory": "2mb", "maxmemory-policy": "allkeys-lru"}


def test_redis_broker_config_needs_no_group() -> None:
    """Every Redis broker is the scenario's own server: no broker_group is needed."""
    spec = DeploymentSpec(broker="redis", broker_config=MEMORY)
    assert spec.broker_group == "shared" and spec.broker_config == MEMORY


@pytest.mark.parametrize("key", ["port", "dir", "appendonly", "save", "requirepass"])
def test_options_the_harness_sets_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match=f"{key} are set by the harness"):
        DeploymentSpec(broker="redis", broker_config={key: "x"})


@pytest.mark.parametrize("key", ["max memory", "MaxMemory", "--maxmemory", "maxmemory\n"])
def test_a_key_that_is_no_option_name_is_refused(key: str) -> None:
    with pytest.raises(ValueError, match="not a Redis option name"):
        DeploymentSpec(broker="redis", broker_config={key: "2mb"})


def test_a_bad_spec_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("name: x\ndeployment: {broker: redis, broker_config: {port: '1'}}\n")
    with pytest.raises(UsageError) as err:
        load_spec(path)
    assert "\n" not in str(err.value) and "set by the harness" in str(err.value)


def test_config_args() -> None:
    assert redis_config_args(MEMORY) == ["--maxmemory", "2mb", "--maxmemory-policy",
                                         "allkeys-lru"]
    assert redis_config_args({}) == []
    with pytest.raises(ValueError, match="bind, port are set by the harness"):
        redis_config_args({"port": "1", "bind": "0.0.0.0"})


def test_the_local_backend_starts_the_scenario_redis_with_its_config(tmp_path: Path) -> None:
    """The options reach the running server (CONFIG GET), which holds the broker and results."""
    backend = LocalBackend(tmp_path, ["default"], SharedBrokers(tmp_path))
    backend.start_broker_node("redis", name="memory", config=MEMORY)
    server = backend.broker
    try:
        assert isinstance(server, RedisServer) and backend.own_broker
        with server.client() as client:
            got = client.config_get("maxmemory*")
        assert got["maxmemory"] == str(2 * 1024 * 1024)
        assert got["maxmemory-policy"] == "allkeys-lru"
        assert backend.broker_url == server.url(0) and backend.backend_url == server.url(1)
    finally:
        server.stop()


def test_compose_says_why_it_cannot_run_it() -> None:
    reason = unsupported(DeploymentSpec(broker="redis", broker_config=MEMORY))
    assert reason is not None and "Redis" in reason and "broker_config" in reason
    assert unsupported(DeploymentSpec(broker="redis")) is None
