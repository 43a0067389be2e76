"""Keras's `.weights.h5` file written and read outside `save_weights` and `load_weights`.

`write_weights` replays a `weights_walk` snapshot into Keras's own `H5IOStore`;
`read_weights` reads a file through the checked reader of `keras_resume.hdf5`,
and `assign_weights` loads what it read with `load_weights`' own walk.
"""

from __future__ import annotations

from keras_resume.backend.arrays import Shards, to_host
from keras_resume.backend.weights_walk import _stores
from keras_resume.errors import CheckpointCorruptError


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
    from keras_resume import hdf5

    where = f"{root}/{relpath}"
    with hdf5.open_checked(root, relpath) as f:
        if groups is not None:
            return _read_listed(f, where, groups, skip)
        return _read_every_vars_group(f, where, budget)


def _read_listed(f, where: str, groups, skip) -> dict[str, dict]:
    """The datasets `groups` lists (but those in `skip`), each checked against its spec."""
    import h5py

    from keras_resume import hdf5

    out: dict[str, dict] = {}
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


def _read_every_vars_group(f, where: str, budget) -> dict[str, dict]:
    """Every `vars` group of the file, as Keras's `H5IOStore.get` reads it, within `budget`."""
    import h5py

    from keras_resume import hdf5

    out: dict[str, dict] = {}
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
