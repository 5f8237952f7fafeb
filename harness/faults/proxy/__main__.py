"""``python -m celery_chaos.faults.proxy [--host H] [--port P] [--config FILE]``: serve the API in
the foreground."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from celery_chaos.errors import ChaosError, UsageError

from .server import DEFAULT_HOST, DEFAULT_PORT, check_port, run


def read_config(path: Path | None) -> list[dict[str, Any]] | None:
    """The proxies of a ``-config`` file; a file that is missing or not such a list is a
    one-line :class:`UsageError`."""
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"toxiproxy config {path}: {exc}") from None
    if not isinstance(data, list) or not all(
        isinstance(e, dict) and isinstance(e.get("name"), str)
        and isinstance(e.get("upstream"), str) for e in data
    ):
        raise UsageError(f"toxiproxy config {path}: not a list of {{name, listen, upstream}}")
    return data


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the server; a bad argument is a one-line error, not a traceback."""
    parser = argparse.ArgumentParser(
        prog="python -m celery_chaos.faults.proxy",
        description="Embedded Toxiproxy-compatible fault proxy (HTTP API plus TCP proxies).",
    )
    # Toxiproxy's own flag spellings (-host=, -port=, -config=) work too, so this server can
    # stand in for the real image with the same command.
    parser.add_argument(
        "--host", "-host", default=DEFAULT_HOST, help="API bind address (default %(default)s)"
    )
    parser.add_argument(
        "--port",
        "-port",
        default=str(DEFAULT_PORT),
        help="API port, 0 for any free port (default %(default)s)",
    )
    parser.add_argument(
        "--config", "-config", default=None, type=Path,
        help="JSON file of proxies to create at start: [{name, listen, upstream, enabled}]",
    )
    args = parser.parse_args(argv)
    level = logging.getLevelName(os.environ.get("LOG_LEVEL", "WARNING").upper())
    logging.basicConfig(
        level=level if isinstance(level, int) else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        run(args.host, check_port(args.port), read_config(args.config))
    except ChaosError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
