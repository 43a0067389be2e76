"""Files on disk: atomic writes, fsync, checksums and staged directory commits.

This module knows nothing of Keras. Every write that must survive a crash goes
through `atomic_write_bytes` or a `StagedDirectory`, which only become visible
under their final name once their bytes are flushed to disk.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import stat
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from keras_resume.errors import (
    CheckpointCorruptError,
    CheckpointDirectoryError,
    DirectoryLockedError,
)

STAGING_PREFIX = ".staging-"
DELETING_PREFIX = ".deleting-"  # renamed so before removal: never rebuilt into a manifest
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
        with new_file(tmp) as f:
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


# A file's checksum is one SHA-256 per block of this size: verifying hashes the
# blocks on several threads (hashlib releases the GIL), so restoring a large
# checkpoint is not bound by one core's hashing speed.
BLOCK_BYTES = 32 * 1024 * 1024


def sha256_blocks(path: str | os.PathLike, block_bytes: int = BLOCK_BYTES, workers: int = 1):
    """Hex SHA-256 of each `block_bytes` block of a file (one digest for an empty file)."""
    size = os.path.getsize(path)
    count = max(1, -(-size // block_bytes))
    fd = os.open(path, os.O_RDONLY)
    try:

        def digest(k: int) -> str:
            h = hashlib.sha256()
            start, end = k * block_bytes, min(size, (k + 1) * block_bytes)
            while start < end:
                chunk = os.pread(fd, min(_CHUNK, end - start), start)
                if not chunk:
                    break  # shrank while being read: the digest will not match
                h.update(chunk)
                start += len(chunk)
            return h.hexdigest()

        if workers <= 1 or count == 1:
            return [digest(k) for k in range(count)]
        with ThreadPoolExecutor(max_workers=min(workers, count)) as pool:
            return list(pool.map(digest, range(count)))
    finally:
        os.close(fd)


def file_record(root: Path, relpath: str) -> dict:
    """Describes one committed file for the manifest: path, size and block checksums."""
    full = root / relpath
    return {
        "path": relpath,
        "size": full.stat().st_size,
        "block_bytes": BLOCK_BYTES,
        "sha256_blocks": sha256_blocks(full, BLOCK_BYTES),
    }


def verify_file(root: Path, record: dict, workers: int | None = None) -> None:
    """Raises `CheckpointCorruptError` if a file is missing, resized or changed.

    Blocks are hashed on `workers` threads (default: one per CPU).
    """
    check_size(root, record)
    full = root / record["path"]
    if "sha256_blocks" not in record:  # written by schema 1
        actual = sha256_file(full)
        if actual != record["sha256"]:
            raise CheckpointCorruptError(
                f"Checkpoint file {full} fails its checksum: sha256 {actual}, expected "
                f"{record['sha256']}. Resume from another checkpoint."
            )
        return
    block_bytes = record["block_bytes"]
    actual = sha256_blocks(full, block_bytes, workers or os.cpu_count() or 1)
    for k, (got, expected) in enumerate(zip(actual, record["sha256_blocks"])):
        if got != expected:
            raise CheckpointCorruptError(
                f"Checkpoint file {full} fails its checksum in bytes {k * block_bytes}-"
                f"{min(record['size'], (k + 1) * block_bytes) - 1}: sha256 {got}, expected "
                f"{expected}. Resume from another checkpoint."
            )


def check_size(root: Path, record: dict) -> None:
    """Raises `CheckpointCorruptError` if a file is missing or has another size."""
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
        make_run_directory(self.root)
        make_directory(self.path, new=True)
        return self

    def commit(self) -> Path:
        if self.final_path.exists():
            raise FileExistsError(
                f"Cannot commit checkpoint directory {self.final_path}: it already "
                "exists. Another process may be writing to the same checkpoint "
                "directory; give each run its own directory."
            )
        check_tree(self.path)  # nothing planted in it while it was written
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


def leftovers(root: Path) -> list[Path]:
    """Staging directories and temporary files left behind by a crashed save."""
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.iterdir()
        if p.name.startswith((STAGING_PREFIX, DELETING_PREFIX))
        or (p.name.startswith(".") and p.name.endswith(".tmp"))
    )


def retire(path: Path) -> None:
    """Deletes a committed checkpoint directory: renamed out of sight first, so a
    crash mid-removal leaves only a leftover, never a half-deleted checkpoint."""
    if not path.exists():
        return
    hidden = path.with_name(f"{DELETING_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    os.replace(path, hidden)
    remove(hidden)


def remove(path: Path) -> None:
    """Deletes a file or a directory tree; a missing one is not an error."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# Locks this process holds, by lock file path. A `fit` that ends with an
