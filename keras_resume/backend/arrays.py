"""Variable values as host arrays: copies, snapshots, shards and replicas.

A variable's value read whole (`to_numpy`), or as this process's `Shards` when
it is split across the processes of a job, or as each `tf.distribute`
replica's own copy; and the copies a snapshot takes of it, on the host or in
device memory, without stopping training longer than the copy.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from keras_resume.backend.core import name


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


def sync_state(model) -> None:
    """Puts the training state back into the model's variables, where it is not.

    JAX's `fit` keeps the state outside the variables during an epoch (their
    values are dropped); reading a variable then gives its initializer's
    value. Keras's `Callback.model` syncs too, but only when reached that way.
    """
    if name() == "jax" and hasattr(model, "jax_state_sync"):
        model.jax_state_sync()
