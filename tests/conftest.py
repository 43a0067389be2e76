"""Shared test helpers: tiny real Keras models and a launcher for training subprocesses."""

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

TESTS = Path(__file__).parent
SCRIPT = TESTS / "train_script.py"
SUBPROCESS_TIMEOUT = 240


def tiny_model(units=4, optimizer="adam", dtype=None):
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(units, dtype=dtype),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(1, dtype=dtype),
        ]
    )
    model.compile(optimizer=optimizer, loss="mse")
    return model


def tiny_data(n=32):
    rng = np.random.RandomState(1)
    x = rng.normal(size=(n, 3)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)


def all_variables(model):
    return [np.array(v.numpy()) for v in model.weights + model.optimizer.variables]


BACKENDS = ["tensorflow", "jax", "torch"]


def script_env(backend=None) -> dict:
    """The environment of a training subprocess; `backend` sets KERAS_BACKEND."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONHASHSEED="0")
    if backend is not None:
        env["KERAS_BACKEND"] = backend
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), env.get("PYTHONPATH", "")])
    return env


def run_script(*args, check=True, expect_killed=False, backend=None):
    """Runs tests/train_script.py in a fresh interpreter; returns the CompletedProcess.

    `backend` runs it on that Keras backend (default: this process's environment).
    """
    env = script_env(backend)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    if expect_killed:
        assert proc.returncode == -9, f"expected SIGKILL, got {proc.returncode}\n{proc.stderr}"
    elif check:
        assert proc.returncode == 0, f"training script failed:\n{proc.stderr[-4000:]}"
    return proc


def load_result(path):
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != "history"}
        history = json.loads(str(data["history"]))
    return arrays, history


def assert_identical(result_a, result_b):
    """Every variable `numpy.array_equal`, and the per-epoch logs equal."""
    (arrays_a, history_a), (arrays_b, history_b) = result_a, result_b
    assert sorted(arrays_a) == sorted(arrays_b)
    differ = [k for k in arrays_a if not np.array_equal(arrays_a[k], arrays_b[k])]
    assert differ == [], f"{len(differ)} of {len(arrays_a)} variables differ: {differ[:5]}"
    assert history_a == history_b


class Interrupt(keras.callbacks.Callback):
    """Stops training with a KeyboardInterrupt (a Ctrl-C) once the optimizer took `step` steps."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(np.asarray(self.model.optimizer.iterations.numpy())) >= self.step:
            raise KeyboardInterrupt("simulated interruption")


@pytest.fixture
def ckpt_dir(tmp_path):
    return tmp_path / "run"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Keeps each backend's exact-resume cases on one xdist worker.

    They share their uninterrupted reference runs (computed once per worker);
    every other test is spread over the workers one by one.
    """
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend") if callspec is not None else None
        if backend is not None and item.module.__name__.endswith("test_exact_resume"):
            item.add_marker(pytest.mark.xdist_group(f"exact-resume-{backend}"))
