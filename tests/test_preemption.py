"""SIGTERM inside one process: a save at a safe point, then exit status 143."""

import json
import os
import signal

import keras
import pytest

import keras_resume as kr
from keras_resume import backend
from tests.conftest import Interrupt, tiny_data, tiny_model


class Act(keras.callbacks.Callback):
    """Calls `action` once, from the hook named `hook`, when `when(epoch, batch)` holds."""

    def __init__(self, hook, action, when=lambda epoch, batch: True):
        super().__init__()
        self.done, self.epoch = False, 0
        setattr(self, hook, self._fire)
        self.action, self.when = action, when

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def _fire(self, batch=None, logs=None):
        if not self.done and self.when(self.epoch, batch):
            self.done = True
            self.action()


def sigterm():
    os.kill(os.getpid(), signal.SIGTERM)


def _fit(run, epochs=3, extra=(), validation=False):
    keras.utils.set_random_seed(0)
    model = tiny_model()
    x, y = tiny_data()
    callbacks = kr.CheckpointDirectory(run).callbacks(every_n_steps=3, monitor=None)
    kwargs = {"validation_data": (x[:8], y[:8])} if validation else {}
    model.fit(
        x, y, batch_size=8, epochs=epochs, verbose=0, callbacks=callbacks + list(extra), **kwargs
    )
    return model


def _state(run, entry):
    return json.loads((run / entry["dir"] / "state.json").read_text())


def test_sigterm_during_the_skip_saves_only_after_rng_is_restored(ckpt_dir):
    with pytest.raises(KeyboardInterrupt):
        _fit(ckpt_dir, extra=[Interrupt(7)])  # newest backup: epoch 1, step 2
    ckpt = kr.CheckpointDirectory(ckpt_dir)
    resumed_from = ckpt.checkpoints("backup")[-1]
    # SIGTERM while the first already-trained batch is being skipped.
    with pytest.raises(SystemExit) as exit_info:
        _fit(ckpt_dir, extra=[Act("on_train_batch_begin", sigterm)])
    assert exit_info.value.code == kr.EXIT_PREEMPTED == 143
    saved = ckpt.checkpoints("backup")[-1]
    assert saved["id"] > resumed_from["id"]
    assert (saved["epoch"], saved["step_in_epoch"]) == (1, 2)
    assert _state(ckpt_dir, saved)["rng"] == _state(ckpt_dir, resumed_from)["rng"]


def test_exception_during_the_skip_leaves_the_model_unpatched(ckpt_dir):
    with pytest.raises(KeyboardInterrupt):
        _fit(ckpt_dir, extra=[Interrupt(7)])

    def boom():
        raise KeyboardInterrupt

    keras.utils.set_random_seed(0)
    model = tiny_model()
    x, y = tiny_data()
    with pytest.raises(KeyboardInterrupt):
        model.fit(
            x,
            y,
            batch_size=8,
            epochs=3,
            verbose=0,
            callbacks=kr.CheckpointDirectory(ckpt_dir).callbacks(every_n_steps=3)
            + [Act("on_train_batch_end", boom)],
        )
    before = backend.read_int(model.optimizer.iterations)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # plain Keras, no keras_resume
    assert backend.read_int(model.optimizer.iterations) == before + 4


def test_sigterm_during_the_last_validation_still_exits_143(ckpt_dir):
    last = lambda epoch, batch: epoch == 2  # noqa: E731
    with pytest.raises(SystemExit) as exit_info:
        _fit(ckpt_dir, validation=True, extra=[Act("on_test_begin", sigterm, last)])
    assert exit_info.value.code == 143
    newest = kr.CheckpointDirectory(ckpt_dir).checkpoints("backup")[-1]
    assert (newest["epoch"], newest["epoch_complete"]) == (2, True)
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.default_int_handler)
