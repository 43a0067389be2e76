"""Exact resume: a SIGKILLed and rerun training process ends bit-identical.

Each case trains tests/train_script.py three times in fresh interpreters: once
uninterrupted, once SIGKILLed, once rerun to completion. Every model,
optimizer and SeedGenerator variable must be `numpy.array_equal`, and the
per-epoch logs (with validation metrics) equal.

Every case runs on each Keras backend (TensorFlow, JAX, PyTorch; the
subprocess's KERAS_BACKEND); TensorFlow, the default, runs the whole matrix of
inputs and schedules, JAX and PyTorch each input once.

Steps: 12 per epoch, a backup every 5 steps, so a kill at global step 18
lands mid-epoch (epoch 1, step 6) three steps after the last backup.
"""

import random
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import BACKENDS, SCRIPT, assert_identical, load_result, run_script, script_env

_REFERENCES = {}
OTHER_BACKENDS = [b for b in BACKENDS if b != "tensorflow"]


def reference(tmp_path_factory, backend, input_kind, sched, *extra):
    """The uninterrupted run of one configuration, computed once per session."""
    key = (backend, input_kind, sched, *extra)
    if key not in _REFERENCES:
        root = tmp_path_factory.mktemp(f"ref-{backend}-{input_kind}-{sched}")
        out = root / "out.npz"
        run_script(
            "--dir",
            root / "run",
            "--out",
            out,
            "--input",
            input_kind,
            "--sched",
            sched,
            *extra,
            backend=backend,
        )
        _REFERENCES[key] = load_result(out)
    return _REFERENCES[key]


def interrupted_then_resumed(tmp_path, backend, input_kind, sched, kill_at, *extra):
    args = [
        "--dir",
        tmp_path / "run",
        "--out",
        tmp_path / "out.npz",
        "--input",
        input_kind,
        "--sched",
        sched,
        *extra,
    ]
    run_script(*args, "--kill-at-step", kill_at, expect_killed=True, backend=backend)
    assert not (tmp_path / "out.npz").exists()
    run_script(*args, backend=backend)
    return load_result(tmp_path / "out.npz")


MID_EPOCH_CASES = [
    ("tensorflow", input_kind, sched)
    for input_kind in ("numpy", "pydataset", "tfdata")
    for sched in ("plateau", "schedule")
] + [
    (b, input_kind, "plateau")
    for b in OTHER_BACKENDS
    for input_kind in ("numpy", "pydataset", "tfdata")
]


@pytest.mark.parametrize(("backend", "input_kind", "sched"), MID_EPOCH_CASES)
def test_mid_epoch_sigkill_resumes_bit_identical(
    tmp_path, tmp_path_factory, backend, input_kind, sched
):
    expected = reference(tmp_path_factory, backend, input_kind, sched)
    resumed = interrupted_then_resumed(tmp_path, backend, input_kind, sched, 18)
    assert_identical(expected, resumed)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("input_kind", ["numpy", "pydataset"])
def test_epoch_boundary_sigkill_resumes_bit_identical(
    tmp_path, tmp_path_factory, backend, input_kind
):
    # Killed after step 1 of epoch 1: the newest backup is the end of epoch 0.
    expected = reference(tmp_path_factory, backend, input_kind, "plateau")
    resumed = interrupted_then_resumed(tmp_path, backend, input_kind, "plateau", 13)
    assert_identical(expected, resumed)


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_rng_capture_the_resume_differs(tmp_path, tmp_path_factory, backend):
    # The control: proves the comparison above can fail. Without RNG state the
    # dropout and augmentation draws after the resume are not the original ones.
    expected = reference(tmp_path_factory, backend, "numpy", "plateau")
    resumed = interrupted_then_resumed(tmp_path, backend, "numpy", "plateau", 18, "--no-rng")
    with pytest.raises(AssertionError, match="variables differ"):
        assert_identical(expected, resumed)


def test_unseeded_run_resumes_with_a_warning(tmp_path):
    args = ["--dir", tmp_path / "run", "--out", tmp_path / "out.npz", "--no-seed"]
    run_script(*args, "--kill-at-step", 18, expect_killed=True)
    proc = run_script(*args)
    assert "without a global seed" in proc.stderr
    assert "keras.utils.set_random_seed" in proc.stderr
    assert (tmp_path / "out.npz").exists()


def _start_script(args, stderr, backend):
    """tests/train_script.py in the background, for tests that signal it themselves."""
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *map(str, args)],
        env=script_env(backend),
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
    )


def _wait_for_backup(run_dir, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run_dir / "manifest.json").exists() or proc.poll() is not None:
            return
        time.sleep(0.02)
    raise TimeoutError(f"no manifest in {run_dir} after {timeout}s")


@pytest.mark.parametrize(
    ("backend", "seed"), [("tensorflow", 1), ("tensorflow", 2), ("jax", 1), ("torch", 1)]
)
def test_sigkill_at_a_random_moment_from_outside(tmp_path, tmp_path_factory, backend, seed):
    """A parent process SIGKILLs training at a random instant, saves included."""
    longer = ("--epochs", "8")  # a window of about 3 s of training after the first backup
    expected = reference(tmp_path_factory, backend, "numpy", "schedule", *longer)
    run_dir, out = tmp_path / "run", tmp_path / "out.npz"
    args = ["--dir", run_dir, "--out", out, "--input", "numpy", "--sched", "schedule", *longer]
    proc = _start_script(args, stderr=subprocess.DEVNULL, backend=backend)
    try:
        _wait_for_backup(run_dir, proc)
        time.sleep(random.Random(seed).uniform(0.0, 0.8))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -9 and not out.exists(), "training ended before the kill"
    run_script(*args, backend=backend)
    assert_identical(expected, load_result(out))


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_saves_exits_143_and_resumes_exactly(tmp_path, tmp_path_factory, backend):
    """A scheduler's SIGTERM: checkpoint at the next step, exit 143, rerun is exact."""
    longer = ("--epochs", "8")
    expected = reference(tmp_path_factory, backend, "numpy", "schedule", *longer)
    run_dir, out = tmp_path / "run", tmp_path / "out.npz"
    args = [
        "--dir",
        run_dir,
        "--out",
        out,
        "--input",
        "numpy",
        "--sched",
        "schedule",
        "--every",
        "1000",
        *longer,
    ]  # no step backups: only SIGTERM saves mid-epoch
    proc = _start_script(args, stderr=subprocess.PIPE, backend=backend)
    try:
        _wait_for_backup(run_dir, proc)  # the end of epoch 0
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr[-2000:]
    assert "SIGTERM" in stderr and "Exiting with status 143" in stderr
    assert not out.exists()
    run_script(*args, backend=backend)
    assert_identical(expected, load_result(out))
