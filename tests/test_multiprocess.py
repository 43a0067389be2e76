"""A 2-process JAX job on loopback: one directory, one writer, exact resume.

Two real processes (tests/mp_train_script.py) join one job through
`keras.distribution.initialize` on 127.0.0.1 with gloo collectives, train with
`DataParallel` on a sharded `tf.data` input, and back up to one directory.
The job is SIGKILLed mid-epoch (each process kills itself at the same global
step; whichever survives a moment longer is killed by the test), rerun, and
must end bit-identical, on every process, to a job never interrupted.
"""

import json
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from keras_resume import multiprocess
from keras_resume.errors import SaveError
from keras_resume.state.bundle import StateBundle
from tests.conftest import TESTS, assert_identical, load_result, script_env

# The tests that share a reference job run on one xdist worker each (one group for
# the DataParallel reference, one for the ModelParallel ones), so it is made once.
REPLICATED = pytest.mark.xdist_group("multiprocess-replicated")
SHARDED_GROUP = pytest.mark.xdist_group("multiprocess-sharded")

SCRIPT = TESTS / "mp_train_script.py"
NPROCS = 2
JOB_TIMEOUT = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(tmp_path, name, *args, kill_at=None):
    """Runs the job; returns each process's return code. Kills stragglers of a dead job."""
    env = script_env("jax")
    env["KERAS_RESUME_COORDINATOR"] = f"127.0.0.1:{_free_port()}"
    env["KERAS_RESUME_NUM_PROCESSES"] = str(NPROCS)
    extra = ["--kill-at-step", str(kill_at)] if kill_at is not None else []
    procs = []
    for i in range(NPROCS):
        log = open(tmp_path / f"{name}-{i}.log", "w")  # noqa: SIM115 - closed below
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, str(SCRIPT), *map(str, args), *extra],
                    env=dict(env, KERAS_RESUME_PROCESS_ID=str(i)),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        )
    deadline = time.monotonic() + JOB_TIMEOUT
    try:
        while any(p.poll() is None for p, _ in procs):
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {name} still running after {JOB_TIMEOUT} s")
            if kill_at is not None and any(p.poll() == -signal.SIGKILL for p, _ in procs):
                # The whole job dies: a survivor would wait in a collective forever.
                time.sleep(0.5)
                for p, _ in procs:
                    if p.poll() is None:
                        p.send_signal(signal.SIGKILL)
            time.sleep(0.05)
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
            log.close()
    return [p.returncode for p, _ in procs]


def assert_job_killed(codes) -> None:
    """The job died at the kill: a process SIGKILLed itself, and every other died with it.

    A survivor is SIGKILLed by `run_job`, unless JAX's coordination service noticed
    the dead peer first and aborted it (SIGABRT, "detected fatal errors"): seen once
    in CI with 2 devices per process. Either way no process finished or failed alone.
    """
    assert -signal.SIGKILL in codes, codes
    assert set(codes) <= {-signal.SIGKILL, -signal.SIGABRT}, codes


def launcher_command(options, script_args) -> list[str]:
    """`keras-resume run --nprocs NPROCS OPTIONS -- python mp_train_script.py SCRIPT_ARGS`."""
    return [
        sys.executable, "-m", "keras_resume", "run", "--nprocs", str(NPROCS), *options,
        "--", sys.executable, str(SCRIPT), *map(str, script_args),
    ]  # fmt: skip


def _log(tmp_path, name, i):
    return (tmp_path / f"{name}-{i}.log").read_text()[-3000:]


@pytest.fixture(scope="session")  # not remade when xdist interleaves modules
def reference(tmp_path_factory):
    """Each process's final state after a job never interrupted."""
    tmp_path = tmp_path_factory.mktemp("mp-reference")
    codes = run_job(tmp_path, "ref", "--dir", tmp_path / "ref", "--out", tmp_path / "ref")
    assert codes == [0] * NPROCS, [_log(tmp_path, "ref", i) for i in range(NPROCS)]
    results = [load_result(tmp_path / f"ref-{i}.npz") for i in range(NPROCS)]
    assert_identical(results[0], results[1])  # replicated: both hold the same state
    # fit returned on no process before process 0 committed the epoch-end backup of
    # the last epoch (3 epochs of 12 steps): process 1 reads it at once.
    for arrays, _ in results:
        assert int(arrays["seen_after_fit/newest_backup_step"]) == 36
    return results


