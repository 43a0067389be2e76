"""SIGTERM handling: schedulers send it before they kill a job.

`PreemptionWatch` turns the signal into a flag that `StepBackup` checks at
the next step boundary, where it saves a full checkpoint and raises
`Preempted`, which exits the interpreter with status `EXIT_PREEMPTED` (143,
the status of a process ended by SIGTERM, which supervisors retry).
"""

from __future__ import annotations

import logging
import signal
import threading

logger = logging.getLogger("keras_resume")

EXIT_PREEMPTED = 128 + signal.SIGTERM


class Preempted(SystemExit):
    """Raised after the preemption checkpoint is committed; exits with status 143."""

    def __init__(self, message: str):
        super().__init__(EXIT_PREEMPTED)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PreemptionWatch:
    """Sets `requested` on SIGTERM while installed; a second SIGTERM acts as before."""

    def __init__(self):
        self.requested = False
        self._previous = None
        self._installed = False

    def install(self) -> None:
        if self._installed or threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            if signal.getsignal(signal.SIGTERM) == self._handle:
                signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGTERM, self._previous)
        logger.warning("SIGTERM received: saving a checkpoint at the next step, then exiting")
