"""How `keras-resume run` speaks: one plain line on stderr, and the same through the
"keras_resume" logger. Standard library only."""

from __future__ import annotations

import logging
import os
import sys
import time

logger = logging.getLogger("keras_resume")

PROG = "keras-resume run"


def say(message: str) -> None:
    """One plain line on stderr, and the same through the "keras_resume" logger."""
    logger.info("%s: %s", PROG, message)
    line = f"{PROG}: {message}\n"
    try:
        sys.stderr.write(line)
        sys.stderr.flush()
    except RuntimeError:  # a signal handler interrupted a write in progress
        os.write(2, line.encode(errors="replace"))
    except (OSError, ValueError):
        pass  # stderr is closed: the log record above is all that can be done


def clock(seconds: float) -> str:
    """A time since the epoch as local ISO 8601, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(seconds))
