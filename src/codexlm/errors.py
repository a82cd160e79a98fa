"""User errors and the stage entry point that turns them into one line and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """A mistake in params or data: reported as one line, never as a traceback."""


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); a UserError prints one line to stderr and exits with code 2."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
