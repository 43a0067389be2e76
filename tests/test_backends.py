"""One directory format on every Keras backend.

A checkpoint written by training on one backend restores on another: every
model and optimizer variable `numpy.array_equal` to the writer's final state,
and a warning that says the random generator state cannot cross backends.
Each pair runs in fresh interpreters with KERAS_BACKEND set; the writer of one
pair is the reader of the next, so every backend writes and reads once.
"""

import numpy as np
import pytest

from tests.conftest import assert_identical, load_result, run_script
from tests.test_exact_resume import interrupted_then_resumed, reference

PAIRS = [("tensorflow", "jax"), ("jax", "torch"), ("torch", "tensorflow")]


@pytest.mark.parametrize(("writer", "reader"), PAIRS)
def test_weights_cross_backends_and_rng_says_it_cannot(tmp_path, writer, reader):
    run_dir = tmp_path / "run"
    common = ["--dir", run_dir, "--epochs", "2", "--input", "numpy"]
    run_script(*common, "--out", tmp_path / "trained.npz", backend=writer)
    run_script(*common, "--out", tmp_path / "restored.npz", "--restore-only", backend=reader)

    trained, _ = load_result(tmp_path / "trained.npz")
    restored, said = load_result(tmp_path / "restored.npz")
    assert said["backend"] == reader
    weights = sorted(k for k in trained if not k.startswith("seed/"))
    assert weights == sorted(k for k in restored if not k.startswith("seed/"))
    assert {k.split("/")[0] for k in weights} == {"model", "optimizer"}
    differ = [k for k in weights if not np.array_equal(trained[k], restored[k])]
    assert differ == [], f"{len(differ)} variables differ after a {writer} -> {reader} restore"
    # Step counters are int64 on TensorFlow, int32 on JAX and PyTorch; all else is float32.
    floats = [k for k in weights if trained[k].dtype.kind == "f"]
    assert len(floats) == len(weights) - 1
    assert all(trained[k].dtype == restored[k].dtype for k in floats)

    cross = [w for w in said["warnings"] if "cannot cross Keras backends" in w]
    assert len(cross) == 1, said["warnings"]
    assert f"written on {writer}" in cross[0] and f"this process runs {reader}" in cross[0]
    assert str(run_dir) in cross[0]


def test_same_backend_restore_says_nothing_about_backends(tmp_path):
    run_dir = tmp_path / "run"
    common = ["--dir", run_dir, "--epochs", "1", "--input", "numpy"]
    run_script(*common, "--out", tmp_path / "trained.npz", backend="jax")
    run_script(*common, "--out", tmp_path / "restored.npz", "--restore-only", backend="jax")
    trained, _ = load_result(tmp_path / "trained.npz")
    restored, said = load_result(tmp_path / "restored.npz")
    # Same backend: the SeedGenerator states come back too.
    differ = [k for k in trained if not np.array_equal(trained[k], restored[k])]
    assert differ == []
    assert not [w for w in said["warnings"] if "backend" in w], said["warnings"]


def test_device_snapshots_resume_bit_identical_on_jax(tmp_path, tmp_path_factory):
    """snapshot="device": the copies stay in JAX arrays until the writer thread.

    On this CPU a JAX "device" is host memory, but the path is the GPU one:
    `jnp.array(copy=True)` on the training thread, `np.asarray` on the writer.
    """
    expected = reference(tmp_path_factory, "jax", "numpy", "plateau")
    resumed = interrupted_then_resumed(
        tmp_path, "jax", "numpy", "plateau", 18, "--snapshot", "device"
    )
    assert_identical(expected, resumed)


def test_device_snapshot_needs_jax(tmp_path):
    proc = run_script(
        "--dir",
        tmp_path / "run",
        "--out",
        tmp_path / "o.npz",
        "--snapshot",
        "device",
        check=False,
        backend="torch",
    )
    assert proc.returncode == 1
    assert "snapshot='device' needs the JAX backend; this process runs torch" in proc.stderr
