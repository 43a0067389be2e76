"""Background saves: one in flight, snapshots exact, errors and exits handled."""

import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest

import keras_resume as kr
from keras_resume import backend
from keras_resume.directory import as_directory
from keras_resume.errors import SaveError
from tests.conftest import TESTS, tiny_data, tiny_model


def _writer_threads():
    return [t for t in threading.enumerate() if t.name.startswith("keras_resume save")]


class SlowWrites:
    """Wraps a directory's `write` to take `delay` seconds and record what it saw."""

    def __init__(self, monkeypatch, ckpt_dir, delay=0.15, fail_at=None):
        self.directory = as_directory(ckpt_dir)  # the object the callbacks share
        self.original = self.directory.write
        self.delay, self.fail_at = delay, fail_at
        self.active = self.max_active = 0
        self.calls = []  # (global_step, thread name, model steps at start, at end)
        self.model = None
        self.trained = -1
        self.lock = threading.Lock()
        monkeypatch.setattr(self.directory, "write", self.write)

    def steps(self):
        # Counted on the training thread: on JAX the variables cannot be read from
        # another thread mid-epoch (fit holds the state; the old buffers are donated).
        return self.trained

    def on_train_batch_end(self, batch, logs=None):
        self.trained += 1

    def write(self, pending):
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            start = self.steps()
            time.sleep(self.delay)
            if self.fail_at is not None and len(self.calls) == self.fail_at:
                self.calls.append(None)
                raise OSError(28, "No space left on device (injected)")
            entry = self.original(pending)
            thread = threading.current_thread().name
            self.calls.append((pending.position["global_step"], thread, start, self.steps()))
            return entry
        finally:
            with self.lock:
                self.active -= 1


class Record(keras.callbacks.Callback):
    """Host copies of every model and optimizer variable after each step."""

    def __init__(self):
        super().__init__()
        self.after_step = {}

    def on_train_batch_end(self, batch, logs=None):
        step = backend.read_int(self.model.optimizer.iterations)
        variables = self.model.weights + self.model.optimizer.variables
        self.after_step[step] = [np.array(v.numpy()) for v in variables]


def _fit(ckpt_dir, slow, epochs=2, every=2, extra=(), background=True, on_error="raise"):
    keras.utils.set_random_seed(0)
    model = tiny_model()
    slow.model, slow.trained = model, 0
    x, y = tiny_data(64)
    callbacks = [
        keras.callbacks.LambdaCallback(on_train_batch_end=slow.on_train_batch_end),
        kr.StepBackup(
            ckpt_dir, every_n_steps=every, keep=100, background=background, on_error=on_error
        ),
        kr.RngCapture(ckpt_dir),
        *extra,
    ]
    model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, callbacks=callbacks)
    return model


def test_one_save_in_flight_and_none_skipped(ckpt_dir, monkeypatch):
    slow = SlowWrites(monkeypatch, ckpt_dir)
    _fit(ckpt_dir, slow, epochs=2, every=2)
    assert slow.max_active == 1
    steps = [c[0] for c in slow.calls]
    # 8 steps an epoch: a backup after every 2nd step, the 8th being the epoch end.
    assert steps == [2, 4, 6, 8, 10, 12, 14, 16]
    assert {c[1] for c in slow.calls} != {"MainThread"}
    # Training went on while saves were written: the writer saw the step counter move.
    assert any(end > start for _, _, start, end in slow.calls)
    committed = [c["global_step"] for c in kr.CheckpointDirectory(ckpt_dir).checkpoints("backup")]
    assert committed == steps


def test_background_snapshot_is_the_state_at_its_step(ckpt_dir, monkeypatch):
    slow = SlowWrites(monkeypatch, ckpt_dir)
    record = Record()
    _fit(ckpt_dir, slow, epochs=2, every=3, extra=[record])
    ckpt = kr.CheckpointDirectory(ckpt_dir)
    entries = ckpt.checkpoints("backup")
    assert len(entries) >= 5
    for entry in entries:
        fresh = tiny_model()
        fresh.build((None, 3))
        kr.restore(fresh, ckpt_dir, which=entry["id"])
        restored = [np.array(v.numpy()) for v in fresh.weights + fresh.optimizer.variables]
        expected = record.after_step[entry["global_step"]]
        assert all(np.array_equal(a, b) for a, b in zip(restored, expected)), entry["dir"]


def test_background_false_writes_on_the_training_thread(ckpt_dir, monkeypatch):
    slow = SlowWrites(monkeypatch, ckpt_dir, delay=0)
    _fit(ckpt_dir, slow, epochs=1, every=4, background=False)
    assert [c[1] for c in slow.calls] == ["MainThread", "MainThread"]