# exception never reaches `on_train_end`; the next `fit` in the same process
# (a notebook cell run again) takes the lock over from it.
_HELD: dict = {}


class DirectoryLock:
    """An exclusive writer lock on a checkpoint directory (`.lock`, `fcntl.flock`).

    The kernel releases a `flock` when its process dies, so a lock left by a
    SIGKILLed process is free again at once; the holder's pid, host and start
    time written in the file name the holder in the error message, and tell
    that a stale lock was taken over. Re-entrant within one process. Works on
    local filesystems; on NFS `flock` may not be enforced across hosts.
    """

    NAME = ".lock"

    def __init__(self, root: Path):
        self.root = Path(root)
        self._fd: int | None = None
        self._key: str | None = None  # the lock file's absolute path, fixed at acquire
        self.took_over: dict | None = None  # holder info of a stale lock taken over

    @property
    def path(self) -> Path:
        return self.root / self.NAME

    @property
    def held(self) -> bool:
        return self._key is not None and _HELD.get(self._key) is self

    def _still_ours(self) -> bool:
        """False when the lock file was deleted or replaced (the run's directory removed)."""
        try:
            mine, now = os.fstat(self._fd), os.stat(self._key)
        except OSError:
            return False
        return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)

    def acquire(self) -> None:
        if self.held:
            if self._still_ours():
                return
            self.release()  # our lock file is gone: lock the new one like anyone else
        key = str(self.path.absolute())
        owner = _HELD.get(key)
        if owner is not None and owner is not self:
            self._fd, owner._fd, owner._key = owner._fd, None, None
            self._key = key
            _HELD[key] = self
            if self._still_ours():
                return
            self.release()
        self._lock_file(key)

    def _lock_file(self, key: str) -> None:
        make_run_directory(self.root)
        fd = open_own_file(key)  # never a link: it is truncated and written
        try:
            _flock_or_name_holder(fd, self.root, key)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._key = fd, key
        _HELD[key] = self
        self.took_over = _read_holder(fd) or None  # a released lock is emptied
        try:  # the holder's name is for messages only: best effort on a full disk
            info = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}
            _write_holder(fd, info)
        except OSError:
            pass

    def release(self) -> None:
        import fcntl

        if not self.held:
            return
        del _HELD[self._key]
        fd, self._fd, self._key = self._fd, None, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


# The holder record fills this many bytes (JSON padded with spaces) and is
# written by one pwrite, never truncated first: a reader sees the old record or
# the new one, not an empty file in between.
_HOLDER_BYTES = 512
# How long a process that finds the lock held waits for its holder to write its
# name (it takes the lock itself if it is released meanwhile).
HOLDER_WAIT_S = 2.0


def _write_holder(fd: int, info: dict) -> None:
    data = json.dumps(info).encode("utf-8")[:_HOLDER_BYTES].ljust(_HOLDER_BYTES)
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, _HOLDER_BYTES)  # drops a longer record of an older version


def _flock_or_name_holder(fd: int, root: Path, key: str) -> None:
    """Takes the lock on `fd`, or raises `DirectoryLockedError` naming its holder.

    The holder writes its name just after it took the lock, and a holder killed
    outright leaves its name behind: a name is waited for (briefly) until it is
    one of a live process, and the lock is retried meanwhile.
    """
    import fcntl

    deadline = time.monotonic() + HOLDER_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        holder = _read_holder(fd)
        if _plausible(holder) or time.monotonic() > deadline:
            break
        time.sleep(0.005)
    named = all(k in holder for k in ("pid", "host", "since"))
    raise DirectoryLockedError(
        f"Checkpoint directory {root} is being written by another "
        f"process (pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
        f"since {holder.get('since', '?')}); lock file {key}. Wait for it to "
        "finish, stop it, or give this run its own directory."
        + ("" if named else f" (It did not write its name within {HOLDER_WAIT_S:g} s.)")
    )


def _plausible(holder: dict) -> bool:
    """Whether a holder record is complete and, on this host, names a live process."""
    if not all(k in holder for k in ("pid", "host", "since")):
        return False
    if holder["host"] != socket.gethostname() or not isinstance(holder["pid"], int):
        return True  # another host's process cannot be checked from here
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False  # the name a killed holder left: the new holder's comes next
    except OSError:
        pass
    return True


def _read_holder(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0).strip()
        holder = json.loads(data.decode("utf-8")) if data else {}
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --- Writing inside a run: never through a link ---------------------------------------
#
# Every file keras_resume creates or writes in a run directory is opened with
# O_NOFOLLOW (and O_CREAT | O_EXCL when it is new) and checked with fstat to be
# a regular file with one name: a symbolic or hard link planted in the run
# (`.lock` -> ~/.bashrc) is refused instead of truncated. Directories it
# creates or enters must be real directories, not links. Failures name the
# path and the fix as a `CheckpointDirectoryError`, never a bare OSError. The
# run's own root is the one path taken as the user named it (it may be a link).

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a planted FIFO must not hang the open


