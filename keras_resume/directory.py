"""`CheckpointDirectory`: one directory, one manifest, shared by every callback.

It owns the commit protocol (stage files, fsync, rename, then write the
manifest), retention, verification with fallback, and the epoch history.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import threading
import warnings
import weakref
from pathlib import Path

from keras_resume import backend, multiprocess, remote, storage
from keras_resume import manifest as mf
from keras_resume.errors import (
    CheckpointCorruptError,
    CheckpointDirectoryError,
    ManifestError,
    ManifestVersionError,
    NoCheckpointError,
)
from keras_resume.state import model_state
from keras_resume.state.bundle import STATE_FILE, StateBundle
from keras_resume.writer import background_writer

logger = logging.getLogger("keras_resume")
_CHECKPOINT_DIR = re.compile(r"^(backup|best)-\d{6,}$")


class CheckpointDirectory:
    """One run's checkpoint directory, described by its `manifest.json`.

    Every keras_resume callback writes here, and `restore` reads from here. A
    missing or empty directory is a fresh start. Each process should own its
    directory: give every run its own.

    Example:

    ```python
    ckpt = keras_resume.CheckpointDirectory("runs/exp1")
    model.fit(x, y, epochs=10, callbacks=ckpt.callbacks(every_n_steps=100))
    ckpt.history()["loss"]        # per-epoch losses, across restarts
    ```

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
        self.remote = None
        self.storage_options = storage_options
        if remote.is_remote(path):
            self.remote = remote.RemoteMirror(str(path), storage_options)
            path = self.remote.local
        self.path = Path(path)
        self.manifest_path = self.path / mf.MANIFEST_NAME
        self.session = None  # the TrainingSession of the fit call running now
        self.lock = storage.DirectoryLock(self.path)
        self.writer = background_writer(self.path)

    @property
    def location(self) -> str:
        """The directory as the user named it: its URL for a remote run."""
        return self.remote.url if self.remote is not None else str(self.path)

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
        if self.remote is not None and not self.lock.held:
            # The writer's own copy is the newest; anyone else reads the remote one.
            self.remote.pull_manifest(mf.MANIFEST_NAME)
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
        if self.remote is not None:
            for name in self.remote.checkpoint_names(_CHECKPOINT_DIR):
                self.remote.pull_checkpoint(name, [mf.SELF_DESCRIPTION])
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
        self._from_copy(self._verify_copy, entry)

    def _verify_copy(self, entry: dict) -> None:
        root = self._local_copy(entry)
        self._check_location(root)
        self._verify_files(root, entry)

    def _from_copy(self, read, entry: dict):
        """`read(entry)`; for a remote run, again from a new download if the mirror's
        copy (kept from before) is damaged. Errors name the URL, not the mirror."""
        if self.remote is None:
            return read(entry)
        try:
            return read(entry)
        except CheckpointCorruptError as e:
            if self.remote.has_fresh_copy(entry["dir"]):
                raise self.remote.named(e) from None
            logger.warning(
                "The local copy of %s/%s is damaged (%s); downloading it again",
                self.location,
                entry["dir"],
                e,
            )
            self.remote.forget(entry["dir"])
        try:
            return read(entry)
        except CheckpointCorruptError as e:
            raise self.remote.named(e) from None

    @staticmethod
    def _verify_files(root: Path, entry: dict) -> None:
        for record in entry["files"]:
            storage.verify_file(root, record)

    def _local_copy(self, entry: dict) -> Path:
        """The checkpoint's directory here; for a remote run, downloaded first."""
        if self.remote is not None:
            return self.remote.pull_checkpoint(entry["dir"], entry["files"])
        return self.checkpoint_path(entry)

    def _check_location(self, root: Path) -> None:
        if root.is_symlink() or not root.resolve().is_relative_to(self.path.resolve()):
            raise CheckpointCorruptError(
                f"Checkpoint directory {root} points outside {self.path}; refusing to read it."
            )

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
                return self._from_copy(lambda e, fp=fp: read(e, fp), entry)
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
                self._verify_copy(entry)  # _first_good downloads a damaged copy again
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
        return self._first_good(which, lambda entry, fp: self._read(entry, fp, verify), fit)

    def _read(self, entry: dict, fp: dict, verify: bool) -> LoadedCheckpoint:
        root = self._local_copy(entry)
        problems: list[BaseException] = []
        checker = None
        if verify:
            self._check_location(root)
            for record in entry["files"]:  # cheap: missing or resized files first
                storage.check_size(root, record)

            def check():
                try:
                    self._verify_files(root, entry)
                except BaseException as e:  # reported below, on this thread
                    problems.append(e)

            checker = threading.Thread(target=check, name="keras_resume verify")
            checker.start()
        try:
            weights = model_state.read_weights(root, fp)
            has_bundle = any(f["path"] == STATE_FILE for f in entry["files"])
            bundle = StateBundle.read(root) if has_bundle else None
        except CheckpointCorruptError as e:
            read_error = e
        except Exception as e:  # noqa: BLE001 - h5py raises many types for damage
            read_error = CheckpointCorruptError(
                f"Cannot read checkpoint {root} ({type(e).__name__}: {e}). Resume from "
                "another checkpoint."
            )
        else:
            read_error = None
        if checker is not None:
            checker.join()
        if problems:  # the checksum names the damaged file: report it first
            raise problems[0]
        if read_error is not None:
            raise read_error
        return LoadedCheckpoint(entry, weights, bundle, fp)

    def fingerprint_of(self, entry: dict) -> dict:
        return self.read_manifest()["fingerprints"][entry["fingerprint"]]

    # --- writing ----------------------------------------------------------------

    def acquire_lock(self) -> None:
        """Takes the directory's writer lock (see `storage.DirectoryLock`)."""
        if self.lock.held:
            return
        self.lock.acquire()
        if self.remote is not None:
            self.remote.pull_manifest(mf.MANIFEST_NAME)
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
        if self.remote is not None:
            for name in self.remote.checkpoint_names(_CHECKPOINT_DIR):
                if name not in committed:  # an upload a crash interrupted
                    logger.info("Removing uncommitted checkpoint %s/%s", self.location, name)
                    self.remote.remove_checkpoint(name)

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
        newest `keep` checkpoints of `kind` stay listed. `weights` is a
        `model_state.snapshot_weights` result to reuse (taken at this instant).
        """
        if weights is None:
            weights = model_state.snapshot_weights(model)
        fp = model_state.fingerprint(model, weights)
        return PendingCheckpoint(
            kind=kind,
            weights=weights,
            bundle=bundle,
            position=dict(position),
            logs=mf.json_safe_logs(logs),
            update=update,
            keep=keep,
            fingerprint=fp,
            created=mf.utc_now(),
            model_config=model_state.model_config(model),
        )

    def write(self, pending: PendingCheckpoint) -> dict:
        """Writes a snapshot and commits it to the manifest; returns its entry.

        Stages the files, fsyncs them, renames the directory, then writes the
        manifest: the commit point. The newest `keep` checkpoints of the kind
        stay listed in that same write; the others' files are removed after it
        (a crash in between leaves only unlisted directories, which the next
        session removes).
        """
        self.acquire_lock()
        manifest = self.read_manifest()
        ckpt_id = manifest["next_id"]
        kind = pending.kind
        name = f"{kind}-{ckpt_id:06d}"
        # An id at or above next_id is never in the manifest: only a crash
        # between rename and manifest write leaves such a directory.
        storage.remove(self.path / name)
        fp = pending.fingerprint
        fp_id = model_state.fingerprint_id(fp)
        with storage.StagedDirectory(self.path, name) as staged:
            files = model_state.write_weights(pending.weights, staged.path)
            if pending.parts_key is not None:
                files += self._take_parts(staged.path, pending.parts_key)
            if pending.model_config is not None:
                storage.write_new_file(staged.path / model_state.CONFIG_FILE, pending.model_config)
                files.append(model_state.CONFIG_FILE)
            if pending.bundle is not None:
                files += pending.bundle.write(staged.path)
            entry = {
                "id": ckpt_id,
                "dir": name,
                "kind": kind,
                **pending.position,
                "logs": pending.logs,
                "files": [storage.file_record(staged.path, f) for f in files],
                "created": pending.created,
                "versions": backend.versions(),
                "fingerprint": fp_id,
            }
            manifest["fingerprints"][fp_id] = fp
            manifest["checkpoints"].append(entry)
            manifest["next_id"] = ckpt_id + 1
            if pending.update is not None:
                pending.update(manifest, entry)
            doomed = _drop_old(manifest, kind, pending.keep, pending.position.get("fit"))
            # Each checkpoint describes itself, so a lost manifest can be rebuilt.
            storage.write_new_file(
                staged.path / mf.SELF_DESCRIPTION,
                json.dumps(mf.self_description(manifest, entry), indent=1, sort_keys=True),
            )
            final = staged.commit()
        try:
            if self.remote is not None:
                self.remote.push_checkpoint(final)
            self._save_manifest(manifest)
        except BaseException:
            # Not committed: remove it now, so no later save or rebuild can see a
            # second checkpoint with this id. (The manifest may have been replaced
            # before the failure, e.g. in the directory fsync: then it stays.)
            if not self._lists(entry):
                storage.remove(final)
                if self.remote is not None:
                    self.remote.remove_checkpoint(name)
            raise
        for old_entry in doomed:
            storage.retire(self.checkpoint_path(old_entry))
            if self.remote is not None:
                self.remote.remove_checkpoint(old_entry["dir"])
        return entry

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
        """Writes the manifest atomically; for a remote run, then uploads it (the commit)."""
        mf.write_manifest(self.manifest_path, manifest)
        if self.remote is not None:
            self.remote.push_manifest(mf.MANIFEST_NAME)

    def wait(self) -> None:
        """Waits for a save of this process still being written here; reports its outcome."""
        self.writer.wait()

    def _lists(self, entry: dict) -> bool:
        """Whether the committed manifest lists `entry` (True when that cannot be told)."""
        try:
            if self.remote is not None:  # the remote manifest is the committed one
                self.remote.pull_manifest(mf.MANIFEST_NAME)
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

    # --- the usual set of callbacks -----------------------------------------------

    def callbacks(
        self,
        every_n_steps: int | None = None,
        monitor: str | None = "val_loss",
        mode: str = "auto",
        track: list | None = None,
        keep: int = 2,
        verbose: int = 0,
        snapshot: str = "auto",
    ) -> list:
        """The usual set of callbacks, in the right order, for `model.fit(callbacks=...)`.

        Returns `[FullStateResume, StepBackup, BestCheckpoint (if monitor),
        RngCapture, SchedulerCapture (if track), *track]`. The tracked callbacks
        are included: do not list them again. `snapshot` is the savers' (see
        `StepBackup`).
        """
        from keras_resume.callbacks import (
            BestCheckpoint,
            FullStateResume,
            RngCapture,
            SchedulerCapture,
            StepBackup,
        )

        track = list(track or [])
        out = [
            FullStateResume(self, verbose=verbose),
            StepBackup(
                self, every_n_steps=every_n_steps, keep=keep, verbose=verbose, snapshot=snapshot
            ),
        ]
        if monitor:
            out.append(
                BestCheckpoint(self, monitor=monitor, mode=mode, verbose=verbose, snapshot=snapshot)
            )
        out.append(RngCapture(self))
        if track:
            out.append(SchedulerCapture(self, track))
        return out + track


@dataclasses.dataclass
class PendingCheckpoint:
    """A checkpoint taken but not yet written: host copies and the manifest entry's facts."""

    kind: str
    weights: list
    bundle: StateBundle | None
    position: dict
    logs: dict
    update: object
    keep: int | None
    fingerprint: dict
    created: str
    model_config: str | None = None
    # A multi-process job's backup: the save whose parts to wait for (multiprocess.py).
    parts_key: str | None = None


