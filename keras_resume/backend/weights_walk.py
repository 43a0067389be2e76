"""Keras's `.weights.h5` layout, recorded by `save_weights`' own walk of the model.

`model.save_weights` walks the model (`saving_lib._save_state`) and each layer
and optimizer puts its variables into a store. We run the same walk with a
store that keeps host copies, so the training thread pays only for the copies;
`weights_file` replays them into Keras's own `H5IOStore` later, on the writer
thread: the file is the one `save_weights` would have written, and
`load_weights` reads it. The same walk gives the layout a fingerprint compares
and the variables each entry is loaded into.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading

import keras

from keras_resume.backend.arrays import (
    _device_copy,
    _shards,
    copy_into,
    sharded_across_processes,
    sync_state,
)


def _stores():
    from keras.src.saving import saving_lib

    return saving_lib


@functools.cache  # one class: `_recording_optimizers` recognises its instances
def _snapshot_store_class():
    saving_lib = _stores()

    class SnapshotStore(saving_lib.H5IOStore):
        """Records `make(path, metadata)` and `store[key] = value` through `take`."""

        def __init__(self, take):  # no file: nothing of H5IOStore's is used
            self.entries = WeightEntries()
            self.optimizers: list = []  # [(path, optimizer)], see _recording_optimizers
            self.mode = "w"
            self.take = take  # take(path, key, value): what to record, or _SKIP

        def __bool__(self):
            return True

        def make(self, path, metadata=None):
            self.current_path = path
            self._current = (path, dict(metadata) if metadata else None, {})
            self.entries.append(self._current)
            # `saving_lib._save_state(saveable, ...)` calls `make` for `saveable`:
            # its class tells architectures with the same shapes apart.
            saveable = sys._getframe(1).f_locals.get("saveable")
            self.entries.classes[path] = type(saveable).__name__ if saveable is not None else None
            return self

        def __setitem__(self, key, value):
            path, values = self._current[0], self._current[2]
            taken = self.take(path, key, value)
            if taken is not _SKIP:
                values[key] = taken

        def __len__(self):
            return len(self._current[2])

        def keys(self):
            return self._current[2].keys()

        def __contains__(self, key):
            return key in self._current[2]

        def close(self):
            pass

    return SnapshotStore


_SKIP = object()


class WeightEntries(list):
    """`[(path, metadata, {key: value})]` in `save_weights`' layout; `classes[path]` is
    the class name of the layer, model or optimizer that saved `path`."""

    def __init__(self, *args):
        super().__init__(*args)
        self.classes: dict = {}


def snapshot_weights(
    model, buffers: dict | None = None, on_device: bool = False, sharded_only: bool = False
) -> list[tuple]:
    """Copies of everything `model.save_weights` would write, in its layout.

    Returns `[(path, metadata, {key: array})]`. Host copies, or with
    `on_device` (see `device_snapshot`) copies in device memory that
    `write_weights` moves to the host. With `buffers` (a dict kept by the
    caller), host copies go into the previous snapshot's arrays: that snapshot
    must no longer be in use. A variable sharded across processes is copied
    as this process's `Shards`; with `sharded_only`, nothing else is copied
    (what the other processes of a job save: process 0 saves the rest).
    """

    def take(path, key, value):
        sharded = sharded_across_processes(value)
        if sharded_only and not sharded:
            return _SKIP
        if on_device:
            return _device_copy(value)
        if sharded:
            return _shards(value, lambda i, data: copy_into(buffers, (path, key, i), data))
        return copy_into(buffers, (path, key), value)

    return _walk_weights(model, take).entries


def _walk_weights(model, take, sync: bool = True, with_optimizer: bool = True):
    """Runs `save_weights`' own walk over `model`, recording `take(path, key, value)`.

    Returns the store: its `entries` (a `WeightEntries`: the groups of the
    `.weights.h5` file, in the walk's order) and its `optimizers`
    (`[(path, optimizer)]`, every optimizer the walk met).
    `with_optimizer=False` leaves `model.optimizer` out.
    `sync`: first put JAX's training state into the variables (needed to read
    values; a walk that reads none must not: in a multi-process job the sync
    assigns variables that span the processes, and only process 0 walks for
    the fingerprint).
    """
    if sync:
        sync_state(model)
    saving_lib = _stores()
    store = _snapshot_store_class()(take)
    skip = set()
    if not with_optimizer and getattr(model, "optimizer", None) is not None:
        skip.add(id(model.optimizer))
    with _recording_optimizers(), _no_distribution():
        saving_lib._save_state(
            model, weights_store=store, assets_store=None, inner_path="", visited_saveables=skip
        )
    return store


@contextlib.contextmanager
def _no_distribution():
    """No `keras.distribution` while the walk runs: the variables it makes stay local.

    The walk makes Keras's reference objects (`saving_lib.get_attr_skipset`
    builds an `Optimizer(1.0)` the first time it walks an optimizer, with two
    variables). Under a multi-process distribution a new variable is placed
    with a check that every process agrees on its value: a collective, which
    deadlocks (gloo aborts) when only process 0 walks, for the fingerprint.
    The walk reads the model's variables and makes none of its own, so
    nothing else changes; the distribution is put back after it.
    """
    from keras.src.distribution import distribution_lib

    current = distribution_lib.distribution()
    if current is None:
        yield
        return
    distribution_lib.set_distribution(None)
    try:
        yield
    finally:
        distribution_lib.set_distribution(current)


_RECORDING_LOCK = threading.Lock()


@contextlib.contextmanager
def _recording_optimizers():
    """Makes Keras's stock `BaseOptimizer.save_own_variables` hand our store its variables.

    The stock method writes `store[str(i)] = variable.numpy()` for each of
    `optimizer.variables`: a host copy on the training thread that a snapshot
    would copy again, a device-to-host transfer that a device snapshot avoids,
    and for a variable sharded across processes a read that fails. For the
    `SnapshotStore` alone it gives the variables themselves, under the same
    keys, and records the optimizer and its path; any other store (a
    `save_weights` on another thread meanwhile) gets the stock method. Every
    optimizer the walk reaches (`model.optimizer`, a LossScaleOptimizer's
    `inner_optimizer`, optimizers kept as attributes of a custom model) is
    saved where `save_weights` saves it.
    """
    from keras.src.optimizers.base_optimizer import BaseOptimizer

    snapshot_store = _snapshot_store_class()
    with _RECORDING_LOCK:
        stock = BaseOptimizer.__dict__["save_own_variables"]

        def save_own_variables(self, store):
            if not isinstance(store, snapshot_store):
                return stock(self, store)
            store.optimizers.append((store.current_path, self))
            for i, variable in enumerate(self.variables):
                store[str(i)] = variable

        BaseOptimizer.save_own_variables = save_own_variables
        try:
            yield
        finally:
            BaseOptimizer.save_own_variables = stock


def optimizer_path(model) -> str | None:
    """The group of `model.optimizer` in the `.weights.h5` layout, or None."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return None
    for attr, child in _stores()._walk_saveable(model):
        if child is optimizer:
            return attr
    return None


