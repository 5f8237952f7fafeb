"""The harness points any app at its own deployment, whatever the app's own config says."""

from __future__ import annotations

import json

import pytest

from celery_chaos.deployment.app_loader import app_from_env, apply_harness_config, load_app
from celery_chaos.errors import UsageError


def test_user_app_broker_and_backend_are_overridden() -> None:
    app = load_app("tests.userapp.app:app")
    assert "rabbitmq.internal.example" in app.conf.broker_url
    env = {
        "CHAOS_APP": "tests.userapp.app:app",
        "CHAOS_BROKER_URL": "amqp://guest:guest@127.0.0.1:5999/v1",
        "CHAOS_RESULT_BACKEND": "redis://127.0.0.1:6999/1",
        "CHAOS_CONF": json.dumps(
            {"task_acks_late": True, "broker_transport_options": {"confirm_publish": True}}
        ),
    }
    app = app_from_env(env)
    assert app.conf.broker_url == "amqp://guest:guest@127.0.0.1:5999/v1"
    assert app.conf.result_backend == "redis://127.0.0.1:6999/1"
    assert app.conf.task_acks_late is True
    assert app.conf.broker_transport_options["confirm_publish"] is True
    # The app's own routing survives.
    assert app.conf.task_routes["userapp.resize_image"] == {"queue": "images"}


def test_transport_options_are_merged_not_replaced() -> None:
    app = load_app("tests.userapp.app:app")
    app.conf.broker_transport_options = {"visibility_timeout": 100, "keep": 1}
    apply_harness_config(
        app,
        broker_url=None,
        result_backend=None,
        settings={"broker_transport_options": {"visibility_timeout": 5}},
    )
    assert app.conf.broker_transport_options == {"visibility_timeout": 5, "keep": 1}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "bad app path"),
        ("no_such_module_xyz:app", "cannot import"),
        ("tests.userapp.app:nope", "has no attribute"),
        ("tests.userapp.app:resize_image", "not a Celery app"),
    ],
)
def test_bad_app_paths_give_one_line_errors(spec: str, message: str) -> None:
    with pytest.raises(UsageError) as err:
        load_app(spec)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_chaos_conf_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="CHAOS_CONF"):
        app_from_env({"CHAOS_APP": "tests.userapp.app:app", "CHAOS_CONF": "{nope"})


def test_an_app_that_fails_on_import_is_a_usage_error(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sample app rejects a bad boolean at import time; so may a user's module.
    monkeypatch.setenv("SAMPLE_ACKS_LATE", "maybe")
    monkeypatch.delitem(__import__("sys").modules, "celery_chaos.sample_app.app", raising=False)
    with pytest.raises(UsageError, match="SAMPLE_ACKS_LATE='maybe' is not a boolean") as err:
        load_app("celery_chaos.sample_app.app:app")
    assert "\n" not in str(err.value)
    (tmp_path / "factory_mod.py").write_text("def make():\n    raise RuntimeError('no config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UsageError, match="app factory .* failed: RuntimeError: no config"):
        load_app("factory_mod:make")


def test_an_app_in_the_current_directory_is_found_without_pythonpath(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A console script puts its bin/ on sys.path, not the current directory: load_app does."""
    import sys

    (tmp_path / "cwd_shop_tasks.py").write_text(
        "from celery import Celery\n\napp = Celery('shop')\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "cwd_shop_tasks", raising=False)
    assert load_app("cwd_shop_tasks:app").main == "shop"
    assert sys.path[0] == str(tmp_path)
    load_app("cwd_shop_tasks:app")  # once only
    assert sys.path.count(str(tmp_path)) == 1
    sys.modules.pop("cwd_shop_tasks", None)
