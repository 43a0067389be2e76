"""manifest.py: schema validation, history records and resume points."""

import copy
import json

import pytest

from keras_resume import manifest as mf
from keras_resume.errors import ManifestError


def _entry(**overrides):
    entry = {
        "id": 1,
        "dir": "backup-000001",
        "kind": "backup",
        "epoch": 2,
        "step_in_epoch": 5,
        "epoch_complete": False,
        "global_step": 29,
        "logs": {},
        "files": [{"path": "model.weights.h5", "size": 10, "sha256": "ab"}],
        "fingerprint": "fp",
    }
    entry.update(overrides)
    return entry


def _manifest(**entry_overrides):
    manifest = mf.new_manifest()
    manifest["fingerprints"]["fp"] = {
        "variables": [["sequential/dense/kernel", [3, 4], "float32"]],
        "optimizer": "Adam",
        "optimizer_variables": [["adam/iteration", [], "int64"]],
    }
    manifest["checkpoints"].append(_entry(**entry_overrides))
    manifest["next_id"] = 2
    return manifest


def test_round_trip(tmp_path):
    path = tmp_path / mf.MANIFEST_NAME
    manifest = _manifest()
    mf.write_manifest(path, manifest)
    assert mf.read_manifest(path) == manifest


def test_missing_manifest_reads_as_none(tmp_path):
    assert mf.read_manifest(tmp_path / mf.MANIFEST_NAME) is None


@pytest.mark.parametrize("bad_dir", ["../outside", "/etc", "a/b", "..", ".hidden", "x\\y"])
def test_checkpoint_dir_outside_the_directory_is_rejected(bad_dir):
    with pytest.raises(ManifestError, match="dir"):
        mf.validate(_manifest(dir=bad_dir))


@pytest.mark.parametrize("bad_path", ["../../etc/passwd", "/etc/passwd", "a/../b", ""])
def test_file_path_outside_the_checkpoint_is_rejected(bad_path):
    manifest = _manifest(files=[{"path": bad_path, "size": 1, "sha256": "x"}])
    with pytest.raises(ManifestError, match="files"):
        mf.validate(manifest)


@pytest.mark.parametrize(
    "field, value",
    [
        ("epoch", "2"),
        ("epoch", True),
        ("epoch", -5),
        ("kind", "weights"),
        ("files", {}),
        ("fingerprint", "zz"),
        ("training_stopped", "no"),
        ("global_step", None),
    ],
)
def test_bad_field_named_in_error(field, value):
    with pytest.raises(ManifestError, match=field):
        mf.validate(_manifest(**{field: value}))


def test_foreign_format_and_future_schema(tmp_path):
    path = tmp_path / mf.MANIFEST_NAME
    manifest = _manifest()
    manifest["schema_version"] = 99
    path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="schema_version=99"):
        mf.read_manifest(path)
    path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ManifestError, match="something-else"):
        mf.read_manifest(path)


def test_invalid_json_names_the_file(tmp_path):
    path = tmp_path / mf.MANIFEST_NAME
    path.write_text('{"format": "keras-resume", ')
    with pytest.raises(ManifestError, match=str(path)):
        mf.read_manifest(path)


@pytest.mark.parametrize(
    "fingerprint",
    [
        {},
        {"variables": [[1]], "optimizer_variables": []},
        {"variables": [], "optimizer_variables": [["a", [1.5], "float32"]]},
        {"variables": [], "optimizer_variables": [], "optimizer": 3},
    ],
)
def test_malformed_fingerprint_rejected(fingerprint):
    manifest = _manifest()
    manifest["fingerprints"]["fp"] = fingerprint
    with pytest.raises(ManifestError, match="fingerprints"):
        mf.validate(manifest)


def test_missing_best_key_rejected():
    manifest = _manifest()
    del manifest["best"]
    with pytest.raises(ManifestError, match="best"):
        mf.validate(manifest)


def test_hand_edit_fails_the_checksum(tmp_path):
    path = tmp_path / mf.MANIFEST_NAME
    mf.write_manifest(path, _manifest())
    path.write_text(path.read_text().replace('"global_step": 29', '"global_step": 30'))
    with pytest.raises(ManifestError, match="checksum"):
        mf.read_manifest(path)


def test_repeated_ids_rejected():
    manifest = _manifest()
    manifest["checkpoints"].append(copy.deepcopy(manifest["checkpoints"][0]))
    with pytest.raises(ManifestError, match="repeated"):
        mf.validate(manifest)


def test_record_history_replaces_the_same_epoch_and_sorts():
    manifest = mf.new_manifest()
    mf.record_history(manifest, 1, {"loss": 2.0})
    mf.record_history(manifest, 0, {"loss": 3.0})
    mf.record_history(manifest, 1, {"loss": 1.5, "lr": float("nan")})
    assert manifest["history"] == [
        {"epoch": 0, "logs": {"loss": 3.0}},
        {"epoch": 1, "logs": {"loss": 1.5, "lr": "nan"}},
    ]


def test_resume_point():
    assert mf.resume_point(_entry(epoch=3, step_in_epoch=7, epoch_complete=False)) == (3, 7)
    assert mf.resume_point(_entry(epoch=3, step_in_epoch=12, epoch_complete=True)) == (4, 0)


def test_schema_1_manifest_still_read(tmp_path):
    path = tmp_path / mf.MANIFEST_NAME
    manifest = _manifest()
    manifest["schema_version"] = 1
    mf.write_manifest(path, manifest)
    assert mf.read_manifest(path)["schema_version"] == 1


@pytest.mark.parametrize(
    "record, problem",
    [
        ({"size": 100, "block_bytes": 40, "sha256_blocks": ["a", "b"]}, "expected 3"),
        ({"size": 10, "block_bytes": 0, "sha256_blocks": ["a"]}, "block_bytes=0"),
        ({"size": 10, "block_bytes": 40, "sha256_blocks": [1]}, r"sha256_blocks\[0\]"),
        ({"size": 10, "sha256_blocks": ["a"]}, "block_bytes"),
    ],
)
def test_block_checksum_records_validated(record, problem):
    manifest = _manifest(files=[{"path": "model.weights.h5", **record}])
    with pytest.raises(ManifestError, match=problem):
        mf.validate(manifest)
