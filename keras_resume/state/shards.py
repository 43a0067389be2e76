"""Variables sharded across processes (`ModelParallel`): saved shard by shard, cut anew on restore.

Each process writes the shards it owns to its own `shards.h5` (process 0 in
the checkpoint's root, process I in `process-I/`): nothing is gathered on one
host. A restore reads, for every shard of the variable's *current* layout,
just the region it needs from the saved shards that overlap it, so another
device count or layout restores too.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from keras_resume import hdf5
from keras_resume.errors import CheckpointCorruptError

SHARDS_FILE = "shards.h5"
_BFLOAT16 = "bfloat16"


def write_shards(sharded: list, directory: Path) -> list[str]:
    """Writes `[(path, key, backend.Shards)]` as `directory/shards.h5`; returns its name.

    Nothing (and no file) for an empty list: a process may own no shard.
    """
    if not sharded:
        return []
    with h5py.File(directory / SHARDS_FILE, "w") as f:
        n = 0
        for path, key, owned in sharded:
            for bounds, array in owned.pieces:
                data = np.asarray(array)
                if owned.dtype == _BFLOAT16:
                    data = data.view(np.uint16)  # h5py has no bfloat16
                dataset = f.create_dataset(str(n), data=data)
                dataset.attrs.update(
                    path=path,
                    key=key,
                    shape=np.asarray(owned.shape, dtype=np.int64),
                    dtype=owned.dtype,
                    bounds=np.asarray(bounds, dtype=np.int64).reshape(-1, 2),
                )
                n += 1
    return [SHARDS_FILE]


def shard_files(root: Path) -> list[Path]:
    """Every process's `shards.h5` in a checkpoint directory."""
    found = [root / SHARDS_FILE] + sorted(root.glob(f"process-*/{SHARDS_FILE}"))
    return [p for p in found if p.is_file()]


class ShardedVariable:
    """One saved variable, as the pieces the processes wrote; reads any region of it."""

    def __init__(self, path: str, key: str, shape: tuple, dtype: str, root: Path | None = None):
        self.path, self.key, self.shape, self.dtype = path, key, shape, dtype
        self.root = root  # the checkpoint directory the files are read from
        self.pieces: list[tuple[Path, str, np.ndarray]] = []  # (file, dataset, bounds)

    @property
    def name(self) -> str:
        return f"{self.path}/{self.key}"

    def check_complete(self) -> None:
        """Raises `CheckpointCorruptError` unless the pieces cover the array once."""
        covered = sum(int(np.prod(b[:, 1] - b[:, 0])) for _, _, b in self.pieces)
        total = int(np.prod(self.shape, dtype=np.int64))
        if covered != total:
            files = sorted({str(f) for f, _, _ in self.pieces})
            raise CheckpointCorruptError(
                f"Variable {self.name!r} (shape {self.shape}) is saved in shards that "
                f"cover {covered} of its {total} elements ({', '.join(files)}): a "
                "process's shards file is missing or damaged. Resume from another "
                "checkpoint."
            )

    def read(self, index: tuple) -> np.ndarray:
        """The region `index` (a tuple of slices, or () for a scalar) as a numpy array."""
        region = [s.indices(n)[:2] for s, n in zip(index, self.shape)]
        region += [(0, n) for n in self.shape[len(region) :]]
        lo = np.array([r[0] for r in region], dtype=np.int64).reshape(-1)
        hi = np.array([r[1] for r in region], dtype=np.int64).reshape(-1)
        out = np.empty(tuple(hi - lo), dtype=np.uint16 if self.dtype == _BFLOAT16 else self.dtype)
        for file, dataset, bounds in self.pieces:
            start, stop = np.maximum(lo, bounds[:, 0]), np.minimum(hi, bounds[:, 1])
            if np.any(start >= stop):
                continue
            source = tuple(slice(a, b) for a, b in zip(start - bounds[:, 0], stop - bounds[:, 0]))
            target = tuple(slice(a, b) for a, b in zip(start - lo, stop - lo))
            # Checked whole by `read_index`; here only the dataset read, once per region.
            with hdf5.open_checked(self.root, _relative(file, self.root), scan=False) as f:
                data = hdf5.checked_dataset(f, dataset, file)
                _check_piece(data, self, self.shape, self.dtype, bounds)
                out[target] = data[source]
        if self.dtype == _BFLOAT16:
            import ml_dtypes

            out = out.view(ml_dtypes.bfloat16)
        return out


def _relative(file: Path, root: Path) -> str:
    return Path(file).relative_to(root).as_posix()


def _check_piece(dataset, variable: ShardedVariable, shape, dtype: str, bounds) -> None:
    """Raises `ValueError` unless the dataset is a number array of its bounds' extent
    inside the variable, of the variable's dtype (read regions stay bounded)."""
    problem = hdf5.numeric_problem(dataset)
    if problem:
        raise ValueError(f"dataset {dataset.name}: {problem}")
    if variable.shape != shape or variable.dtype != dtype or len(bounds) != len(shape):
        raise ValueError(f"dataset {dataset.name} does not fit {variable.name}")
    if np.any(bounds[:, 0] < 0) or np.any(bounds[:, 1] > np.asarray(shape, dtype=np.int64)):
        raise ValueError(f"dataset {dataset.name} has bounds {bounds.tolist()} outside {shape}")
    extent = tuple(int(n) for n in bounds[:, 1] - bounds[:, 0])
    stored = np.dtype(np.uint16) if dtype == _BFLOAT16 else np.dtype(dtype)
    if tuple(dataset.shape) != extent or dataset.dtype != stored:
        raise ValueError(
            f"dataset {dataset.name} is {tuple(dataset.shape)}/{dataset.dtype}, its bounds "
            f"say {extent}/{stored}"
        )


def read_index(root: Path) -> dict[tuple[str, str], ShardedVariable]:
    """`{(path, key): ShardedVariable}` for every sharded variable of a checkpoint.

    Reads only the files' metadata; the data is read region by region later.
    """
    variables: dict[tuple[str, str], ShardedVariable] = {}
    for file in shard_files(root):
        try:
            with hdf5.open_checked(root, _relative(file, root)) as f:
                for dataset in f.values():
                    if not isinstance(dataset, h5py.Dataset):
                        raise ValueError(f"{dataset.name} is not a dataset")
                    attrs = dataset.attrs
                    where = (str(attrs["path"]), str(attrs["key"]))
                    shape = tuple(int(n) for n in attrs["shape"])
                    dtype = str(attrs["dtype"])
                    variable = variables.setdefault(
                        where, ShardedVariable(*where, shape, dtype, Path(root))
                    )
                    bounds = np.asarray(attrs["bounds"], dtype=np.int64).reshape(-1, 2)
                    _check_piece(dataset, variable, shape, dtype, bounds)
                    variable.pieces.append((file, dataset.name, bounds))
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise CheckpointCorruptError(
                f"Cannot read the shards file {file} ({type(e).__name__}: {e}). The "
                "checkpoint is damaged; resume from another one."
            ) from e
    for variable in variables.values():
        variable.check_complete()
    return variables
