"""What `keras-resume` exits with, and how it says why: the exit statuses, the usage
error that maps to 2, and the one-line error message on stderr."""

from __future__ import annotations

import sys

PROG = "keras-resume"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A bad argument found after parsing: reported with exit status 2."""


def report_error(command: str | None, message: str) -> None:
    """`keras-resume COMMAND: error: MESSAGE` on stderr."""
    where = f"{PROG} {command}" if command else PROG
    sys.stderr.write(f"{where}: error: {message}\n")
    sys.stderr.flush()
