"""Hostile input (issue 14, section B): what an attacker plants in a run, and how it ends.

Files planted in a run and read by keras_resume (B2 B3 B4 B7): each test writes a
real checkpoint, alters its files as an attacker would (and, where the attack needs
it, recomputes the manifest's checksums, which guard against damage, not against
someone who can write the run), then shows that nothing outside the run is read,
that the error names the file, and that no variable of the model changed.

Hostile operations (B1 B5 B6 B8 B9): links planted in a run, racing writers, a
damaged remote mirror, unwritable run paths and a SIGKILLed supervisor. Every attack
is real: real symlinks and hard links, real racing processes, a real S3 API on
loopback, a real read-only mount, real SIGKILLs.
"""

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings

import h5py
import keras
import numpy as np
import pytest

import keras_resume as kr
from keras_resume import manifest as mf
from keras_resume import runs as krr
from keras_resume import storage
from keras_resume.directory import CheckpointDirectory
from keras_resume.errors import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    ManifestError,
)
from keras_resume.restoring import load_into_model, restore
from keras_resume.state.bundle import StateBundle
from tests.conftest import TESTS, all_variables, tiny_data, tiny_model

# --- Files planted in a run (B2 B3 B4 B7) ------------------------------

_READ_POSITION = {"epoch": 0, "step_in_epoch": 1, "epoch_complete": False, "global_step": 1}


def _read_model(kind="dense", seed=0, compiled=True):
    """Input(3) -> Dense(4) -> Dense(1), or an EinsumDense first with the same shapes."""
    keras.utils.set_random_seed(seed)
    if kind == "dense":
        first = keras.layers.Dense(4)
    else:
        first = keras.layers.EinsumDense("ab,bc->ac", output_shape=4, bias_axes="c")
    model = keras.Sequential([keras.Input((3,)), first, keras.layers.Dense(1)])
    if compiled:
        model.compile(optimizer="adam", loss="mse")
        model.optimizer.build(model.trainable_variables)
    return model


def _read_variables(model):
    optimizer = getattr(model, "optimizer", None)
    extra = list(optimizer.variables) if optimizer is not None else []
    return [np.array(v.numpy(), copy=True) for v in model.weights + extra]


def _read_unchanged(model, before):
    after = _read_variables(model)
    return len(after) == len(before) and all(np.array_equal(a, b) for a, b in zip(after, before))


def _read_run(tmp_path, kind="dense"):
    """A run with one backup of a trained-looking model; returns (run path, entry)."""
    model = _read_model(kind, seed=1)
    for v in model.weights:
        v.assign(np.full(v.shape, 0.5, dtype="float32"))
    run = tmp_path / "run"
    ckpt = CheckpointDirectory(run)
    entry = ckpt.commit(model, "backup", StateBundle({}, {}), _READ_POSITION)
    ckpt.release_lock()
    return run, entry


def _read_reseal(run, legacy=False):
    """Recomputes the manifest's file records after tampering (and with `legacy`,
    drops the fingerprint's `weights_file`, as a checkpoint of an older version)."""
    path = run / mf.MANIFEST_NAME
    manifest = json.loads(path.read_text())
    for entry in manifest["checkpoints"]:
        root = run / entry["dir"]
        entry["files"] = [storage.file_record(root, r["path"]) for r in entry["files"]]
    if legacy:
        for fp in manifest["fingerprints"].values():
            fp.pop("weights_file", None)
    mf.write_manifest(path, manifest)


def _read_weights_path(run, entry):
    return run / entry["dir"] / "model.weights.h5"


# --- B2: a checkpoint file replaced by a symlink, or by something not a file -------


@pytest.mark.parametrize("name", ["model.weights.h5", "state.json", "arrays.npz"])
def test_symlinked_checkpoint_file_fails_verify_and_restore(tmp_path, name):
    run, entry = _read_run(tmp_path)
    inside = run / entry["dir"] / name
    outside = tmp_path / f"outside-{name}"
    shutil.move(inside, outside)
    os.symlink(outside, inside)  # the same bytes: every checksum still matches

    [result] = krr.verify_run(run)
    assert not result["ok"] and "symbolic link" in result["error"] and name in result["error"]

    model = _read_model()
    before = _read_variables(model)
    for verify in (True, False):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(CheckpointCorruptError, match="symbolic link"):
                restore(model, run, verify=verify)
    assert _read_unchanged(model, before)


