"""Hostile files planted in a run, read by keras_resume (issue 14, B2 B3 B4 B7).

Each test writes a real checkpoint, alters its files as an attacker would (and,
where the attack needs it, recomputes the manifest's checksums, which guard
against damage, not against someone who can write the run), then shows that
nothing outside the run is read, that the error names the file, and that no
variable of the model changed.
"""

import json
import os
import resource
import shutil
import warnings

import h5py
import keras
import numpy as np
import pytest

from keras_resume import inspect as kri
from keras_resume import manifest as mf
from keras_resume import storage
from keras_resume.directory import CheckpointDirectory
from keras_resume.errors import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    ManifestError,
)
from keras_resume.restoring import load_into_model, restore
from keras_resume.state.bundle import StateBundle

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
    ckpt.release_writer()
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

    [result] = kri.verify_run(run)
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
    [result] = kri.verify_run(run)
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
            kri.export_model(run, target)
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
