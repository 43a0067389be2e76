"""Shards files: saved in one layout, read back in any other, damage refused by name."""

import ml_dtypes
import numpy as np
import pytest

from keras_resume.backend import Shards
from keras_resume.errors import CheckpointCorruptError
from keras_resume.state import shards


def _save_in_blocks(root, full, rows, cols, processes=2):
    """Saves `full` as a rows x cols grid of blocks, dealt to `processes` files in turn."""
    r_edges = np.linspace(0, full.shape[0], rows + 1).astype(int)
    c_edges = np.linspace(0, full.shape[1], cols + 1).astype(int)
    owned = [[] for _ in range(processes)]
    n = 0
    for r0, r1 in zip(r_edges, r_edges[1:]):
        for c0, c1 in zip(c_edges, c_edges[1:]):
            owned[n % processes].append(([[r0, r1], [c0, c1]], full[r0:r1, c0:c1].copy()))
            n += 1
    for i, pieces in enumerate(owned):
        where = root if i == 0 else root / f"process-{i}"
        where.mkdir(exist_ok=True)
        entry = ("layers/dense", "0", Shards(full.shape, str(full.dtype), pieces))
        assert shards.write_shards([entry], where) == [shards.SHARDS_FILE]


def test_any_region_is_cut_from_the_saved_shards(tmp_path):
    full = np.arange(12 * 10, dtype="float32").reshape(12, 10)
    _save_in_blocks(tmp_path, full, rows=1, cols=2)  # two column halves, as ModelParallel
    [variable] = shards.read_index(tmp_path).values()
    assert variable.name == "layers/dense/0" and variable.shape == (12, 10)
    assert len(variable.pieces) == 2
    # Another layout: row quarters, a block across both halves, the whole array.
    for index in [
        (slice(0, 3), slice(None)),
        (slice(9, 12), slice(None)),
        (slice(2, 7), slice(3, 8)),
        (slice(None), slice(None)),
    ]:
        assert np.array_equal(variable.read(index), full[index])
    assert variable.read((slice(None), slice(None))).dtype == np.float32


def test_a_grid_of_blocks_from_three_processes_reassembles(tmp_path):
    full = np.random.RandomState(0).normal(size=(9, 7)).astype("float64")
    _save_in_blocks(tmp_path, full, rows=3, cols=2, processes=3)
    [variable] = shards.read_index(tmp_path).values()
    assert len(variable.pieces) == 6
    assert np.array_equal(variable.read((slice(None), slice(None))), full)
    assert np.array_equal(variable.read((slice(4, 5), slice(0, 7))), full[4:5])


def test_bfloat16_shards_round_trip_bit_exactly(tmp_path):
    full = np.random.RandomState(1).normal(size=(4, 6)).astype(ml_dtypes.bfloat16)
    _save_in_blocks(tmp_path, full, rows=2, cols=1)
    [variable] = shards.read_index(tmp_path).values()
    out = variable.read((slice(None), slice(None)))
    assert out.dtype == ml_dtypes.bfloat16
    assert np.array_equal(out.view(np.uint16), full.view(np.uint16))


def test_a_missing_process_file_is_refused_naming_the_variable(tmp_path):
    full = np.ones((4, 4), dtype="float32")
    _save_in_blocks(tmp_path, full, rows=1, cols=2)
    (tmp_path / "process-1" / shards.SHARDS_FILE).unlink()
    with pytest.raises(CheckpointCorruptError, match=r"'layers/dense/0'.*cover 8 of its 16"):
        shards.read_index(tmp_path)


def test_a_damaged_shards_file_is_refused_naming_the_file(tmp_path):
    _save_in_blocks(tmp_path, np.ones((4, 4), dtype="float32"), rows=1, cols=2)
    damaged = tmp_path / "process-1" / shards.SHARDS_FILE
    damaged.write_bytes(b"not an HDF5 file")
    with pytest.raises(CheckpointCorruptError, match=str(damaged)):
        shards.read_index(tmp_path)


def test_a_process_that_owns_no_shard_writes_no_file(tmp_path):
    assert shards.write_shards([], tmp_path) == []
    assert not (tmp_path / shards.SHARDS_FILE).exists()
    assert shards.read_index(tmp_path) == {}