def test_symlinked_manifest_is_not_read_and_is_rebuilt(tmp_path):
    run, entry = _read_run(tmp_path)
    outside = tmp_path / "outside-manifest.json"
    shutil.move(run / mf.MANIFEST_NAME, outside)
    os.symlink(outside, run / mf.MANIFEST_NAME)
    with pytest.warns(UserWarning, match="symbolic link"):
        manifest = CheckpointDirectory(run).read_manifest()
    assert [c["id"] for c in manifest["checkpoints"]] == [entry["id"]]


def test_fifo_in_place_of_a_checkpoint_file_is_refused_without_blocking(tmp_path):
    run, entry = _read_run(tmp_path)
    inside = _read_weights_path(run, entry)
    inside.unlink()
    os.mkfifo(inside)  # opening it for reading would block without O_NONBLOCK
    [result] = krr.verify_run(run)
    assert not result["ok"] and "not a regular file" in result["error"]


# --- B3: HDF5 constructs that read outside the file, and unbounded datasets -------


def _read_outside_secret(tmp_path):
    secret = np.full((3, 4), 7.0, dtype="float32")
    path = tmp_path / "outside.h5"
    with h5py.File(path, "w") as f:
        f["secret"] = secret
    raw = tmp_path / "outside.bin"
    raw.write_bytes(secret.tobytes())
    return path, raw, secret


def _read_plant(kind, vars_group, tmp_path):
    """Replaces dataset "0" (the first Dense kernel, shape (3, 4)) with an attack."""
    outside_h5, outside_raw, secret = _read_outside_secret(tmp_path)
    del vars_group["0"]
    if kind == "external_link":
        vars_group["0"] = h5py.ExternalLink(str(outside_h5), "/secret")
    elif kind == "soft_link":
        vars_group.file["elsewhere"] = secret
        vars_group["0"] = h5py.SoftLink("/elsewhere")
    elif kind == "external_storage":
        vars_group.create_dataset(
            "0", shape=(3, 4), dtype="float32", external=[(str(outside_raw), 0, secret.nbytes)]
        )
    elif kind == "virtual":
        layout = h5py.VirtualLayout(shape=(3, 4), dtype="float32")
        layout[:] = h5py.VirtualSource(str(outside_h5), "secret", shape=(3, 4))
        vars_group.create_virtual_dataset("0", layout)


@pytest.mark.parametrize("kind", ["external_link", "soft_link", "external_storage", "virtual"])
def test_hdf5_references_outside_the_file_are_refused_by_restore_and_export(tmp_path, kind):
    run, entry = _read_run(tmp_path)
    with h5py.File(_read_weights_path(run, entry), "r+") as f:
        _read_plant(kind, f["layers/dense/vars"], tmp_path)
    _read_reseal(run)
    model = _read_model()
    before = _read_variables(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointCorruptError, match="refers outside itself"):
            restore(model, run)
        target = tmp_path / "exported.keras"
        with pytest.raises(CheckpointCorruptError, match="refers outside itself"):
            krr.export_model(run, target)
    assert _read_unchanged(model, before)
    assert not target.exists()


def _read_sparse(group, name, shape):
    # Chunked and never written: a few KB on disk, `shape` elements when read.
    group.create_dataset(name, shape=shape, dtype="float32", chunks=(1 << 20,))


def test_sparse_huge_dataset_is_refused_before_it_is_read(tmp_path):
    run, entry = _read_run(tmp_path)
    huge = (3 * 2**30 // 4,)  # 3 GiB of float32
    with h5py.File(_read_weights_path(run, entry), "r+") as f:
        del f["layers/dense_1/vars/1"]
        _read_sparse(f["layers/dense_1/vars"], "1", huge)  # a listed dataset, another shape
    assert _read_weights_path(run, entry).stat().st_size < 64 * 1024
    _read_reseal(run)
    model = _read_model()
    before = _read_variables(model)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointCorruptError, match=r"shape \(805306368,\), expected \(1,\)"):
            restore(model, run)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 512 * 1024
    assert _read_unchanged(model, before)