def test_writer_error_raises_on_the_training_thread(ckpt_dir, monkeypatch):
    slow = SlowWrites(monkeypatch, ckpt_dir, delay=0.05, fail_at=1)
    with pytest.raises(SaveError, match="No space left on device") as info:
        _fit(ckpt_dir, slow, epochs=2, every=2)
    assert threading.current_thread() is threading.main_thread()
    assert "OSError: [Errno 28]" in str(info.value)
    ckpt = kr.CheckpointDirectory(ckpt_dir)
    (kept,) = ckpt.checkpoints("backup")
    assert kept["global_step"] == 2
    ckpt.verify(kept)
    assert sorted(p.name for p in ckpt_dir.iterdir() if p.name.startswith(".staging")) == []


def test_writer_error_with_on_error_warn_keeps_training(ckpt_dir, monkeypatch):
    slow = SlowWrites(monkeypatch, ckpt_dir, delay=0.05, fail_at=1)
    with pytest.warns(UserWarning, match="training continues without this checkpoint"):
        model = _fit(ckpt_dir, slow, epochs=2, every=2, on_error="warn")
    assert backend.read_int(model.optimizer.iterations) == 16
    steps = [c["global_step"] for c in kr.CheckpointDirectory(ckpt_dir).checkpoints("backup")]
    assert steps == [2, 6, 8, 10, 12, 14, 16]


def test_fit_returns_after_its_last_save_committed(ckpt_dir, monkeypatch):
    slow = SlowWrites(monkeypatch, ckpt_dir, delay=0.3)
    _fit(ckpt_dir, slow, epochs=1, every=8)
    assert _writer_threads() == []
    last = kr.CheckpointDirectory(ckpt_dir).checkpoints("backup")[-1]
    assert (last["global_step"], last["epoch_complete"]) == (8, True)


def test_exception_in_a_training_step_waits_for_the_save(ckpt_dir, monkeypatch):
    slow = SlowWrites(monkeypatch, ckpt_dir, delay=0.5)
    keras.utils.set_random_seed(0)
    model = tiny_model()
    slow.model = model
    x, y = tiny_data(64)
    model.make_train_function()
    original, calls = model.train_function, [0]

    def raising(*args):  # (iterator) on TensorFlow, (state, iterator) on JAX, (data) on torch
        calls[0] += 1
        if calls[0] == 4:  # the backup after step 3 is being written
            raise KeyboardInterrupt("Ctrl-C inside a step")
        return original(*args)

    model.train_function = raising
    callbacks = [kr.StepBackup(ckpt_dir, every_n_steps=3), kr.RngCapture(ckpt_dir)]
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=callbacks)
    # Nothing has read the directory yet (reading would wait): fit itself waited.
    assert _writer_threads() == []
    assert [c[0] for c in slow.calls] == [3]


def test_reading_the_directory_waits_for_a_save_in_flight(ckpt_dir, monkeypatch):
    slow = SlowWrites(monkeypatch, ckpt_dir, delay=0.5)

    class Stop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 3:  # the backup after step 3 was just taken
                raise KeyboardInterrupt("Ctrl-C in a callback")

    with pytest.raises(KeyboardInterrupt):
        _fit(ckpt_dir, slow, epochs=1, every=3, extra=[Stop()])
    assert len(_writer_threads()) == 1  # raised outside a step: fit could not wait
    steps = [c["global_step"] for c in kr.CheckpointDirectory(ckpt_dir).checkpoints("backup")]
    assert steps == [3]


EXIT_SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
import keras, keras_resume as kr
from keras_resume.directory import as_directory
from tests.conftest import tiny_data, tiny_model

directory = as_directory({ckpt!r})
original = directory.write
def slow(pending):
    time.sleep(1.0)
    return original(pending)
directory.write = slow

class Exit(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 3:
            sys.exit(3)  # the backup after step 3 is still being written

x, y = tiny_data(64)
model = tiny_model()
model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[
    kr.StepBackup(directory, every_n_steps=3), kr.RngCapture(directory), Exit()])
"""


def test_interpreter_exit_waits_for_the_save(ckpt_dir):
    script = EXIT_SCRIPT.format(root=str(TESTS.parent), ckpt=str(ckpt_dir))
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 3, proc.stderr
    (entry,) = kr.CheckpointDirectory(ckpt_dir).checkpoints("backup")
    assert entry["global_step"] == 3
    kr.CheckpointDirectory(ckpt_dir).verify(entry)