@REPLICATED
def test_two_process_job_sigkilled_mid_epoch_resumes_bit_identical(tmp_path, reference):

    args = ["--dir", tmp_path / "run", "--out", tmp_path / "out"]
    codes = run_job(tmp_path, "killed", *args, kill_at=18)
    assert_job_killed(codes)
    assert not list(tmp_path.glob("out-*.npz"))
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    backups = [c for c in manifest["checkpoints"] if c["kind"] == "backup"]
    newest = backups[-1]
    assert (newest["global_step"], newest["step_in_epoch"]) == (15, 3)  # mid-epoch 2
    # One checkpoint, one writer: process 1's state is a part of it.
    assert {f["path"] for f in newest["files"]} >= {
        "state.json",
        "process-1/state.json",
        "process-1/arrays.npz",
    }

    codes = run_job(tmp_path, "resumed", *args)
    assert codes == [0] * NPROCS, [_log(tmp_path, "resumed", i) for i in range(NPROCS)]
    for i in range(NPROCS):
        assert_identical(reference[i], load_result(tmp_path / f"out-{i}.npz"))
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["resumes"][-1]["checkpoint_id"] == newest["id"]
    assert not list((tmp_path / "run").glob(".parts-*"))  # leftovers of the kill removed


def test_per_process_state_differs_and_is_kept_per_process(tmp_path):
    """Each process's data position and RNG are its own: process 1's part is not a copy."""
    args = ["--dir", tmp_path / "run", "--out", tmp_path / "out", "--epochs", "1"]
    assert run_job(tmp_path, "one", *args) == [0] * NPROCS
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    newest = [c for c in manifest["checkpoints"] if c["kind"] == "backup"][-1]
    root = tmp_path / "run" / newest["dir"]
    mine = json.loads((root / "state.json").read_text())
    theirs = json.loads((root / "process-1" / "state.json").read_text())
    assert set(mine) == set(theirs)
    assert mine["data"]["iterators_created"] == theirs["data"]["iterators_created"]
    with np.load(root / "arrays.npz") as a, np.load(root / "process-1" / "arrays.npz") as b:
        assert sorted(a.files) == sorted(b.files)


def test_a_part_that_never_comes_is_not_committed(tmp_path):
    """Process 1 dies before its part of a save: process 0 commits nothing for that step."""
    root = tmp_path / "run"
    root.mkdir()
    job = multiprocess.ProcessRole(0, 2)
    key = multiprocess.save_key(20, 4)
    with pytest.raises(SaveError, match="missing the state of process-1"):
        multiprocess.collect_parts(root, key, job, timeout=0.2)
    # A part appears whole (written aside, renamed): a half-written one is never taken.
    multiprocess.write_part(root, key, 1, StateBundle({"x": 1}, {"a/0": np.arange(3)}))
    [part] = multiprocess.collect_parts(root, key, job, timeout=1)
    assert part.name == "process-1" and (part / "state.json").exists()
    assert not list(part.parent.glob(".tmp-*"))


def test_a_part_taken_by_process_0_before_its_directory_fsync_is_not_a_failure(
    tmp_path, monkeypatch
):
    """Process 0 may move the part in (and remove `.parts-*`) the moment it is renamed,
    before process 1 fsyncs the parts directory: that save succeeded, it must not raise
    (found by a loaded CI run: process 1 died of FileNotFoundError, process 0 hung)."""
    root = tmp_path / "run"
    root.mkdir()
    key = multiprocess.save_key(10, 2)
    fsync = multiprocess.storage.fsync_path

    def fsync_after_process_0_took_it(path):
        if path == multiprocess.parts_dir(root, key):
            multiprocess.remove_parts(root, key)
        fsync(path)

    monkeypatch.setattr(multiprocess.storage, "fsync_path", fsync_after_process_0_took_it)
    multiprocess.write_part(root, key, 1, StateBundle({"x": 1}, {"a/0": np.arange(3)}))
    assert not multiprocess.parts_dir(root, key).exists()


