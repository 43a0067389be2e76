"""`restore`: the one call that loads a checkpoint into a model outside `fit`."""

from __future__ import annotations

import dataclasses
import warnings

from keras_resume import backend, multiprocess
from keras_resume import manifest as mf
from keras_resume.directory import CheckpointDirectory, LoadedCheckpoint, as_directory
from keras_resume.state import model_state, rng_state, schema


@dataclasses.dataclass(frozen=True)
class RestoreInfo:
    """What `restore` loaded.

    Attributes:
        checkpoint_id: the manifest id of the checkpoint.
        kind: "backup" or "best".
        path: the checkpoint's directory.
        epoch: the epoch the checkpoint was taken in (0-based).
        step: steps trained within that epoch.
        initial_epoch: the epoch a resumed `fit` starts at (`fit(initial_epoch=...)`).
        initial_step: the step within `initial_epoch` a resumed run continues from.
        global_step: the batches trained in the run when it was taken (keras_resume's
            count; older checkpoints hold the optimizer's step count, the same without
            gradient accumulation or skipped mixed-precision steps).
        logs: the logs recorded with the checkpoint.
        fit: which `fit` call of the script wrote it (0 for the first; see
            `FullStateResume`).

    Example:

    >>> import tempfile
    >>> import keras
    >>> import numpy as np
    >>> import keras_resume as kr
    >>> x = np.random.default_rng(0).random((8, 2))
    >>> y = x.sum(axis=1, keepdims=True)
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> run = tempfile.mkdtemp()
    >>> _ = model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[kr.StepBackup(run)])
    >>> info = kr.restore(model, run)
    >>> info.kind, info.epoch, info.step, info.global_step  # 2 steps an epoch
    ('backup', 1, 2, 4)
    >>> info.initial_epoch, info.initial_step  # epoch 1 was complete: continue at epoch 2
    (2, 0)
    >>> sorted(info.logs)
    ['loss']
    """

    checkpoint_id: int
    kind: str
    path: str
    epoch: int
    step: int
    initial_epoch: int
    initial_step: int
    global_step: int
    logs: dict
    fit: int = 0


def load_into_model(
    model,
    ckpt: CheckpointDirectory,
    loaded: LoadedCheckpoint,
    with_optimizer: bool = True,
    build=None,
):
    """Checks, then loads weights, optimizer and SeedGenerator states of a read checkpoint.

    Nothing changes in `model` unless every variable matches. Returns the
    checkpoint's state bundle (None for a weights-only checkpoint).
    `with_optimizer=False` loads the model's own variables only (a model
    without an optimizer: `inspect.load_model` of an uncompiled model).
    `build`: builds a model whose variables do not exist yet (see
    `model_state.ensure_built`); returns whether it built.
    """
    entry, bundle = loaded.entry, loaded.bundle
    where = str(ckpt.checkpoint_path(entry))
    saved = loaded.fingerprint if loaded.fingerprint is not None else ckpt.fingerprint_of(entry)
    model_state.ensure_built(model, saved, where, build)
    model_state.check_compatible(saved, model, where, with_optimizer)
    if bundle is not None:
        schema.check_bundle(bundle, ckpt.checkpoint_path(entry))
    rng = bundle.meta.get("rng") if bundle is not None else None
    if rng is not None and rng_state.crosses_backend(rng["process"]):
        assign_loaded(model, loaded, where, with_optimizer)
        warnings.warn(
            f"Checkpoint {where}: model and optimizer weights restored, but "
            f"{rng_state.cross_backend_message(rng['process'])}. Training continues; it is "
            "not bit-identical to the original run.",
            stacklevel=3,
        )
        return bundle
    problems = assign_loaded(model, loaded, where, with_optimizer)
    if problems:
        warnings.warn(
            f"Checkpoint {where}: SeedGenerator states not restored ({'; '.join(problems)}); "
            "random layers will draw other numbers than the original run.",
            stacklevel=3,
        )
    return bundle


