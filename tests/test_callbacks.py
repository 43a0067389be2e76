"""The callbacks in one process: best value across restarts, callback state, skipping."""

import json

import keras
import numpy as np
import pytest

import keras_resume as kr
from keras_resume import backend
from keras_resume.directory import as_directory
from tests.conftest import Interrupt, tiny_data, tiny_model

needs_steps_per_execution = pytest.mark.skipif(
    backend.name() == "torch",
    reason="Keras's PyTorch backend refuses steps_per_execution > 1",
)


def _fit(
    ckpt_dir,
    epochs,
    extra=(),
    track=(),
    every=None,
    monitor="loss",
    seed=0,
    verbose=0,
    steps_per_execution=1,
):
    keras.utils.set_random_seed(seed)
    model = tiny_model()
    model.compile(optimizer="adam", loss="mse", steps_per_execution=steps_per_execution)
    x, y = tiny_data()
    callbacks = list(extra) + kr.CheckpointDirectory(ckpt_dir).callbacks(
        every_n_steps=every, monitor=monitor, track=list(track), verbose=verbose
    )
    history = model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, callbacks=callbacks)
    return model, history


def test_best_value_survives_restart(ckpt_dir):
    _fit(ckpt_dir, epochs=4)
    ckpt = kr.CheckpointDirectory(ckpt_dir)
    best = ckpt.best()
    bests_before = ckpt.checkpoints("best")
    # A new run in the same directory from a fresh (worse) model must not
    # overwrite the best checkpoint: its best value comes from the manifest.
    keras.utils.set_random_seed(5)
    model = tiny_model()
    for variable in model.trainable_variables:  # far from the solution on every backend
        variable.assign(np.full(variable.shape, 10.0, dtype="float32"))
    x, y = tiny_data()
    history = model.fit(
        x,
        y,
        batch_size=8,
        epochs=1,
        verbose=0,
        callbacks=[kr.BestCheckpoint(ckpt_dir, monitor="loss")],
    )
    assert history.history["loss"][-1] > best["value"]  # a worse run...
    assert ckpt.best() == best  # ...whose best epoch is not a new best
    assert ckpt.checkpoints("best") == bests_before


def test_best_checkpoint_thresholds_and_modes(tmp_path):
    x, y = tiny_data()
    model = tiny_model()
    model.fit(
        x,
        y,
        epochs=2,
        verbose=0,
        callbacks=[kr.BestCheckpoint(tmp_path / "a", monitor="loss", initial_value_threshold=0.0)],
    )
    assert kr.CheckpointDirectory(tmp_path / "a").checkpoints("best") == []
    model.fit(
        x,
        y,
        epochs=2,
        verbose=0,
        callbacks=[kr.BestCheckpoint(tmp_path / "b", monitor="loss", mode="max")],
    )
    best = kr.CheckpointDirectory(tmp_path / "b").best()
    assert best["mode"] == "max" and best["epoch"] in (0, 1)


def test_best_checkpoint_warns_for_missing_metric(tmp_path):
    x, y = tiny_data()
    with pytest.warns(UserWarning, match="val_loss"):
        tiny_model().fit(
            x, y, epochs=1, verbose=0, callbacks=[kr.BestCheckpoint(tmp_path, monitor="val_loss")]
        )
    assert kr.CheckpointDirectory(tmp_path).checkpoints("best") == []


def test_mid_epoch_resume_trains_no_batch_twice(ckpt_dir):
    reference, ref_history = _fit(ckpt_dir.with_name("ref"), epochs=3, every=3)
    with pytest.raises(KeyboardInterrupt):
        _fit(ckpt_dir, epochs=3, every=3, extra=[Interrupt(7)])
    saved = kr.CheckpointDirectory(ckpt_dir).checkpoints("backup")[-1]
    # Backups after steps 3 and 6; the one after step 6 is epoch 1, step 2.
    assert (saved["epoch"], saved["step_in_epoch"], saved["epoch_complete"]) == (1, 2, False)
    model, history = _fit(ckpt_dir, epochs=3, every=3)
    # 3 epochs of 4 steps: a replayed batch would push the step counter past 12.
    assert backend.read_int(model.optimizer.iterations) == 12
    assert history.epoch == [0, 1, 2]
    assert history.history == ref_history.history
    for a, b in zip(reference.weights, model.weights):
        assert np.array_equal(a.numpy(), b.numpy())


