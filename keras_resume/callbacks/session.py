"""`TrainingSession`: what keras_resume's callbacks share during one `model.fit` call.

The first of our callbacks to see `on_train_begin` opens the session; the
others join it. It knows the resume point, the batches to skip, and builds the
state bundle of a backup from every registered capture callback.
"""

from __future__ import annotations

import keras

from keras_resume.directory import CheckpointDirectory, as_directory
from keras_resume.state import model_state
from keras_resume.state.bundle import StateBundle
from keras_resume.state.data_state import DataTracker


class TrainingSession:
    def __init__(self, ckpt: CheckpointDirectory, model):
        self.ckpt = ckpt
        self.model = model
        self.members: set[int] = set()
        ckpt.clean_leftovers()
        self.tracker = DataTracker(model)
        self.epoch = 0
        # Set by FullStateResume: batches [0, skip_steps) of skip_epoch were
        # trained before the interruption and are only drawn, not trained.
        self.skip_epoch: int | None = None
        self.skip_steps = 0
        self.closed = False

    def skipping(self, epoch: int, batch: int) -> bool:
        return epoch == self.skip_epoch and batch < self.skip_steps

    def capture(self, mid_epoch: bool) -> StateBundle:
        bundle = StateBundle()
        bundle.meta["data"] = self.tracker.capture(mid_epoch)
        if mid_epoch:
            model_state.capture_metrics(self.model, bundle)
        for provider in self.ckpt.providers.values():
            provider.capture_state(self.model, bundle)
        return bundle

    def close(self) -> None:
        if not self.closed:
            self.tracker.detach()
            self.closed = True


def join(ckpt: CheckpointDirectory, callback) -> TrainingSession:
    """The session of the running `fit`, opened by the first callback that asks."""
    session = ckpt.session
    if (
        session is None
        or session.closed
        or session.model is not callback.model
        or id(callback) in session.members
    ):
        session = TrainingSession(ckpt, callback.model)
        ckpt.session = session
    session.members.add(id(callback))
    return session


class SessionCallback(keras.callbacks.Callback):
    """Base of keras_resume's callbacks: holds the directory and joins the session.

    End-of-epoch work runs in `after_epoch`, called just before the next epoch
    begins (or when training ends), once every callback has finished its
    `on_epoch_end`: state changed there by `ReduceLROnPlateau` or
    `EarlyStopping`, and logs they add, are then in what is saved, whatever the
    order of the callbacks.
    """

    def __init__(self, ckpt, **kwargs):
        super().__init__(**kwargs)
        self.ckpt = as_directory(ckpt)
        self.session: TrainingSession | None = None
        self._epoch_end: tuple[int, dict] | None = None

    def on_train_begin(self, logs=None):
        self.session = join(self.ckpt, self)
        self._epoch_end = None

    def on_epoch_begin(self, epoch, logs=None):
        self._flush_epoch_end()

    def on_epoch_end(self, epoch, logs=None):
        # Keep the dict itself: callbacks after this one still add to it.
        self._epoch_end = (epoch, logs if logs is not None else {})

    def on_train_end(self, logs=None):
        self._flush_epoch_end()
        if self.session is not None:
            self.session.close()

    def _flush_epoch_end(self) -> None:
        if self._epoch_end is not None:
            epoch, logs = self._epoch_end
            self._epoch_end = None
            self.after_epoch(epoch, logs)

    def after_epoch(self, epoch: int, logs: dict) -> None:
        """End-of-epoch work, run after every callback's `on_epoch_end`."""


def check_positive_int(name: str, value, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        expected = "None or a positive integer" if allow_none else "a positive integer"
        raise ValueError(
            f"Invalid value for argument {name}. Received: {name}={value!r}. Expected {expected}."
        )
