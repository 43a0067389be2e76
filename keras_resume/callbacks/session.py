"""`TrainingSession`: what keras_resume's callbacks share during one `model.fit` call.

The first of our callbacks to see `on_train_begin` opens the session; the
others join it. It knows the resume point, the batches to skip, and builds the
state bundle of a backup from every registered capture callback.
"""

from __future__ import annotations

import logging
import warnings
import weakref

import keras

from keras_resume import backend, multiprocess
from keras_resume.directory import CheckpointDirectory, as_directory
from keras_resume.errors import DirectoryLockedError, KerasResumeError, SaveError
from keras_resume.state import append_logs, model_state
from keras_resume.state.bundle import StateBundle
from keras_resume.state.data_state import DataTracker

logger = logging.getLogger("keras_resume")

# How many `fit` calls with keras_resume's callbacks returned, per model object.
# One directory holds the successive fits of a script (freeze, fit; unfreeze,
# recompile, fit): a rerun makes the same fits in the same order, so a fit's
# ordinal tells its backups apart from an earlier phase's. A fit that raised is
# not counted: calling `fit` again continues that same fit.
_FITS_RETURNED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

# The TrainingSession of the fit running now, per directory object (see join).
_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fit_ordinal(model) -> int:
    """The ordinal of `model`'s next (or running) `fit`: 0 for its first."""
    return _FITS_RETURNED.get(model, 0)


