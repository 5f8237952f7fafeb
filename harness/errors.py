"""Errors with a user-facing one-line message and an exit code."""

from __future__ import annotations


class ChaosError(Exception):
    """Base class: ``str(err)`` is one line that names the fix; ``exit_code`` is the CLI's."""

    exit_code = 2


class InfrastructureError(ChaosError):
    """The deployment could not be built or driven (missing binary, port clash, timeout)."""


class UsageError(ChaosError):
    """Bad input from the user (a bad option, an unreadable workload file, a bad app path)."""