def test_unlisted_huge_dataset_is_never_read(tmp_path):
    run, entry = _read_run(tmp_path)
    with h5py.File(_read_weights_path(run, entry), "r+") as f:
        _read_sparse(f["layers/dense/vars"], "extra", (3 * 2**30 // 4,))
    _read_reseal(run)
    model = _read_model()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    restore(model, run)  # the fingerprint lists "0" and "1" only: "extra" is not read
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 512 * 1024
    assert np.array_equal(model.layers[0].kernel.numpy(), np.full((3, 4), 0.5, "float32"))


def test_checkpoint_without_layout_reads_no_more_than_its_variables(tmp_path):
    run, entry = _read_run(tmp_path)
    _read_reseal(run, legacy=True)  # as written before the fingerprint had a layout
    model = _read_model()
    restore(model, run)  # an untampered older checkpoint still restores
    assert np.array_equal(model.layers[0].kernel.numpy(), np.full((3, 4), 0.5, "float32"))

    with h5py.File(_read_weights_path(run, entry), "r+") as f:
        _read_sparse(f["layers/dense/vars"], "extra", (3 * 2**30 // 4,))
    _read_reseal(run, legacy=True)
    fresh = _read_model()
    before = _read_variables(fresh)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointCorruptError, match="more than the variables"):
            restore(fresh, run)
    assert _read_unchanged(fresh, before)


# --- B4: all or nothing; architectures with the same shapes told apart -----------


@pytest.mark.parametrize("legacy", [False, True], ids=["layout", "older-checkpoint"])
def test_other_architecture_with_same_shapes_changes_no_variable(tmp_path, legacy):
    run, _ = _read_run(tmp_path, kind="dense")
    if legacy:
        _read_reseal(run, legacy=True)
    model = _read_model("einsum")
    assert [tuple(v.shape) for v in model.weights] == [(3, 4), (4,), (4, 1), (1,)]
    before = _read_variables(model)
    with pytest.raises(CheckpointMismatchError, match=r"EinsumDense") as raised:
        restore(model, run)
    assert "layers/einsum_dense" in str(raised.value) and "nothing was loaded" in str(raised.value)
    assert _read_unchanged(model, before)


def test_string_dataset_in_weights_file_changes_no_variable(tmp_path):
    run, entry = _read_run(tmp_path)
    with h5py.File(_read_weights_path(run, entry), "r+") as f:
        del f["layers/dense_1/vars/1"]
        f["layers/dense_1/vars"].create_dataset("1", data=["x"], dtype=h5py.string_dtype())
    _read_reseal(run)
    model = _read_model()
    before = _read_variables(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointCorruptError, match=r"dense_1/vars/1.*not a number type"):
            restore(model, run)
    assert _read_unchanged(model, before)


def test_wrong_dtype_in_older_checkpoint_is_refused_before_any_assignment(tmp_path):
    run, entry = _read_run(tmp_path)
    with h5py.File(_read_weights_path(run, entry), "r+") as f:
        del f["layers/dense_1/vars/1"]  # the last model variable: assigned last by Keras
        f["layers/dense_1/vars/1"] = np.zeros((1,), dtype="float64")
    _read_reseal(run, legacy=True)
    model = _read_model()
    before = _read_variables(model)
    with pytest.raises(CheckpointMismatchError, match=r"layers/dense_1.*float64"):
        restore(model, run)
    assert _read_unchanged(model, before)


def test_weights_only_load_ignores_the_optimizer_groups(tmp_path):
    run, _ = _read_run(tmp_path)
    model = _read_model(compiled=False)  # no optimizer: its groups are not compared
    ckpt = CheckpointDirectory(run)
    load_into_model(model, ckpt, ckpt.read_checkpoint(), with_optimizer=False)
    assert all(np.array_equal(v.numpy(), np.full(v.shape, 0.5, "float32")) for v in model.weights)


# --- B7: JSON with huge integers; ids that would make a path too long -------------


def _read_huge(digits):
    return "9" * digits


def test_huge_integer_in_manifest_is_our_error_and_the_manifest_is_rebuilt(tmp_path):
    run, entry = _read_run(tmp_path)
    path = run / mf.MANIFEST_NAME
    text = path.read_text().replace('"next_id": 2', f'"next_id": {_read_huge(4301)}')
    path.write_text(text)
    with pytest.raises(ManifestError, match=r"manifest.json.*4301 digits"):
        mf.read_manifest(path)
    with pytest.warns(UserWarning, match="Rebuilt it from 1"):
        info = restore(_read_model(), run)
    assert info.checkpoint_id == entry["id"]


def test_huge_integer_in_checkpoint_json_is_skipped_by_name(tmp_path):
    run, entry = _read_run(tmp_path)
    (run / mf.MANIFEST_NAME).unlink()
    description = run / entry["dir"] / mf.SELF_DESCRIPTION
    description.write_text(description.read_text().replace('"id": 1', f'"id": {_read_huge(4301)}'))
    with pytest.raises(ManifestError, match=r"checkpoint.json is unreadable.*4301 digits"):
        CheckpointDirectory(run).read_manifest()


def test_checkpoint_id_making_a_too_long_path_falls_back(tmp_path):
    run, entry = _read_run(tmp_path)
    # A second listed checkpoint whose directory name would exceed NAME_MAX (255).
    path = run / mf.MANIFEST_NAME
    manifest = json.loads(path.read_text())
    huge = int(_read_huge(300))
    forged = {**manifest["checkpoints"][0], "id": huge, "dir": f"backup-{huge:06d}"}
    manifest["checkpoints"].append(forged)
    manifest["next_id"] = huge + 1
    manifest["checksum"] = mf.content_checksum(manifest)
    path.write_text(json.dumps(manifest))
    model = _read_model()
    with pytest.warns(UserWarning, match=r"(?s)300 digits.*Rebuilt it from 1"):
        info = restore(model, run)  # never a raw OSError (ENAMETOOLONG)
    assert info.checkpoint_id == entry["id"]


def test_shards_file_referring_outside_is_refused(tmp_path):
    from keras_resume.backend import Shards
    from keras_resume.state import shards

    full = np.arange(12, dtype="float32").reshape(3, 4)
    entry = ("layers/dense", "0", Shards(full.shape, "float32", [([[0, 3], [0, 4]], full)]))
    shards.write_shards([entry], tmp_path)
    _, outside_raw, secret = _read_outside_secret(tmp_path)
    with h5py.File(tmp_path / shards.SHARDS_FILE, "r+") as f:
        attrs = dict(f["0"].attrs)
        del f["0"]
        planted = f.create_dataset(
            "0", shape=(3, 4), dtype="float32", external=[(str(outside_raw), 0, secret.nbytes)]
        )
        planted.attrs.update(attrs)
    with pytest.raises(CheckpointCorruptError, match="refers outside itself"):
        shards.read_index(tmp_path)


# --- Hostile operations (B1 B5 B6 B8 B9) ------------------------------

_OPS_REPO = TESTS.parent
_OPS_HANG_GUARD = 120  # seconds a wait may take before the test fails (not a timing check)
_OPS_PRECIOUS = b"a file outside the run: keras_resume must not touch it\n"
# The tests that start many or heavy processes share one xdist worker.
_OPS_SUBPROCESSES = pytest.mark.xdist_group("hostile-ops-subprocesses")


def _ops_fit(run, epochs=1):
    """A tiny fit with the usual callbacks into `run`; returns the model."""
    keras.utils.set_random_seed(0)
    model = tiny_model()
    x, y = tiny_data(16)
    ckpt = kr.CheckpointDirectory(run)
    model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, callbacks=ckpt.callbacks(monitor=None))
    return model


def _ops_env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="jax")
    env["PYTHONPATH"] = os.pathsep.join([str(_OPS_REPO), env.get("PYTHONPATH", "")])
    return env


def _ops_alive(pid):
    """Whether a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def _ops_wait_for(predicate, what, proc=None):
    deadline = time.monotonic() + _OPS_HANG_GUARD
    while not predicate():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process exited ({proc.returncode}) before {what}")
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


# --- B1: a planted .lock link ---------------------------------------------------------


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_planted_lock_link_is_refused_by_training_and_prune(tmp_path, link):
    run, victim = tmp_path / "run", tmp_path / "victim.txt"
    _ops_fit(run, epochs=2)  # a real run with two backups: prune would remove one
    victim.write_bytes(_OPS_PRECIOUS)
    (run / ".lock").unlink()
    if link == "symlink":
        (run / ".lock").symlink_to(victim)
    else:
        os.link(victim, run / ".lock")
    listed = sorted(p.name for p in run.iterdir())

    with pytest.raises(kr.CheckpointDirectoryError, match=r"\.lock (is a symbolic|has 2 hard)"):
        _ops_fit(run)
    with pytest.raises(kr.CheckpointDirectoryError, match="remove it") as refused:
        krr.prune(str(run), keep_last=0, keep_best=0)
    assert str(run / ".lock") in str(refused.value)
    assert isinstance(refused.value, kr.KerasResumeError)

    assert victim.read_bytes() == _OPS_PRECIOUS  # neither truncated nor written
    assert sorted(p.name for p in run.iterdir()) == listed  # nothing pruned either


def test_planted_links_in_a_run_are_never_written_through(tmp_path):
    # A .parts directory (a multi-process save) planted as a link to outside: the
    # part is not written there. A staging directory gets a planted symlink: the
    # save fails without committing it.
    from keras_resume import multiprocess, storage

    run, outside = tmp_path / "run", tmp_path / "outside"
    run.mkdir()
    outside.mkdir()
    multiprocess.parts_dir(run, "k").symlink_to(outside)
    with pytest.raises(kr.CheckpointDirectoryError, match="is a symbolic link"):
        multiprocess.write_part(run, "k", 1, None)
    assert list(outside.iterdir()) == []

    with pytest.raises(kr.CheckpointDirectoryError, match="is a symbolic link"):
        with storage.StagedDirectory(run, "backup-000001") as staged:
            storage.write_new_file(staged.path / "ok.json", "{}")
            (staged.path / "planted").symlink_to(outside)
            staged.commit()
    assert not (run / "backup-000001").exists() and storage.leftovers(run) == []


# --- B5: two writers racing for the lock ---------------------------------------------

_OPS_RACER = """\
import json, os, sys, time
from keras_resume import storage
from keras_resume.errors import DirectoryLockedError
root, start = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start - time.time() - 0.005))
while time.time() < start:  # the last few ms spun, so both start at the same instant
    pass
