"""SIGTERM handling: schedulers send it before they kill a job.

`PreemptionWatch` turns the signal into a flag that `StepBackup` checks at
the next step boundary, where it saves a full checkpoint and raises
`Preempted`, which exits the interpreter with status `EXIT_PREEMPTED` (143,
the status of a process ended by SIGTERM, which supervisors retry).
"""

from __future__ import annotations

import logging
import os
import signal
import threading

logger = logging.getLogger("keras_resume")

EXIT_PREEMPTED = 128 + signal.SIGTERM
"""The exit status after a preemption checkpoint: 143, as for a process ended by SIGTERM.

`Preempted` exits the interpreter with it; `keras-resume run` restarts a
command that exits with it, as do schedulers set to requeue preempted jobs.

Example:

>>> import signal
>>> import keras_resume as kr
>>> kr.EXIT_PREEMPTED
143
>>> kr.EXIT_PREEMPTED == 128 + signal.SIGTERM
True
"""


class Preempted(SystemExit):
    """Raised after the preemption checkpoint is committed; exits with status 143.

    `StepBackup` turns a SIGTERM that arrives during `fit` into a full
    checkpoint at the next step boundary, then raises this `SystemExit`:
    uncaught, the interpreter exits with status `EXIT_PREEMPTED`, and the rerun
    command resumes (with `FullStateResume`) from that checkpoint.

    Example:

    >>> import os
    >>> import signal
    >>> import tempfile
    >>> import keras
    >>> import numpy as np
    >>> import keras_resume as kr
    >>> x = np.random.default_rng(0).random((8, 2))
    >>> y = x.sum(axis=1, keepdims=True)
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> class SendSigterm(keras.callbacks.Callback):  # what a scheduler does before a kill
    ...     def on_train_batch_end(self, batch, logs=None):
    ...         if batch == 0:
    ...             os.kill(os.getpid(), signal.SIGTERM)
    >>> run = tempfile.mkdtemp()
    >>> try:
    ...     model.fit(x, y, batch_size=4, epochs=2, verbose=0,
    ...               callbacks=[kr.StepBackup(run), SendSigterm()])
    ... except kr.Preempted as e:
    ...     print(type(e).__name__, e.code)
    Preempted 143
    >>> [(c["epoch"], c["step_in_epoch"]) for c in kr.list_checkpoints(run)]  # epoch 1, step 1
    [(1, 1)]
    """

    def __init__(self, message: str):
        super().__init__(EXIT_PREEMPTED)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PreemptionWatch:
    """Sets `requested` on a SIGTERM that arrives inside `model.fit`.

    A SIGTERM outside that `fit` (the fit raised and never uninstalled this,
    or it already returned) goes to the handler that was there before, as does
    a second SIGTERM.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        self._model = None

    def install(self, model) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        self.uninstall()
        self.requested = False
        self._model = model
        current = signal.getsignal(signal.SIGTERM)
        left_behind = getattr(current, "__self__", None)
        if isinstance(left_behind, PreemptionWatch):
            # A fit that raised never uninstalled its watch: replace it, not chain it.
            current, left_behind._model = left_behind._previous, None
        self._previous = current
        signal.signal(signal.SIGTERM, self._handle)

    def uninstall(self) -> None:
        if self._model is not None:
            if signal.getsignal(signal.SIGTERM) == self._handle:
                signal.signal(signal.SIGTERM, self._previous)
            self._model = None

    def _handle(self, signum, frame) -> None:
        from keras_resume import backend

        previous = self._previous
        signal.signal(signal.SIGTERM, previous)
        if not self.requested and backend.in_fit(self._model, frame):
            self.requested = True
            logger.warning("SIGTERM received: saving a checkpoint at the next step, then exiting")
            return
        self._model = None
        # Not ours to handle: deliver it as if this handler had never been set.
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