class TrainingSession:
    """What keras_resume's callbacks share during one `fit` call on one directory.

    Opened by `join` for the first member callback at `on_train_begin`; the
    last member's `on_train_end` closes it (waits for the save in flight,
    undoes its wrappers, releases the directory's lock). It holds:

    - the members and the capture providers (`providers`: section -> callback
      with `capture_state` / `restore_state`, see `state.StateProvider`);
    - the position: `epoch`, `trained_in_epoch`, `global_step` (batches
      trained, counted here, not the optimizer's `iterations`), and the
      batches to skip after a mid-epoch resume (`skip_epoch`, `skip_steps`,
      set by `FullStateResume`);
    - this process's `role` in a multi-process job (only the primary writes),
      the fit's ordinal `fit` (recorded in every checkpoint), the data
      tracker and appending CSV loggers whose state goes into a backup;
    - the host buffers that weights snapshots reuse (`snapshot_buffers`) and
      whether snapshots are copied on the device (`on_device`).

    It is not public: callbacks read and write these attributes directly.
    """

    def __init__(self, ckpt: CheckpointDirectory, model, epoch_iterator):
        self.ckpt = ckpt
        self.model = model
        self.epoch_iterator = epoch_iterator
        self.members: list = []  # our callbacks in this fit, in the order they joined
        self.ended: set[int] = set()
        self.providers: dict = {}  # section -> RngCapture / SchedulerCapture
        self.cleanups: list = []  # undo what a callback changed in the model, run at close
        # Host arrays every weights snapshot of this fit is copied into: one copy
        # of the state, allocated once. Safe to reuse because a snapshot is only
        # taken once the save in flight (which reads them) has finished.
        self.snapshot_buffers: dict = {}
        # Whether snapshots are copied on the accelerator (decided at the first one).
        self.on_device: bool | None = None
        # In a multi-process job process 0 writes the directory; see multiprocess.py.
        self.role = multiprocess.current()
        self.saves_with_parts = 0  # numbers the saves, the same on every process
        self._sharded: bool | None = None
        if self.role.is_primary:
            ckpt.acquire_lock()
            ckpt.clean_leftovers()
        self._wait_on_error()
        self.tracker = DataTracker(model, epoch_iterator)
        self.fit = fit_ordinal(model)  # recorded in every checkpoint of this fit
        # The fit's CSVLogger(append=True): each backup records their files' length.
        self.append_loggers = append_logs.appending_loggers(backend.fit_callbacks(model))
        # Set by FullStateResume: batches [0, skip_steps) of skip_epoch were
        # trained before the interruption and are only drawn, not trained.
        self.skip_epoch: int | None = None
        self.skip_steps = 0
        # (epoch, process RNG state as that epoch began): see RngCapture.
        self.epoch_start_rng: tuple[int, dict] | None = None
        # The global step: batches trained in this run, counted here, saved in
        # every checkpoint's position and put back by FullStateResume. Not the
        # optimizer's `iterations`: with gradient accumulation that counts
        # updates (a computed tensor), a LossScaleOptimizer does not count the
        # steps it skips, and a custom train_step may use other optimizers.
        self.global_step: int | None = None  # read at the first epoch, unless resumed
        self.epoch = 0
        self.trained_in_epoch = 0  # batches of `epoch` trained, skipped ones included
        self.step_before = 0  # the global step before the last batch counted
        self.closed = False

    @property
    def sharded(self) -> bool:
        """Whether variables are sharded across processes: every process then saves its shards.

        Asked at the first save (the layout is fixed by then), the same on every process.
        """
        if self._sharded is None:
            self._sharded = self.role.multi and backend.has_process_shards(self.model)
        return self._sharded

    def skipping(self, epoch: int, batch: int) -> bool:
        return epoch == self.skip_epoch and batch < self.skip_steps

    def epoch_began(self, epoch: int) -> None:
        """Called by every member's `on_epoch_begin`, after the previous epoch's saves."""
        if self.global_step is None:
            # No backup resumed: a model trained before (an earlier fit) goes on counting.
            self.global_step = backend.applied_steps(self.model)
        self.epoch = epoch
        self.trained_in_epoch = self.skip_steps if self.skip_epoch == epoch else 0

    def batch_ended(self, batch: int, steps: int | None) -> None:
        """Counts a trained batch; called by every member's `on_train_batch_end`, counted once.

        `batch` is the last step index of the train function's call (Keras
        reports a full call even when the epoch ends inside it, so it is capped
        at the epoch's `steps`).
        """
        if self.skipping(self.epoch, batch):
            return
        trained = min(batch + 1, steps or batch + 1)
        if trained > self.trained_in_epoch:
            self.step_before = self.global_step
            self.global_step += trained - self.trained_in_epoch
            self.trained_in_epoch = trained

    def capture(self, mid_epoch: bool) -> StateBundle:
        backend.sync_state(self.model)
        bundle = StateBundle()
        bundle.meta["data"] = self.tracker.capture(mid_epoch, bundle)
        if mid_epoch:
            model_state.capture_metrics(self.model, bundle)
        model_state.capture_replicas(self.model, bundle)
        if self.append_loggers:
            append_logs.capture(self.append_loggers, bundle)
        for provider in self.providers.values():
            provider.capture_state(self.model, bundle)
        return bundle

    def flush_epoch_end(self) -> None:
        """Runs every member's end-of-epoch work: best checkpoint first, backup last.

        The epoch-end backup marks the epoch complete, so it is committed only
        after the best checkpoint: a kill between the two replays the epoch.
        """
        # Taken at one instant: the saves share one snapshot and one writer job.
        with self.ckpt.writer.group():
            for callback in sorted(self.members, key=lambda c: c.epoch_end_order):
                callback._flush_epoch_end()

    def _wait_on_error(self) -> None:
        """Makes an exception inside a training step wait for the save in flight.

        `fit` calls no callback when it raises (Ctrl-C, an OOM): the wrapper
        lets the background save commit before the exception leaves `fit`.
        """
        writer = self.ckpt.writer

        def wait_on_error(original, put_back, *args):
            try:
                return original(*args)
            except BaseException as e:
                if backend.is_end_of_data(e):  # how fit learns an epoch of unknown size ended
                    raise
                if writer.busy:
                    logger.warning("Training raised; waiting for the save in flight to commit")
                writer.discard_outcome()
                raise

        self.wrap_train_function(wait_on_error)

    def wrap_train_function(self, wrapper) -> None:
        """Routes `model.train_function(*args)` through `wrapper(original, put_back, *args)`.

        `args` is `(iterator)` on TensorFlow, `(state, iterator)` on JAX and
        `(data)` on PyTorch. `put_back()` removes the wrapper (if still in
        place); the session runs it when it closes.
        """
        model = self.model
        original = model.train_function
        if original is None:
            return

        def train_function(*args):
            return wrapper(original, put_back, *args)

        def put_back():
            if model.train_function is train_function:
                model.train_function = original

        model.train_function = train_function
        self.cleanups.append(put_back)

    def end(self, callback) -> None:
        """Called from each member's `on_train_end`; the last one closes the session."""
        self.flush_epoch_end()
        self.ended.add(id(callback))
        if all(id(c) in self.ended for c in self.members):
            self.close()

    def close(self, report: bool = True) -> None:
        """Waits for the save in flight, undoes changes to the model, releases the lock.

        With `report`, a failed last save raises here (as its callback's
        `on_error` says); otherwise (a `fit` that raised) it is only logged.
        """
        if self.closed:
            return
        self.closed = True
        try:
            if report:
                try:
                    self.ckpt.writer.wait()
                finally:
                    # A multi-process `fit` returns on no process before process 0
                    # has committed (or failed) the last save: a `restore` or a new
                    # `fit` right after it must not read a manifest mid-commit.
                    backend.barrier("keras_resume: fit's last save committed")
                _FITS_RETURNED[self.model] = self.fit + 1  # this fit returns
            else:
                self.ckpt.writer.discard_outcome()
        finally:
            for cleanup in reversed(self.cleanups):  # the last wrapper comes off first
                cleanup()
            self.snapshot_buffers.clear()
            self.tracker.detach()
            if self.role.is_primary:
                self.ckpt.release_lock()


