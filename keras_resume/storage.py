"""Files on disk: atomic writes, fsync, checksums and staged directory commits.

This module knows nothing of Keras. Every write that must survive a crash goes
through `atomic_write_bytes` or a `StagedDirectory`, which only become visible
under their final name once their bytes are flushed to disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

from keras_resume.errors import CheckpointCorruptError

STAGING_PREFIX = ".staging-"
_CHUNK = 8 * 1024 * 1024


def fsync_path(path: str | os.PathLike) -> None:
    """Flushes a file, or a directory's entries, to stable storage."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else os.O_RDONLY
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` so that readers see the old or the new file, never a mix.

    The bytes go to a unique temporary file in the same directory, are fsynced,
    and replace `path` with one `os.replace`; the directory is fsynced after.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Writes `obj` as indented, key-sorted JSON through `atomic_write_bytes`."""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike) -> str:
    """Returns the hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(root: Path, relpath: str) -> dict:
    """Describes one committed file for the manifest: path, size and checksum."""
    full = root / relpath
    return {"path": relpath, "size": full.stat().st_size, "sha256": sha256_file(full)}


def verify_file(root: Path, record: dict) -> None:
    """Raises `CheckpointCorruptError` if a file is missing, resized or changed."""
    full = root / record["path"]
    if not full.is_file():
        raise CheckpointCorruptError(
            f"Checkpoint file {full} is missing. The checkpoint cannot be used; "
            "resume from another one (keras_resume falls back automatically)."
        )
    size = full.stat().st_size
    if size != record["size"]:
        raise CheckpointCorruptError(
            f"Checkpoint file {full} has {size} bytes, expected {record['size']} "
            "(truncated or overwritten). Resume from another checkpoint."
        )
    actual = sha256_file(full)
    if actual != record["sha256"]:
        raise CheckpointCorruptError(
            f"Checkpoint file {full} fails its checksum: sha256 {actual}, expected "
            f"{record['sha256']}. Resume from another checkpoint."
        )


class StagedDirectory:
    """A directory written under a hidden staging name and renamed when complete.

    Use as a context manager: files are written into `.path`; `commit()` fsyncs
    every file and the directory, then renames it to its final name. Leaving the
    block without `commit()` (an exception) removes the staging directory, so a
    failed save leaves nothing behind and touches no committed checkpoint.
    """

    def __init__(self, root: Path, final_name: str):
        self.root = Path(root)
        self.final_path = self.root / final_name
        self.path = self.root / f"{STAGING_PREFIX}{final_name}-{uuid.uuid4().hex[:8]}"
        self.committed = False

    def __enter__(self) -> StagedDirectory:
        self.path.mkdir(parents=True)
        return self

    def commit(self) -> Path:
        if self.final_path.exists():
            raise FileExistsError(
                f"Cannot commit checkpoint directory {self.final_path}: it already "
                "exists. Another process may be writing to the same checkpoint "
                "directory; give each run its own directory."
            )
        for child in self.path.rglob("*"):
            if child.is_file():
                fsync_path(child)
        fsync_path(self.path)
        os.replace(self.path, self.final_path)
        fsync_path(self.root)
        self.committed = True
        return self.final_path

    def __exit__(self, exc_type, exc, tb):
        if not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)
        return False


def remove_tree(path: Path) -> None:
    """Deletes a checkpoint directory; a missing one is not an error."""
    shutil.rmtree(path, ignore_errors=True)


def stale_staging_dirs(root: Path) -> list[Path]:
    """Lists staging directories left behind by a crashed save."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(STAGING_PREFIX))
