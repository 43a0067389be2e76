"""Faults: damaged files and manifests, full disks, a second writer, stale locks."""

import errno
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_resume as kr
from keras_resume import manifest as mf
from keras_resume import storage
from tests.conftest import all_variables, tiny_data, tiny_model


def _train(ckpt_dir, epochs=3, every=None, keep=2, on_error="raise", extra=()):
    keras.utils.set_random_seed(0)
    model = tiny_model()
    x, y = tiny_data()
    ckpt = kr.CheckpointDirectory(ckpt_dir)
    callbacks = [
        kr.FullStateResume(ckpt),
        kr.StepBackup(ckpt, every_n_steps=every, keep=keep, on_error=on_error),
        kr.BestCheckpoint(ckpt, monitor="loss", on_error=on_error),
        kr.RngCapture(ckpt),
        *extra,
    ]
    history = model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, callbacks=callbacks)
    return model, history


def _damage(path, how):
    if how == "flip":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    elif how == "truncate":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])
    else:
        path.unlink()


@pytest.mark.parametrize("how", ["flip", "truncate", "delete"])
@pytest.mark.parametrize("name", ["model.weights.h5", "state.json", "arrays.npz"])
def test_any_damaged_file_of_the_newest_backup_falls_back(ckpt_dir, name, how):
    _train(ckpt_dir, epochs=2, keep=2)
    ckpt = kr.CheckpointDirectory(ckpt_dir)
    older, newest = ckpt.checkpoints("backup")
    _damage(ckpt_dir / newest["dir"] / name, how)
    with pytest.warns(UserWarning, match=name):
        model, history = _train(ckpt_dir, epochs=2)
    # Resumed from the older backup (end of epoch 0) and trained epoch 1 again.
    assert history.epoch == [0, 1]
    resumes = json.loads((ckpt_dir / "manifest.json").read_text())["resumes"]
    assert resumes[-1]["checkpoint_id"] == older["id"]


@pytest.mark.parametrize("how", ["flip", "truncate", "delete"])
def test_damaged_manifest_is_rebuilt_from_checkpoints(ckpt_dir, how):
    _train(ckpt_dir, epochs=2)
    ckpt = kr.CheckpointDirectory(ckpt_dir)
    before = ckpt.read_manifest()
    _damage(ckpt_dir / "manifest.json", how)
    with pytest.warns(UserWarning, match="manifest.json"):
        rebuilt = ckpt.read_manifest()
    assert rebuilt["checkpoints"] == before["checkpoints"]
    assert rebuilt["best"] == before["best"] and rebuilt["history"] == before["history"]
    assert rebuilt["next_id"] == before["next_id"]
    # A run resumes from it, and writes the rebuilt manifest back.
    with pytest.warns(UserWarning, match="manifest.json"):
        _, history = _train(ckpt_dir, epochs=3)
    assert history.epoch == [0, 1, 2]
    assert mf.read_manifest(ckpt_dir / "manifest.json")["checkpoints"][-1]["epoch"] == 2


def test_nothing_to_rebuild_from_is_an_error_that_deletes_nothing(ckpt_dir):
    _train(ckpt_dir, epochs=1)
    for description in ckpt_dir.glob("*/checkpoint.json"):
        description.write_text("{}")
    (ckpt_dir / "manifest.json").write_text("garbage")
    before = sorted(p.name for p in ckpt_dir.rglob("*"))
    with pytest.raises(kr.ManifestError, match="nothing was deleted"):
        kr.CheckpointDirectory(ckpt_dir).read_manifest()
    assert sorted(p.name for p in ckpt_dir.rglob("*")) == before


def test_malformed_state_is_refused_before_any_variable_changes(ckpt_dir):
    _train(ckpt_dir, epochs=1, keep=1)
    ckpt = kr.CheckpointDirectory(ckpt_dir)
    (entry,) = ckpt.checkpoints("backup")
    state_path = ckpt_dir / entry["dir"] / "state.json"
    state = json.loads(state_path.read_text())
    state["rng"]["process"]["python"][1] = [1, 2, 3]
    state_path.write_text(json.dumps(state))
    fresh = tiny_model()
    fresh(np.zeros((1, 3)))
    fresh.optimizer.build(fresh.trainable_variables)
    before = all_variables(fresh)
    with pytest.raises(kr.CheckpointCorruptError, match=r"state.json is malformed: rng.process"):
        kr.restore(fresh, ckpt_dir, verify=False)
    assert all(np.array_equal(a, b) for a, b in zip(before, all_variables(fresh)))