lock = storage.DirectoryLock(root)
try:
    lock.acquire()
except DirectoryLockedError as e:
    print(json.dumps({"pid": os.getpid(), "lost": str(e)}), flush=True)
else:
    print(json.dumps({"pid": os.getpid(), "won": True}), flush=True)
    time.sleep(0.2)  # holds it while the loser looks
"""


@_OPS_SUBPROCESSES
def test_the_loser_of_a_lock_race_names_the_holder(tmp_path):
    host = socket.gethostname()
    for race in range(20):
        root = tmp_path / f"race{race}"
        if race % 2:  # a killed holder's record is left behind: never named for the new one
            root.mkdir()
            (root / ".lock").write_text(json.dumps({"pid": 2**22 + 7, "host": host, "since": "x"}))
        start = time.time() + 0.15
        racers = [
            subprocess.Popen(
                [sys.executable, "-c", _OPS_RACER, str(root), repr(start)],
                env=_ops_env(),
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        results = [json.loads(p.communicate(timeout=_OPS_HANG_GUARD)[0]) for p in racers]
        winners = [r for r in results if r.get("won")]
        losers = [r for r in results if "lost" in r]
        assert len(winners) == len(losers) == 1, results
        message = losers[0]["lost"]
        assert f"(pid {winners[0]['pid']} on host {host}, since 20" in message, (race, message)


# --- B8: a run path that cannot be a run directory -------------------------------------


def test_a_run_path_that_is_a_file_raises_our_error(tmp_path):
    plain = tmp_path / "notes.txt"
    plain.write_bytes(_OPS_PRECIOUS)
    with pytest.raises(kr.CheckpointDirectoryError, match="is a file, not a directory") as e:
        _ops_fit(plain)
    assert str(plain) in str(e.value) and "Give a directory path" in str(e.value)
    below = plain / "run"
    with pytest.raises(kr.CheckpointDirectoryError, match="is a file, not a directory") as e:
        _ops_fit(below)
    assert str(below) in str(e.value)
    from keras_resume import cli

    assert cli.main(["prune", str(plain)]) == cli.EXIT_USAGE  # a usage error, no traceback
    assert plain.read_bytes() == _OPS_PRECIOUS


_OPS_READ_ONLY_FIT = """\
import sys
import keras
import keras_resume as kr
from tests.conftest import tiny_data, tiny_model
model = tiny_model()
x, y = tiny_data(16)
try:
    model.fit(x, y, epochs=1, verbose=0,
              callbacks=kr.CheckpointDirectory(sys.argv[1]).callbacks(monitor=None))
