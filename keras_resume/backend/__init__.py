"""Everything that depends on one Keras backend or on Keras internals, in one place.

The rest of keras_resume calls only these functions. Supporting another backend
(JAX, PyTorch) or another Keras release means changing this module alone.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import dataclasses
import functools
import queue
import sys
import threading

import keras
import numpy as np

# BestCheckpoint's base class (Keras 3.11 and later): the monitor, mode and best value.
from keras.src.callbacks.monitor_callback import MonitorCallback  # noqa: F401

from keras_resume.errors import CheckpointCorruptError


def name() -> str:
    return keras.backend.backend()


def versions() -> dict:
    from keras_resume import __version__

    info = {
        "keras_resume": __version__,
        "keras": keras.version(),
        "backend": name(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
    }
    module = sys.modules.get(_BACKEND_MODULES.get(name(), ""))
    if module is not None:
        info["backend_version"] = getattr(module, "__version__", "unknown")
    return info


_BACKEND_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


# --- The processes of a multi-process job (JAX: keras.distribution.initialize) ------


def process_index() -> int:
    """This process's index in a multi-process JAX job; 0 in a single-process run."""
    if name() != "jax" or not _jax_distributed():
        return 0
    import jax

    return jax.process_index()


def process_count() -> int:
    if name() != "jax" or not _jax_distributed():
        return 1
    import jax

    return jax.process_count()


def _jax_distributed() -> bool:
    # Asking jax.process_count() before jax.distributed.initialize would start
    # JAX's backends too early for a script that initializes afterwards.
    from jax._src import distributed

    return distributed.global_state.client is not None


def broadcast_int(value: int) -> int:
    """Process 0's `value`, on every process of the job (a collective: all must call it)."""
    if process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int64(value)))


def barrier(name: str, timeout_s: float | None = None) -> None:
    """Returns once every process of the job got here (a collective).

    With `timeout_s`, raises `TimeoutError` if some process has not got here
    by then (the coordination service's barrier, not a device collective).
    """
    if process_count() == 1:
        return
    if timeout_s is None:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
        return
    from jax._src import distributed

    try:
        distributed.global_state.client.wait_at_barrier(name, int(timeout_s * 1000))
    except Exception as e:  # noqa: BLE001 - JAX's runtime error for DEADLINE_EXCEEDED
        raise TimeoutError(str(e)) from e


def any_process(flag: bool) -> bool:
    """Whether `flag` is true on any process of the job (a collective)."""
    if process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.int32(bool(flag)))
    return bool(np.any(flags))


def _local_value(value):
    """A JAX array this process can read whole: itself, or its own replica of it.

    In a multi-process job a replicated variable (`DataParallel`) spans every
    process's devices; each process holds a whole copy on its own devices. A
    variable sharded across processes (`ModelParallel`) has no whole copy
    here: see `sharded_across_processes` and `Shards`.
    """
    if name() != "jax" or getattr(value, "is_fully_addressable", True):
        return value
    if value.is_fully_replicated:
        return value.addressable_data(0)
    raise ValueError(
        f"A variable of shape {tuple(value.shape)} is sharded across processes "
        f"({value.sharding}): this process holds only its own shards, so it cannot be "
        "read here as one array. keras_resume saves and restores such variables shard "
        "by shard; to read one whole, gather it on every process "
        "(jax.experimental.multihost_utils.process_allgather(value, tiled=True))."
    )


def sharded_across_processes(value) -> bool:
    """Whether `value` (a variable or array) is split between the processes of a job."""
    if isinstance(value, keras.Variable):
        value = value.value
    return (
        name() == "jax"
        and not getattr(value, "is_fully_addressable", True)
        and not value.is_fully_replicated
    )


def has_process_shards(model) -> bool:
    """Whether any model or optimizer variable is sharded across processes."""
    sync_state(model)
    return any(sharded_across_processes(v) for v in model.weights + _optimizer_variables(model))


@dataclasses.dataclass
class Shards:
    """The part of a variable sharded across processes that this process saves.

    `pieces`: `[(bounds, array)]`, `bounds` a `[start, stop]` per dimension of
    the global array. Only the shards this process owns (replica 0 of each):
    across the job every element is saved once, and nothing is gathered.
    """

    shape: tuple
    dtype: str
    pieces: list


def _owned_shards(value) -> list:
    """`(bounds, shard)` for each shard of `value` that this process saves."""
    out = []
    for shard in value.addressable_shards:
        if shard.replica_id != 0:  # another device (maybe another process) holds it too
            continue
        bounds = [list(s.indices(n)[:2]) for s, n in zip(shard.index, value.shape)]
        out.append((bounds, shard.data))
    return out


def _shards(value, copy) -> Shards:
    if isinstance(value, keras.Variable):
        value = value.value
    pieces = [(bounds, copy(i, data)) for i, (bounds, data) in enumerate(_owned_shards(value))]
    return Shards(tuple(value.shape), str(value.dtype), pieces)


def array_from_regions(variable, read):
    """A value for `variable` whose every shard is `read(index)`, read where it lives.

    `read(index)` gives the region `index` (a tuple of slices) of the global
    array as numpy. On JAX each process reads only the regions of its own
    devices, in the variable's current layout (whatever the layout it was
    saved from); elsewhere the whole array is read.
    """
    shape = tuple(variable.shape)
    if name() == "jax" and isinstance(variable, keras.Variable):
        import jax

        sharding = variable.value.sharding
        return jax.make_array_from_callback(shape, sharding, read)
    return read(tuple(slice(0, n) for n in shape))


