"""`StateBundle`: the non-weight state of one checkpoint, as JSON plus numpy arrays.

Written as `state.json` and `arrays.npz`; read back without pickle
(`numpy.load(..., allow_pickle=False)`), so a hostile file cannot run code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from keras_resume import storage
from keras_resume.errors import CheckpointCorruptError

STATE_FILE = "state.json"
ARRAYS_FILE = "arrays.npz"


class StateBundle:
    """Sections of JSON metadata (`meta[section]`) and arrays (`arrays["section/key"]`)."""

    def __init__(self, meta: dict | None = None, arrays: dict | None = None):
        self.meta = meta or {}
        self.arrays = arrays or {}

    def put_arrays(self, section: str, values: list) -> None:
        for i, value in enumerate(values):
            self.arrays[f"{section}/{i}"] = np.asarray(value)

    def get_arrays(self, section: str) -> list[np.ndarray]:
        prefix = f"{section}/"
        keys = [k for k in self.arrays if k.startswith(prefix)]
        return [self.arrays[f"{prefix}{i}"] for i in range(len(keys))]

    def write(self, directory: Path) -> list[str]:
        """Writes the bundle's files into `directory`; returns their names."""
        storage.write_new_file(
            directory / STATE_FILE, json.dumps(self.meta, indent=1, sort_keys=True)
        )
        with storage.new_file(directory / ARRAYS_FILE) as f:
            np.savez(f, **self.arrays)
        return [STATE_FILE, ARRAYS_FILE]

    @classmethod
    def read(cls, directory: Path) -> StateBundle:
        state_path, arrays_path = directory / STATE_FILE, directory / ARRAYS_FILE
        try:
            meta = json.loads(state_path.read_text(encoding="utf-8"))
            with np.load(arrays_path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except Exception as e:  # noqa: BLE001 - any failure to parse is damage
            # numpy and zipfile raise many types for damaged archives (EOFError,
            # zlib.error, NotImplementedError, BadZipFile, ...).
            raise CheckpointCorruptError(
                f"Cannot read checkpoint state in {directory} ({e}). The checkpoint "
                "is damaged; resume from another one."
            ) from e
        if not isinstance(meta, dict):
            raise CheckpointCorruptError(
                f"Checkpoint state {state_path} holds {type(meta).__name__}, expected "
                "a JSON object. The checkpoint is damaged; resume from another one."
            )
        return cls(meta, arrays)