except kr.CheckpointDirectoryError as e:
    print("REFUSED", type(e).__name__, e.errno, e)
"""


def _ops_unshare_works():
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0
    except OSError:
        return False


@_OPS_SUBPROCESSES
def test_a_read_only_run_directory_raises_our_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    run = ro / "run"
    script = tmp_path / "fit.py"
    script.write_text(_OPS_READ_ONLY_FIT)
    if os.geteuid() != 0:  # a read-only directory is read-only for this user
        ro.chmod(0o555)
        command = [sys.executable, str(script), str(run)]
        expect = ["permission denied", "errno 13"]
    elif _ops_unshare_works():  # root writes anywhere: a read-only mount, in a namespace
        mount = f"mount -t tmpfs -o ro tmpfs {ro} && exec {sys.executable} {script} {run}"
        command = ["unshare", "-m", "sh", "-c", mount]
        expect = ["read-only filesystem", "errno 30"]
    else:
        pytest.skip("running as root without mount namespaces: no read-only directory to try")
    try:
        proc = subprocess.run(command, env=_ops_env(), capture_output=True, text=True, timeout=240)
    finally:
        ro.chmod(0o755)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("REFUSED CheckpointDirectoryError"), proc.stdout + proc.stderr[-2000:]
    assert f" {expect[1].split()[1]} " in line
    assert str(run) in line and expect[0] in line
    assert "give a checkpoint directory" in line.lower()


# --- B6: a remote run whose local mirror is damaged ----------------------------------

_OPS_AWS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")


@pytest.fixture
def _ops_s3(tmp_path, monkeypatch):
    """A real S3 API on loopback (moto's server) and a fresh mirror cache; yields s3fs."""
    from moto.server import ThreadedMotoServer

    from keras_resume import remote

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in zip(_OPS_AWS, ("testing", "testing", "us-east-1", f"http://{host}:{port}")):
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "cache"))
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir("hostile")
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def _ops_flip_byte(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


def test_a_damaged_mirror_copy_is_downloaded_again(_ops_s3, tmp_path, caplog):
    url = "s3://hostile/mirror"
    model = _ops_fit(url, epochs=2)
    expected = all_variables(model)
    ckpt = kr.CheckpointDirectory(url)
    newest = ckpt.checkpoints("backup")[-1]
    mirror = ckpt.path / newest["dir"] / "model.weights.h5"
    mirror.write_bytes(_ops_flip_byte(mirror.read_bytes()))  # the bucket's copy is intact

    fresh = tiny_model()
    fresh.build((None, 3))
    with caplog.at_level("WARNING", logger="keras_resume"):
        info = kr.restore(fresh, url)
    assert info.checkpoint_id == newest["id"]  # not skipped for an older one
    differ = [
        i
        for i, (a, b) in enumerate(zip(expected, all_variables(fresh)))
        if not np.array_equal(a, b)
    ]
    assert differ == []
    assert f"The local copy of {url}/{newest['dir']} is damaged" in caplog.text
    assert kr.CheckpointDirectory(url).verify(newest) is None  # the mirror is whole again

    # Now the bucket's copy is damaged too: the older one is used, and every
    # message names the URL, never the mirror in the cache.
    key = f"hostile/mirror/{newest['dir']}/model.weights.h5"
    _ops_s3.pipe_file(key, _ops_flip_byte(_ops_s3.cat_file(key)))
    mirror.write_bytes(_ops_flip_byte(mirror.read_bytes()))
    caplog.clear()
    with pytest.warns(UserWarning, match="Skipping damaged checkpoint") as warned:
        info = kr.restore(fresh, url)
    assert info.checkpoint_id == ckpt.checkpoints("backup")[-2]["id"]
    said = " ".join(str(w.message) for w in warned) + caplog.text
    assert f"{url}/{newest['dir']}/model.weights.h5 fails its checksum" in said
    assert str(ckpt.path) not in said


# --- B9: keras-resume run, SIGKILLed, and a command that ignores SIGTERM -------------

# Runs supervisor.py from its file, as tests/test_supervisor.py does (standard library only).
_OPS_SUPERVISOR = [
    sys.executable,
    "-c",
    "import runpy, sys; runpy.run_path(sys.argv.pop(1), run_name='__main__')",
    str(_OPS_REPO / "keras_resume" / "supervisor.py"),
]

# A command with a family: a child in its process group, and a grandchild that
# left the session with setsid (as a daemonising data server would). Writes
# their pids, then sleeps (ignoring SIGTERM if told).
_OPS_FAMILY = """\
import os, signal, subprocess, sys, time
out, ignore = sys.argv[1], sys.argv[2] == "ignore-term"
if ignore:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
sleeper = [sys.executable, "-c", stubborn]
child = subprocess.Popen(sleeper)
escaper = subprocess.Popen([sys.executable, "-c", '''
import os, subprocess, sys
os.setsid()
p = subprocess.Popen(sys.argv[1:])
print(p.pid, flush=True)
os._exit(0)  # the grandchild is orphaned: init would adopt it
''', *sleeper], stdout=subprocess.PIPE, text=True)
grandchild = int(escaper.stdout.readline())
escaper.wait()
with open(out + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {child.pid} {grandchild}")
os.rename(out + ".tmp", out)
time.sleep(300)
"""


def _ops_family(tmp_path, *options, how="plain"):
    script, pids = tmp_path / "family.py", tmp_path / "family.pids"
    script.write_text(_OPS_FAMILY)
    command = [
        *_OPS_SUPERVISOR,
        *map(str, options),
        "--",
        sys.executable,
        str(script),
        str(pids),
        how,
    ]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=_ops_env())
    _ops_wait_for(pids.exists, "the command's family to start", proc)
    family = [int(p) for p in pids.read_text().split()]
    assert all(_ops_alive(p) for p in family)
    return proc, family


