"""`SchedulerCapture`: puts the state of stateful callbacks into each backup."""

from __future__ import annotations

from keras_resume.callbacks.session import SessionCallback
from keras_resume.state import callback_state


class SchedulerCapture(SessionCallback):
    """Adds the state of stateful callbacks (LR schedulers, early stopping) to backups.

    `EarlyStopping` and `ReduceLROnPlateau` reset their counters and best value
    in `on_train_begin`, so after a plain restart they forget how long they have
    waited. With `SchedulerCapture`, a resumed run carries on with the same
    `wait`, `best`, `cooldown_counter` and (for `restore_best_weights`) best
    weights. The state is put back at the first epoch of the resumed run, after
    every callback's `on_train_begin`.

    A `keras.optimizers.schedules.LearningRateSchedule` needs nothing here: it is
    a function of the optimizer's step counter, which every backup holds. Your
    own callbacks take part by defining `get_state()` (a JSON-able dict) and
    `set_state(state)`.

    Example:

    >>> import tempfile
    >>> import keras
    >>> import numpy as np
    >>> import keras_resume as kr
    >>> x = np.random.default_rng(0).random((8, 2))
    >>> y = x.sum(axis=1, keepdims=True)
    >>> run = tempfile.mkdtemp()
    >>> def train(epochs):  # the training script; a baseline no loss beats: wait += 1 an epoch
    ...     keras.utils.set_random_seed(0)
    ...     early = keras.callbacks.EarlyStopping(monitor="loss", patience=5, baseline=0.0)
    ...     model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    ...     model.compile(optimizer="sgd", loss="mse")
    ...     model.fit(x, y, epochs=epochs, verbose=0, callbacks=[
    ...         kr.FullStateResume(run), kr.StepBackup(run), kr.RngCapture(run),
    ...         kr.SchedulerCapture(run, [early]), early])
    ...     return early
    >>> train(epochs=2).wait
    2
    >>> train(epochs=3).wait  # resumed: counts on from 2 (a plain restart would say 1)
    3

    Args:
        ckpt: a `CheckpointDirectory` or a path.
        track: the callback instances whose state to capture. They must also
            be passed to `fit`.
    """

    section = "callbacks"

    def __init__(self, ckpt, track):
        super().__init__(ckpt)
        self.track = list(track)
        for callback in self.track:
            callback_state.check_supported(callback)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.session.providers[self.section] = self

    def capture_state(self, model, bundle) -> None:
        callback_state.capture_callbacks(self.track, bundle)

    def restore_state(self, bundle) -> list[str]:
        return callback_state.restore_callbacks(self.track, bundle)