def join(ckpt: CheckpointDirectory, callback) -> TrainingSession:
    """The session of the running `fit`, opened by the first callback that asks.

    A new `fit` is told apart by its data iterator (or, where that cannot be
    found, by a member joining twice). A session left open by a `fit` that
    ended with an exception (Ctrl-C) is closed first.
    """
    iterator = backend.find_epoch_iterator(callback.model)
    session = _SESSIONS.get(ckpt)
    same_fit = (
        session is not None
        and not session.closed
        and session.model is callback.model
        and (
            session.epoch_iterator is iterator
            if iterator is not None
            else all(c is not callback for c in session.members)
        )
    )
    if not same_fit:
        if session is not None:
            session.close(report=False)
        session = TrainingSession(ckpt, callback.model, iterator)
        _SESSIONS[ckpt] = session
    if all(c is not callback for c in session.members):
        session.members.append(callback)
    return session


class SessionCallback(keras.callbacks.Callback):
    """Base of keras_resume's callbacks: holds the directory and joins the session.

    End-of-epoch work runs in `after_epoch`, called just before the next epoch
    begins (or when training ends), once every callback has finished its
    `on_epoch_end`: state changed there by `ReduceLROnPlateau` or
    `EarlyStopping`, and logs they add, are then in what is saved, whatever the
    order of the callbacks.
    """

    epoch_end_order = 2  # BestCheckpoint 0, StepBackup 1: see flush_epoch_end

    background = True  # saves run on the directory's background writer

    def __init__(self, ckpt, on_error: str = "raise", snapshot: str = "auto", **kwargs):
        super().__init__(**kwargs)
        if on_error not in ("raise", "warn"):
            raise ValueError(
                f"Invalid value for argument on_error. Received: on_error={on_error!r}. "
                "Expected 'raise' or 'warn'."
            )
        backend.check_snapshot_mode(snapshot)
        backend.check_strategy()  # made inside a strategy's scope: refuse it now
        self.on_error = on_error
        self.snapshot_mode = snapshot
        self.ckpt = as_directory(ckpt)
        self.session: TrainingSession | None = None
        self._epoch_end: tuple[int, dict] | None = None

    def on_train_begin(self, logs=None):
        backend.check_strategy(self.model)  # before the session takes the directory's lock
        self.session = join(self.ckpt, self)
        self._epoch_end = None

    def on_epoch_begin(self, epoch, logs=None):
        self.session.flush_epoch_end()
        self.session.epoch_began(epoch)

    def on_train_batch_end(self, batch, logs=None):
        self.session.batch_ended(batch, self.params.get("steps"))

    def on_epoch_end(self, epoch, logs=None):
        # Keep the dict itself: callbacks after this one still add to it.
        self._epoch_end = (epoch, logs if logs is not None else {})

    def on_train_end(self, logs=None):
        if self.session is not None:
            self.session.end(self)

    def _flush_epoch_end(self) -> None:
        if self._epoch_end is not None:
            epoch, logs = self._epoch_end
            self._epoch_end = None
            self.after_epoch(epoch, logs)

    def after_epoch(self, epoch: int, logs: dict) -> None:
        """End-of-epoch work, run after every callback's `on_epoch_end`."""

    def save(self, what: str, prepare, on_done=None) -> None:
        """Takes a save: `prepare()` snapshots now and returns the write to run.

        The write runs on the directory's background writer (at most one in
        flight: this waits for the previous one first). `on_done(result)` runs
        on the training thread once it committed; a failure is handled as
        `on_error` says, on the training thread too.
        """
        if not self.session.role.is_primary:
            on_done = None  # what was committed is process 0's to say
        self.ckpt.writer.submit(
            what,
            prepare,
            on_done=on_done,
            on_error=lambda e: self._failed(what, e),
            background=self.background,
        )

    def snapshot_weights(self):
        """The model's weights now; one snapshot shared by the saves of one instant.

        Copied on the accelerator where `snapshot` allows (the writer thread
        moves it to the host), else into host buffers reused across the saves.
        """
        model, session = self.model, self.session
        if session.on_device is None:
            session.on_device = backend.device_snapshot(model, self.snapshot_mode)
            logger.debug(
                "Snapshots of %s: %s copies",
                self.ckpt.location,
                "device" if session.on_device else "host",
            )

        def take():
            return model_state.snapshot_weights(
                model,
                session.snapshot_buffers,
                on_device=session.on_device,
                sharded_only=not session.role.is_primary,  # process 0 saves the rest
            )

        return self.ckpt.writer.shared(("weights", id(model)), take)

    def snapshot(self, kind: str, bundle, position: dict, logs, update, keep: int):
        """Takes a checkpoint of the model now; returns the write for the writer thread.

        In a multi-process job, process 0 writes the checkpoint (and waits for
        the others' parts); every other process writes only its own state as
        a part of the backup, and nothing for a best checkpoint.
        """
        session, role = self.session, self.session.role
        key = None
        if role.multi and (bundle is not None or session.sharded):
            session.saves_with_parts += 1
            key = multiprocess.save_key(position["global_step"], session.saves_with_parts)
        if not role.is_primary:
            if key is None:
                return lambda: None
            root = self.ckpt.path
            own = self.snapshot_weights() if session.sharded else None
            return lambda: multiprocess.write_part(root, key, role.index, bundle, own)
        position = {**position, "fit": session.fit}
        pending = self.ckpt.snapshot(
            self.model, kind, bundle, position, logs, update, keep, self.snapshot_weights()
        )
        pending.parts_key = key
        return lambda: self.ckpt.write(pending)

    def _failed(self, what: str, e: BaseException) -> None:
        """A save failed: raises `SaveError` or warns, as `on_error` says.

        The commit protocol already guarantees that a failed save removed its
        partial files and left the previous checkpoint intact.
        """
        if isinstance(e, DirectoryLockedError) or not isinstance(e, Exception):
            raise e
        error = SaveError(
            f"Could not save the {what} to {self.ckpt.location}: {type(e).__name__}: {e}. "
            "The previous checkpoint is intact. Free disk space or fix the I/O error"
            + (
                "; training continues without this checkpoint."
                if self.on_error == "warn"
                else ", or pass on_error='warn' to keep training without it."
            )
        )
        if self.on_error == "raise" or not isinstance(e, (OSError, KerasResumeError)):
            raise error from e
        logger.error("%s", error)
        warnings.warn(str(error), stacklevel=3)


def check_positive_int(name: str, value, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        expected = "None or a positive integer" if allow_none else "a positive integer"
        raise ValueError(
            f"Invalid value for argument {name}. Received: {name}={value!r}. Expected {expected}."
        )