def _ops_kill(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _ops_session(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[3])


def test_a_sigkilled_supervisor_takes_the_whole_tree_with_it(tmp_path):
    proc, family = _ops_family(tmp_path, "--max-restarts", 0)
    try:
        sessions = [_ops_session(pid) for pid in family]
        assert sessions[2] != sessions[0] == sessions[1]  # the grandchild really left
        proc.kill()  # SIGKILL: the supervisor runs no cleanup of its own
        proc.wait(timeout=_OPS_HANG_GUARD)
        _ops_wait_for(lambda: not any(_ops_alive(p) for p in family), "the command's tree to die")
    finally:
        proc.kill()
        _ops_kill(family)  # never leave a sleeper behind (it holds stderr), even on failure
        proc.communicate(timeout=_OPS_HANG_GUARD)


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    proc, family = _ops_family(tmp_path, "--grace", 1, how="ignore-term")
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=_OPS_HANG_GUARD)
        alive = [p for p in family if _ops_alive(p)]
        _ops_kill(family)  # before reading stderr: a survivor would hold it open
        stderr = proc.stderr.read()
    finally:
        proc.kill()
        _ops_kill(family)
    assert proc.returncode == 128 + signal.SIGKILL, stderr
    assert alive == []
    assert "got SIGTERM; passing it to the command" in stderr
    assert (
        f"the command (pid {family[0]}) still running 1 s after SIGTERM (--grace 1); "
        "killing it and every process it started (SIGKILL)"
    ) in stderr
    assert "after SIGTERM; not restarting" in stderr


def test_grace_is_documented_for_a_single_command():
    from keras_resume import supervisor

    helps = subprocess.run(
        [*_OPS_SUPERVISOR, "--help"], capture_output=True, text=True, timeout=_OPS_HANG_GUARD
    ).stdout
    assert "--grace SECONDS" in helps and "every process it started get SIGKILL" in " ".join(
        helps.split()
    )
    assert f"(default: {supervisor.DEFAULT_GRACE:g})" in " ".join(helps.split())
    readme = (_OPS_REPO / "README.md").read_text()
    cli_section = readme.split("### Rerun a crashed job: `keras-resume run`")[1].split("\n#### ")[0]
    assert "--grace S" in cli_section
