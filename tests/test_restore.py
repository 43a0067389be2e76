"""restoring.py (`kr.restore`): the one restore call, mismatches, missing and best checkpoints."""

import keras
import numpy as np
import pytest

import keras_resume as kr
from tests.conftest import all_variables, tiny_data, tiny_model


@pytest.fixture
def trained(ckpt_dir):
    keras.utils.set_random_seed(0)
    model = tiny_model()
    x, y = tiny_data()
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=3,
        verbose=0,
        callbacks=kr.CheckpointDirectory(ckpt_dir).callbacks(every_n_steps=3, monitor="loss"),
    )
    return model


def test_restore_latest_loads_every_variable(trained, ckpt_dir):
    fresh = tiny_model()
    fresh(np.zeros((1, 3)))
    info = kr.restore(fresh, ckpt_dir)
    assert (info.kind, info.epoch, info.initial_epoch, info.initial_step) == ("backup", 2, 3, 0)
    assert info.global_step == 12
    for a, b in zip(all_variables(trained), all_variables(fresh)):
        assert np.array_equal(a, b)
    seeds_a = [np.array(g.state.numpy()) for g in trained.layers[1]._seed_generators]
    seeds_b = [np.array(g.state.numpy()) for g in fresh.layers[1]._seed_generators]
    assert all(np.array_equal(a, b) for a, b in zip(seeds_a, seeds_b))


def test_restore_best_picks_the_manifest_best(trained, ckpt_dir):
    fresh = tiny_model()
    fresh(np.zeros((1, 3)))
    info = kr.restore(fresh, ckpt_dir, which="best")
    best = kr.CheckpointDirectory(ckpt_dir).best()
    assert info.kind == "best" and info.checkpoint_id == best["checkpoint_id"]
    assert info.logs["loss"] == best["value"]


def test_mismatched_model_names_variable_and_loads_nothing(trained, ckpt_dir):
    other = tiny_model(units=5)
    other(np.zeros((1, 3)))
    other.optimizer.build(other.trainable_variables)
    before = all_variables(other)
    with pytest.raises(kr.CheckpointMismatchError) as err:
        kr.restore(other, ckpt_dir)
    message = str(err.value)
    assert "kernel" in message and "[3, 4]" in message and "[3, 5]" in message
    assert "nothing was loaded" in message
    assert all(np.array_equal(a, b) for a, b in zip(before, all_variables(other)))


def test_other_optimizer_and_dtype_are_named(trained, ckpt_dir):
    sgd = tiny_model(optimizer="sgd")
    sgd(np.zeros((1, 3)))
    with pytest.raises(
        kr.CheckpointMismatchError, match="optimizer: checkpoint has Adam, model has SGD"
    ):
        kr.restore(sgd, ckpt_dir)
    half = tiny_model(dtype="float16")
    half(np.zeros((1, 3)))
    with pytest.raises(kr.CheckpointMismatchError, match="float16"):
        kr.restore(half, ckpt_dir)


def test_unbuilt_model_gets_clear_error(trained, ckpt_dir):
    unbuilt = keras.Sequential([keras.layers.Dense(4), keras.layers.Dense(1)])
    unbuilt.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="not built"):
        kr.restore(unbuilt, ckpt_dir)


def test_missing_directory_is_a_clear_error_for_restore(tmp_path):
    model = tiny_model()
    with pytest.raises(kr.NoCheckpointError, match="No 'latest' checkpoint"):
        kr.restore(model, tmp_path / "never-written")


def test_restore_by_id(trained, ckpt_dir):
    entries = kr.CheckpointDirectory(ckpt_dir).checkpoints("backup")
    fresh = tiny_model()
    fresh(np.zeros((1, 3)))
    info = kr.restore(fresh, ckpt_dir, which=entries[0]["id"])
    assert info.checkpoint_id == entries[0]["id"]


class _NeverCalled(keras.Model):
    """keras.io's subclassing: layers in __init__, built by fit's first batch."""

    def __init__(self):
        super().__init__(name="never_called")
        self.hidden = keras.layers.Dense(4, activation="relu", name="hidden")
        self.dropout = keras.layers.Dropout(0.2, name="dropout")
        self.head = keras.layers.Dense(1, name="head")

    def call(self, x, training=False):
        return self.head(self.dropout(self.hidden(x), training=training))


def _fit_never_called(directory, epochs):
    keras.utils.set_random_seed(0)
    model = _NeverCalled()
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9, name="sgd"), "mse")
    ckpt = kr.CheckpointDirectory(directory)
    resume = kr.FullStateResume(ckpt)
    callbacks = [resume, kr.StepBackup(ckpt, every_n_steps=3), kr.RngCapture(ckpt)]
    x, y = tiny_data()
    model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, callbacks=callbacks)
    return model, resume


def test_subclassed_model_never_called_resumes_in_fit(tmp_path):
    # On TensorFlow `fit` builds such a model only as it traces the first step,
    # after on_train_begin: FullStateResume builds it from the data's shapes.
    _fit_never_called(tmp_path / "run", epochs=1)
    resumed, resume = _fit_never_called(tmp_path / "run", epochs=2)
    assert resume.resumed_from is not None and resume.resumed_from.initial_epoch == 1
    uninterrupted, _ = _fit_never_called(tmp_path / "control", epochs=2)
    assert [v.path for v in resumed.weights] == [v.path for v in uninterrupted.weights]
    for a, b in zip(all_variables(resumed), all_variables(uninterrupted), strict=True):
        assert np.array_equal(a, b)


def test_restore_outside_fit_still_refuses_a_never_called_model(tmp_path):
    _fit_never_called(tmp_path / "run", epochs=1)
    model = _NeverCalled()
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9, name="sgd"), "mse")
    with pytest.raises(ValueError, match="'never_called': the model is not built"):
        kr.restore(model, tmp_path / "run")