def to_numpy(variable) -> np.ndarray:
    """A host copy of a Keras variable's value, as the model reads it.

    Works for distributed variables too: a mirrored variable gives the value its
    copies share, TensorFlow's per-replica metric accumulators (SyncOnRead) the
    aggregate of their copies (numpy cannot convert those directly).
    """
    value = _local_value(variable.value)
    if name() == "tensorflow":
        import tensorflow as tf

        value = tf.convert_to_tensor(value)
    return np.array(keras.ops.convert_to_numpy(value), copy=True)


def read_int(variable) -> int:
    return int(to_numpy(variable))


def _replica_components(variable) -> tuple | None:
    """The per-replica copies of a `tf.distribute` variable, else None."""
    if name() != "tensorflow":
        return None
    import tensorflow as tf

    value = variable.value if isinstance(variable, keras.Variable) else variable
    if not isinstance(value, tf.distribute.DistributedValues):
        return None
    components = tuple(value.distribute_strategy.experimental_local_results(value))
    return components if len(components) > 1 else None


def replica_values(variable) -> list[np.ndarray] | None:
    """Each replica's own copy of a distributed variable, else None (it has one value).

    Under a `tf.distribute` strategy every replica holds a copy, and the copies
    can differ: a metric accumulator (SyncOnRead) holds each replica's share
    and a read sums them; a mirrored variable that a layer assigns during the
    step (BatchNormalization's moving statistics) follows each replica's own
    share of the batch, and a read gives the first replica's. Keras's
    `.weights.h5` and a plain assignment know one value, so an exact resume
    saves and puts back every copy. JAX's and PyTorch's variables have one value.
    """
    components = _replica_components(variable)
    if components is None:
        return None
    return [np.array(c.numpy(), copy=True) for c in components]


def replicas_differ(variable) -> bool:
    """Whether the replicas' copies of a distributed variable hold different values.

    Compared on the devices, so copies that agree (nearly all) cost no host copy.
    """
    components = _replica_components(variable)
    if components is None:
        return False
    import tensorflow as tf

    first = components[0]
    return not all(bool(tf.reduce_all(tf.equal(first, c))) for c in components[1:])


def assign_replica_values(variable, values) -> bool:
    """Puts `replica_values` back; False (nothing assigned) if the replicas differ in number."""
    components = _replica_components(variable)
    if components is None or len(components) != len(values):
        return False
    if any(tuple(c.shape) != np.shape(v) for c, v in zip(components, values)):
        return False
    for component, value in zip(components, values):
        component.assign(np.asarray(value, dtype=component.dtype.as_numpy_dtype))
    return True


def _host_view(value) -> np.ndarray:
    """`value` as a numpy array, without a copy where the backend allows one.

    The view may share memory with the variable: copy it before training goes on.
    """
    if isinstance(value, keras.Variable):
        value = value.value
    value = _local_value(value)
    if name() == "jax" and not isinstance(value, np.ndarray):
        return np.asarray(value)  # on the CPU a view of the buffer; else one device-to-host copy
    if name() == "tensorflow" and not isinstance(value, np.ndarray):
        import tensorflow as tf

        tensor = tf.convert_to_tensor(value)  # a read: shares the variable's buffer
        if hasattr(tensor, "_numpy"):
            return np.asarray(tensor._numpy())  # a view of it (numpy() would copy)
    return np.asarray(keras.ops.convert_to_numpy(value))


SNAPSHOT_MODES = ("auto", "device", "host")


def device_snapshot(model, mode: str) -> bool:
    """Whether a snapshot of `model` is copied on its accelerator instead of to the host.

    A device copy blocks training only for the copy on the device; the writer
    thread moves it to the host. It needs room for one more copy of the state
    in device memory. `mode`: "device" (JAX only), "host", or "auto": a device
    copy on JAX when the variables live on an accelerator with room to spare.
    """
    check_snapshot_mode(mode)
    if mode == "host" or name() != "jax":
        return False
    if mode == "device":
        return True
    sync_state(model)
    values = [v.value for v in model.weights + _optimizer_variables(model)]
    need = _bytes_per_device(values)
    if not need or any(d.platform == "cpu" for d in need):
        return False  # host memory already: a "device" copy is a host copy
    for device, nbytes in need.items():
        stats = device.memory_stats() or {}
        if "bytes_limit" not in stats or "bytes_in_use" not in stats:
            return False
        if stats["bytes_limit"] - stats["bytes_in_use"] < 1.1 * nbytes:
            return False
    return True


def _bytes_per_device(values) -> dict:
    """How many bytes of the JAX arrays `values` each device of this process holds.

    A replicated array (`keras.distribution.DataParallel`) is whole on every
    device, a sharded one in part: a copy of the state needs that much again.
    """
    need: dict = {}
    for value in values:
        sharding = getattr(value, "sharding", None)
        if sharding is None:
            continue
        shard = sharding.shard_shape(value.shape)
        nbytes = int(np.prod(shard, dtype=np.int64)) * value.dtype.itemsize
        for device in sharding.addressable_devices:
            need[device] = need.get(device, 0) + nbytes
    return need


def check_snapshot_mode(mode: str) -> None:
    if mode not in SNAPSHOT_MODES:
        raise ValueError(
            f"Invalid value for argument snapshot. Received: snapshot={mode!r}. "
            f"Expected one of {', '.join(map(repr, SNAPSHOT_MODES))}."
        )
    if mode == "device" and name() != "jax":
        raise ValueError(
            f"snapshot='device' needs the JAX backend; this process runs {name()}. "
            "Use snapshot='auto' (a device copy where possible) or 'host'."
        )


def _optimizer_variables(model) -> list:
    optimizer = getattr(model, "optimizer", None)
    return list(optimizer.variables) if optimizer is not None else []