@needs_steps_per_execution
def test_mid_epoch_resume_with_steps_per_execution(ckpt_dir):
    reference, ref_history = _fit(
        ckpt_dir.with_name("ref"), epochs=3, every=2, steps_per_execution=2
    )
    with pytest.raises(KeyboardInterrupt):
        _fit(ckpt_dir, epochs=3, every=2, extra=[Interrupt(8)], steps_per_execution=2)
    saved = kr.CheckpointDirectory(ckpt_dir).checkpoints("backup")[-1]
    assert (saved["epoch"], saved["step_in_epoch"], saved["epoch_complete"]) == (1, 2, False)
    model, history = _fit(ckpt_dir, epochs=3, every=2, steps_per_execution=2)
    assert backend.read_int(model.optimizer.iterations) == 12
    assert history.history == ref_history.history
    for a, b in zip(reference.weights, model.weights):
        assert np.array_equal(a.numpy(), b.numpy())


def test_empty_directory_is_a_fresh_start(ckpt_dir):
    ckpt_dir.mkdir()
    model, history = _fit(ckpt_dir, epochs=2)
    assert history.epoch == [0, 1]
    assert kr.CheckpointDirectory(ckpt_dir).checkpoints("backup")[-1]["epoch"] == 1


def test_resume_message_names_epoch_and_skipped_batches(ckpt_dir, capsys):
    with pytest.raises(KeyboardInterrupt):
        _fit(ckpt_dir, epochs=3, every=3, extra=[Interrupt(7)])
    capsys.readouterr()
    _fit(ckpt_dir, epochs=3, every=3, verbose=1)
    out = capsys.readouterr().out
    assert f"Resumed {ckpt_dir} at epoch 2, step 2 of 4: skipping 2 batches" in out


def test_early_stopping_patience_survives_restart(ckpt_dir):
    def early():
        return keras.callbacks.EarlyStopping(monitor="loss", patience=3, min_delta=100.0)

    _, reference = _fit(ckpt_dir.with_name("ref"), epochs=10, track=[early()])
    assert reference.epoch == [0, 1, 2, 3]  # stops once `wait` reaches 3
    with pytest.raises(KeyboardInterrupt):
        _fit(ckpt_dir, epochs=10, track=[early()], extra=[Interrupt(9)])
    _, resumed = _fit(ckpt_dir, epochs=10, track=[early()])
    assert resumed.epoch == reference.epoch
    assert resumed.history == reference.history


class PlateauTrace(keras.callbacks.Callback):
    """Records ReduceLROnPlateau's state after every epoch (listed after it)."""

    def __init__(self, plateau):
        super().__init__()
        self.plateau, self.trace = plateau, {}

    def on_epoch_end(self, epoch, logs=None):
        p = self.plateau
        lr = float(np.asarray(self.model.optimizer.learning_rate))
        self.trace[epoch] = (p.wait, p.cooldown_counter, float(p.best), lr)


