"""Process entry point: checks the environment before any service module loads.

prometheus-client reads PROMETHEUS_MULTIPROC_DIR when the first metric is
created, which happens while service.cli is being imported. A check inside
the command line would come too late, so it runs here first.
"""

from __future__ import annotations

import os
import sys

# prometheus-client's multi-process folder variable.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiproc_dir_problem() -> str | None:
    """Describe what is wrong with an inherited PROMETHEUS_MULTIPROC_DIR, or return None.

    prometheus-client opens one value file per process in that folder, so a
    missing or read-only folder would surface as a traceback at start-up.
    """
    folder = os.environ.get(MULTIPROC_DIR_ENV)
    if not folder:
        return None
    if not os.path.isdir(folder):
        return f"{MULTIPROC_DIR_ENV} is {folder!r}, which is not an existing folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{MULTIPROC_DIR_ENV} is {folder!r}, which this user cannot write to"
    return None


def main(argv: list[str] | None = None) -> int:
    problem = multiproc_dir_problem()
    if problem is not None:
        print(f"session-store: {problem}; create it or unset the variable", file=sys.stderr)
        return 2

    from service.cli import main as cli_main  # noqa: PLC0415 - loads prometheus_client

    return cli_main(argv)