def _device_copy(value):
    """A copy of a JAX array in the same device memory, with the same sharding.

    Dispatched asynchronously: the training thread does not wait for it. The
    next step may donate the original's buffer; JAX orders this read first.
    """
    import jax.numpy as jnp

    if isinstance(value, keras.Variable):
        value = value.value
    if not getattr(value, "is_fully_addressable", True):
        # Spans the processes of a job: copy only what lives here, each shard on
        # its own device (a copy of the global array would be a job-wide program).
        if value.is_fully_replicated:
            return jnp.array(value.addressable_data(0), copy=True)
        return _shards(value, lambda _, data: jnp.array(data, copy=True))
    return jnp.array(value, copy=True)


def to_host(value):
    """A snapshot value as a host array (a device copy is moved here), or its `Shards`."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, Shards):
        return Shards(value.shape, value.dtype, [(b, np.asarray(a)) for b, a in value.pieces])
    return np.asarray(_local_value(value))


def copy_into(buffers: dict | None, slot, value) -> np.ndarray:
    """A host copy of `value`, written into `buffers[slot]` when one of its shape exists.

    Reusing the buffers of the previous snapshot costs no allocation and no page
    faults, and keeps the snapshot's memory at one copy of the state.
    """
    view = _host_view(value)
    if buffers is None:
        return view.copy()
    buffer = buffers.get(slot)
    if buffer is None or buffer.shape != view.shape or buffer.dtype != view.dtype:
        buffer = buffers[slot] = np.empty_like(view)
    np.copyto(buffer, view)
    return buffer


# --- Keras's `.weights.h5` layout, written and read outside `save_weights` ------------
#
# `model.save_weights` walks the model (`saving_lib._save_state`) and each layer
# and optimizer puts its variables into a store. We run the same walk with a
# store that keeps host copies, so the training thread pays only for the copies,
# and replay them into Keras's own `H5IOStore` later, on the writer thread: the
# file is the one `save_weights` would have written, and `load_weights` reads it.


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


def sync_state(model) -> None:
    """Puts the training state back into the model's variables, where it is not.

    JAX's `fit` keeps the state outside the variables during an epoch (their
    values are dropped); reading a variable then gives its initializer's
    value. Keras's `Callback.model` syncs too, but only when reached that way.
    """
    if name() == "jax" and hasattr(model, "jax_state_sync"):
        model.jax_state_sync()


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


def optimizers(model) -> list[tuple[str, object]]:
    """`[(path, optimizer)]`: every optimizer `save_weights` saves, where it saves it.

    `path` is the optimizer's group in the `.weights.h5` file (`optimizer`,
    `optimizer/inner_optimizer`, `d_optimizer`, ...).
    """
    return _walk_weights(model, lambda path, key, value: _SKIP, sync=False).optimizers


def built_on(optimizer) -> list | None:
    """The variables `optimizer` was built on (`optimizer.build(variables)`); None if unbuilt."""
    if not getattr(optimizer, "built", False):
        return None
    return list(getattr(optimizer, "_trainable_variables", []))


def build_optimizer(optimizer, variables) -> None:
    """Builds `optimizer` on exactly `variables`, as its first `apply` would.

    In the optimizer's name scope, as `apply` builds it: the variables get the
    paths of the original run's (a LossScaleOptimizer's inner optimizer's
    variables are `loss_scale_optimizer/adam/...`). Where `fit` builds the
    optimizer before any callback runs (`_symbolic_build`: JAX, PyTorch, a
    `tf.distribute` strategy), it is built already and this is not called.
    """
    from keras.src.backend.common.name_scope import name_scope

    with name_scope(optimizer.name, caller=optimizer):
        optimizer.build(list(variables))


def applied_steps(model) -> int:
    """How many times `model.optimizer` was applied: the batches it trained on.

    `optimizer.iterations` counts updates, not batches, with
    `gradient_accumulation_steps` (it is then a computed tensor); the raw
    counter below it counts every `apply`. A LossScaleOptimizer counts in its
    inner optimizer.
    """
    optimizer = getattr(model, "optimizer", None)
    while hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    counter = getattr(optimizer, "_iterations", None)
    if not isinstance(counter, keras.Variable):
        return 0
    sync_state(model)
    return read_int(counter)


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


def write_weights(entries: list[tuple], filepath) -> list[tuple]:
    """Writes a `snapshot_weights` result as the `.weights.h5` file `save_weights` makes.

    Variables sharded across processes are left out of the file: returns them
    as `[(path, key, Shards)]`, for `state.shards` to write.
    """
    sharded = []
    try:
        store = _stores().H5IOStore(str(filepath), mode="w")
        try:
            for path, metadata, values in entries:
                store.make(path, metadata=metadata)
                for key, value in values.items():
                    value = to_host(value)
                    if isinstance(value, Shards):
                        sharded.append((path, key, value))
                    else:
                        store[key] = value
        finally:
            store.close()
    except RuntimeError as e:
        # HDF5 reports a failed write or flush (ENOSPC, EIO) as a RuntimeError.
        from keras_resume.errors import SaveError

        raise SaveError(f"Cannot write {filepath}: {e}") from e
    return sharded


def sharded_entries(entries: list[tuple]) -> list[tuple]:
    """A `sharded_only` snapshot (nothing but `Shards`) as `[(path, key, Shards)]` on the host."""
    return [(path, key, to_host(v)) for path, _, values in entries for key, v in values.items()]


def read_weights(root, relpath, groups=None, budget=None, skip=frozenset()) -> dict[str, dict]:
    """The `vars` groups of a `.weights.h5` file of a run, as `{path: {key: array}}`.

    Read through `hdf5.open_checked`: no link, external storage or virtual
    dataset. With `groups` (a `weights_layout`'s `groups`), only the listed
    datasets are read, each after its shape and dtype are checked, and a
    listed one missing is an error; `skip` holds the `(path, key)` saved
    elsewhere (`shards.h5`). Without (a checkpoint older than the layout),
    every `vars` group is read, as Keras's `H5IOStore.get` would, each
    dataset only if it fits in what is left of `budget` bytes.
    """
    import h5py

    from keras_resume import hdf5

    where = f"{root}/{relpath}"
    out: dict[str, dict] = {}
    with hdf5.open_checked(root, relpath) as f:
        if groups is not None:
            for path, _, datasets in groups:
                inner = f.get(f"{path}/vars" if path else "vars")
                values = {}
                for key, shape, dtype in datasets:
                    if (path, key) in skip:
                        continue
                    dataset = inner.get(key) if isinstance(inner, h5py.Group) else None
                    if not isinstance(dataset, h5py.Dataset):
                        raise CheckpointCorruptError(
                            f"{where} lacks the dataset {path}/vars/{key} its fingerprint "
                            "lists: the file was altered. Resume from another checkpoint."
                        )
                    values[key] = hdf5.read_dataset(dataset, where, shape, dtype)
                out[path] = values
            return out
        left = [budget]

        def read_vars(path: str, group) -> None:
            # Keras's `H5IOStore.get(path)` reads the "vars" group under `path`.
            inner = group.get("vars")
            if not isinstance(inner, h5py.Group):
                return
            values = {}
            for key, dataset in inner.items():
                if isinstance(dataset, h5py.Dataset):
                    size = hdf5.nbytes(dataset.shape, str(dataset.dtype))
                    if left[0] is not None:
                        if size > left[0]:
                            raise CheckpointCorruptError(
                                f"Dataset {dataset.name!r} of {where} holds {size} bytes "
                                f"(shape {dataset.shape}), more than the variables its "
                                "fingerprint lists: the file was altered; nothing was "
                                "read. Resume from another checkpoint."
                            )
                        left[0] -= size
                    values[key] = hdf5.read_dataset(dataset, where)
            out[path] = values

        def visit(name, obj) -> None:  # visititems stops at the first non-None return
            if isinstance(obj, h5py.Group):
                read_vars(name, obj)

        read_vars("", f)
        f.visititems(visit)
    return out


def _memory_store_class():
    saving_lib = _stores()

    class MemoryStore(saving_lib.H5IOStore):
        """`H5IOStore` in read mode, served from `read_weights`'s dict."""

        def __init__(self, groups: dict):
            self.groups = groups
            self.mode = "r"
            self._current = {}

        def __bool__(self):
            return True

        def get(self, path):
            self._current = self.groups.get(path, {})
            return self

        def has_path(self, path):
            return path in self.groups

        def __len__(self):
            return len(self._current)

        def keys(self):
            return self._current.keys()

        def __getitem__(self, key):
            return self._current[key]

        def __contains__(self, key):
            return key in self._current

        def close(self):
            pass

    return MemoryStore


def assign_weights(model, groups: dict, with_optimizer: bool = True) -> None:
    """Loads `read_weights`'s dict into `model` as `model.load_weights` would.

    `with_optimizer=False` leaves the optimizer's variables alone.
    """
    saving_lib = _stores()
    failed: set = set()
    errors: dict = {}
    skip = set()
    if not with_optimizer and getattr(model, "optimizer", None) is not None:
        skip.add(id(model.optimizer))
    saving_lib._load_state(
        model,
        weights_store=_memory_store_class()(groups),
        assets_store=None,
        inner_path="",
        skip_mismatch=False,
        visited_saveables=skip,
        failed_saveables=failed,
        error_msgs=errors,
    )
    if failed:
        saving_lib._raise_loading_failure(errors, warn_only=False)


# --- Random number generators owned by the backend -------------------------------


def capture_backend_rng() -> dict:
    """JSON-able state of the process-wide random generators outside Python and NumPy.

    TensorFlow's generators are captured whenever TensorFlow is loaded, on every
    backend: `tf.data` pipelines (and Keras's own data adapters) draw from them.
    On PyTorch, torch's default generators: `fit(shuffle=True)` draws its
    permutation from them. JAX keeps no global generator.
    """
    state = {"global_seed": _global_seed()}
    if _tensorflow_loaded():
        from tensorflow.python.eager import context

        rng = getattr(context.context(), "_rng", None)
        if rng is not None:
            # Eager ops without an op seed draw it from this `random.Random`.
            state["tf_op_seed_rng"] = _python_rng_to_json(rng.getstate())
        generator = _tf_global_generator()
        if generator is not None:
            state["tf_global_generator"] = generator.state.numpy().tolist()
    if name() == "torch":
        import torch

        state["torch_cpu"] = torch.get_rng_state().tolist()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["torch_cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def pipeline_generators(epoch_iterator) -> list[tuple[str, object]]:
    """`[(role, generator)]`: the torch generators a `torch.utils.data.DataLoader`
    given to `fit` draws its order from, besides torch's default generator.

    Each `iter(loader)` draws a seed from `loader.generator`, and its first batch
    draws the permutation of a `RandomSampler` from `sampler.generator` (or a
    `batch_sampler`'s sampler's). A generator the user made (`DataLoader(...,
    generator=torch.Generator().manual_seed(0))`) is in no process-wide state:
    it is captured here. torch's default generator (a `None` generator) is left
    out: `capture_backend_rng` holds it. The same generator under several
    roles is listed once. Only on JAX and PyTorch, where `fit` makes each
    epoch's loader iterator on the training thread when the epoch begins; on
    TensorFlow `tf.data` iterates the loader on its own threads.
    """
    if name() not in ("torch", "jax") or "torch" not in sys.modules:
        return []
    import torch
    from keras.src.trainers.data_adapters.torch_data_loader_adapter import (
        TorchDataLoaderAdapter,
    )

    adapter = getattr(epoch_iterator, "data_adapter", None)
    if not isinstance(adapter, TorchDataLoaderAdapter):
        return []
    loader = adapter.get_torch_dataloader()
    batch_sampler = getattr(loader, "batch_sampler", None)
    candidates = [
        ("DataLoader.generator", getattr(loader, "generator", None)),
        ("DataLoader.sampler.generator", getattr(loader.sampler, "generator", None)),
        (
            "DataLoader.batch_sampler.sampler.generator",
            getattr(getattr(batch_sampler, "sampler", None), "generator", None),
        ),
    ]
    found, seen = [], {id(torch.default_generator)}
    for role, generator in candidates:
        if isinstance(generator, torch.Generator) and id(generator) not in seen:
            seen.add(id(generator))
            found.append((role, generator))
    return found


def capture_generators(generators) -> list[dict]:
    """JSON-able states of `pipeline_generators`' generators: `get_state()` as base64."""
    return [
        {
            "role": role,
            "device": str(generator.device),
            "state": base64.b64encode(generator.get_state().numpy().tobytes()).decode("ascii"),
        }
        for role, generator in generators
    ]


def restore_generators(generators, saved: list) -> list[str]:
    """Sets `capture_generators`' states; returns what could not be set."""
    live = dict(generators)
    problems = []
    for record in saved:
        role = record.get("role")
        generator = live.pop(role, None)
        if generator is None:
            problems.append(f"{role} was saved, but the DataLoader has no such generator now")
            continue
        import torch

        try:
            raw = base64.b64decode(record["state"], validate=True)
            generator.set_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            problems.append(f"{role} ({record.get('device')}): saved state not usable ({e})")
    problems += [f"{role} is not in the checkpoint" for role in live]
    return problems


def _global_seed():
    """The seed of `keras.utils.set_random_seed` (or `tf.random.set_seed`), None if unseeded.

    Without one, shuffles and unseeded ops draw from OS entropy in every
    process: no saved state can make a resume exact.
    """
    from keras.src.backend.common import global_state
    from keras.src.utils.rng_utils import GLOBAL_RANDOM_SEED

    seed = global_state.get_global_attribute(GLOBAL_RANDOM_SEED)
    if seed is None and _tensorflow_loaded():
        from tensorflow.python.eager import context

        seed = context.global_seed()
    return seed


def _tensorflow_loaded() -> bool:
    return "tensorflow" in sys.modules


def restore_backend_rng(state: dict) -> list[str]:
    """Restores what `capture_backend_rng` saved; returns what could not be restored."""
    missing = []
    if "tf_op_seed_rng" in state or "tf_global_generator" in state:
        import tensorflow as tf
        from tensorflow.python.eager import context

        if "tf_op_seed_rng" in state:
            rng = getattr(context.context(), "_rng", None)
            if rng is None:
                missing.append("tf_op_seed_rng (call keras.utils.set_random_seed first)")
            else:
                rng.setstate(_python_rng_from_json(state["tf_op_seed_rng"]))
        if "tf_global_generator" in state:
            generator = tf.random.get_global_generator()
            generator.state.assign(np.asarray(state["tf_global_generator"], dtype=np.int64))
    if "torch_cpu" in state or "torch_cuda" in state:
        if name() != "torch":
            return missing + [k for k in ("torch_cpu", "torch_cuda") if k in state]
        import torch

        if "torch_cpu" in state:
            torch.set_rng_state(torch.tensor(state["torch_cpu"], dtype=torch.uint8))
        if "torch_cuda" in state:
            if torch.cuda.is_available() and torch.cuda.device_count() == len(state["torch_cuda"]):
                torch.cuda.set_rng_state_all(
                    [torch.tensor(s, dtype=torch.uint8) for s in state["torch_cuda"]]
                )
            else:
                missing.append("torch_cuda (another number of CUDA devices)")
    return missing


def _tf_global_generator():
    from tensorflow.python.ops import stateful_random_ops

    return getattr(stateful_random_ops, "global_generator", None)


def _python_rng_to_json(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_rng_from_json(state) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


GLOBAL_SEED_GENERATOR_NAME = "keras_global_seed_generator"


def seed_generators(model) -> list[tuple[str, object]]:
    """Every `SeedGenerator` that drives the model's randomness, in a stable order.

    Includes each layer's generators (Dropout, random augmentation, ...) and
    Keras's global generator, which unseeded `keras.random` calls use.
    """
    found = []
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for i, generator in enumerate(getattr(layer, "_seed_generators", [])):
            found.append((f"{layer.name}/seed_generator_{i}", generator))
    global_generator = existing_global_seed_generator()
    if global_generator is not None:
        found.append((GLOBAL_SEED_GENERATOR_NAME, global_generator))
    return found


def existing_global_seed_generator():
    """Keras's global `SeedGenerator` if unseeded `keras.random` calls made it, else None.

    `keras.random`'s `global_seed_generator()` makes one when there is none; this
    only looks. Keras keeps it in its global state under "global_seed_generator"
    (the constant `GLOBAL_SEED_GENERATOR` names the key from Keras 3.13 on).
    """
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator

    key = getattr(seed_generator, "GLOBAL_SEED_GENERATOR", "global_seed_generator")
    return global_state.get_global_attribute(key)


def global_seed_generator():
    """Keras's global `SeedGenerator`, made now if no unseeded `keras.random` call made it."""
    from keras.src.random.seed_generator import global_seed_generator as get

    return get()


# --- Distribution strategies -------------------------------------------------------


def check_strategy(model=None) -> None:
    """Raises `UnsupportedStrategyError` for a `tf.distribute` strategy keras_resume refuses.

    `MultiWorkerMirroredStrategy`: across workers Keras 3's `fit` fails before
    any callback runs (it cannot convert a `PerReplica` batch,
    keras-team/keras#20585), and keras_resume has no multi-worker checkpoint
    protocol for TensorFlow; a single worker would train, but a second one
    later could not resume from its checkpoints. Checked for the strategy in
    scope (a callback made inside `strategy.scope()`) and for `model`'s.
    """
    if name() != "tensorflow" or not _tensorflow_loaded():
        return
    import tensorflow as tf

    strategy = getattr(model, "_distribute_strategy", None) if model is not None else None
    if strategy is None and tf.distribute.has_strategy():
        strategy = tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        from keras_resume.errors import UnsupportedStrategyError

        raise UnsupportedStrategyError(
            f"keras_resume cannot resume training under tf.distribute."
            f"MultiWorkerMirroredStrategy ({type(strategy).__name__}, "
            f"{strategy.num_replicas_in_sync} replicas): it does not train under Keras 3 "
            "today (model.fit fails across workers converting a PerReplica value, "
            "keras-team/keras#20585). On one machine use tf.distribute.MirroredStrategy. "
            "Across processes or hosts use the JAX backend: "
            "keras.distribution.initialize(...) and "
            "keras.distribution.set_distribution(keras.distribution.DataParallel(...)), "
            "launched with `keras-resume run --nprocs N`."
        )


# --- Callbacks -------------------------------------------------------------------


def monitor_mode(callback) -> str:
    """Which way a `MonitorCallback`'s comparison (`monitor_op`) goes: "min" or "max"."""
    from keras.src import ops

    return "min" if callback.monitor_op is ops.less else "max"


def print_msg(message: str) -> None:
    """Prints as Keras's callbacks do: to stdout, or to absl logging when Keras's
    interactive logging is off (`keras.config.disable_interactive_logging()`)."""
    from keras.src.utils import io_utils

    io_utils.print_msg(message)


# --- The training loop inside model.fit --------------------------------------------


def metric_variables(model) -> list:
    """The variables of the running epoch's metrics (reset at every epoch start)."""
    return list(model.metrics_variables)


def set_initial_epoch(model, epoch: int | None) -> None:
    # Read by every backend's `fit` right after `on_train_begin`, exactly as Keras's
    # own BackupAndRestore uses it.
    model._initial_epoch = epoch


def _fit_frame(model, frame):
    while frame is not None:
        if frame.f_code.co_name == "fit" and frame.f_locals.get("self") is model:
            return frame
        frame = frame.f_back
    return None


def find_epoch_iterator(model):
    """The `EpochIterator` of the `model.fit` call running now, or None.

    `fit` does not hand its data iterator to callbacks; it is a local variable
    of `fit` on every backend. Reading it lets keras_resume put the data
    pipeline back where it was, instead of replaying whole epochs.
    """
    frame = _fit_frame(model, sys._getframe(1))
    return frame.f_locals.get("epoch_iterator") if frame is not None else None


def fit_callbacks(model) -> list:
    """The callbacks of the `model.fit` call running now, in their order, or [].

    Read from `fit`'s local `callbacks`, the `CallbackList` it made before
    `on_train_begin` (user callbacks, then History and ProgbarLogger).
    """
    frame = _fit_frame(model, sys._getframe(1))
    callbacks = frame.f_locals.get("callbacks") if frame is not None else None
    return list(getattr(callbacks, "callbacks", None) or [])


def in_fit(model, frame) -> bool:
    """Whether `frame` (e.g. where a signal arrived) is inside `model.fit`."""
    return _fit_frame(model, frame) is not None


def py_dataset_of(epoch_iterator):
    """The user's `keras.utils.PyDataset` behind an epoch iterator, or None."""
    adapter = getattr(epoch_iterator, "data_adapter", None)
    return getattr(adapter, "py_dataset", None)


def tf_dataset_of(epoch_iterator):
    """The `tf.data.Dataset` `fit` reads (`TFDatasetAdapter._dataset`), on any backend, or None."""
    dataset = getattr(getattr(epoch_iterator, "data_adapter", None), "_dataset", None)
    return dataset if _is_tf_dataset(dataset) else None


def pipeline_datasets(dataset) -> list:
    """`dataset` and every dataset it reads from (`_inputs()`), each once, output first."""
    found, seen, todo = [], set(), [dataset]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        todo.extend(current._inputs())
    return found


def cache_ops(dataset) -> list[str]:
    """The `.cache()` steps of a `tf.data` pipeline: each one's file name, "" for memory."""
    from tensorflow.python.data.ops.cache_op import CacheDataset

    return [
        d._filename.numpy().decode("utf-8", "replace")
        for d in pipeline_datasets(dataset)
        if isinstance(d, CacheDataset)
    ]


def pipeline_variables(dataset) -> list:
    """The TensorFlow variables the pipeline's functions (`map`, `filter`, ...) read.

    A Keras preprocessing layer mapped over the pipeline reads its SeedGenerator's
    state there (on JAX and PyTorch, the TensorFlow twin the layer made for it).
    """
    found, seen = [], set()
    for d in pipeline_datasets(dataset):
        for wrapper in d._functions():
            for variable in wrapper.function.graph.variables:
                if id(variable) not in seen:
                    seen.add(id(variable))
                    found.append(variable)
    return found


def live_seed_generators() -> list:
    """Every `keras.random.SeedGenerator` of the process (a scan of the gc's objects)."""
    import gc

    from keras.src.random.seed_generator import SeedGenerator

    # type(), not isinstance(): some objects answer `__class__` with a deprecation warning.
    return [o for o in gc.get_objects() if issubclass(type(o), SeedGenerator)]


def seed_generators_reading(variables, generators) -> list:
    """Those of `generators` whose state is one of `variables`, in the order of `variables`."""
    by_state = {id(g.state.value): g for g in generators}
    return [by_state[id(v)] for v in variables if id(v) in by_state]


def seed_state(generator) -> np.ndarray:
    """A host copy of a SeedGenerator's state, whichever backend made it (tf.data on JAX:
    a TensorFlow variable in a JAX process)."""
    value = generator.state.value
    if _is_tf_value(value):
        return np.array(value.numpy(), copy=True)
    return to_numpy(generator.state)


def _is_tf_value(value) -> bool:
    return _tensorflow_loaded() and type(value).__module__.startswith("tensorflow.")


def layers_of(model) -> list:
    """`model` (or a layer) and every layer inside it."""
    return list(model._flatten_layers(include_self=True, recursive=True))


def layer_seed_generators(layer) -> list:
    """A layer's own SeedGenerators, with those it made for another backend (tf.data on JAX)."""
    own = list(getattr(layer, "_seed_generators", []))
    own += list(getattr(layer, "_backend_generators", {}).values())
    return own


def data_layers_with_seed_generators() -> list:
    """Every live Keras preprocessing layer made for data pipelines that holds a SeedGenerator."""
    import gc

    try:
        from keras.src.layers.preprocessing.data_layer import DataLayer
    except ImportError:  # Keras before 3.12: the same base, named for tf.data only
        from keras.src.layers.preprocessing.tf_data_layer import TFDataLayer as DataLayer

    return [
        o for o in gc.get_objects() if issubclass(type(o), DataLayer) and layer_seed_generators(o)
    ]


def python_generator_of(epoch_iterator):
    """The Python generator `fit` reads (`GeneratorDataAdapter`), or None.

    The adapter keeps it inside the function that chains the batches it
    peeked at to the rest (`peek_and_restore`).
    """
    import types

    from keras.src.trainers.data_adapters.generator_data_adapter import GeneratorDataAdapter

    adapter = getattr(epoch_iterator, "data_adapter", None)
    if not isinstance(adapter, GeneratorDataAdapter):
        return None
    for cell in getattr(adapter.generator, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if isinstance(value, types.GeneratorType):
            return value
    return None


def describe_generator(generator) -> str:
    """`qualname` (file:line of its definition), as a message names a generator."""
    code = generator.gi_code
    return f"{generator.__qualname__} ({code.co_filename}:{code.co_firstlineno})"


def enqueuer_of(epoch_iterator):
    """The `OrderedEnqueuer` reading a PyDataset with workers (`workers>1` or
    `use_multiprocessing`), or None."""
    if py_dataset_of(epoch_iterator) is None:
        return None
    return getattr(epoch_iterator.data_adapter, "enqueuer", None)


class _LabelledIndices:
    """The enqueuer's index iterator, telling its watch each index it submits."""

    def __init__(self, inner, watch):
        self.inner, self.watch = inner, watch

    def __iter__(self):
        return self

    def __next__(self):
        index = next(self.inner)
        if self.watch.active:
            self.watch.labels.append((self.watch.version(), index))
        return index


class EnqueuerWatch:
    """Labels every batch of a PyDataset's `OrderedEnqueuer`, in the order `fit` gets them.

    The enqueuer's thread submits `py_dataset[i]` for the epoch's indices to its
    workers (`_run`, which sets `indices` and then calls `_send_py_dataset`);
    `get()` yields the batches of `ready_queue` first, then those of
    `future_queue`. `stop()`, at every epoch's end, moves the batches still
    queued (prefetched, not yet trained on) to `ready_queue`, and the next
    epoch begins with them. On JAX and PyTorch `fit` builds the model from one
    batch of a pass it then stops (`_symbolic_build`), so every epoch begins
    with up to `max_queue_size` batches of the epoch before; TensorFlow's `fit`
    does no such pass.

    `labels` follows that queue: `(version, index)` for a batch submitted when
    `version()` was what it returns then (the PyDataset's `on_epoch_end` calls
    so far), `(PRE, j)` for the `j`-th batch already in `ready_queue` when the
    watch began (`ready_before`).
    """

    PRE = -1

    def __init__(self, enqueuer, version):
        self.enqueuer = enqueuer
        self.version = version
        self.active = True
        self.ready_before = list(enqueuer.ready_queue.queue)
        self.labels = collections.deque((self.PRE, j) for j in range(len(self.ready_before)))
        # Batches left in `future_queue` (a stop that timed out waiting): unknown.
        self.labels.extend((self.PRE, -1) for _ in range(enqueuer.future_queue.qsize()))
        send, get = enqueuer._send_py_dataset, enqueuer.get

        def send_py_dataset():
            if not isinstance(enqueuer.indices, _LabelledIndices):
                enqueuer.indices = _LabelledIndices(enqueuer.indices, self)
            return send()

        def labelled_get():
            for inputs in get():
                if self.active and self.labels:
                    self.labels.popleft()
                yield inputs

        enqueuer._send_py_dataset = send_py_dataset
        enqueuer.get = labelled_get

    def queued(self) -> list:
        """The labels of the batches queued now, the next one `fit` gets first."""
        return list(self.labels)

    def running(self) -> bool:
        return self.enqueuer.is_running()

    def replace_ready(self, batches: list, labels: list) -> None:
        """Makes `batches` (labelled `labels`) the whole queue; the enqueuer must be stopped."""
        enqueuer = self.enqueuer
        while True:  # a future left behind by a stop: not a batch of the run resumed
            try:
                enqueuer.future_queue.get_nowait()
                enqueuer.future_queue.task_done()
            except queue.Empty:
                break
        ready = enqueuer.ready_queue
        with ready.mutex:
            ready.queue.clear()
            ready.queue.extend(batches)
        self.labels = collections.deque(labels)

    def detach(self) -> None:
        self.active = False
        enqueuer = self.enqueuer
        for attribute in ("_send_py_dataset", "get"):
            enqueuer.__dict__.pop(attribute, None)
        indices = getattr(enqueuer, "indices", None)
        if isinstance(indices, _LabelledIndices) and indices.watch is self:
            enqueuer.indices = indices.inner


def iterators_draw_lazily() -> bool:
    """Whether `fit`'s `_get_iterator` returns something that makes the data
    iterator only when first drawn from (JAX, PyTorch) rather than at once (TensorFlow)."""
    return name() != "tensorflow"


def is_end_of_data(error: BaseException) -> bool:
    """Whether `error`, raised by a train step, is how `fit` learns its data ran out.

    An input of unknown size (a sharded or filtered `tf.data.Dataset`) ends its
    epoch with StopIteration, or TensorFlow's OutOfRangeError: control flow,
    not a failure.
    """
    if isinstance(error, StopIteration):
        return True
    if _tensorflow_loaded():
        import tensorflow as tf

        return isinstance(error, tf.errors.OutOfRangeError)
    return False


def open_iterator(epoch_iterator, draw: int | None = 0) -> None:
    """Makes the data iterator `fit` makes at an epoch's start, and draws `draw` batches.

    What matters is what making it changes: a `tf.data` shuffle reshuffles per
    iterator, and one read through fills a `.cache()`. On TensorFlow
    `_get_iterator` makes the dataset's iterator; on JAX and PyTorch it returns
    a generator (or loader) that makes one only when first drawn from, so the
    dataset's iterator is made here directly. `draw=None` draws to the end.
    """
    iterator = epoch_iterator._get_iterator()
    dataset = getattr(getattr(epoch_iterator, "data_adapter", None), "_dataset", None)
    if name() != "tensorflow" and _is_tf_dataset(dataset):
        made = iter(dataset)
    else:
        made = iter(iterator)
    drawn = 0
    while draw is None or drawn < draw:
        try:
            next(made)
        except StopIteration:
            break
        except Exception as e:  # noqa: BLE001 - TensorFlow's end of data
            if is_end_of_data(e):
                break
            raise
        drawn += 1


def batches_per_epoch(epoch_iterator) -> int | None:
    """The batches `fit` draws from each epoch's iterator; None: until the data ends."""
    return getattr(epoch_iterator, "_num_batches", None) or None


def _is_tf_dataset(value) -> bool:
    if not _tensorflow_loaded():
        return False
    import tensorflow as tf

    return isinstance(value, tf.data.Dataset)


def uses_persistent_iterator(epoch_iterator) -> bool:
    """True when `fit` keeps one data iterator across epochs (`steps_per_epoch` set)."""
    return bool(getattr(epoch_iterator, "steps_per_epoch", None))


def skip_batches(args: tuple, count: int):
    """Draws the batches of one `train_function(*args)` call, training on none.

    On TensorFlow `train_function(iterator)` draws its `count` batches itself,
    and so does JAX's `train_function(state, iterator)`; on PyTorch `fit` has
    already drawn the one batch into `train_function(data)`. Returns the first.
    """
    if name() == "torch":
        return args[0][0]
    iterator = args[-1]
    batches = [next(iterator) for _ in range(count)]
    return batches[0]


def untrained_result(model, args: tuple, metrics_restored: bool):
    """What a `train_function(*args)` call that trained nothing returns.

    The running metrics as logs; on JAX also the training state it was given,
    with the metric variables just restored into the model when
    `metrics_restored` (JAX's `fit` keeps the state outside the variables
    during an epoch, and reads the metrics from it).
    """
    if name() != "jax":
        return model.get_metrics_result()
    from keras.src.backend.common.stateless_scope import StatelessScope

    state = tuple(args[0])
    metrics = list(state[-1])
    if metrics_restored:
        metrics = [v.value for v in model.metrics_variables]
    with StatelessScope(state_mapping=list(zip(model.metrics_variables, metrics))):
        logs = model.get_metrics_result()
    return logs, (*state[:-1], metrics)


def build_from_data(model, epoch_iterator) -> bool:
    """Builds a model that `fit` builds only at its first batch, drawing no batch.

    On TensorFlow without a `tf.distribute` strategy, `fit` builds nothing
    before `on_train_begin`: a subclassed model never called before `fit` gets
    its variables when the first train step is traced. A resume must load them
    earlier, so the model is built here as Keras's `_symbolic_build` builds it,
    on symbolic inputs of the dataset's `element_spec`: no iterator is made, no
    batch drawn. The optimizers are left to `ensure_built`, which builds each
    on the variables the checkpoint's was built on. Returns whether it built.
    On JAX and PyTorch (and with a strategy) `fit` has built the model already.
    """
    dataset = getattr(epoch_iterator, "_distributed_dataset", None)
    spec = getattr(dataset, "element_spec", None)
    if spec is None:
        return False
    from keras.src import tree
    from keras.src.backend import compute_output_spec
    from keras.src.trainers.data_adapters import data_adapter_utils

    def symbolic(value):
        if value is None:
            return None
        dtype = keras.backend.standardize_dtype(value.dtype)
        return keras.KerasTensor(value.shape, dtype)

    x, _, _ = data_adapter_utils.unpack_x_y_sample_weight(tree.map_structure(symbolic, spec))
    compute_output_spec(model, x, training=False)
    model._post_build()
    return True


def build_metrics(model, batch) -> None:
    """Creates the compiled metrics' variables, which Keras makes lazily at the first step.

    A mid-epoch resume must set them before training continues. Keras's own
    symbolic build only looks at the batch's shapes and dtypes.
    """
    compile_metrics = getattr(model, "_compile_metrics", None)
    compile_loss = getattr(model, "_compile_loss", None)
    if (compile_metrics is not None and not compile_metrics.built) or (
        compile_loss is not None and not compile_loss.built
    ):
        model._symbolic_build(data_batch=batch)