def assign_loaded(model, loaded: LoadedCheckpoint, where: str, with_optimizer: bool = True):
    """Assigns a checked checkpoint's variables and SeedGenerator states (again).

    `load_into_model` checks first, then calls this; `FullStateResume` calls it
    once more where the resumed run reaches the instant the backup was taken,
    overwriting whatever callbacks changed since (a `LearningRateScheduler`
    in `on_epoch_begin`). Every variable's value is staged and checked before
    the first assignment (all or nothing), then SeedGenerators are matched by
    position and shape. Returns the SeedGenerators not restored.
    """
    bundle = loaded.bundle
    backend.sync_state(model)  # JAX: fit then reads the state back from the variables
    model_state.assign_weights(model, loaded.weights, where, with_optimizer)
    problems = []
    rng = bundle.meta.get("rng") if bundle is not None else None
    if rng is None or not rng_state.crosses_backend(rng["process"]):
        if bundle is not None and "seed_generators" in bundle.meta:
            problems = rng_state.restore_seed_generators(model, bundle)
    if bundle is not None:
        model_state.restore_replicas(model, bundle)
    return problems


def info_for(ckpt: CheckpointDirectory, entry: dict) -> RestoreInfo:
    initial_epoch, initial_step = mf.resume_point(entry)
    return RestoreInfo(
        checkpoint_id=entry["id"],
        kind=entry["kind"],
        path=str(ckpt.checkpoint_path(entry)),
        epoch=entry["epoch"],
        step=entry["step_in_epoch"],
        initial_epoch=initial_epoch,
        initial_step=initial_step,
        global_step=entry["global_step"],
        logs=dict(entry["logs"]),
        fit=mf.fit_of(entry),
    )


def restore(model, ckpt, which="latest", verify: bool = True) -> RestoreInfo:
    """Loads a checkpoint of a keras_resume directory into `model`.

    Use it outside `fit`: in a notebook, an evaluation or export script. It
    loads model and optimizer variables and SeedGenerator states; it leaves
    Python's, NumPy's and the backend's global generators alone. To continue
    training exactly, use `FullStateResume` in `fit` instead.

    In a multi-process JAX job, call it on every process at the same point:
    assigning into a variable replicated across processes is a collective. A
    process that calls it alone gets a `TimeoutError` after
    `keras_resume.multiprocess.RESTORE_TIMEOUT_S` (300 s) instead of hanging.

    Example:

    >>> import tempfile
    >>> import keras
    >>> import numpy as np
    >>> import keras_resume as kr
    >>> x = np.random.default_rng(0).random((8, 2))
    >>> y = x.sum(axis=1, keepdims=True)
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> run = tempfile.mkdtemp()
    >>> _ = model.fit(x, y, validation_data=(x, y), epochs=2, verbose=0,
    ...               callbacks=[kr.StepBackup(run), kr.BestCheckpoint(run)])
    >>> fresh = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> fresh.compile(optimizer="sgd", loss="mse")
    >>> info = kr.restore(fresh, run)  # the newest backup
    >>> info.kind, info.initial_epoch
    ('backup', 2)
    >>> all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), model.get_weights()))
    True
    >>> kr.restore(fresh, run, which="best").kind
    'best'
    >>> _ = fresh.fit(x, y, epochs=3, initial_epoch=info.initial_epoch, verbose=0)

    Args:
        model: a built Keras model with the same variables as the one saved
            (compiled, if the optimizer's state should be restored too).
        ckpt: a `CheckpointDirectory` or a path.
        which: "latest" (newest backup), "best", or a checkpoint id.
        verify: check the files' checksums first, falling back to the newest
            checkpoint that verifies. Defaults to True.

    Returns:
        A `RestoreInfo`.

    Raises:
        NoCheckpointError: the directory holds no such checkpoint.
        CheckpointCorruptError: no candidate checkpoint verifies.
        CheckpointMismatchError: the model's variables differ (nothing loaded).
    """
    ckpt = as_directory(ckpt)
    role = multiprocess.current()
    if role.multi:
        multiprocess.all_restore(role, ckpt.location)
    loaded = ckpt.read_checkpoint(which, verify=verify)
    load_into_model(model, ckpt, loaded)
    return info_for(ckpt, loaded.entry)
