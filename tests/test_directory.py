"""directory.py: commits, retention, verification with fallback, leftovers, history."""

import hashlib
import json

import keras
import numpy as np
import pytest

import keras_resume as kr
from keras_resume import manifest as mf
from keras_resume.errors import CheckpointCorruptError, NoCheckpointError
from tests.conftest import all_variables, tiny_data, tiny_model


def _train(ckpt_dir, epochs=3, every=None, keep=2, monitor="loss"):
    keras.utils.set_random_seed(0)
    model = tiny_model()
    x, y = tiny_data()
    ckpt = kr.CheckpointDirectory(ckpt_dir)
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=epochs,
        verbose=0,
        callbacks=ckpt.callbacks(every_n_steps=every, monitor=monitor, keep=keep),
    )
    return model, ckpt


def test_manifest_lists_committed_checkpoints_with_checksums(ckpt_dir):
    model, ckpt = _train(ckpt_dir, epochs=2, every=3)
    manifest = json.loads((ckpt_dir / "manifest.json").read_text())
    assert manifest["format"] == "keras-resume" and manifest["schema_version"] == 2
    backups = [c for c in manifest["checkpoints"] if c["kind"] == "backup"]
    assert len(backups) == 2  # keep=2
    newest = backups[-1]
    assert (newest["epoch"], newest["epoch_complete"], newest["global_step"]) == (1, True, 8)
    assert newest["versions"]["keras"] == keras.version()
    assert newest["versions"]["backend"] == keras.backend.backend()
    names = [f["path"] for f in newest["files"]]
    assert names == ["model.weights.h5", "model.json", "state.json", "arrays.npz"]
    config = json.loads((ckpt_dir / newest["dir"] / "model.json").read_text())
    assert config["class_name"] == "Sequential"
    for record in newest["files"]:
        path = ckpt_dir / newest["dir"] / record["path"]
        assert path.stat().st_size == record["size"]
        data = path.read_bytes()
        block = record["block_bytes"]
        blocks = [data[i : i + block] for i in range(0, max(len(data), 1), block)]
        assert record["sha256_blocks"] == [hashlib.sha256(b).hexdigest() for b in blocks]
    fp = manifest["fingerprints"][newest["fingerprint"]]
    assert fp["optimizer"] == "Adam"
    assert [v[1] for v in fp["variables"]] == [list(v.shape) for v in model.weights]
    assert [h["epoch"] for h in manifest["history"]] == [0, 1]
    assert manifest["best"]["monitor"] == "loss" and manifest["best"]["mode"] == "min"


def test_weights_file_loads_with_plain_keras(ckpt_dir):
    model, ckpt = _train(ckpt_dir, epochs=2)
    entry = ckpt.checkpoints("backup")[-1]
    fresh = tiny_model()
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(str(ckpt_dir / entry["dir"] / "model.weights.h5"))
    for a, b in zip(all_variables(model), all_variables(fresh)):
        assert np.array_equal(a, b)


def test_keep_retains_newest_backups_only(ckpt_dir):
    _, ckpt = _train(ckpt_dir, epochs=4, every=2, keep=2)
    backups = ckpt.checkpoints("backup")
    assert len(backups) == 2
    assert backups[-1]["epoch_complete"] and backups[-1]["epoch"] == 3
    on_disk = sorted(p.name for p in ckpt_dir.iterdir() if p.name.startswith("backup-"))
    assert on_disk == sorted(b["dir"] for b in backups)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_newest_backup_falls_back_with_warning(ckpt_dir, damage):
    _, ckpt = _train(ckpt_dir, epochs=3, keep=2)
    older, newest = ckpt.checkpoints("backup")
    victim = ckpt_dir / newest["dir"] / "model.weights.h5"
    if damage == "flip":
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0x01
        victim.write_bytes(bytes(data))
    elif damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:100])
    else:
        victim.unlink()
    with pytest.warns(UserWarning, match="model.weights.h5"):
        chosen = ckpt.select("latest")
    assert chosen["id"] == older["id"]