@dataclasses.dataclass
class LoadedCheckpoint:
    """A checkpoint read into memory (and verified): its entry, weights and state, and
    the fingerprint its weights were read and are checked against."""

    entry: dict
    weights: dict
    bundle: StateBundle | None
    fingerprint: dict | None = None


def _drop_old(manifest: dict, kind: str, keep: int | None, fit: int | None) -> list[dict]:
    """Unlists all but the newest `keep` checkpoints of `kind`; returns the unlisted.

    Of backups, those of fit number `fit` (the one writing); of every other fit
    the newest backup stays: a rerun restores a finished phase from it.
    """
    if keep is None:
        return []
    of_kind = mf.checkpoints_of_kind(manifest, kind)
    if kind != "backup" or fit is None:
        doomed = of_kind[: max(len(of_kind) - keep, 0)]
    else:
        doomed = []
        for other in sorted({mf.fit_of(c) for c in of_kind}):
            of_fit = [c for c in of_kind if mf.fit_of(c) == other]
            doomed += of_fit[: max(len(of_fit) - (keep if other == fit else 1), 0)]
        doomed.sort(key=lambda c: c["id"])
    doomed_ids = {c["id"] for c in doomed}
    manifest["checkpoints"] = [c for c in manifest["checkpoints"] if c["id"] not in doomed_ids]
    used = {c["fingerprint"] for c in manifest["checkpoints"]}
    manifest["fingerprints"] = {k: v for k, v in manifest["fingerprints"].items() if k in used}
    return doomed


_OPEN: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def as_directory(ckpt) -> CheckpointDirectory:
    """Accepts a `CheckpointDirectory` or a path; one object per directory.

    Callbacks given the same path share one object, so they share one manifest
    view and one training session.
    """
    directory = ckpt if isinstance(ckpt, CheckpointDirectory) else CheckpointDirectory(ckpt)
    key = directory.location if directory.remote is not None else str(directory.path.resolve())
    return _OPEN.setdefault(key, directory)
