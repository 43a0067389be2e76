"""A run directory written by keras-resume 0.1 (checked in) reads with today's code.

tests/fixtures/write_run_v0_1.py wrote tests/fixtures/run-v0.1/ once, on
TensorFlow, with the code of the commit that added it; the tests copy it (a
resume writes into its directory) and read it: every checkpoint verifies, each
restores every model and optimizer variable `numpy.array_equal` to what the
writing process held at that instant, and `fit` resumes from its newest backup
mid-epoch, keeping its history and its best.
"""

import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_resume as kr
from keras_resume import runs as kr_inspect
from tests.fixtures import write_run_v0_1 as fixture

FIXTURE = Path(fixture.__file__).parent / "run-v0.1"


@pytest.fixture
def run(tmp_path):
    target = tmp_path / "run-v0.1"
    shutil.copytree(FIXTURE, target)
    return target


def _expected(prefix):
    with np.load(fixture.EXPECTED) as arrays:
        keys = sorted(k for k in arrays.files if k.startswith(prefix))
        return [arrays[k] for k in keys]


def _assert_variables_equal(net, expected):
    got = fixture.variables(net)
    assert len(got) == len(expected) > len(net.weights)  # the optimizer's too
    for i, (a, b) in enumerate(zip(got, expected)):
        assert a.shape == b.shape and np.array_equal(a, b), f"variable {i} differs"


def test_every_checkpoint_of_the_old_run_verifies(run):
    reports = kr_inspect.verify_run(run)
    assert [(r["id"], r["ok"]) for r in reports] == [(2, True), (3, True), (4, True)]


@pytest.mark.parametrize(
    ("which", "prefix", "position"),
    [("latest", "latest_", (1, 2, 10)), ("best", "best_", (0, 8, 8))],
)
def test_each_checkpoint_restores_exactly(run, which, prefix, position):
    net = fixture.model()
    info = kr.restore(net, run, which)
    assert (info.epoch, info.step, info.global_step) == position
    assert info.fit == 0
    _assert_variables_equal(net, _expected(prefix))


def test_fit_resumes_the_old_run_mid_epoch_keeping_history_and_best(run):
    keras.utils.set_random_seed(7)
    (x, y), validation = fixture.data()
    net = fixture.model()
    ckpt = kr.CheckpointDirectory(run)
    plateau = keras.callbacks.ReduceLROnPlateau(patience=1, factor=0.5)
    callbacks = ckpt.callbacks(every_n_steps=5, track=[plateau])
    history = net.fit(
        x, y, batch_size=4, epochs=3, validation_data=validation, callbacks=callbacks, verbose=0
    )
    ckpt.wait()
    resume = callbacks[0].resumed_from
    assert (resume.checkpoint_id, resume.initial_epoch, resume.initial_step) == (4, 1, 2)
    # epoch 0 came from the old run's history; epochs 1 and 2 were trained now
    assert ckpt.history()["epoch"] == [0, 1, 2]
    assert len(history.history["loss"]) == 3
    assert ckpt.best()["epoch"] in (0, 1, 2)
    newest = ckpt.checkpoints()[-1]
    assert (newest["epoch"], newest["epoch_complete"], newest["global_step"]) == (2, True, 24)
