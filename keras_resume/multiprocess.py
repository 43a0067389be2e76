"""The processes of a multi-process job writing one checkpoint directory.

In a JAX job started with `keras.distribution.initialize(...)` every process
runs the same `fit` and the same keras_resume callbacks. Process 0 is the
writer: it alone holds the directory's lock, writes the weights (every process
holds the same replicated values) and the manifest. Each other process keeps
its own state (its RNG, its data pipeline's position) and writes it as a part:

    .parts-000000018-00003/process-1/{state.json, arrays.npz[, shards.h5]}   (step, save number)

The part appears at once (written in `.tmp-process-1`, fsynced, renamed). The
writer's save waits until every part of its global step is there, moves them
into the checkpoint as `process-I/`, and only then commits the manifest: a
checkpoint is listed only when every process's part is complete. A job killed
mid-save leaves an unlisted `.parts-*` directory, which the next run removes.

With variables sharded across processes (`ModelParallel`) every process also
writes the shards it owns into its part (`shards.h5`, see `state/shards.py`),
for best checkpoints too: no process gathers the model.

On resume, process 0 chooses the checkpoint (the newest that verifies) and
broadcasts its id; every process loads that one, and its own part.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from keras_resume import backend, storage
from keras_resume.errors import CheckpointCorruptError, NoCheckpointError, SaveError
from keras_resume.state import model_state
from keras_resume.state.bundle import STATE_FILE, StateBundle

PARTS_PREFIX = ".parts-"
# How long the writer waits for the other processes' parts of one save.
PART_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class ProcessRole:
    index: int
    count: int

    @property
    def is_primary(self) -> bool:
        return self.index == 0

    @property
    def multi(self) -> bool:
        return self.count > 1


def current() -> ProcessRole:
    return ProcessRole(backend.process_index(), backend.process_count())


def part_name(index: int) -> str:
    return f"process-{index}"


def save_key(global_step: int, sequence: int) -> str:
    """Names one save of a job the same on every process.

    The global step alone is not enough: a step backup and the epoch-end backup
    can fall on the same step. Every process takes the same saves in the same
    order, so the number of the save within the `fit` call tells them apart.
    """
    return f"{global_step:09d}-{sequence:05d}"


def parts_dir(root: Path, key: str) -> Path:
    return root / f"{PARTS_PREFIX}{key}"


def write_part(
    root: Path, key: str, index: int, bundle: StateBundle | None, weights: list | None = None
) -> None:
    """Writes this process's part of the save `key`, appearing whole.

    `bundle`: its own state (None for a best checkpoint). `weights`: a
    `sharded_only` snapshot, whose shards it writes (a `ModelParallel` job).
    A part may hold no file: its appearance says this process is done.
    """
    parts = parts_dir(root, key)
    storage.make_run_directory(root)
    storage.make_directory(parts)  # another process may have made it: never a link
    final = parts / part_name(index)
    tmp = parts / f".tmp-{part_name(index)}"
    storage.remove(tmp)
    storage.remove(final)  # a leftover of a killed attempt at the same step
    storage.make_directory(tmp, new=True)
    names = bundle.write(tmp) if bundle is not None else []
    if weights is not None:
        names += model_state.write_own_shards(weights, tmp)
    for name in names:
        storage.fsync_path(tmp / name)
    storage.fsync_path(tmp)
    tmp.rename(final)
    try:
        storage.fsync_path(parts)
    except FileNotFoundError:
        pass  # process 0 already moved the part into its checkpoint, which it fsyncs


def collect_parts(
    root: Path, key: str, role: ProcessRole, timeout: float = PART_TIMEOUT_S
) -> list[Path]:
    """Waits for every other process's part of the save `key`; returns them."""
    parts = parts_dir(root, key)
    wanted = [parts / part_name(i) for i in range(1, role.count)]
    deadline = time.monotonic() + timeout
    while True:
        missing = [p for p in wanted if not p.is_dir()]
        if not missing:
            return wanted
        if time.monotonic() > deadline:
            raise SaveError(
                f"The save at global step {int(key.split('-')[0])} in {root} is missing the "
                "state of "
                f"{', '.join(p.name for p in missing)} after {timeout:.0f} s: those "
                "processes did not reach this save (one may have died or hung). The "
                "checkpoint is not committed; the previous one stands."
            )
        time.sleep(0.01)