def test_reduce_lr_state_carries_over_exactly(ckpt_dir):
    x, y = tiny_data()

    def run(run_dir, extra=()):
        plateau = keras.callbacks.ReduceLROnPlateau(
            monitor="loss", patience=1, factor=0.5, cooldown=1, min_delta=0.02
        )
        trace = PlateauTrace(plateau)  # listed after the plateau callback it watches
        keras.utils.set_random_seed(0)
        model = tiny_model()
        callbacks = kr.CheckpointDirectory(run_dir).callbacks(monitor="loss", track=[plateau])
        model.fit(x, y, batch_size=8, epochs=6, verbose=0, callbacks=callbacks + [trace, *extra])
        return trace.trace

    reference = run(ckpt_dir.with_name("ref"))
    assert len({state[:2] for state in reference.values()}) > 1  # the state really changes
    with pytest.raises(KeyboardInterrupt):
        run(ckpt_dir, extra=[Interrupt(10)])  # newest backup: the end of epoch 1
    resumed = run(ckpt_dir)
    assert min(resumed) == 2
    assert resumed == {e: state for e, state in reference.items() if e >= 2}


class CountingCallback(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs_seen = 0

    def on_epoch_end(self, epoch, logs=None):
        self.epochs_seen += 1

    def get_state(self):
        return {"epochs_seen": self.epochs_seen}

    def set_state(self, state):
        self.epochs_seen = state["epochs_seen"]


def test_custom_callback_state_protocol(ckpt_dir):
    _fit(ckpt_dir, epochs=2, track=[CountingCallback()])
    counter = CountingCallback()
    _fit(ckpt_dir, epochs=4, track=[counter])
    assert counter.epochs_seen == 4


def test_untrackable_callback_is_refused_at_construction(tmp_path):
    with pytest.raises(ValueError, match="CSVLogger.*get_state"):
        kr.SchedulerCapture(tmp_path, [keras.callbacks.CSVLogger(str(tmp_path / "log.csv"))])
    with pytest.raises(TypeError, match="received 3"):
        kr.SchedulerCapture(tmp_path, [3])


def test_finished_run_is_not_trained_again(ckpt_dir):
    model, first = _fit(ckpt_dir, epochs=2)
    again, second = _fit(ckpt_dir, epochs=2)
    assert backend.read_int(again.optimizer.iterations) == 8
    assert second.epoch == [0, 1] and second.history == first.history
    for a, b in zip(model.weights, again.weights):
        assert np.array_equal(a.numpy(), b.numpy())


def test_more_epochs_continue_a_finished_run(ckpt_dir):
    _fit(ckpt_dir, epochs=2)
    model, history = _fit(ckpt_dir, epochs=3)
    assert history.epoch == [0, 1, 2]
    assert backend.read_int(model.optimizer.iterations) == 12


def test_resume_without_rng_capture_warns(ckpt_dir):
    keras.utils.set_random_seed(0)
    x, y = tiny_data()
    for _ in range(2):
        model = tiny_model()
        callbacks = [kr.StepBackup(ckpt_dir / "norng"), kr.FullStateResume(ckpt_dir / "norng")]
        if _ == 1:
            with pytest.warns(UserWarning, match="no RNG state"):
                model.fit(x, y, epochs=2, verbose=0, callbacks=callbacks)
        else:
            model.fit(x, y, epochs=1, verbose=0, callbacks=callbacks)


def test_manifest_records_resume_points(ckpt_dir):
    with pytest.raises(KeyboardInterrupt):
        _fit(ckpt_dir, epochs=3, every=2, extra=[Interrupt(5)])
    _fit(ckpt_dir, epochs=3, every=2)
    manifest = json.loads((ckpt_dir / "manifest.json").read_text())
    (resume,) = manifest["resumes"]
    assert (resume["epoch"], resume["step_in_epoch"], resume["global_step"]) == (1, 0, 4)


def test_kill_between_best_and_backup_commit_loses_no_best(ckpt_dir, monkeypatch):
    _, ref = _fit(ckpt_dir.with_name("ref"), epochs=3)
    ref_best = kr.CheckpointDirectory(ckpt_dir.with_name("ref")).best()
    directory = as_directory(ckpt_dir)  # the object every callback on this path shares
    original = directory.write
    calls = []

    def write_then_die(pending):
        # Dies at the backup that completes the best epoch, after its best commit.
        position = pending.position
        if (
            pending.kind == "backup"
            and position["epoch_complete"]
            and (position["epoch"] == ref_best["epoch"])
        ):
            raise KeyboardInterrupt("killed between the two commits")
        calls.append(pending.kind)
        return original(pending)

    monkeypatch.setattr(directory, "write", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        _fit(ckpt_dir, epochs=3)
    assert calls[-1] == "best"
    monkeypatch.undo()
    _fit(ckpt_dir, epochs=3)
    assert directory.best() == ref_best


def test_finished_run_rerun_keeps_early_stopping_best_weights(ckpt_dir):
    def early():
        return keras.callbacks.EarlyStopping(
            monitor="loss", patience=1, min_delta=0.5, restore_best_weights=True
        )

    first, history = _fit(ckpt_dir, epochs=10, track=[early()])
    assert len(history.epoch) < 10  # it stopped early and restored its best weights
    again, _ = _fit(ckpt_dir, epochs=10, track=[early()])
    for a, b in zip(first.weights, again.weights):
        assert np.array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize(
    "input_kind",
    [
        "numpy",
        pytest.param(
            "tfdata",
            marks=pytest.mark.skipif(
                backend.name() != "tensorflow",
                reason="known limit on JAX/PyTorch (README: Limits): Keras's first fit on "
                "a model draws a tf.data batch to build it, a refit of the same model does not",
            ),
        ),
    ],
)
def test_same_model_refit_after_ctrl_c_resumes_exactly(ckpt_dir, input_kind):
    def inputs():
        x, y = tiny_data()
        if input_kind == "numpy":
            return {"x": x, "y": y, "batch_size": 8, "shuffle": True}
        import tensorflow as tf

        return {"x": tf.data.Dataset.from_tensor_slices((x, y)).shuffle(32, seed=3).batch(8)}

    def fit(model, run, extra=()):
        callbacks = list(extra) + kr.CheckpointDirectory(run).callbacks(
            every_n_steps=3, monitor=None
        )
        return model.fit(**inputs(), epochs=3, verbose=0, callbacks=callbacks)

    keras.utils.set_random_seed(0)
    reference = tiny_model()
    fit(reference, ckpt_dir.with_name("ref"))
    keras.utils.set_random_seed(0)
    model = tiny_model()
    with pytest.raises(KeyboardInterrupt):
        fit(model, ckpt_dir, extra=[Interrupt(7)])
    fit(model, ckpt_dir)  # the same model object, as a notebook cell run again
    assert backend.read_int(model.optimizer.iterations) == 12
    for a, b in zip(reference.weights, model.weights):
        assert np.array_equal(a.numpy(), b.numpy())


@needs_steps_per_execution
def test_steps_per_execution_that_cannot_continue_is_refused(ckpt_dir):
    with pytest.raises(KeyboardInterrupt):
        _fit(ckpt_dir, epochs=3, every=1, extra=[Interrupt(6)])  # backup at epoch 1, step 1
    with pytest.raises(kr.CheckpointMismatchError, match="steps_per_execution=2"):
        _fit(ckpt_dir, epochs=3, every=1, steps_per_execution=2)


class StopMidEpoch(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if backend.read_int(self.model.optimizer.iterations) == 6:
            self.model.stop_training = True


def test_mid_epoch_stop_training_is_not_a_finished_run(ckpt_dir):
    _fit(ckpt_dir, epochs=3, every=4, extra=[StopMidEpoch()])
    newest = kr.CheckpointDirectory(ckpt_dir).checkpoints("backup")[-1]
    assert (newest["epoch"], newest["step_in_epoch"], newest["epoch_complete"]) == (
        1,
        0,
        False,
    ) or (newest["epoch_complete"] and not newest["training_stopped"])
    model, history = _fit(ckpt_dir, epochs=3, every=4)
    assert history.epoch == [0, 1, 2]
    assert backend.read_int(model.optimizer.iterations) == 12
