"""Several devices in one process: exact resume under data parallelism.

TensorFlow trains with `tf.distribute.MirroredStrategy` over two logical CPU
devices, JAX with `keras.distribution.DataParallel` over two host devices
(tests/train_script.py --devices 2). As in test_exact_resume.py, a run
SIGKILLed mid-epoch (global step 18: epoch 1, step 6, three steps after the
last backup) and rerun must end `numpy.array_equal` to an uninterrupted one in
every variable, every replica's copy of it included, with equal per-epoch logs.

`MultiWorkerMirroredStrategy` does not train under Keras 3 across workers:
keras_resume refuses it with a clear error.
"""

import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.conftest import (
    SUBPROCESS_TIMEOUT,
    assert_identical,
    load_result,
    run_script,
    script_env,
)

_REFERENCES = {}


def reference(tmp_path_factory, backend, *extra):
    """The uninterrupted two-device run of one configuration, and its run directory."""
    key = (backend, *extra)
    if key not in _REFERENCES:
        root = tmp_path_factory.mktemp(f"ref-2dev-{backend}")
        out = root / "out.npz"
        run_script("--dir", root / "run", "--out", out, "--devices", 2, *extra, backend=backend)
        _REFERENCES[key] = (load_result(out), root / "run")
    return _REFERENCES[key]


def interrupted_then_resumed(tmp_path, backend, *extra):
    args = ["--dir", tmp_path / "run", "--out", tmp_path / "out.npz", "--devices", 2, *extra]
    run_script(*args, "--kill-at-step", 18, expect_killed=True, backend=backend)
    assert not (tmp_path / "out.npz").exists()
    run_script(*args, backend=backend)
    return load_result(tmp_path / "out.npz")


def run_snippet(code: str, backend: str, **env) -> dict:
    """Runs `code` in a fresh interpreter (`env` added); returns the JSON object it prints last."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**script_env(backend), **env},
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_mirrored_strategy_resumes_bit_identical(tmp_path, tmp_path_factory):
    (expected, _) = reference(tmp_path_factory, "tensorflow")
    arrays = expected[0]
    assert int(arrays["devices"]) == 2
    # BatchNormalization's moving statistics follow each replica's half of the
    # batch: the copies differ, and the resume must put back both.
    moving = [k for k in arrays if k.startswith("replicas/") and "moving_mean" in k]
    assert moving and not np.array_equal(arrays[moving[0]][0], arrays[moving[0]][1])
    assert_identical(expected, interrupted_then_resumed(tmp_path, "tensorflow"))


def test_mirrored_checkpoint_restores_into_a_single_device_model(tmp_path, tmp_path_factory):
    (expected, run_dir), out = reference(tmp_path_factory, "tensorflow"), tmp_path / "one.npz"
    run_script("--dir", run_dir, "--out", out, "--restore-only", backend="tensorflow")
    restored, info = load_result(out)
    assert info["warnings"] == []
    # The run ended with its epoch-end backup: the first replica's values.
    single = [k for k in expected[0] if k.split("/")[0] in ("model", "optimizer", "seed")]
    assert sorted(restored) == sorted(single)
    differ = [k for k in restored if not np.array_equal(restored[k], expected[0][k])]
    assert differ == []


def test_data_parallel_resumes_bit_identical_on_jax(tmp_path, tmp_path_factory):
    # Device snapshots: copies of replicated arrays on both devices.
    (expected, _) = reference(tmp_path_factory, "jax", "--snapshot", "device")
    assert int(expected[0]["devices"]) == 2
    resumed = interrupted_then_resumed(tmp_path, "jax", "--snapshot", "device")
    assert_identical(expected, resumed)


TWO_CPUS = """
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""


