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

    ```python
    reduce_lr = keras.callbacks.ReduceLROnPlateau(patience=2)
    early = keras.callbacks.EarlyStopping(patience=5)
    callbacks = [keras_resume.SchedulerCapture(ckpt, [reduce_lr, early]),
                 reduce_lr, early, ...]
    ```

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