def remove_parts(root: Path, key: str | None = None) -> None:
    """Removes the parts directory of one save, or (None) every one left behind."""
    if key is not None:
        storage.remove(parts_dir(root, key))
        return
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith(PARTS_PREFIX):
                storage.remove(child)


# How long `restore` waits for every process of a job to call it too.
RESTORE_TIMEOUT_S = 300.0
_restores = itertools.count()


def all_restore(role: ProcessRole, location: str) -> None:
    """Waits until every process of the job calls `restore`; a clear error if one does not.

    Assigning into a variable replicated across processes is a collective: a
    `restore` on one process alone would wait forever inside JAX.
    """
    try:
        backend.barrier(f"keras_resume restore {next(_restores)}", RESTORE_TIMEOUT_S)
    except TimeoutError as e:
        raise TimeoutError(
            f"keras_resume.restore({location!r}) was called on process {role.index} of "
            f"{role.count}, but not every process of the job called it within "
            f"{RESTORE_TIMEOUT_S:.0f} s; nothing was loaded. In a multi-process job call "
            "restore on every process at the same point: loading variables that span "
            f"the processes is collective. ({e})"
        ) from None


_NONE, _FAILED = -1, -2  # broadcast instead of a checkpoint id


def read_agreed(ckpt, role: ProcessRole, verify: bool, fit: int | None = None):
    """Reads the checkpoint process 0 chose, on every process; each gets its own state.

    Process 0 selects the newest backup that verifies and broadcasts its id (a
    collective: every process calls this at the same point of `fit`); the
    others read that checkpoint, with their own part as its state bundle.
    With `fit`, only that fit's backups are candidates (`CheckpointDirectory.select`).
    """
    chosen, failure = _NONE, None
    if role.is_primary:
        try:
            chosen = ckpt.select("latest", verify=verify, fit=fit)["id"]
        except NoCheckpointError:
            chosen = _NONE
        except BaseException as e:  # the others must not wait for an id forever
            chosen, failure = _FAILED, e
    chosen = backend.broadcast_int(chosen)
    if failure is not None:
        raise failure
    if chosen == _FAILED:
        raise CheckpointCorruptError(
            f"Process 0 could not choose a checkpoint in {ckpt.location} (its error says "
            "why); nothing was loaded on this process either."
        )
    if chosen == _NONE:
        raise NoCheckpointError(f"No backup in {ckpt.location} (process 0 found none).")
    loaded = ckpt.read_checkpoint(chosen, verify=False)  # process 0 verified it
    if role.is_primary:
        return loaded
    return dataclasses.replace(loaded, bundle=_own_state(ckpt, loaded.entry, role))


def _own_state(ckpt, entry: dict, role: ProcessRole) -> StateBundle | None:
    root = ckpt.checkpoint_path(entry)
    where = root / part_name(role.index)
    if not (where / STATE_FILE).exists():
        warnings.warn(
            f"Checkpoint {ckpt.checkpoint_path(entry)} holds no state for process "
            f"{role.index} (it was written by a job of {_processes_of(entry)}): its weights are "
            "restored, but this process's RNG and data position start fresh, so the "
            "resumed run is not bit-identical.",
            stacklevel=4,
        )
        return None
    return StateBundle.read(root, part_name(role.index))


def _processes_of(entry: dict) -> str:
    parts = {f["path"].split("/")[0] for f in entry["files"] if "/" in f["path"]}
    return f"{len(parts) + 1} process(es)"