def _fail_on_write(monkeypatch, err):
    original = np.savez

    def savez(*args, **kwargs):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(np, "savez", savez)
    return original


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
def test_failed_save_raises_and_keeps_last_good_checkpoint(ckpt_dir, monkeypatch, err):
    _train(ckpt_dir, epochs=1)
    before = kr.CheckpointDirectory(ckpt_dir).checkpoints("backup")
    _fail_on_write(monkeypatch, err)
    with pytest.raises(kr.SaveError, match=os.strerror(err)):
        _train(ckpt_dir, epochs=2)
    # The best checkpoint (weights only) of epoch 1 was saved; the backup failed.
    assert kr.CheckpointDirectory(ckpt_dir).checkpoints("backup") == before
    assert storage.leftovers(ckpt_dir) == []  # the failed save cleaned up after itself
    kr.CheckpointDirectory(ckpt_dir).select("latest")  # still verifies


def test_failed_save_with_on_error_warn_keeps_training(ckpt_dir, monkeypatch):
    _fail_on_write(monkeypatch, errno.ENOSPC)
    with pytest.warns(UserWarning, match="No space left on device"):
        _, history = _train(ckpt_dir, epochs=2, on_error="warn")
    assert history.epoch == [0, 1]
    assert kr.CheckpointDirectory(ckpt_dir).checkpoints("backup") == []
    assert storage.leftovers(ckpt_dir) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({proc.stderr.strip()}); "
            "the injected ENOSPC tests above cover the same path"
        )
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_real_full_disk_keeps_last_good_checkpoint(small_tmpfs):
    run = small_tmpfs / "run"
    keras.utils.set_random_seed(0)
    x, y = tiny_data()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(64), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    ckpt = kr.CheckpointDirectory(run)
    callbacks = [kr.StepBackup(ckpt, keep=50, on_error="warn"), kr.RngCapture(ckpt)]
    with pytest.warns(UserWarning, match="No space left on device"):
        model.fit(x, y, batch_size=8, epochs=40, verbose=0, callbacks=callbacks)
    entries = ckpt.checkpoints("backup")
    assert 0 < len(entries) < 40  # the disk filled up part way
    assert storage.leftovers(run) == []
    for entry in entries:
        ckpt.verify(entry)  # every committed checkpoint still verifies


