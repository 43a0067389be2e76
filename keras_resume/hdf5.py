"""A checked reader of the HDF5 files of a run (`model.weights.h5`, `shards.h5`).

HDF5 can make a file read bytes that are not in it: external links (to an
object in another file), external raw storage (a dataset whose bytes live in
other files), virtual datasets (made of other files' datasets), and soft links
(names resolved at read time). A file planted in a run could use any of them
to make a restore read, and an export ship, data from outside the run; and a
dataset can declare any shape, so reading it whole can take any amount of
memory. This module opens a file only as a regular file inside the run
(`storage.open_regular`), refuses every such construct before reading any
data, and reads only the datasets the caller lists, after checking their
shape and dtype: memory is bounded by the listed shapes.

It knows nothing of Keras.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import h5py
import numpy as np

from keras_resume import storage
from keras_resume.errors import CheckpointCorruptError

BFLOAT16 = "bfloat16"
_NUMERIC_KINDS = "biuf"


class UnsafeFileError(CheckpointCorruptError):
    """An HDF5 file of a run refers outside itself or holds what keras_resume never writes."""


@contextlib.contextmanager
def open_checked(root: str | os.PathLike, relpath: str, scan: bool = True):
    """Opens `root/relpath` as an `h5py.File`, read-only, after `check_file`.

    HDF5 reads through the file descriptor `storage.open_regular` opened: the
    file checked is the file read, whatever the path points to afterwards.
    `scan=False` skips `check_file`, for a file scanned before whose datasets
    the caller checks one by one (`checked_dataset`).
    """
    where = Path(root, relpath)
    fileobj = storage.open_regular_file(root, relpath)
    try:
        try:
            f = h5py.File(fileobj, "r")
        except Exception as e:  # noqa: BLE001 - h5py raises OSError, ValueError, ...
            raise CheckpointCorruptError(
                f"Cannot read {where} as HDF5 ({type(e).__name__}: {e}). The checkpoint is "
                "damaged; resume from another one."
            ) from e
        with f:
            if scan:
                check_file(f, where)
            yield f
    finally:
        fileobj.close()


def check_file(f: h5py.File, where) -> None:
    """Raises `UnsafeFileError` if the file holds a soft, external or user-defined
    link, a dataset with external raw storage, or a virtual dataset."""
    problems: list[str] = []
    seen: set = set()
    groups = [f["/"]]
    # Every link of every group, descending through hard links only (each group
    # once: hard links can make cycles). Nothing is resolved before it is checked.
    while groups:
        group = groups.pop()
        if group.id in seen:
            continue
        seen.add(group.id)
        for name in group:
            full = f"{group.name.rstrip('/')}/{name}"
            try:
                link = group.get(name, getlink=True)
            except Exception as e:  # noqa: BLE001 - a link class h5py does not know
                problems.append(f"link {full!r} of an unknown kind ({e})")
                continue
            if not isinstance(link, h5py.HardLink):
                target = getattr(link, "path", "")
                if isinstance(link, h5py.ExternalLink):
                    target = f"{link.filename}:{link.path}"
                problems.append(f"{type(link).__name__} {full!r} -> {target!r}")
                continue
            obj = group[name]
            if isinstance(obj, h5py.Group):
                groups.append(obj)
            elif isinstance(obj, h5py.Dataset):
                problem = _dataset_problem(obj)
                if problem:
                    problems.append(f"dataset {full!r}: {problem}")
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; ... {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        raise UnsafeFileError(
            f"Refusing to read {where}: it refers outside itself ({shown}). keras_resume "
            "writes none of these; the file was planted or altered. Resume from another "
            "checkpoint, or delete this one."
        )


def checked_dataset(f: h5py.File, name: str, where) -> h5py.Dataset:
    """The dataset `name` (a child of the root group), refused as `check_file` would."""
    link = f.get(name.lstrip("/"), getlink=True)
    dataset = f.get(name.lstrip("/")) if isinstance(link, h5py.HardLink) else None
    problem = None if isinstance(dataset, h5py.Dataset) else "not a dataset reached by a hard link"
    problem = problem or _dataset_problem(dataset)
    if problem:
        raise UnsafeFileError(
            f"Refusing to read {where}: {name!r} is {problem}. The file was altered after it "
            "was checked; resume from another checkpoint."
        )
    return dataset


def _dataset_problem(dataset: h5py.Dataset) -> str | None:
    if dataset.is_virtual:
        return "a virtual dataset (its data lives in other files)"
    if dataset.id.get_create_plist().get_external_count() > 0:
        return "external raw storage (its data lives in other files)"
    return None


def logical_dtype(dataset: h5py.Dataset) -> str:
    """The dtype a dataset holds, as Keras's `H5IOStore` writes it (bfloat16 by attribute)."""
    if dataset.attrs.get("dtype") == BFLOAT16:
        return BFLOAT16
    return str(dataset.dtype)


def numeric_problem(dataset: h5py.Dataset) -> str | None:
    """Why a dataset cannot hold a variable's value (strings, records, references), or None."""
    dtype = dataset.dtype
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        return f"dtype {dtype} is not a number type"
    if h5py.check_vlen_dtype(dtype) is not None or h5py.check_string_dtype(dtype) is not None:
        return f"dtype {dtype} is a string or variable-length type"
    return None


def itemsize(dtype: str) -> int:
    if dtype == BFLOAT16:
        return 2
    try:
        return np.dtype(dtype).itemsize
    except TypeError:
        return 8


def nbytes(shape, dtype: str) -> int:
    return int(np.prod(shape, dtype=np.int64)) * itemsize(dtype)


def read_dataset(dataset: h5py.Dataset, where, shape=None, dtype=None, same_dtype=None):
    """The dataset as a numpy array, after checking its type (and `shape`/`dtype` if given).

    `same_dtype(saved, expected)` compares dtypes (default: equal).
    """
    problem = numeric_problem(dataset)
    saved = logical_dtype(dataset)
    if problem is None and shape is not None and tuple(dataset.shape) != tuple(shape):
        problem = f"shape {tuple(dataset.shape)}, expected {tuple(shape)}"
    if problem is None and dtype is not None and not (same_dtype or str.__eq__)(saved, dtype):
        problem = f"dtype {saved}, expected {dtype}"
    if problem is not None:
        raise CheckpointCorruptError(
            f"Dataset {dataset.name!r} of {where} does not match the checkpoint's "
            f"fingerprint: {problem}. The file was altered; nothing was loaded. Resume "
            "from another checkpoint."
        )
    value = dataset[()]
    if saved == BFLOAT16:
        import ml_dtypes

        value = np.array(value, dtype=ml_dtypes.bfloat16)
    return np.asarray(value)
