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
