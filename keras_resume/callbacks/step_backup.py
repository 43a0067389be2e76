"""`StepBackup`: the full training state every N steps and at every epoch end."""

from __future__ import annotations

import logging

from keras_resume import backend
from keras_resume import manifest as mf
from keras_resume.callbacks.session import SessionCallback, check_positive_int
from keras_resume.preemption import EXIT_PREEMPTED, Preempted, PreemptionWatch

logger = logging.getLogger("keras_resume")


class StepBackup(SessionCallback):
    """Backs up the full training state every `every_n_steps` steps and at epoch end.

    Use it for every run that must survive interruption. Each backup holds the
    model and optimizer variables (in Keras's `.weights.h5` layout), the
    position in training (epoch, step within the epoch, global step), the
    running metrics, the data pipeline's position, and whatever `RngCapture`
    and `SchedulerCapture` add. `FullStateResume` continues from the newest one.

    A backup is written to a hidden staging directory, flushed to disk, renamed,
    and only then listed in the manifest: a crash at any instant leaves the
    previous backup intact. A step backup is taken just before the next step
    starts, and the epoch-end backup just before the next epoch starts (or when
    training ends), so every callback's end-of-epoch update (`ReduceLROnPlateau`,
    `EarlyStopping`) is in it whatever the order of the callbacks.

    Example:

    >>> import tempfile
    >>> import keras
    >>> import numpy as np
    >>> import keras_resume as kr
    >>> x = np.random.default_rng(0).random((8, 2))
    >>> y = x.sum(axis=1, keepdims=True)
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> run = tempfile.mkdtemp()
    >>> _ = model.fit(x, y, batch_size=2, epochs=2, verbose=0, callbacks=[
    ...     kr.StepBackup(run, every_n_steps=3, keep=2), kr.FullStateResume(run)])
    >>> [(c["epoch"], c["step_in_epoch"], c["global_step"]) for c in kr.list_checkpoints(run)]
    [(2, 2, 6), (2, 4, 8)]

    Args:
        ckpt: a `CheckpointDirectory` or a path.
        every_n_steps: back up whenever the global step (the batches trained
            in the run, counted by keras_resume; not the optimizer's update
            count, which gradient accumulation divides) reaches a multiple
            of this; `None` backs up at epoch ends
            only. Defaults to `None`.
        keep: how many backups to keep, newest first (at least 1). Defaults to 2.
        on_error: what a failed save (full disk, I/O error) does: `"raise"` a
            `SaveError`, or `"warn"` and keep training. Either way the failed
            save's partial files are removed and the previous checkpoint is
            intact. Defaults to `"raise"`.
        save_on_sigterm: on SIGTERM (what schedulers send before a kill), save
            a full checkpoint at the next step boundary and exit with status
            143 (`keras_resume.EXIT_PREEMPTED`). Defaults to True.
        background: write backups on a background thread: training is
            blocked only while the state is copied to host memory. At most one
            save is in flight; a backup that comes due while the previous one
            is still writing waits for it. Defaults to True.
        snapshot: where the training thread copies the state: `"device"`
            (JAX: a copy in accelerator memory, moved to the host by the
            writer thread, so training waits only for the device copy),
            `"host"`, or `"auto"`: a device copy on JAX when the variables live
            on an accelerator with room for one more copy of them, else host.
            Both savers of one directory share each snapshot. Defaults to
            `"auto"`.
        verbose: 1 prints one line per backup. Defaults to 0.
    """

    epoch_end_order = 1

    def __init__(
        self,
        ckpt,
        every_n_steps: int | None = None,
        keep: int = 2,
        on_error: str = "raise",
        save_on_sigterm: bool = True,
        background: bool = True,
        snapshot: str = "auto",
        verbose: int = 0,
    ):
        super().__init__(ckpt, on_error=on_error, snapshot=snapshot)
        self.background = bool(background)
        check_positive_int("every_n_steps", every_n_steps, allow_none=True)
        check_positive_int("keep", keep, allow_none=False)
        self.every_n_steps = every_n_steps
        self.keep = keep
        self.verbose = verbose
        self.preemption = PreemptionWatch() if save_on_sigterm else None
        self._pending_step: int | None = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._pending_step = None
        if self.preemption is not None:
            self.preemption.install(self.model)
            self.session.cleanups.append(self.preemption.uninstall)

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)  # commits the previous epoch's backup
        if self._preempted() and not self.session.skipping(epoch, 0):
            self._exit_preempted(f"after epoch {epoch}", saved=True)

    def on_train_batch_begin(self, batch, logs=None):
        self.ckpt.writer.poll()  # a background save that failed raises here
        session = self.session
        if session.skipping(session.epoch, batch):
            return
        epoch, trained = session.epoch, session.trained_in_epoch
        if self._preempted():
            if trained:
                self._pending_step = trained
            where = f"at step {trained} of epoch {epoch + 1}"
            if self._pending_step is None:
                self._exit_preempted(where, saved=None)
            step, self._pending_step = self._pending_step, None
            self._exit_preempted(where, saved=self._save_for_preemption(epoch, step))
        if self._pending_step is not None:
            step, self._pending_step = self._pending_step, None
            self._save(epoch, step, epoch_complete=False, logs=None)

    def on_train_end(self, logs=None):
        super().on_train_end(logs)  # commits the last epoch's backup
        if self._preempted():
            self._exit_preempted("at the end of training", saved=True)

    def _preempted(self) -> bool:
        if self.preemption is None:
            return False
        if self.session.role.multi:
            # Every process must save at the same step: they learn of a SIGTERM
            # at different moments, so they agree, at each step boundary (a
            # collective; every process calls this at the same points of fit).
            return backend.any_process(self.preemption.requested)
        return self.preemption.requested

    def _save_for_preemption(self, epoch: int, step: int) -> bool:
        where = f"step {step} of epoch"
        try:
            self.ckpt.wait()
            write = self._snapshot(epoch, step, False, None)
            self._announce(write(), where, epoch)  # on this thread: we exit next
            return True
        except Exception as e:  # the exit status must still say "preempted"
            logger.error("Could not save on SIGTERM to %s: %s", self.ckpt.location, e)
            return False

    def _exit_preempted(self, where: str, saved: bool | None) -> None:
        self.preemption.uninstall()
        if self.ckpt.writer.discard_outcome() is not None and saved:
            saved = False  # the epoch-end backup, written in the background, failed
        if saved:
            what = f"saved a full checkpoint {where} in {self.ckpt.location}"
        elif saved is None:
            what = f"nothing new to save {where}; the newest backup in {self.ckpt.location} stands"
        else:
            what = f"the save {where} failed; the previous backup in {self.ckpt.location} is intact"
        message = (
            f"SIGTERM: {what}. Exiting with status {EXIT_PREEMPTED}; rerun the same "
            "command to resume."
        )
        logger.warning(message)  # SystemExit itself prints nothing
        raise Preempted(message)

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)  # counts the batch, once per session
        session = self.session
        if session.skipping(session.epoch, batch):
            return
        # Due on multiples of every_n_steps of the global step, so a resumed
        # run backs up at the same steps as an uninterrupted one.
        every = self.every_n_steps
        if every is not None and session.global_step // every > session.step_before // every:
            self._pending_step = session.trained_in_epoch

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self._pending_step = None  # the epoch-end backup supersedes it

    def after_epoch(self, epoch, logs):
        steps, trained = self.params.get("steps"), self.session.trained_in_epoch
        if steps and trained < steps:
            # A callback stopped training mid-epoch; Keras then validated and reset
            # the running metrics, so this moment cannot be resumed exactly. The
            # last step backup stays the resume point.
            logger.info(
                "Training stopped at step %d of %d in epoch %d: no epoch-end backup",
                trained,
                steps,
                epoch + 1,
            )
            return
        self._save(epoch, trained, epoch_complete=True, logs=logs)

    def _save(self, epoch: int, step: int, epoch_complete: bool, logs) -> None:
        where = "end of epoch" if epoch_complete else f"step {step} of epoch"
        self.save(
            f"backup at {where} {epoch + 1}",
            lambda: self._snapshot(epoch, step, epoch_complete, logs),
            on_done=lambda entry: self._announce(entry, where, epoch),
        )

    def _snapshot(self, epoch: int, step: int, epoch_complete: bool, logs):
        """Takes the backup's state now; returns the write for the background writer."""
        model = self.model
        position = {
            "epoch": epoch,
            "step_in_epoch": step,
            "epoch_complete": epoch_complete,
            "global_step": self.session.global_step,
            "training_stopped": bool(epoch_complete and model.stop_training),
        }
        bundle = self.session.capture(mid_epoch=not epoch_complete)
        logs = mf.json_safe_logs(logs)
        fit = self.session.fit

        def update(manifest, entry):
            if epoch_complete:
                mf.record_history(manifest, epoch, logs, fit)

        return self.snapshot("backup", bundle, position, logs, update, self.keep)

    def _announce(self, entry: dict | None, where: str, epoch: int) -> None:
        if entry is None:  # another process's part of a multi-process backup
            return
        message = f"Saved backup {entry['dir']} at {where} {epoch + 1}"
        if self.verbose:
            backend.print_msg(f"\n{message} to {self.ckpt.location}")
        logger.info("%s to %s", message, self.ckpt.location)
