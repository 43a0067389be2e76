"""storage.py: atomic writes, staged directory commits and checksum verification."""

import os

import pytest

from keras_resume import storage
from keras_resume.errors import CheckpointCorruptError


def test_atomic_write_replaces_content_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "f.json"
    storage.atomic_write_bytes(target, b"old")
    storage.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "f.json"
    storage.atomic_write_bytes(target, b"old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        storage.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_staged_directory_commits_under_final_name(tmp_path):
    with storage.StagedDirectory(tmp_path, "backup-000001") as staged:
        (staged.path / "a.bin").write_bytes(b"x" * 10)
        assert staged.path.name.startswith(storage.STAGING_PREFIX)
        staged.commit()
    assert (tmp_path / "backup-000001" / "a.bin").read_bytes() == b"x" * 10
    assert storage.leftovers(tmp_path) == []


def test_staged_directory_removed_when_save_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with storage.StagedDirectory(tmp_path, "backup-000001") as staged:
            (staged.path / "a.bin").write_bytes(b"partial")
            raise RuntimeError("disk error while writing")
    assert list(tmp_path.iterdir()) == []


def test_staged_directory_refuses_to_overwrite(tmp_path):
    (tmp_path / "backup-000001").mkdir()
    with pytest.raises(FileExistsError, match="backup-000001"):
        with storage.StagedDirectory(tmp_path, "backup-000001") as staged:
            staged.commit()


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_verify_file_detects_damage(tmp_path, damage):
    path = tmp_path / "w.h5"
    path.write_bytes(bytes(range(200)))
    record = storage.file_record(tmp_path, "w.h5")
    storage.verify_file(tmp_path, record)  # intact: no error
    if damage == "flip":
        data = bytearray(path.read_bytes())
        data[100] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:50])
    else:
        path.unlink()
    with pytest.raises(CheckpointCorruptError, match="w.h5"):
        storage.verify_file(tmp_path, record)


@pytest.mark.parametrize("workers", [1, 3])
def test_block_checksums_name_the_damaged_block(tmp_path, workers):
    path = tmp_path / "w.h5"
    data = bytearray(os.urandom(10 * 1000 + 7))
    path.write_bytes(bytes(data))
    record = storage.file_record(tmp_path, "w.h5")
    record["block_bytes"] = 1000
    record["sha256_blocks"] = storage.sha256_blocks(path, 1000)
    assert len(record["sha256_blocks"]) == 11
    storage.verify_file(tmp_path, record, workers=workers)  # intact: no error
    data[4321] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptError, match="bytes 4000-4999"):
        storage.verify_file(tmp_path, record, workers=workers)


def test_whole_file_checksum_of_schema_1_still_verified(tmp_path):
    import hashlib

    path = tmp_path / "w.h5"
    path.write_bytes(b"abc" * 100)
    record = {"path": "w.h5", "size": 300, "sha256": hashlib.sha256(b"abc" * 100).hexdigest()}
    storage.verify_file(tmp_path, record)
    path.write_bytes(b"abd" * 100)
    with pytest.raises(CheckpointCorruptError, match="fails its checksum"):
        storage.verify_file(tmp_path, record)
