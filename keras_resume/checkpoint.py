"""One checkpoint's files: taken from a model, written into a staged directory, read back.

`take` copies what a checkpoint needs off the model (on the training thread);
`write_files` and `new_entry` turn that into files and the manifest entry that
describes them (on the writer thread, inside a `storage.StagedDirectory`);
`read` loads them back, verifying the checksums on a second thread. Which
directory, which id and when the manifest commits are `CheckpointDirectory`'s.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

from keras_resume import backend, storage
from keras_resume import manifest as mf
from keras_resume.errors import CheckpointCorruptError
from keras_resume.state import model_state
from keras_resume.state.bundle import STATE_FILE, StateBundle


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


def take(model, kind, bundle, position, logs=None, update=None, keep=None, weights=None):
    """A `PendingCheckpoint` of `model` now (see `CheckpointDirectory.snapshot`)."""
    if weights is None:
        weights = model_state.snapshot_weights(model)
    return PendingCheckpoint(
        kind=kind,
        weights=weights,
        bundle=bundle,
        position=dict(position),
        logs=mf.json_safe_logs(logs),
        update=update,
        keep=keep,
        fingerprint=model_state.fingerprint(model, weights),
        created=mf.utc_now(),
        model_config=model_state.model_config(model),
    )


def write_files(staged: Path, pending: PendingCheckpoint, take_parts) -> list[str]:
    """Writes the checkpoint's files into `staged`; returns their relative paths.

    `take_parts(staged, key)` moves a multi-process save's parts in.
    """
    files = model_state.write_weights(pending.weights, staged)
    if pending.parts_key is not None:
        files += take_parts(staged, pending.parts_key)
    if pending.model_config is not None:
        storage.write_new_file(staged / model_state.CONFIG_FILE, pending.model_config)
        files.append(model_state.CONFIG_FILE)
    if pending.bundle is not None:
        files += pending.bundle.write(staged)
    return files


def new_entry(staged: Path, pending: PendingCheckpoint, ckpt_id: int, files: list) -> dict:
    """The manifest entry of the checkpoint whose `files` are in `staged`."""
    return {
        "id": ckpt_id,
        "dir": staged_name(pending.kind, ckpt_id),
        "kind": pending.kind,
        **pending.position,
        "logs": pending.logs,
        "files": [storage.file_record(staged, f) for f in files],
        "created": pending.created,
        "versions": backend.versions(),
        "fingerprint": model_state.fingerprint_id(pending.fingerprint),
    }


def staged_name(kind: str, ckpt_id: int) -> str:
    return f"{kind}-{ckpt_id:06d}"


def write_self_description(staged: Path, manifest: dict, entry: dict) -> None:
    """Each checkpoint describes itself, so a lost manifest can be rebuilt."""
    storage.write_new_file(
        staged / mf.SELF_DESCRIPTION,
        json.dumps(mf.self_description(manifest, entry), indent=1, sort_keys=True),
    )


def verify_files(root: Path, entry: dict) -> None:
    """Raises `CheckpointCorruptError` naming the first file of `entry` that is damaged."""
    for record in entry["files"]:
        storage.verify_file(root, record)


def check_inside(root: Path, run: Path) -> None:
    """Refuses a checkpoint directory that is a link or lies outside the run."""
    if root.is_symlink() or not root.resolve().is_relative_to(run.resolve()):
        raise CheckpointCorruptError(
            f"Checkpoint directory {root} points outside {run}; refusing to read it."
        )


def read(root: Path, entry: dict, fp: dict, verify: bool) -> LoadedCheckpoint:
    """Reads the checkpoint in `root`; with `verify`, checks every checksum meanwhile.

    Hashing releases the GIL, so verifying costs little on top of reading;
    nothing is returned (and so nothing loaded) unless every file matches.
    """
    problems: list[BaseException] = []
    checker = None
    if verify:
        for record in entry["files"]:  # cheap: missing or resized files first
            storage.check_size(root, record)

        def check():
            try:
                verify_files(root, entry)
            except BaseException as e:  # reported below, on this thread
                problems.append(e)

        checker = threading.Thread(target=check, name="keras_resume verify")
        checker.start()
    try:
        loaded, read_error = _read_files(root, entry, fp), None
    except CheckpointCorruptError as e:
        read_error = e
    if checker is not None:
        checker.join()
    if problems:  # the checksum names the damaged file: report it first
        raise problems[0]
    if read_error is not None:
        raise read_error
    return loaded


def _read_files(root: Path, entry: dict, fp: dict) -> LoadedCheckpoint:
    try:
        weights = model_state.read_weights(root, fp)
        has_bundle = any(f["path"] == STATE_FILE for f in entry["files"])
        bundle = StateBundle.read(root) if has_bundle else None
    except CheckpointCorruptError:
        raise
    except Exception as e:  # noqa: BLE001 - h5py raises many types for damage
        raise CheckpointCorruptError(
            f"Cannot read checkpoint {root} ({type(e).__name__}: {e}). Resume from "
            "another checkpoint."
        ) from None
    return LoadedCheckpoint(entry, weights, bundle, fp)