def open_new_file(path: str | os.PathLike) -> int:
    """Creates `path`, which must not exist (not even as a link); returns a write fd."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
    try:
        return os.open(path, flags, 0o644)
    except OSError as e:
        raise writing_error(path, e) from None


@contextlib.contextmanager
def new_file(path: str | os.PathLike):
    """`open(path, "xb")` that never follows a link: for files written in a run."""
    with os.fdopen(open_new_file(path), "wb") as f:
        yield f


def write_new_file(path: str | os.PathLike, data: bytes | str) -> None:
    """Writes a new file (text as UTF-8) through `new_file`."""
    with new_file(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def open_own_file(path: str | os.PathLike) -> int:
    """Opens (creating it if missing) a file of the run for reading and writing.

    Refuses a symbolic link, a hard link (a second name, maybe outside the run)
    and anything that is not a regular file.
    """
    flags = os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC | _NONBLOCK
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        raise writing_error(path, e) from None
    try:
        check_own_file(os.fstat(fd), path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_own_file(st: os.stat_result, path: str | os.PathLike) -> None:
    """Raises `CheckpointDirectoryError` unless `st` is a regular file with one name."""
    if stat.S_ISLNK(st.st_mode):
        raise _linked(path, "is a symbolic link")
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointDirectoryError(
            f"{path} is not a regular file, so keras_resume will not write it. Remove it "
            f"(rm {path}): keras_resume recreates it."
        )
    if st.st_nlink != 1:
        raise _linked(path, f"has {st.st_nlink} hard links (another name, maybe outside the run)")


def _linked(path, what: str) -> CheckpointDirectoryError:
    return CheckpointDirectoryError(
        f"{path} {what}; keras_resume never writes through a link, which could change a "
        f"file outside the run directory. Nothing was written. Check who put it there, "
        f"remove it (rm {path}; keras_resume recreates its own files) and run again."
    )


def make_run_directory(root: str | os.PathLike) -> None:
    """Creates the run's directory (and its parents) if missing; it must be a directory."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:  # exists, and is not a directory
        raise writing_error(root, e) from None
    except OSError as e:
        raise writing_error(e.filename or root, e, root) from None


def make_directory(path: str | os.PathLike, new: bool = False) -> None:
    """Creates a directory inside the run; an existing one (unless `new`) must be real."""
    try:
        os.mkdir(path)
        return
    except FileExistsError as e:
        if new:
            raise writing_error(path, e) from None
        error = e
    except OSError as e:
        raise writing_error(path, e) from None
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise _linked(path, "is a symbolic link") from None
    if not stat.S_ISDIR(st.st_mode):
        raise writing_error(path, error) from None


def check_tree(path: Path) -> None:
    """Raises `CheckpointDirectoryError` if anything under `path` is a link or not ours."""
    for child in path.rglob("*"):
        st = os.lstat(child)
        if not stat.S_ISDIR(st.st_mode):
            check_own_file(st, child)


def writing_error(path, error: OSError, root=None) -> CheckpointDirectoryError:
    """`error` (from creating or writing `path`) as a `CheckpointDirectoryError` with the fix."""
    where = f"{path}" if root is None or str(root) == str(path) else f"{path} (for {root})"
    code = error.errno
    if code == errno.ELOOP or (code == errno.EEXIST and os.path.islink(path)):
        return _linked(path, "is a symbolic link")
    if code == errno.EROFS:
        fix = (
            "it is on a read-only filesystem. Give a checkpoint directory on a writable "
            "filesystem, or remount this one read-write"
        )
    elif code in (errno.EACCES, errno.EPERM):
        fix = (
            "permission denied. Make it writable for this user (chmod u+w on the "
            "directory), or give a checkpoint directory you can write"
        )
    elif code == errno.EEXIST:
        fix = (
            "it is a file, not a directory. Give a directory path (a new one is created), "
            "or move the file away"
        )
    elif code == errno.ENOTDIR:
        fix = (
            "a part of the path is a file, not a directory. Give a directory path, or move "
            "the file away"
        )
    elif code == errno.ENOSPC:
        fix = "no space left on the device. Free some space, or give another directory"
    else:
        fix = f"{error.strerror or error}. Check the path, or give another checkpoint directory"
    failure = CheckpointDirectoryError(f"Cannot write checkpoint directory {where}: {fix}.")
    failure.errno = code
    return failure
