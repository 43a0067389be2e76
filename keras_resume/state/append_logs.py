"""Log files a fit appends to (`CSVLogger(append=True)`), cut back to a backup's length.

A `CSVLogger(append=True)` adds a row at every epoch end. A backup records the
length of each such file as it was taken; a resume cuts the file back to that
length, so the rows of the epochs the resumed run trains again (a kill after
the row was written, before the epoch-end backup committed) are not there twice.

The file is the user's: keras_resume only ever truncates a file that a
CSVLogger of the running `fit` names, never through a symbolic link, never
one that is not a regular file, and never to more than it holds; it reads
nothing of it but its length.
"""

from __future__ import annotations

import errno
import logging
import os
import stat

import keras

from keras_resume.state.bundle import StateBundle

logger = logging.getLogger("keras_resume")
SECTION = "append_logs"


def appending_loggers(callbacks: list) -> list:
    """The `CSVLogger(append=True)` among `callbacks` that write a local file."""
    found = []
    for callback in callbacks:
        if not isinstance(callback, keras.callbacks.CSVLogger) or not callback.append:
            continue
        if "://" in str(callback.filename):
            logger.warning(
                "CSVLogger(append=True) writes to %s, not a local file: keras_resume cannot "
                "cut it back on a resume, so a row written after the newest backup may "
                "appear twice. Log to a local file to have it kept exact.",
                callback.filename,
            )
            continue
        found.append(callback)
    return found


def _path(callback) -> str:
    return os.path.abspath(os.fspath(callback.filename))


def capture(loggers: list, bundle: StateBundle) -> None:
    """Records each logger's file length now (0 for a file not yet made)."""
    records = []
    for path in dict.fromkeys(_path(c) for c in loggers):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            length = 0
        else:
            if not stat.S_ISREG(st.st_mode):
                continue  # a link or device: never cut back (see cut_back's warning)
            length = st.st_size
        records.append({"path": path, "length": length})
    bundle.meta[SECTION] = records


def cut_back(loggers: list, bundle: StateBundle | None, where) -> list[str]:
    """Truncates each logger's file to its recorded length; returns what was not done.

    Only files named by `loggers` (the running fit's own) are touched, whatever
    the checkpoint lists.
    """
    records = (
        {} if bundle is None else {r["path"]: r["length"] for r in bundle.meta.get(SECTION, [])}
    )
    problems = []
    for path in dict.fromkeys(_path(c) for c in loggers):
        if path not in records:
            continue  # not recorded (an older backup, or the logger is new)
        problem = _truncate(path, records[path], where)
        if problem:
            problems.append(problem)
        elif records[path] == 0:
            for callback in loggers:  # a logger that opened it already writes its header
                if _path(callback) == path:
                    callback.append_header = True
    return problems


def _truncate(path: str, length: int, where) -> str | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None  # nothing to cut: CSVLogger starts it again
    if stat.S_ISREG(st.st_mode):
        flags = os.O_WRONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        try:  # no link followed, even one planted since the lstat
            fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno != errno.ELOOP:
                return f"{path} cannot be opened ({e})"
            st = os.lstat(path)
        else:
            try:
                return _cut(fd, path, length, where)
            finally:
                os.close(fd)
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link; keras_resume does not cut a file back through a link"
    return f"{path} is not a regular file (mode {stat.filemode(st.st_mode)})"


def _cut(fd: int, path: str, length: int, where) -> str | None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file (mode {stat.filemode(st.st_mode)})"
    if st.st_size < length:
        return (
            f"{path} holds {st.st_size} bytes, fewer than the {length} it held when "
            f"backup {where} was taken (it was edited or replaced); it is left as it is"
        )
    if st.st_size > length:
        os.ftruncate(fd, length)
        os.fsync(fd)
        logger.info("Cut %s back to %d bytes, its length at backup %s", path, length, where)
    return None
