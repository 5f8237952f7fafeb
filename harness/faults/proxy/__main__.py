"""``python -m harness.faults.proxy [--host H] [--port P]``: serve the API in the foreground."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from harness.errors import ChaosError

from .server import DEFAULT_HOST, DEFAULT_PORT, check_port, run


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the server; a bad argument is a one-line error, not a traceback."""
    parser = argparse.ArgumentParser(
        prog="python -m harness.faults.proxy",
        description="Embedded Toxiproxy-compatible fault proxy (HTTP API plus TCP proxies).",
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help="API bind address (default %(default)s)"
    )
    parser.add_argument(
        "--port",
        default=str(DEFAULT_PORT),
        help="API port, 0 for any free port (default %(default)s)",
    )
    args = parser.parse_args(argv)
    level = logging.getLevelName(os.environ.get("LOG_LEVEL", "WARNING").upper())
    logging.basicConfig(
        level=level if isinstance(level, int) else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        run(args.host, check_port(args.port))
    except ChaosError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