def test_each_replica_gets_its_own_metric_accumulators_back(tmp_path):
    """A resumed epoch's logs sum the replicas' copies: each copy must come back as it was.

    Assigning the sum would split it evenly (1.5 and 1.5 instead of 1 and 2).
    """
    result = run_snippet(
        TWO_CPUS
        + f"""
    import json, pathlib, keras, numpy as np
    from keras_resume import backend
    from keras_resume.state import model_state, schema
    from keras_resume.state.bundle import StateBundle

    with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile("sgd", "mse", metrics=["mae"])
    model.fit(np.ones((8, 3)), np.ones((8, 1)), batch_size=4, verbose=0)
    variables = backend.metric_variables(model)
    for k, v in enumerate(variables):
        assert backend.assign_replica_values(v, [np.float32(k + 1), np.float32(2 * k + 2)])
    saved = StateBundle()
    model_state.capture_metrics(model, saved)
    saved.write(pathlib.Path({str(tmp_path)!r}))
    model.reset_metrics()
    bundle = StateBundle.read(pathlib.Path({str(tmp_path)!r}))
    schema.check_bundle(bundle, {str(tmp_path)!r})
    assert model_state.restore_metrics(model, bundle)
    print(json.dumps({{
        "copies": [[float(c) for c in backend.replica_values(v)] for v in variables],
        "read": [float(backend.to_numpy(v)) for v in variables],
    }}))
    """,
        "tensorflow",
    )
    count = len(result["copies"])
    assert count >= 2  # the loss tracker's and mae's total and count
    assert result["copies"] == [[k + 1.0, 2.0 * k + 2.0] for k in range(count)]
    assert result["read"] == [3.0 * k + 3.0 for k in range(count)]


MULTI_WORKER = """
    import json, os, tempfile, keras, numpy as np, tensorflow as tf
    import keras_resume as kr

    os.environ.pop("TF_CONFIG", None)  # one worker: enough to make the strategy
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    said = {}
    run = tempfile.mkdtemp()
    try:
        with strategy.scope():
            kr.StepBackup(run)
    except kr.UnsupportedStrategyError as e:
        said["constructed_in_scope"] = str(e)
    with strategy.scope():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
    callbacks = kr.CheckpointDirectory(run).callbacks(every_n_steps=1)
    try:
        model.fit(np.ones((8, 3)), np.ones((8, 1)), batch_size=4, callbacks=callbacks, verbose=0)
    except kr.UnsupportedStrategyError as e:
        said["fit"] = str(e)
    said["files"] = sorted(os.listdir(run))
    print(json.dumps(said))
"""


def test_multi_worker_mirrored_strategy_is_refused_with_a_clear_error():
    said = run_snippet(MULTI_WORKER, "tensorflow")
    for where in ("constructed_in_scope", "fit"):
        message = said.get(where, "")
        assert "MultiWorkerMirroredStrategy" in message, where
        assert "keras-team/keras#20585" in message
        assert "does not train under Keras 3" in message
        assert "keras.distribution.initialize" in message and "DataParallel" in message
        assert "keras-resume run --nprocs" in message
    assert not [f for f in said["files"] if f.startswith("backup")]  # refused before training


def test_device_snapshot_room_is_counted_per_device_on_jax():
    """A replicated array is whole on each device: a copy needs all its bytes on each."""
    result = run_snippet(
        """
        import json, jax, keras
        from keras_resume import backend

        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1000)])
        values = [v.value for v in model.weights]
        need = backend._bytes_per_device(values)
        print(json.dumps({
            "devices": len(jax.devices()),
            "need": sorted(need.values()),
            "total": sum(v.nbytes for v in values),
        }))
        """,
        "jax",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
    )
    assert result["devices"] == 2
    assert result["need"] == [result["total"]] * 2


@pytest.mark.parametrize(
    ("meta", "arrays", "says"),
    [
        ({"replicas": {"variables": [-1]}}, ["replicas/0"], "replicas.variables[0]=-1"),
        ({"replicas": {"variables": ["a"]}}, ["replicas/0"], "replicas.variables[0]"),
        ({"replicas": {"variables": [0, 1]}}, ["replicas/0"], "lists 2 arrays"),
        (
            {"metrics": {"count": 1, "per_replica": [1]}},
            ["metrics/0", "metrics_replicas/0"],
            "metrics.per_replica[0]=1 is outside",
        ),
        ({"metrics": {"count": 1, "per_replica": [0]}}, ["metrics/0"], "lists 1 arrays"),
    ],
)
def test_malformed_replica_state_is_refused_naming_the_key(tmp_path, meta, arrays, says):
    from keras_resume.errors import CheckpointCorruptError
    from keras_resume.state import schema
    from keras_resume.state.bundle import StateBundle

    bundle = StateBundle(meta, {key: np.zeros((2, 3)) for key in arrays})
    with pytest.raises(CheckpointCorruptError, match=re.escape(says)):
        schema.check_bundle(bundle, tmp_path)
