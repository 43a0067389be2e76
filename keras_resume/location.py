"""Where a run directory is published: this machine's filesystem, or a remote store.

A `CheckpointDirectory` always works on a directory of this machine (`path`):
it stages, fsyncs, renames and reads there. A `Location` says what more it
takes for the run to be somewhere else too. For a local run, nothing: the
directory *is* the run, and every method below is a no-op or a plain listing.
For a remote run (`remote.MirroredLocation`), the local directory is a mirror:
checkpoints are uploaded once committed locally, the manifest is uploaded last
(the commit point), and readers download what they read.

The protocol is small so that a new kind of store is one class, and no
directory operation has to remember the remote case.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

from keras_resume.errors import NoCheckpointError

T = TypeVar("T")


class Location(Protocol):
    """What a run directory needs of the place it is published."""

    path: Path  # the directory on this machine that is staged, written and read
    url: str  # the run as the user named it (a path, or a URL)
    key: str  # one per run: callbacks given the same run share one directory object

    def check_exists(self) -> None:
        """Raises `NoCheckpointError` when the run plainly does not exist (a typo)."""

    def fetch_manifest(self, name: str) -> None:
        """Makes the local manifest the published one."""

    def publish_manifest(self, name: str) -> None:
        """Publishes the local manifest: the commit point of a save."""

    def checkpoint_names(self, pattern: re.Pattern) -> list[str]:
        """Names of the published checkpoint directories matching `pattern`."""

    def fetch_checkpoint(self, name: str, records: list) -> Path:
        """The checkpoint's local directory, holding the files `records` name."""

    def publish_checkpoint(self, local_dir: Path) -> None:
        """Publishes a checkpoint committed locally (before its manifest)."""

    def unpublish_checkpoint(self, name: str) -> None:
        """Removes a published checkpoint (its local copy is the directory's to remove)."""

    def read_fresh(self, read: Callable[[], T], name: str, corrupt: type) -> T:
        """`read()`; if it raises `corrupt` on a copy fetched before, fetches again and retries."""

    def named(self, error: Exception) -> Exception:
        """`error`, its message naming the run as the user named it."""


class LocalLocation:
    """A run directory on this machine's filesystem: published by being written."""

    def __init__(self, path):
        self.path = Path(path)
        self.url = str(self.path)
        self.key = str(self.path.resolve())

    def check_exists(self) -> None:
        if not self.path.exists():
            raise NoCheckpointError(
                f"Run directory {self.url} does not exist. Pass the directory given to "
                "keras_resume.CheckpointDirectory (or StepBackup) during training."
            )
        if not self.path.is_dir():
            raise NoCheckpointError(
                f"Run directory {self.url} is a file, not a directory. Pass the directory "
                "given to keras_resume.CheckpointDirectory during training."
            )

    def fetch_manifest(self, name: str) -> None:
        pass

    def publish_manifest(self, name: str) -> None:
        pass  # the atomic replace of the local file was the commit

    def checkpoint_names(self, pattern: re.Pattern) -> list[str]:
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if pattern.match(p.name))

    def fetch_checkpoint(self, name: str, records: list) -> Path:
        return self.path / name

    def publish_checkpoint(self, local_dir: Path) -> None:
        pass

    def unpublish_checkpoint(self, name: str) -> None:
        pass

    def read_fresh(self, read: Callable[[], T], name: str, corrupt: type) -> T:
        return read()  # there is no other copy to read again

    def named(self, error: Exception) -> Exception:
        return error


def open_location(path, storage_options: dict | None = None) -> Location:
    """The `Location` of `path`: a URL (other than `file://`) is remote, anything else local."""
    from keras_resume import remote

    if remote.is_remote(path):
        return remote.MirroredLocation(str(path), storage_options)
    return LocalLocation(path)
