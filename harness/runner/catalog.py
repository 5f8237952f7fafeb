"""The catalog of shipped scenarios: every spec of ``harness/catalog/*.yaml``.

Each file is one family (``worker_kill.yaml``...) holding a list of specs. Names are unique
across the catalog; ``pytest scenarios/`` and ``celery-chaos run`` parametrize over them.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

from celery_chaos.errors import UsageError
from celery_chaos.spec.model import ScenarioSpec, parse_spec, read_data

CATALOG_PACKAGE = "celery_chaos.catalog"


def catalog_dir() -> Path:
    """Where the shipped YAML files are."""
    return Path(str(resources.files(CATALOG_PACKAGE)))


@cache
def _load() -> tuple[tuple[str, tuple[ScenarioSpec, ...]], ...]:
    families = []
    names: dict[str, str] = {}
    for path in sorted(catalog_dir().glob("*.yaml")):
        data = read_data(path)
        if not isinstance(data, list):
            raise UsageError(f"{path}: a catalog file is a list of scenario specs")
        specs = []
        for i, item in enumerate(data):
            spec = parse_spec(item, f"{path.name}[{i}]")
            if spec.name in names:
                raise UsageError(
                    f"{path.name}: scenario {spec.name!r} is also in {names[spec.name]}"
                )
            names[spec.name] = path.name
            specs.append(spec)
        families.append((path.stem, tuple(specs)))
    return tuple(families)


def families() -> list[str]:
    """The catalog's family names (its file stems)."""
    return [name for name, _ in _load()]


def specs(family: str | None = None) -> list[ScenarioSpec]:
    """Every spec, or one family's, in file order."""
    out = [s for name, group in _load() if family in (None, name) for s in group]
    if family is not None and not out:
        raise UsageError(f"no catalog family {family!r}: families are {', '.join(families())}")
    return out


def get(name: str) -> ScenarioSpec:
    """One spec by name."""
    for spec in specs():
        if spec.name == name:
            return spec
    raise UsageError(f"no catalog scenario {name!r}")
