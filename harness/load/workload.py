"""Workload files: which tasks the load generator publishes, and in what mix.

A workload is YAML (or JSON): a list of entries, or a mapping with a ``tasks``
list. Each entry is ``{name, args, kwargs, queue (optional), weight}``. Strings
may hold placeholders such as ``{http_base}`` that the harness fills in with
the addresses of the services it started.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from celery_chaos.errors import UsageError


class TaskSpec(BaseModel):
    """One kind of task in the mix."""

    model_config = ConfigDict(extra="forbid")

    name: str
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    queue: str | None = None
    weight: float = Field(default=1.0, gt=0)


class Workload(BaseModel):
    """A weighted mix of tasks."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskSpec] = Field(min_length=1)

    def render(self, values: dict[str, Any]) -> Workload:
        """Fill ``{placeholder}`` strings with ``values``; unknown placeholders are an error."""
        return Workload.model_validate(_render(self.model_dump(), values))

    def chooser(self, seed: int | None = None) -> WeightedChooser:
        """A seeded weighted chooser over the entries."""
        return WeightedChooser(self.tasks, seed)

    @property
    def queues(self) -> list[str]:
        """The queues named by the entries (in order, without repeats)."""
        return list(dict.fromkeys(t.queue for t in self.tasks if t.queue))


class WeightedChooser:
    """Picks entries by weight with its own seeded RNG."""

    def __init__(self, tasks: list[TaskSpec], seed: int | None) -> None:
        self.tasks = tasks
        self.weights = [t.weight for t in tasks]
        self.rng = random.Random(seed)

    def __call__(self) -> TaskSpec:
        return self.rng.choices(self.tasks, weights=self.weights, k=1)[0]


def _render(value: Any, values: dict[str, Any]) -> Any:
    if isinstance(value, str):
        fields = [f for _, f, _, _ in string.Formatter().parse(value) if f]
        missing = [f for f in fields if f not in values]
        if missing:
            raise UsageError(
                f"workload placeholder {{{missing[0]}}} is unknown; known: "
                + ", ".join(sorted(values))
            )
        return value.format(**values) if fields else value
    if isinstance(value, list):
        return [_render(v, values) for v in value]
    if isinstance(value, dict):
        return {k: _render(v, values) for k, v in value.items()}
    return value


def parse_workload(data: Any, source: str = "workload") -> Workload:
    """Validate already-loaded YAML/JSON data as a workload."""
    if isinstance(data, list):
        data = {"tasks": data}
    try:
        return Workload.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UsageError(f"{source}: {where}: {first['msg']}") from exc


def load_workload(path: str | Path) -> Workload:
    """Read a workload file, with a one-line error for anything wrong."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read workload file {p}: {exc.strerror}") from exc
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        line = str(exc).splitlines()[0]
        raise UsageError(f"workload file {p} is not valid YAML/JSON: {line}") from exc
    return parse_workload(data, str(p))