@REPLICATED
def test_sigterm_to_the_launcher_saves_once_on_every_process_and_resumes_exactly(
    tmp_path, reference
):
    """`keras-resume run --nprocs 2`: a preemption's SIGTERM reaches both processes at
    different moments; they agree on one step, save it together, and exit 143."""
    args = ["--dir", tmp_path / "run", "--out", tmp_path / "out", "--every", "1000"]
    env = script_env("jax")
    launcher = subprocess.Popen(
        launcher_command(["--grace", "60"], args),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    manifest_path = tmp_path / "run" / "manifest.json"
    try:
        deadline = time.monotonic() + JOB_TIMEOUT
        while not manifest_path.exists():  # the end of epoch 1: training is on
            assert launcher.poll() is None, launcher.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no backup in time"
            time.sleep(0.02)
        time.sleep(0.2)
        launcher.send_signal(signal.SIGTERM)
        output, _ = launcher.communicate(timeout=JOB_TIMEOUT)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 143, output[-3000:]
    assert output.count("SIGTERM: saved a full checkpoint") == NPROCS, output[-3000:]
    manifest = json.loads(manifest_path.read_text())
    newest = [c for c in manifest["checkpoints"] if c["kind"] == "backup"][-1]
    # Mid-epoch, or the epoch-end backup when the SIGTERM came at an epoch's end: either
    # way one checkpoint of the same step on both processes (process 1's part is in it).
    assert "process-1/state.json" in {f["path"] for f in newest["files"]}
    said = [line for line in output.splitlines() if "SIGTERM: saved a full checkpoint" in line]
    assert len({line.split("SIGTERM: ")[1] for line in said}) == 1, said  # the same step

    assert run_job(tmp_path, "resumed", *args) == [0] * NPROCS
    for i in range(NPROCS):
        assert_identical(reference[i], load_result(tmp_path / f"out-{i}.npz"))


@REPLICATED
def test_launcher_restarts_the_whole_job_when_one_process_dies(tmp_path, reference):
    """Process 1 is SIGKILLed; process 0 is left waiting in a collective. The launcher
    stops it (SIGTERM, then SIGKILL after the grace), restarts both, and the job
    resumes from the newest backup and ends bit-identical."""
    args = ["--dir", tmp_path / "run", "--out", tmp_path / "out"]
    kill = ["--kill-at-step", "18", "--kill-process", "1", "--kill-once", tmp_path / "killed"]
    proc = subprocess.run(
        launcher_command(["--grace", "5", "--max-restarts", "2", "--backoff", "0"], args + kill),
        env=script_env("jax"),
        capture_output=True,
        text=True,
        timeout=2 * JOB_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[process 1]" in proc.stderr and "restarting the job" in proc.stderr
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert [r["global_step"] for r in manifest["resumes"]] == [15]
    for i in range(NPROCS):
        assert_identical(reference[i], load_result(tmp_path / f"out-{i}.npz"))


# --- ModelParallel: variables sharded across the two processes --------------------

SHARDED = ["--layout", "model"]


@pytest.fixture(scope="session")  # not remade when xdist interleaves modules
def sharded_references(tmp_path_factory):
    """`get(devices)`: each process's final state (gathered whole) after a ModelParallel
    job of `devices` host devices per process never interrupted, and its directory."""
    made = {}

    def get(devices):
        if devices not in made:
            tmp_path = tmp_path_factory.mktemp(f"mp-sharded-reference-{devices}")
            args = ["--dir", tmp_path / "ref", "--out", tmp_path / "ref", *SHARDED]
            codes = run_job(tmp_path, "ref", *args, "--devices", devices)
            assert codes == [0] * NPROCS, [_log(tmp_path, "ref", i) for i in range(NPROCS)]
            results = [load_result(tmp_path / f"ref-{i}.npz") for i in range(NPROCS)]
            assert_identical(results[0], results[1])  # gathered: both see the same model
            made[devices] = results, tmp_path / "ref"
        return made[devices]

    return get


@pytest.fixture
def sharded_reference(sharded_references):
    return sharded_references(1)


def _shards_in(path) -> dict:
    """`{(weights-file path, key): (shape, bounds)}` of each shard saved in a shards file."""
    import h5py

    with h5py.File(path, "r") as f:
        return {
            (str(d.attrs["path"]), str(d.attrs["key"])): (d.shape, d.attrs["bounds"].tolist())
            for d in f.values()
        }


@SHARDED_GROUP
@pytest.mark.parametrize("snapshot, devices", [("host", 1), ("device", 1), ("host", 2)])
def test_model_parallel_job_sigkilled_mid_epoch_resumes_bit_identical(
    tmp_path, sharded_references, snapshot, devices
):
    """`snapshot="device"`: each shard copied on its own device, as on accelerators.
    2 devices per process: a (model, batch) mesh of (2 processes, 2 devices), so each
    shard has a replica on both devices of its process, and is still saved once."""
    import h5py

    reference, _ = sharded_references(devices)
    args = ["--dir", tmp_path / "run", "--out", tmp_path / "out", *SHARDED]
    args += ["--snapshot", snapshot, "--devices", devices]
    assert_job_killed(run_job(tmp_path, "killed", *args, kill_at=18))
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    newest = [c for c in manifest["checkpoints"] if c["kind"] == "backup"][-1]
    assert (newest["global_step"], newest["step_in_epoch"]) == (15, 3)
    root = tmp_path / "run" / newest["dir"]
    # Each process wrote its own half of every sharded variable; nobody gathered them.
    mine, theirs = _shards_in(root / "shards.h5"), _shards_in(root / "process-1/shards.h5")
    # 7 model variables (2 Dense kernels, a bias, 4 BatchNormalization) + 10 Adam slots
    assert mine.keys() == theirs.keys() and len(mine) == 17
    assert mine["layers/dense", "0"] == ((64, 8), [[0, 64], [0, 8]])
    assert theirs["layers/dense", "0"] == ((64, 8), [[0, 64], [8, 16]])
    assert theirs["layers/dense_1", "0"] == ((8, 3), [[8, 16], [0, 3]])
    with h5py.File(root / "model.weights.h5", "r") as f:
        assert list(f["layers/dense/vars"]) == [] and list(f["layers/dense_1/vars"]) == ["1"]
    # A best checkpoint has no per-process state, but it has process 1's shards.
    best = [c for c in manifest["checkpoints"] if c["kind"] == "best"][-1]
    assert {f["path"] for f in best["files"]} >= {"shards.h5", "process-1/shards.h5"}
    assert "process-1/state.json" not in {f["path"] for f in best["files"]}

    assert run_job(tmp_path, "resumed", *args) == [0] * NPROCS
    for i in range(NPROCS):
        assert_identical(reference[i], load_result(tmp_path / f"out-{i}.npz"))
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["resumes"][-1]["checkpoint_id"] == newest["id"]


@SHARDED_GROUP
@pytest.mark.parametrize("devices", [1, 4])
def test_sharded_checkpoint_restores_onto_another_device_count(
    tmp_path, sharded_reference, devices
):
    """Saved by 2 processes (one device each); restored in one process onto 1 device
    (no distribution) or 4 (each new shard cut from the two saved halves)."""
    reference, directory = sharded_reference
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--restore-only", "--devices", str(devices),
         "--dir", str(directory), "--out", str(tmp_path / "restored")],
        env=script_env("jax"), capture_output=True, text=True, timeout=JOB_TIMEOUT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    arrays, _ = load_result(tmp_path / "restored-0.npz")
    assert int(arrays.pop("devices")) == devices
    expected = dict(reference[0][0])  # the last backup is the end of training
    del expected["seen_after_fit/newest_backup_step"]
    assert sorted(arrays) == sorted(expected)
    differ = [k for k in expected if not np.array_equal(expected[k], arrays[k])]
    assert differ == []


def test_restore_called_on_one_process_only_fails_clearly_instead_of_hanging(tmp_path):
    args = ["--dir", tmp_path / "run", "--out", tmp_path / "out", "--restore-on-process-0-only"]
    started = time.monotonic()
    codes = run_job(tmp_path, "lonely", *args)
    log = _log(tmp_path, "lonely", 0)
    assert codes[0] == 3, log
    assert "restore refused: keras_resume.restore(" in log
    assert "called on process 0 of 2, but not every process" in log
    assert "call restore on every process" in log
    assert time.monotonic() - started < JOB_TIMEOUT


@SHARDED_GROUP
def test_sharded_checkpoint_exports_to_one_whole_keras_file(tmp_path, sharded_reference):
    """`keras-resume export` (here on this process's backend, no job) reassembles the shards."""
    import keras

    from keras_resume import runs

    reference, directory = sharded_reference
    runs.export_model(directory, tmp_path / "model.keras")
    model = keras.models.load_model(tmp_path / "model.keras")
    by_position = {int(k.split("/")[1]): a for k, a in reference[0][0].items() if k[:6] == "model/"}
    assert len(model.weights) == len(by_position) == 8
    for i, v in enumerate(model.weights):
        assert np.array_equal(np.asarray(v.numpy()), by_position[i]), v.path