def value_spec(value) -> tuple[list, str]:
    """`(shape, dtype)` of a saved value: a variable, an array, `Shards` or any
    object with `shape` and `dtype`, the dtype as Keras names it."""
    return [int(n) for n in value.shape], str(keras.backend.standardize_dtype(value.dtype))


def weights_layout(model, entries=None) -> dict:
    """What the `.weights.h5` file of `model` holds: each group's path, the class
    that saves it, and its datasets' keys, shapes and dtypes.

    `entries`: a `snapshot_weights` result of `model` (else the model is walked).
    `optimizer` names the optimizer's group, left out of a weights-only comparison.
    """
    if entries is None:
        entries = _walk_weights(model, lambda path, key, value: value).entries
    classes = getattr(entries, "classes", {})
    groups = [
        [path, classes.get(path), [[key, *value_spec(v)] for key, v in values.items()]]
        for path, _, values in entries
    ]
    return {"groups": groups, "optimizer": optimizer_path(model)}


class WeightTargets(dict):
    """`{(path, key): variable}`; `classes[path]` as in `WeightEntries`."""

    classes: dict


def weight_targets(model, with_optimizer: bool = True) -> WeightTargets:
    """`{(path, key): variable}`: what each entry of the `.weights.h5` file is loaded into.

    A layer that saves a computed array instead of a variable gives that array.
    `with_optimizer=False` leaves the optimizer out.
    """
    entries = _walk_weights(
        model, lambda path, key, value: value, with_optimizer=with_optimizer
    ).entries
    targets = WeightTargets(
        ((path, key), value) for path, _, values in entries for key, value in values.items()
    )
    targets.classes = dict(entries.classes)
    return targets