def test_second_writer_gets_a_clear_error_naming_the_holder(ckpt_dir):
    ckpt_dir.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from keras_resume import storage; "
            "storage.DirectoryLock(sys.argv[1]).acquire(); print('held', flush=True); "
            "time.sleep(60)",
            str(ckpt_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(kr.DirectoryLockedError, match=f"pid {holder.pid} on host"):
            _train(ckpt_dir, epochs=1)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # SIGKILLed holder: its lock is stale and is taken over.
    _, history = _train(ckpt_dir, epochs=1)
    assert history.epoch == [0]


def test_interrupted_fit_does_not_lock_out_the_next_one_in_the_same_process(ckpt_dir):
    class Boom(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(ckpt_dir, epochs=2, extra=[Boom()])
    import gc

    gc.collect()
    _, history = _train(ckpt_dir, epochs=2)
    assert history.epoch == [0, 1]


def test_symlinked_checkpoint_directory_is_refused(ckpt_dir, tmp_path):
    _train(ckpt_dir, epochs=1, keep=1)
    ckpt = kr.CheckpointDirectory(ckpt_dir)
    (entry,) = ckpt.checkpoints("backup")
    outside = tmp_path / "elsewhere"
    shutil.move(ckpt_dir / entry["dir"], outside)
    (ckpt_dir / entry["dir"]).symlink_to(outside)
    with pytest.warns(UserWarning):
        with pytest.raises(kr.CheckpointCorruptError, match="outside"):
            ckpt.select("latest")


def test_failed_manifest_write_removes_the_uncommitted_checkpoint(ckpt_dir, monkeypatch):
    _train(ckpt_dir, epochs=1)
    ckpt = kr.CheckpointDirectory(ckpt_dir)
    next_id = ckpt.read_manifest()["next_id"]

    def broken(path, manifest):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(mf, "write_manifest", broken)
    with pytest.warns(UserWarning, match="Input/output error"):
        _train(ckpt_dir, epochs=2, on_error="warn")
    monkeypatch.undo()
    names = {p.name for p in ckpt_dir.iterdir()}
    assert not any(n.endswith(f"-{next_id:06d}") for n in names), names
    assert ckpt.read_manifest()["next_id"] == next_id


def test_retention_interrupted_mid_removal_is_never_rebuilt(ckpt_dir, monkeypatch):
    _train(ckpt_dir, epochs=2, keep=1)
    ckpt = kr.CheckpointDirectory(ckpt_dir)
    real_remove = storage.remove

    def crash(path):
        if path.name.startswith(storage.DELETING_PREFIX):
            raise KeyboardInterrupt("killed while deleting")
        real_remove(path)

    monkeypatch.setattr(storage, "remove", crash)
    with pytest.raises(KeyboardInterrupt):
        _train(ckpt_dir, epochs=3, keep=1)
    monkeypatch.undo()
    assert any(p.name.startswith(storage.DELETING_PREFIX) for p in ckpt_dir.iterdir())
    committed = [c["dir"] for c in ckpt.read_manifest()["checkpoints"]]
    (ckpt_dir / "manifest.json").unlink()
    with pytest.warns(UserWarning, match="Rebuilt"):
        rebuilt = [c["dir"] for c in ckpt.read_manifest()["checkpoints"]]
    assert rebuilt == committed  # the half-deleted checkpoint is not brought back


def test_tampered_checkpoint_json_is_not_trusted_by_a_rebuild(ckpt_dir):
    _train(ckpt_dir, epochs=2, keep=2)
    ckpt = kr.CheckpointDirectory(ckpt_dir)
    newest = ckpt.checkpoints("backup")[-1]
    description = ckpt_dir / newest["dir"] / "checkpoint.json"
    description.write_text(description.read_text().replace('"global_step": 8', '"global_step": 96'))
    (ckpt_dir / "manifest.json").unlink()
    with pytest.warns(UserWarning, match="checksum"):
        rebuilt = ckpt.read_manifest()
    assert newest["dir"] not in {c["dir"] for c in rebuilt["checkpoints"]}


def test_damaged_arrays_file_is_a_documented_error_even_unverified(ckpt_dir):
    _train(ckpt_dir, epochs=1, keep=1)
    ckpt = kr.CheckpointDirectory(ckpt_dir)
    (entry,) = ckpt.checkpoints("backup")
    arrays = ckpt_dir / entry["dir"] / "arrays.npz"
    arrays.write_bytes(arrays.read_bytes()[:-40])
    fresh = tiny_model()
    fresh(np.zeros((1, 3)))
    with pytest.raises(kr.CheckpointCorruptError, match="arrays|state"):
        kr.restore(fresh, ckpt_dir, verify=False)


def test_lock_survives_a_failed_holder_write_and_a_deleted_directory(tmp_path, monkeypatch):
    run = tmp_path / "run"
    lock = storage.DirectoryLock(run)

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    lock.acquire()  # holder info cannot be written: the lock is still taken and tracked
    monkeypatch.undo()
    assert lock.held
    lock.release()
    lock.acquire()
    shutil.rmtree(run)  # someone removes the run's directory while we hold its lock
    lock.acquire()  # re-locks the new lock file instead of trusting the old inode
    assert (run / ".lock").exists() and lock.held
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from keras_resume import storage; "
            "storage.DirectoryLock(sys.argv[1]).acquire()",
            str(run),
        ],
        capture_output=True,
        text=True,
    )
    assert other.returncode != 0 and "DirectoryLockedError" in other.stderr
    lock.release()
