"""Remote run directories (`s3://bucket/run`, any fsspec URL) through a local mirror.

A remote run is written and read through a local cache directory that holds the
same layout. Saving writes the checkpoint locally (staged, fsynced, renamed, as
for a local run), uploads its files, and only then uploads `manifest.json`:
object stores have no atomic rename, so the manifest, replaced by one PUT
(readers see the old or the new object, never a mix), is the commit point. A
checkpoint whose upload was interrupted is never listed, and the next writing
session deletes it. Reading downloads the manifest, then the chosen
checkpoint's files, which are verified against the manifest's checksums like
local ones.

fsspec (and s3fs for `s3://`) is only imported for remote URLs: local paths
work without it (`pip install keras-resume[remote]`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from keras_resume import storage
from keras_resume.errors import RemoteError

logger = logging.getLogger("keras_resume")

T = TypeVar("T")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
CACHE_ENV = "KERAS_RESUME_CACHE"


def is_remote(path) -> bool:
    """Whether `path` is a URL other than `file://` (a remote run directory)."""
    text = os.fspath(path) if isinstance(path, os.PathLike) else path
    return isinstance(text, str) and bool(_URL.match(text)) and not text.startswith("file://")


def cache_root() -> Path:
    """Where remote runs are mirrored: `$KERAS_RESUME_CACHE`, else ~/.cache/keras_resume."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "keras_resume"


def _matches(path: Path, size) -> bool:
    return path.is_file() and (size is None or path.stat().st_size == size)


class MirroredLocation:
    """A remote run directory and its local mirror: a `location.Location`.

    Args:
        url: an fsspec URL such as `s3://bucket/runs/exp1`.
        storage_options: passed to fsspec (credentials, `endpoint_url`, ...).
    """

    def __init__(self, url: str, storage_options: dict | None = None):
        try:
            import fsspec
        except ImportError as e:
            raise ImportError(
                f"Checkpoint directory {url!r} is remote, which needs fsspec (and s3fs "
                "for s3://). Install them with `pip install keras-resume[remote]`."
            ) from e
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.root = self.root.rstrip("/")
        digest = hashlib.sha256(self.url.encode("utf-8")).hexdigest()[:16]
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", self.url.split("://", 1)[1])[-48:]
        self.path = cache_root() / f"{name}-{digest}"
        self.key = self.url
        self._downloaded: set[str] = set()  # checkpoints fetched by this object

    def _remote(self, relpath: str) -> str:
        return f"{self.root}/{relpath}"

    # --- the manifest ---------------------------------------------------------------

    def check_exists(self) -> None:
        pass  # an empty prefix reads as a run with no manifest: the caller says so

    def fetch_manifest(self, manifest_name: str) -> None:
        """Copies the remote manifest over the local one (or removes the local one)."""
        remote = self._remote(manifest_name)
        local = self.path / manifest_name
        try:
            data = self.fs.cat_file(remote)
        except FileNotFoundError:
            local.unlink(missing_ok=True)
            return
        except Exception as e:
            raise RemoteError(f"Cannot read {self.url}/{manifest_name}: {e}") from e
        storage.make_run_directory(self.path)
        storage.atomic_write_bytes(local, data)

    def publish_manifest(self, manifest_name: str) -> None:
        """Uploads the local manifest in one PUT: the commit point of a remote save."""
        data = (self.path / manifest_name).read_bytes()
        self.fs.pipe_file(self._remote(manifest_name), data)

    # --- checkpoint directories -------------------------------------------------------

    def checkpoint_names(self, pattern: re.Pattern) -> list[str]:
        """Names of the checkpoint directories on the remote side."""
        self.fs.invalidate_cache(self.root)  # another process may have written since
        try:
            children = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        names = {c.rstrip("/").rsplit("/", 1)[-1] for c in children}
        return sorted(n for n in names if pattern.match(n))

    def publish_checkpoint(self, local_dir: Path) -> None:
        """Uploads every file of a committed local checkpoint directory."""
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            relpath = path.relative_to(self.path).as_posix()
            self._put_file(str(path), self._remote(relpath))

    def _put_file(self, local: str, target: str) -> None:
        self.fs.put_file(local, target)

    def fetch_checkpoint(self, name: str, records: list) -> Path:
        """Downloads a checkpoint's files into the mirror (staged, then renamed).

        `records` are manifest file records (or bare relative paths); a local
        copy whose files all exist with the recorded sizes is used as it is.
        """
        final = self.path / name
        records = [r if isinstance(r, dict) else {"path": r} for r in records]
        if final.is_dir() and all(_matches(final / r["path"], r.get("size")) for r in records):
            return final
        self._downloaded.add(name)
        storage.remove(final)
        with storage.StagedDirectory(self.path, name) as staged:
            for record in records:
                relpath = record["path"]
                target = staged.path / relpath
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self.fs.get_file(self._remote(f"{name}/{relpath}"), str(target))
                except FileNotFoundError:
                    continue  # verification names the missing file
            staged.commit()
        return final

    def read_fresh(self, read: Callable[[], T], name: str, corrupt: type) -> T:
        """`read()`; again from a new download if the mirror's copy, kept from
        before, is damaged. Errors name the URL, not the mirror."""
        try:
            return read()
        except corrupt as e:
            if name in self._downloaded:  # downloaded by this object: the remote is damaged
                raise self.named(e) from None
            logger.warning(
                "The local copy of %s/%s is damaged (%s); downloading it again", self.url, name, e
            )
            storage.remove(self.path / name)  # the next fetch_checkpoint downloads it
        try:
            return read()
        except corrupt as e:
            raise self.named(e) from None

    def named(self, error: Exception) -> Exception:
        """`error` of the same type, its message naming the URL instead of the mirror."""
        text = str(error).replace(str(self.path), self.url)
        return error if text == str(error) else type(error)(text)

    def unpublish_checkpoint(self, name: str) -> None:
        try:
            self.fs.rm(self._remote(name), recursive=True)
        except FileNotFoundError:
            pass
