"""`FullStateResume`: continues `fit` from the newest backup, mid-epoch included."""

from __future__ import annotations

import functools
import logging
import warnings

from keras_resume import backend, multiprocess
from keras_resume import manifest as mf
from keras_resume.callbacks.session import SessionCallback
from keras_resume.errors import CheckpointMismatchError, NoCheckpointError
from keras_resume.restoring import assign_loaded, info_for, load_into_model
from keras_resume.state import append_logs, model_state, rng_state

logger = logging.getLogger("keras_resume")


class FullStateResume(SessionCallback):
    """Restores the newest backup when `fit` starts and continues where it stopped.

    Rerun the same script after a crash and training continues: the model,
    optimizer, RNG and callback states come back, `fit` starts at the saved
    epoch (no `initial_epoch` to compute), and a mid-epoch backup continues at
    the next batch. The batches already trained on are drawn from the input
    pipeline and dropped, not trained again, so the data order stays the same.
    `fit` returns a `History` holding the epochs before the interruption too.
    A missing or empty directory is a fresh start. A run that had finished
    (all epochs, or stopped by `EarlyStopping`) is not trained again.

    One directory can hold the successive `fit` calls of a script (fine-tuning
    in phases: freeze, fit; unfreeze, recompile, `fit(initial_epoch=2)`). The
    fits made on a model object are numbered (counting those that returned),
    each checkpoint records its fit's number, and a fit resumes only from its
    own: rerun, the script gets each finished phase back as it ended, and the
    interrupted one continues.

    During the skipped batches other callbacks still see `on_train_batch_*`
    calls (with the restored running metrics as logs); keras_resume's own
    callbacks ignore them.

    Example:

    >>> import tempfile
    >>> import keras
    >>> import numpy as np
    >>> import keras_resume as kr
    >>> x = np.random.default_rng(0).random((8, 2))
    >>> y = x.sum(axis=1, keepdims=True)
    >>> run = tempfile.mkdtemp()
    >>> class Crash(keras.callbacks.Callback):  # stands in for a kill before step 4
    ...     def on_train_batch_begin(self, batch, logs=None):
    ...         if self.model.optimizer.iterations.numpy() == 3:
    ...             raise KeyboardInterrupt
    >>> def train(extra=()):  # the training script, run twice
    ...     keras.utils.set_random_seed(0)
    ...     model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    ...     model.compile(optimizer="sgd", loss="mse")
    ...     callbacks = [kr.FullStateResume(run, verbose=1),
    ...                  kr.StepBackup(run, every_n_steps=1), kr.RngCapture(run)]
    ...     return model.fit(x, y, batch_size=4, epochs=3, verbose=0,
    ...                      callbacks=callbacks + list(extra))
    >>> try:
    ...     train(extra=[Crash()])
    ... except KeyboardInterrupt:
    ...     print("interrupted")
    interrupted
    >>> history = train()  # the rerun continues in epoch 2, after its first step
    Resumed ... at epoch 2, step 1 of 2: skipping 1 batches (from backup-...)
    >>> history.epoch  # the epochs of both attempts
    [0, 1, 2]

    Args:
        ckpt: a `CheckpointDirectory` or a path.
        verify: check checksums before loading, falling back to the newest
            backup that verifies. Defaults to True.
        verbose: 1 prints one line when resuming. Defaults to 0.
    """

    def __init__(self, ckpt, verify: bool = True, verbose: int = 0):
        super().__init__(ckpt)
        self.verify = verify
        self.verbose = verbose
        self.resumed_from = None  # RestoreInfo of the last resume, for users
        self._bundle = None
        self._history_done = True
        # The checkpoint read, kept until the resumed run reaches the instant it
        # was taken: see _put_back.
        self._loaded = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.resumed_from = None
        self._history_done = True
        self._bundle = None
        self._loaded = None
        try:
            loaded = self._read_newest()
        except NoCheckpointError:
            fit = self.session.fit
            if fit:
                logger.info("No backup of fit %d in %s: it starts afresh", fit, self.ckpt.location)
            else:
                logger.info("No backup in %s: starting a new run", self.ckpt.location)
            return
        entry = loaded.entry
        info = info_for(self.ckpt, entry)
        epoch, step = info.initial_epoch, info.initial_step
        self._check_steps_per_execution(entry, step)
        # A model fit builds only at its first batch (a subclassed model on
        # TensorFlow, never called before fit) is built from the data's shapes.
        build = functools.partial(backend.build_from_data, self.model, self.session.epoch_iterator)
        bundle = load_into_model(self.model, self.ckpt, loaded, build=build)
        if entry.get("training_stopped"):
            epoch, step = max(self.params.get("epochs", epoch), epoch), 0
        self._warn_missing(bundle, entry)
        self._cut_back_logs(bundle, entry)
        session = self.session
        backend.set_initial_epoch(self.model, epoch)
        session.cleanups.append(lambda: backend.set_initial_epoch(self.model, None))
        session.tracker.fast_forward(bundle.meta.get("data", {}), epochs_done=epoch)
        session.skip_epoch, session.skip_steps = epoch, step
        # The batches trained before the interruption: keras_resume's own count
        # (also what older backups saved, the optimizer's step count then).
        session.global_step = entry["global_step"]
        self._bundle = bundle
        self._loaded = loaded
        self._history_done = False
        if step:
            self._skip_first_steps(step)
        self.resumed_from = info
        self._record_resume(entry, epoch, step)
        self._announce(entry, epoch, step)

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        # fit has read it by now; leaving it set would move a later fit's start.
        backend.set_initial_epoch(self.model, None)
        if self._bundle is None or epoch != self.session.skip_epoch:
            return
        self._prepend_history()
        self._restore_callbacks()
        self.session.tracker.restore_pipeline(self._bundle, self.ckpt.location)
        if not self.session.skip_steps:
            self._put_back()  # the epoch-end backup was taken here
        # The epoch's shuffle is drawn from the process's generators after this
        # call (NumPy's on JAX, torch's on PyTorch): put them where the original
        # run had them when this epoch began.
        if not self.session.skip_steps:
            rng = self._restore_process_rng()
            self._bundle = None
        else:
            rng = self._restore_process_rng("epoch_start")
        if rng is not None:
            self.session.epoch_start_rng = (epoch, rng)

    def on_train_batch_begin(self, batch, logs=None):
        session = self.session
        if self._loaded is not None and session.epoch == session.skip_epoch:
            if batch >= session.skip_steps:  # the first batch trained: the backup's instant
                self._put_back()

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self._loaded = None  # an epoch that never reached its resumed batch

    def on_train_end(self, logs=None):
        if self._bundle is not None and not self._history_done:
            # No epoch ran (the run had finished): callbacks listed after this one,
            # e.g. EarlyStopping(restore_best_weights=True), end as they did then,
            # and the generators are where that fit left them for what follows
            # (the script's next fit shuffles from them).
            self._restore_callbacks()
            self._restore_process_rng()
        self._prepend_history()
        self._bundle = self._loaded = None
        super().on_train_end(logs)

    # --- helpers ------------------------------------------------------------------

    def _read_newest(self):
        """The newest backup that verifies; in a multi-process job, the one process 0 chose."""
        # Only this fit's: an earlier phase's finished backup never goes into the
        # next, recompiled model (see `session.fit_ordinal`).
        role, fit = self.session.role, self.session.fit
        if not role.multi:
            return self.ckpt.read_checkpoint("latest", verify=self.verify, fit=fit)
        return multiprocess.read_agreed(self.ckpt, role, verify=self.verify, fit=fit)

    def _check_steps_per_execution(self, entry, step: int) -> None:
        steps_per_call = _steps_per_execution(self.model)
        if step % steps_per_call:
            raise CheckpointMismatchError(
                f"Backup {self.ckpt.checkpoint_path(entry)} was taken after step {step} of "
                f"its epoch, but the model runs steps_per_execution={steps_per_call} steps "
                "per call, so training cannot continue at that step. Compile with a "
                f"steps_per_execution that divides {step} (as when the backup was written)."
            )

    def _restore_callbacks(self) -> None:
        scheduler = self.session.providers.get("callbacks")
        if "callbacks" not in self._bundle.meta:
            return
        if scheduler is None:
            warnings.warn(
                f"The backup in {self.ckpt.location} holds callback state, but no "
                "SchedulerCapture is in use now: EarlyStopping/ReduceLROnPlateau restart "
                "their patience. Add keras_resume.SchedulerCapture(ckpt, [...]).",
                stacklevel=3,
            )
            return
        problems = scheduler.restore_state(self._bundle)
        if problems:
            warnings.warn(
                f"Callback state in {self.ckpt.location} not fully restored: "
                + "; ".join(problems),
                stacklevel=3,
            )

    def _put_back(self) -> None:
        """Assigns the checkpoint's variables, SeedGenerators and callback state again.

        Called where the resumed run reaches the instant the backup was taken:
        the first batch trained of a mid-epoch resume (after every callback's
        `on_epoch_begin` and the skipped batches' callbacks), or this callback's
        `on_epoch_begin` for an epoch-end backup. Whatever a callback changed
        before then for the resumed epoch (a `LearningRateScheduler` decaying the
        rate again) is overwritten by the state the original run had there.
        """
        loaded, self._loaded = self._loaded, None
        assign_loaded(self.model, loaded, str(self.ckpt.checkpoint_path(loaded.entry)))
        scheduler = self.session.providers.get("callbacks")
        if (
            scheduler is not None
            and loaded.bundle is not None
            and "callbacks" in loaded.bundle.meta
        ):
            scheduler.restore_state(loaded.bundle)  # what did not match was said at epoch begin

    def _skip_first_steps(self, step: int) -> None:
        """Makes the first `step` calls of the train step draw their batches only."""
        model, session = self.model, self.session
        steps_per_call = _steps_per_execution(model)
        calls = step // steps_per_call
        remaining = [calls]

        def skip(original, put_back, *args):
            if session.closed or backend.find_epoch_iterator(model) is not session.epoch_iterator:
                # A fit that raised during the skip left this wrapper behind; this
                # is another fit, which must train every batch.
                put_back()
                return original(*args)
            first = remaining[0] == calls
            remaining[0] -= 1
            batch = backend.skip_batches(args, steps_per_call)
            if first:
                self._restore_metrics(batch)
            result = backend.untrained_result(model, args, metrics_restored=first)
            if remaining[0] == 0:
                # Done drawing: every generator back where the interruption left
                # it, before any callback of the next step can save or draw.
                put_back()
                self._restore_process_rng()
                self._bundle = None
            return result

        session.wrap_train_function(skip)

    def _restore_metrics(self, batch) -> None:
        # The running epoch's loss and metric accumulators, so that the epoch's
        # logs count the batches trained before the interruption.
        backend.build_metrics(self.model, batch)
        if not model_state.restore_metrics(self.model, self._bundle):
            warnings.warn(
                "The model's metrics differ from the checkpoint's; the resumed "
                "epoch's logs count only the batches after the resume.",
                stacklevel=2,
            )

    def _restore_process_rng(self, moment: str = "process") -> dict | None:
        """Restores the generators saved at `moment` ("process": the save; "epoch_start")."""
        rng = self._bundle.meta.get("rng") if self._bundle is not None else None
        if rng is None or moment not in rng:
            return None
        problems = rng_state.restore_process_rng(rng[moment])
        if problems and not rng_state.crosses_backend(rng["process"]):  # that one was said
            warnings.warn(
                f"RNG state from {self.ckpt.location} not fully restored: {'; '.join(problems)}. "
                "Training continues, but is not bit-identical to an uninterrupted run.",
                stacklevel=2,
            )
        return rng[moment]

    def _prepend_history(self) -> None:
        """Puts the epochs before the resume into the `History` that `fit` returns."""
        history = getattr(self.model, "history", None)
        if self._history_done or history is None or not hasattr(history, "epoch"):
            return
        self._history_done = True
        start, fit = self.session.skip_epoch, self.session.fit
        earlier = [
            r
            for r in self.ckpt.read_manifest()["history"]
            if mf.fit_of(r) == fit and r["epoch"] < start
        ]
        history.epoch = [r["epoch"] for r in earlier] + list(history.epoch)
        merged = {}
        for record in earlier:
            for key, value in record["logs"].items():
                merged.setdefault(key, []).append(value)
        for key, values in history.history.items():
            merged.setdefault(key, []).extend(values)
        history.history = merged

    def _cut_back_logs(self, bundle, entry) -> None:
        """Rows a CSVLogger(append=True) wrote after the backup go: the epochs are trained again."""
        where = self.ckpt.checkpoint_path(entry)
        problems = append_logs.cut_back(self.session.append_loggers, bundle, where)
        if problems:
            warnings.warn(
                f"Resuming from backup {where}: a log appended to was not cut back to its "
                f"length then, so rows of the epochs trained again may appear twice: "
                f"{'; '.join(problems)}. Remove those rows by hand, or log to a regular file.",
                stacklevel=3,
            )

    def _warn_missing(self, bundle, entry) -> None:
        where = self.ckpt.checkpoint_path(entry)
        if bundle is None:
            return
        if "rng" not in bundle.meta:
            warnings.warn(
                f"Backup {where} holds no RNG state (no RngCapture during the original "
                "run): training resumes, but dropout masks, augmentation and shuffles "
                "differ from an uninterrupted run. Add keras_resume.RngCapture.",
                stacklevel=3,
            )
        elif bundle.meta["rng"]["process"].get("backend", {}).get("global_seed", 0) is None:
            warnings.warn(
                f"Backup {where} was written by a run without a global seed: its data "
                "shuffles and unseeded random ops drew from OS entropy, so the resumed "
                "run cannot match an uninterrupted one. Call "
                "keras.utils.set_random_seed(...) at the start of the script.",
                stacklevel=3,
            )

    def _record_resume(self, entry, epoch: int, step: int) -> None:
        def change(manifest):
            manifest["resumes"].append(
                {
                    "time": mf.utc_now(),
                    "checkpoint_id": entry["id"],
                    "fit": mf.fit_of(entry),
                    "epoch": epoch,
                    "step_in_epoch": step,
                    "global_step": entry["global_step"],
                }
            )

        try:
            self.ckpt.update_manifest(change)
        except OSError as e:  # informational only: a full disk must not stop the resume
            warnings.warn(
                f"Could not record the resume point in {self.ckpt.manifest_path}: {e}",
                stacklevel=3,
            )

    def _announce(self, entry, epoch: int, step: int) -> None:
        where = self.ckpt.location
        steps, epochs = self.params.get("steps"), self.params.get("epochs")
        if entry.get("training_stopped"):
            message = (
                f"Resumed {where}: training was stopped after epoch {entry['epoch'] + 1} "
                "(a callback such as EarlyStopping); nothing left to train"
            )
        elif epochs is not None and epoch >= epochs:
            message = (
                f"Resumed {where}: all {epochs} epochs are trained; nothing left to train "
                "(pass a larger `epochs` to train on)"
            )
        elif step:
            message = (
                f"Resumed {where} at epoch {epoch + 1}, step {step} of {steps}: "
                f"skipping {step} batches"
            )
        else:
            message = f"Resumed {where} at the start of epoch {epoch + 1}"
        if mf.fit_of(entry):
            message += f" in fit number {mf.fit_of(entry)} (counted from 0) of this model"
        message += f" (from {entry['dir']})"
        if self.verbose:
            backend.print_msg(message)
        logger.info(message)


def _steps_per_execution(model) -> int:
    return max(int(getattr(model, "steps_per_execution", 1) or 1), 1)