def test_nothing_verifies_raises_and_deletes_nothing(ckpt_dir):
    _, ckpt = _train(ckpt_dir, epochs=2, keep=1)
    (newest,) = ckpt.checkpoints("backup")
    (ckpt_dir / newest["dir"] / "state.json").write_text("{}")
    before = sorted(p.name for p in ckpt_dir.rglob("*"))
    with pytest.warns(UserWarning):
        with pytest.raises(CheckpointCorruptError, match="nothing was deleted"):
            ckpt.select("latest")
    assert sorted(p.name for p in ckpt_dir.rglob("*")) == before


def test_leftovers_of_a_crashed_save_are_removed_on_next_save(ckpt_dir):
    _, ckpt = _train(ckpt_dir, epochs=1)
    (ckpt_dir / ".staging-backup-000099-deadbeef").mkdir()
    (ckpt_dir / "backup-000098").mkdir()  # renamed but never entered in the manifest
    _train(ckpt_dir, epochs=2)
    names = {p.name for p in ckpt_dir.iterdir()}
    assert ".staging-backup-000099-deadbeef" not in names
    assert "backup-000098" not in names


def test_missing_directory_reads_as_empty(tmp_path):
    ckpt = kr.CheckpointDirectory(tmp_path / "nothing")
    assert ckpt.checkpoints() == [] and ckpt.best() is None
    assert ckpt.history() == {"epoch": []}
    with pytest.raises(NoCheckpointError, match="nothing"):
        ckpt.select("latest")


def test_history_merges_epochs(ckpt_dir):
    _, ckpt = _train(ckpt_dir, epochs=3)
    history = ckpt.history()
    assert history["epoch"] == [0, 1, 2]
    assert len(history["loss"]) == 3 and all(isinstance(v, float) for v in history["loss"])


def test_invalid_arguments_name_the_value(tmp_path):
    with pytest.raises(ValueError, match="every_n_steps=0"):
        kr.StepBackup(tmp_path, every_n_steps=0)
    with pytest.raises(ValueError, match="keep=0"):
        kr.StepBackup(tmp_path, keep=0)
    with pytest.raises(TypeError, match="path=None"):
        kr.CheckpointDirectory(None)
    with pytest.raises(ValueError, match="which='newest'"):
        kr.CheckpointDirectory(tmp_path).select("newest")


def test_same_path_shares_one_directory_object(tmp_path):
    a = kr.StepBackup(str(tmp_path / "r"))
    b = kr.RngCapture(tmp_path / "r")
    assert a.ckpt is b.ckpt


def test_manifest_entry_epoch_fields_consistent(ckpt_dir):
    _, ckpt = _train(ckpt_dir, epochs=2, every=3)
    for entry in ckpt.checkpoints("backup"):
        epoch, step = mf.resume_point(entry)
        assert entry["global_step"] == epoch * 4 + step


def _h5_contents(path):
    import h5py

    out = {}
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            value = obj[()] if isinstance(obj, h5py.Dataset) else None
            out[name] = (value, dict(obj.attrs))

        f.visititems(visit)
    return out


def test_background_weights_file_is_the_one_save_weights_writes(tmp_path):
    """Our snapshot-then-write path and `model.save_weights` produce the same file contents."""
    from keras_resume.state import model_state

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(1, dtype="bfloat16"),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    x, y = tiny_data()
    model.fit(x, y, epochs=1, verbose=0)
    model.save_weights(str(tmp_path / "keras.weights.h5"))
    buffers = {}
    for _ in range(2):  # the second snapshot reuses the first one's buffers
        snapshot = model_state.snapshot_weights(model, buffers)
    (tmp_path / "ours").mkdir()
    model_state.write_weights(snapshot, tmp_path / "ours")
    theirs = _h5_contents(tmp_path / "keras.weights.h5")
    ours = _h5_contents(tmp_path / "ours" / "model.weights.h5")
    assert sorted(ours) == sorted(theirs)
    for name, (value, attrs) in theirs.items():
        assert ours[name][1] == attrs, name
        if value is not None:
            assert ours[name][0].dtype == value.dtype, name
            assert np.array_equal(ours[name][0], value), name
    assert any(a.get("dtype") == "bfloat16" for _, a in theirs.values())
