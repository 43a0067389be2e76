"""`CheckpointDirectory`: one run directory, one manifest, read and committed.

It owns the commit protocol (stage files, fsync, rename, then write the
manifest), the removal of what retention unlists, verification with fallback,
and the epoch history. Where the run is published besides this machine
(nothing, or a remote store through a mirror) is its `location.Location`'s.

Concurrency contract:

- One writing process per run: every change (a commit, `update_manifest`,
  `remove`) first takes the directory's lock (`storage.DirectoryLock`, held
  until the training session ends); a second writer gets `DirectoryLockedError`.
- In the writing process, commits and manifest changes run on the directory's
  one background writer thread (`writer.background_writer`), or on the
  training thread after `wait()`: never two at once.
- Readers take no lock. The manifest is replaced atomically (for a remote run,
  uploaded in one PUT after the checkpoint's files), so a reader sees the old
  or the new one; it lists only checkpoints whose files were complete and
  fsynced before, and every read is checked against the manifest's checksums.
- Files are deleted only once the manifest that no longer lists them is
  written: a crash leaves unlisted directories, which `clean_leftovers` (run
  when the next session takes the lock) removes.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
import weakref
from pathlib import Path

from keras_resume import checkpoint, multiprocess, retention, storage
from keras_resume import manifest as mf
from keras_resume.checkpoint import LoadedCheckpoint, PendingCheckpoint
from keras_resume.errors import (
    CheckpointCorruptError,
    CheckpointDirectoryError,
    ManifestError,
    ManifestVersionError,
    NoCheckpointError,
)
from keras_resume.location import Location, open_location
from keras_resume.state.bundle import StateBundle
from keras_resume.writer import background_writer

__all__ = ["CheckpointDirectory", "LoadedCheckpoint", "PendingCheckpoint", "as_directory"]

logger = logging.getLogger("keras_resume")
_CHECKPOINT_DIR = re.compile(r"^(backup|best)-\d{6,}$")


class CheckpointDirectory:
    """One run's checkpoint directory, described by its `manifest.json`.

    Every keras_resume callback writes here, and `restore` reads from here. A
    missing or empty directory is a fresh start. Each process should own its
    directory: give every run its own.

    Example:

    >>> import tempfile
    >>> import keras
    >>> import numpy as np
    >>> import keras_resume as kr
    >>> x = np.random.default_rng(0).random((8, 2))
    >>> y = x.sum(axis=1, keepdims=True)
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> ckpt = kr.CheckpointDirectory(tempfile.mkdtemp())
    >>> _ = model.fit(x, y, validation_data=(x, y), epochs=2, verbose=0,
    ...               callbacks=ckpt.callbacks(every_n_steps=100))
    >>> [(c["kind"], c["epoch"]) for c in ckpt.checkpoints()]  # 0-based epochs
    [('backup', 0), ('best', 1), ('backup', 1)]
    >>> ckpt.history()["epoch"]  # per-epoch logs, across restarts
    [0, 1]
    >>> ckpt.best()["monitor"]
    'val_loss'

    A remote directory (`"s3://bucket/runs/exp1"`, any fsspec URL) works the
    same way through a local mirror (see `keras_resume.remote`): its manifest,
    uploaded last, is the commit point.

    Args:
        path: the directory, or an fsspec URL; created on the first save.
        storage_options: for a URL, passed to fsspec (credentials,
            `endpoint_url`, ...).
    """

    def __init__(self, path, storage_options: dict | None = None):
        if isinstance(path, CheckpointDirectory):
            storage_options = storage_options or path.storage_options
            path = path.location
        if not isinstance(path, (str, os.PathLike)) or not str(path):
            raise TypeError(
                "Invalid value for argument path. Received: "
                f"path={path!r}. Expected a directory path such as 'runs/exp1'."
            )
        self.storage_options = storage_options
        # Where the run is published; `path` is the directory here that is written.
        self.store: Location = open_location(path, storage_options)
        self.path = self.store.path
        self.manifest_path = self.path / mf.MANIFEST_NAME
        self.lock = storage.DirectoryLock(self.path)
        self.writer = background_writer(self.path)

    @property
    def location(self) -> str:
        """The directory as the user named it: its URL for a remote run."""
        return self.store.url

    def __repr__(self) -> str:
        return f"CheckpointDirectory({self.location!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # --- reading ----------------------------------------------------------------

    def read_manifest(self) -> dict:
        """The manifest as a dict; an empty one when nothing was saved yet.

        A missing or damaged manifest beside checkpoint directories is rebuilt
        from their `checkpoint.json` files, with a warning naming the file.
        """
        self.writer.join()  # a save of this process still committing
        if not self.lock.held:
            # The writer's own copy is the newest; anyone else reads the published one.
            self.store.fetch_manifest(mf.MANIFEST_NAME)
        if self.path.exists() and not self.path.is_dir():
            raise CheckpointDirectoryError(
                f"Checkpoint directory {self.path} is a file, not a directory. Give a "
                "directory path (a new one is created), or move the file away."
            )
        try:
            manifest = mf.read_manifest(self.manifest_path)
        except ManifestVersionError:
            raise
        except ManifestError as e:
            return self._rebuild_manifest(str(e))
        if manifest is None and self._checkpoint_dirs():
            return self._rebuild_manifest(f"Manifest {self.manifest_path} is missing.")
        return manifest or mf.new_manifest()

    def _checkpoint_dirs(self) -> list[Path]:
        """The checkpoint directories here, each with (at least) its self-description."""
        for name in self.store.checkpoint_names(_CHECKPOINT_DIR):
            self.store.fetch_checkpoint(name, [mf.SELF_DESCRIPTION])
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if _CHECKPOINT_DIR.match(p.name))

    def _rebuild_manifest(self, problem: str) -> dict:
        descriptions, skipped = [], []
        for directory in self._checkpoint_dirs():
            try:
                descriptions.append(mf.read_self_description(directory / mf.SELF_DESCRIPTION))
            except ManifestError as e:
                skipped.append(str(e))
        if not descriptions:
            raise ManifestError(
                f"{problem}\nNo checkpoint in {self.path} has a valid "
                f"{mf.SELF_DESCRIPTION} to rebuild it from"
                + (f" ({'; '.join(skipped)})" if skipped else "")
                + "; nothing was deleted. Restore the manifest from a copy, or start a new "
                "run in another directory."
            )
        manifest = mf.from_self_descriptions(descriptions, self.manifest_path)
        warnings.warn(
            f"{problem}\nRebuilt it from {len(descriptions)} checkpoints' "
            f"{mf.SELF_DESCRIPTION}" + (f" (skipped: {'; '.join(skipped)})" if skipped else ""),
            stacklevel=3,
        )
        if self.lock.held:
            self._save_manifest(manifest)
        return manifest

    def checkpoints(self, kind: str | None = None) -> list[dict]:
        """Committed checkpoints (manifest entries), oldest first."""
        return mf.checkpoints_of_kind(self.read_manifest(), kind)

    def best(self) -> dict | None:
        """The best value so far: monitor, mode, value, epoch and checkpoint id."""
        return self.read_manifest()["best"]

    def history(self) -> dict[str, list]:
        """Per-epoch logs across every restart, as `{"epoch": [...], metric: [...]}`."""
        records = self.read_manifest()["history"]
        merged: dict[str, list] = {"epoch": [r["epoch"] for r in records]}
        for name in sorted({k for r in records for k in r["logs"]}):
            merged[name] = [r["logs"].get(name) for r in records]
        return merged

    def checkpoint_path(self, entry: dict) -> Path:
        return self.path / entry["dir"]

    def verify(self, entry: dict) -> None:
        """Raises `CheckpointCorruptError` if any file of `entry` is damaged."""
        self.store.read_fresh(
            lambda: self._verify_copy(entry), entry["dir"], CheckpointCorruptError
        )

    def _verify_copy(self, entry: dict) -> None:
        root = self._local_copy(entry)
        checkpoint.check_inside(root, self.path)
        checkpoint.verify_files(root, entry)

    def _local_copy(self, entry: dict) -> Path:
        """The checkpoint's directory here (for a remote run, downloaded first)."""
        return self.store.fetch_checkpoint(entry["dir"], entry["files"])

    def _candidates(self, which, fit: int | None = None) -> tuple[dict, list[dict]]:
        manifest = self.read_manifest()
        if isinstance(which, int) and not isinstance(which, bool):
            candidates = [c for c in manifest["checkpoints"] if c["id"] == which]
            candidates = [c for c in candidates if fit is None or mf.fit_of(c) == fit]
        elif which in ("latest", "best"):
            kind = "backup" if which == "latest" else "best"
            candidates = mf.checkpoints_of_kind(manifest, kind, fit)[::-1]
            if which == "best" and manifest["best"]:
                best_id = manifest["best"].get("checkpoint_id")
                candidates.sort(key=lambda c: c["id"] != best_id)
        else:
            raise ValueError(
                f"Invalid value for argument which. Received: which={which!r}. "
                "Expected 'latest', 'best' or a checkpoint id (int)."
            )
        if not candidates:
            of_fit = f" of fit {fit}" if fit is not None else ""
            raise NoCheckpointError(
                f"No {which!r} checkpoint{of_fit} in {self.location} (manifest "
                f"{'found' if self.manifest_path.exists() else 'missing'}). Train with "
                "StepBackup/BestCheckpoint first, or check the path."
            )
        return manifest, candidates

    def _first_good(self, which, read, fit: int | None = None):
        """`read(entry, fingerprint)` for the newest candidate (of fit number `fit`,
        if not None) that does not raise CheckpointCorruptError."""
        self.wait()  # a save of this process still committing
        errors = []
        manifest, candidates = self._candidates(which, fit)
        for entry in candidates:
            try:
                fp = manifest["fingerprints"][entry["fingerprint"]]
                return self.store.read_fresh(
                    lambda e=entry, fp=fp: read(e, fp), entry["dir"], CheckpointCorruptError
                )
            except CheckpointCorruptError as e:
                errors.append(str(e))
                warnings.warn(f"Skipping damaged checkpoint {entry['dir']}: {e}", stacklevel=3)
        raise CheckpointCorruptError(
            f"No {which!r} checkpoint in {self.location} verifies; nothing was deleted.\n  "
            + "\n  ".join(errors)
        )

    def select(self, which="latest", verify: bool = True, fit: int | None = None) -> dict:
        """The checkpoint to restore: "latest" backup, "best", or an id.

        With `verify`, damaged checkpoints are skipped with a warning that names
        the file, falling back to the newest one that verifies. With `fit`, only
        checkpoints of that `fit` call of the script are candidates (0 for the
        first; see `FullStateResume`).
        """

        def check(entry, fp):
            if verify:
                self._verify_copy(entry)  # read_fresh downloads a damaged copy again
            return entry

        return self._first_good(which, check, fit)

    def read_checkpoint(
        self, which="latest", verify: bool = True, fit: int | None = None
    ) -> LoadedCheckpoint:
        """Reads a checkpoint into memory, falling back as `select` does.

        The checksums are computed on another thread while the files are read
        (hashing releases the GIL), so verifying costs little on top of reading;
        nothing is returned, and so nothing loaded, unless they match.
        """

        def read(entry, fp):
            root = self._local_copy(entry)
            if verify:
                checkpoint.check_inside(root, self.path)
            return checkpoint.read(root, entry, fp, verify)

        return self._first_good(which, read, fit)

    def fingerprint_of(self, entry: dict) -> dict:
        return self.read_manifest()["fingerprints"][entry["fingerprint"]]

    # --- writing ----------------------------------------------------------------

    def acquire_lock(self) -> None:
        """Takes the directory's writer lock (see `storage.DirectoryLock`)."""
        if self.lock.held:
            return
        self.lock.acquire()
        self.store.fetch_manifest(mf.MANIFEST_NAME)
        if self.lock.took_over:
            holder = self.lock.took_over
            logger.warning(
                "Took over the stale lock of %s left by pid %s on %s (since %s)",
                self.path,
                holder.get("pid"),
                holder.get("host"),
                holder.get("since"),
            )

    def release_lock(self) -> None:
        self.lock.release()

    def clean_leftovers(self) -> None:
        """Removes staging and uncommitted checkpoint directories of a crashed save."""
        self.wait()
        if not self.path.is_dir():
            return
        committed = {c["dir"] for c in self.read_manifest()["checkpoints"]}
        for leftover in storage.leftovers(self.path):
            storage.remove(leftover)
        multiprocess.remove_parts(self.path)  # parts of a multi-process save never committed
        for child in self.path.iterdir():
            if _CHECKPOINT_DIR.match(child.name) and child.name not in committed:
                logger.info("Removing uncommitted checkpoint %s", child)
                storage.remove(child)
        for name in self.store.checkpoint_names(_CHECKPOINT_DIR):
            if name not in committed:  # published, but a crash came before its manifest
                logger.info("Removing uncommitted checkpoint %s/%s", self.location, name)
                self.store.unpublish_checkpoint(name)

    def commit(self, model, kind: str, *args, **kwargs) -> dict:
        """Snapshots and commits one checkpoint, on this thread; returns its entry.

        Takes `snapshot`'s arguments. Callbacks use `snapshot` and `write`
        separately, to write on the background writer.
        """
        self.wait()
        return self.write(self.snapshot(model, kind, *args, **kwargs))

    def snapshot(
        self,
        model,
        kind: str,
        bundle: StateBundle | None,
        position: dict,
        logs: dict | None = None,
        update=None,
        keep: int | None = None,
        weights: list | None = None,
    ) -> PendingCheckpoint:
        """Takes what a checkpoint needs from `model` now, as host copies.

        `position` holds epoch, step_in_epoch, epoch_complete and global_step.
        `update(manifest, entry)` may change the manifest (best value, history)
        in the same atomic manifest write as the commit; it runs on the writer
        thread, so it must only use values fixed now. With `keep`, only the
        newest `keep` checkpoints of `kind` stay listed (`retention.for_saver`).
        `weights` is a `model_state.snapshot_weights` result to reuse (taken at
        this instant).
        """
        return checkpoint.take(model, kind, bundle, position, logs, update, keep, weights)

    def write(self, pending: PendingCheckpoint) -> dict:
        """Writes a snapshot and commits it to the manifest; returns its entry.

        Stages the files, fsyncs them, renames the directory, then writes the
        manifest: the commit point. What retention unlists leaves the manifest
        in that same write; its files are removed after it.
        """
        self.acquire_lock()
        manifest = self.read_manifest()
        ckpt_id = manifest["next_id"]
        # An id at or above next_id is never in the manifest: only a crash
        # between rename and manifest write leaves such a directory.
        name = checkpoint.staged_name(pending.kind, ckpt_id)
        storage.remove(self.path / name)
        with storage.StagedDirectory(self.path, name) as staged:
            files = checkpoint.write_files(staged.path, pending, self._take_parts)
            entry = checkpoint.new_entry(staged.path, pending, ckpt_id, files)
            unlisted = _add_entry(manifest, entry, pending)
            checkpoint.write_self_description(staged.path, manifest, entry)
            final = staged.commit()
        self._publish(final, manifest, entry)
        self.remove(unlisted)
        return entry

    def _publish(self, final: Path, manifest: dict, entry: dict) -> None:
        """Publishes the committed directory, then the manifest listing it (the commit)."""
        try:
            self.store.publish_checkpoint(final)
            self._save_manifest(manifest)
        except BaseException:
            # Not committed: remove it now, so no later save or rebuild can see a
            # second checkpoint with this id. (The manifest may have been replaced
            # before the failure, e.g. in the directory fsync: then it stays.)
            if not self._lists(entry):
                self.remove([entry])
            raise

    def _take_parts(self, staged: Path, key: str) -> list[str]:
        """Moves the other processes' parts of this save into the checkpoint.

        Waits until every one is complete: the checkpoint is committed only then.
        """
        files = []
        for part in multiprocess.collect_parts(self.path, key, multiprocess.current()):
            part.rename(staged / part.name)
            files += [f"{part.name}/{f.name}" for f in sorted((staged / part.name).iterdir())]
        multiprocess.remove_parts(self.path, key)
        return files

    def _save_manifest(self, manifest: dict) -> None:
        """Writes the manifest atomically, then publishes it (the commit)."""
        mf.write_manifest(self.manifest_path, manifest)
        self.store.publish_manifest(mf.MANIFEST_NAME)

    def wait(self) -> None:
        """Waits for a save of this process still being written here; reports its outcome."""
        self.writer.wait()

    def _lists(self, entry: dict) -> bool:
        """Whether the committed manifest lists `entry` (True when that cannot be told)."""
        try:
            self.store.fetch_manifest(mf.MANIFEST_NAME)  # the published one is the committed one
            manifest = mf.read_manifest(self.manifest_path) or mf.new_manifest()
        except (ManifestError, OSError):
            return True
        return any(c["dir"] == entry["dir"] for c in manifest["checkpoints"])

    def update_manifest(self, change) -> dict:
        """Applies `change(manifest)` and writes the manifest atomically.

        On the writer thread only (or after `wait()`): it must not race a save.
        In a multi-process job only process 0 writes the manifest: on the other
        processes (which compute the same changes) this changes nothing.
        """
        if not multiprocess.current().is_primary:
            return self.read_manifest()
        self.acquire_lock()
        manifest = self.read_manifest()
        change(manifest)
        self._save_manifest(manifest)
        return manifest

    # --- removing ---------------------------------------------------------------

    def remove(self, entries: list[dict]) -> None:
        """Deletes the files of checkpoints the manifest no longer lists, here and published.

        Each directory is renamed out of sight first (`storage.retire`), so a
        crash mid-removal leaves a leftover, never a half-deleted checkpoint.
        """
        for entry in entries:
            storage.retire(self.checkpoint_path(entry))
            self.store.unpublish_checkpoint(entry["dir"])

    def retain(self, policy: retention.Policy) -> tuple[dict, dict, list[dict]]:
        """Unlists every checkpoint `policy` does not keep, then deletes their files.

        Planned on the manifest read under the writer lock (taken, and released
        again unless this process held it): what is removed is exactly what
        this write unlists. Returns `(manifest, plan, removed)`, `plan` as
        `retention.plan` gives it.
        """
        plan: dict[int, list[str]] = {}
        removed: list[dict] = []

        def change(manifest: dict) -> None:
            plan.update(retention.plan(manifest, policy))
            removed.extend(retention.unlist(manifest, plan))

        held_before = self.lock.held
        try:
            manifest = self.update_manifest(change)
        finally:
            if not held_before:
                self.release_lock()
        self.remove(removed)  # unlisted now: deleting them is no longer a commit
        return manifest, plan, removed

    # --- the usual set of callbacks -----------------------------------------------

    def callbacks(self, *args, **kwargs) -> list:
        """The usual set of callbacks, in the right order, for `model.fit(callbacks=...)`.

        Takes the arguments of `keras_resume.callbacks.standard_callbacks`
        (`every_n_steps`, `monitor`, `mode`, `track`, `keep`, `verbose`,
        `snapshot`), which this calls with this directory.
        """
        from keras_resume.callbacks.standard import standard_callbacks

        return standard_callbacks(self, *args, **kwargs)


def _add_entry(manifest: dict, entry: dict, pending: PendingCheckpoint) -> list[dict]:
    """Lists `entry` (and its fingerprint) in `manifest`, applies the saver's
    `update` and its retention; returns the entries retention unlisted."""
    manifest["fingerprints"][entry["fingerprint"]] = pending.fingerprint
    manifest["checkpoints"].append(entry)
    manifest["next_id"] = entry["id"] + 1
    if pending.update is not None:
        pending.update(manifest, entry)
    if pending.keep is None:
        return []
    policy = retention.for_saver(pending.kind, pending.keep, pending.position.get("fit"))
    return retention.unlist(manifest, retention.plan(manifest, policy))


_OPEN: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def as_directory(ckpt) -> CheckpointDirectory:
    """Accepts a `CheckpointDirectory` or a path; one object per run in this process.

    Callbacks and `restore` given the same run share one object, so they share
    its writer lock and its manifest view (the lock is held per object).
    """
    directory = ckpt if isinstance(ckpt, CheckpointDirectory) else CheckpointDirectory(ckpt)
    return _OPEN.setdefault(directory.store.key, directory)
