"""Input pipelines of real jobs (issue 14, A4/A7/A9): what each mechanism promises.

SIGKILLed jobs (tests/jobs_data_script.py, one chain of processes per
backend): a PyDataset read by 2 worker threads and (not on JAX, which os.fork
can deadlock) by 2 worker processes (its
enqueuer begins every epoch with batches prefetched in the one before, see
`backend.EnqueuerWatch`), and a `tf.data` pipeline shuffled, `.cache()`d and
then augmented by Keras layers mapped over it (their SeedGenerators live
outside the model). Each is killed at global step 7 (epoch 2, step 3), resumed
from the backup at step 6, and every variable, pipeline SeedGenerator and the
history must be `numpy.array_equal` to an uninterrupted run's. The chain's
first process runs the first job's reference and kills it; each next process
resumes the job killed before it, then runs and kills the next one.

In-process tests check the warnings (a Python generator named; a
`.cache(filename)` named; augmentation layers nothing captures named, and
`RngCapture(extra=...)` capturing them) and the schema of the new fields.
"""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_resume as kr
from keras_resume import backend
from keras_resume.errors import CheckpointCorruptError
from keras_resume.state.bundle import StateBundle
from keras_resume.state.schema import check_bundle
from tests.conftest import BACKENDS, SUBPROCESS_TIMEOUT, script_env, tiny_data, tiny_model
from tests.jobs_data_script import JOBS

SCRIPT = Path(__file__).parent / "jobs_data_script.py"
# JAX is multithreaded and says os.fork() can deadlock it: a process-forking PyDataset
# on JAX hung once in this suite (a SUBPROCESS_TIMEOUT), so it runs on the others only.
JOBS_OF = {b: tuple(j for j in JOBS if j != "processes" or b != "jax") for b in BACKENDS}
_CHAINS: dict = {}


def _run(backend_name, args, killed):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        env=script_env(backend_name),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    expected = -9 if killed else 0
    assert proc.returncode == expected, (
        f"{args}: expected rc {expected}, got {proc.returncode}\n{proc.stderr[-4000:]}"
    )


def chain(tmp_path_factory, backend_name) -> Path:
    """Runs the backend's chain of processes once per session; returns its root."""
    if backend_name not in _CHAINS:
        root = tmp_path_factory.mktemp(f"jobs-data-{backend_name}")
        try:
            previous = None
            for job in JOBS_OF[backend_name]:  # PyDataset jobs (which fork) before tf.data
                resume = ["--resume", previous] if previous else []
                args = ["--root", root, *resume, "--reference", job, "--kill", job]
                _run(backend_name, args, True)
                previous = job
            _run(backend_name, ["--root", root, "--resume", previous], False)
            _CHAINS[backend_name] = root
        except BaseException as e:  # one failure, reported by every test of the backend
            _CHAINS[backend_name] = e
    if isinstance(_CHAINS[backend_name], BaseException):
        raise _CHAINS[backend_name]
    return _CHAINS[backend_name]


def _arrays(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _result(root, name) -> dict:
    return json.loads((root / name / "result.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "backend_name, job",
    [
        pytest.param(b, j, marks=pytest.mark.xdist_group(f"jobs-data-{b}"), id=f"{b}-{j}")
        for b in BACKENDS
        for j in JOBS_OF[b]
    ],
)
def test_pipeline_job_sigkilled_mid_epoch_resumes_bit_identical(
    tmp_path_factory, backend_name, job
):
    root = chain(tmp_path_factory, backend_name)
    reference = _arrays(root / f"ref-{job}" / "out.npz")
    resumed = _arrays(root / f"run-{job}" / "out.npz")
    assert sorted(reference) == sorted(resumed)
    differ = [k for k in reference if not np.array_equal(reference[k], resumed[k])]
    assert differ == [], f"{len(differ)} of {len(reference)} arrays differ: {differ[:5]}"
    # Resumed mid-epoch 2, where the PyDataset's queue held batches of epoch 1
    # and the cache held epoch 1's order, from the backup at step 6.
    assert _result(root, f"run-{job}")["resumes"] == [[1, 2, 6]]
    if job == "tfdata":
        # The pipeline's SeedGenerators moved on: the state compared is not the initial one.
        moved = [k for k in reference if k.startswith("pipeline/") and reference[k][1] != 0]
        assert moved, sorted(reference)
    ours = [w for w in _result(root, f"run-{job}")["fit_warnings"] if "keras_resume" in w]
    assert ours == []


# --- warnings, in this process ----------------------------------------------------


def _fit_warnings(x, ckpt, callbacks=(), **kwargs):
    model = tiny_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(
            x, epochs=1, verbose=0, callbacks=[kr.FullStateResume(ckpt), *callbacks], **kwargs
        )
    return [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]


def _batches():
    x, y = tiny_data(8)
    while True:
        yield x[:4], y[:4]


def test_python_generator_warning_names_the_generator_not_steps_per_epoch(tmp_path):
    found = _fit_warnings(_batches(), tmp_path / "run", steps_per_epoch=2)
    ours = [w for w in found if "keras_resume cannot" in w]
    assert len(ours) == 1, found
    line = _batches.__code__.co_firstlineno
    assert f"_batches ({__file__}:{line})" in ours[0]
    assert "steps_per_epoch" not in ours[0]
    assert "PyDataset" in ours[0]


def test_file_cache_warning_names_the_file(tmp_path):
    import tensorflow as tf

    x, y = tiny_data(8)
    cache = str(tmp_path / "cache" / "train")
    (tmp_path / "cache").mkdir()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4).cache(cache)
    found = [w for w in _fit_warnings(ds, tmp_path / "run") if "cache" in w]
    assert len(found) == 1 and repr(cache) in found[0] and "lockfile" in found[0], found


def test_memory_cache_and_pipeline_seed_generators_are_found(tmp_path):
    import tensorflow as tf

    flip = keras.layers.RandomFlip("horizontal", name="found_flip")
    x = np.zeros((8, 2, 2, 1), "float32")
    ds = tf.data.Dataset.from_tensor_slices(x).batch(4).cache().map(flip).map(lambda t: t + 1)
    assert backend.cache_ops(ds) == [""]
    generators = backend.seed_generators_reading(
        backend.pipeline_variables(ds), backend.live_seed_generators()
    )
    assert [g.state.path for g in generators] == [
        g.state.path for g in backend.layer_seed_generators(flip)[-1:]
    ]


class _AugmentingSequence(keras.utils.PyDataset):
    """A PyDataset that augments in `__getitem__` with a layer outside the model."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer
        self.x, self.y = tiny_data(8)

    def __len__(self):
        return 2

    def __getitem__(self, index):
        rows = slice(index * 4, index * 4 + 4)
        return np.asarray(self.layer(self.x[rows][:, :, None])).reshape(4, 3), self.y[rows]


def test_uncaptured_augmentation_layer_is_named_and_extra_captures_it(tmp_path):
    layer = keras.layers.RandomFlip("horizontal", name="unreached_flip")
    data = _AugmentingSequence(layer)
    ckpt = kr.CheckpointDirectory(tmp_path / "run")
    found = [w for w in _fit_warnings(data, ckpt, [kr.RngCapture(ckpt)]) if "unreached_flip" in w]
    assert len(found) == 1 and "RngCapture(ckpt, extra=" in found[0], found
    ckpt2 = kr.CheckpointDirectory(tmp_path / "run2")
    backup = kr.StepBackup(ckpt2, every_n_steps=1, background=False)
    found = _fit_warnings(data, ckpt2, [kr.RngCapture(ckpt2, extra=[layer]), backup])
    assert [w for w in found if "unreached_flip" in w] == []
    bundle = StateBundle.read(ckpt2.checkpoint_path(ckpt2.read_manifest()["checkpoints"][-1]))
    names = bundle.meta["data_seed_generators"]
    assert names == [g.state.path for g in backend.layer_seed_generators(layer)]
    saved = bundle.get_arrays("data_seed_generators")
    assert all(v.shape == (2,) for v in saved)


@pytest.mark.parametrize(
    "meta, key",
    [
        ({"data_seed_generators": ["a"]}, "data_seed_generators lists 1 arrays"),
        ({"data_seed_generators": [3]}, "data_seed_generators[0]"),
        ({"data": {"enqueuer_ready": [[0]]}}, "data.enqueuer_ready[0] must have 2 items"),
        ({"data": {"enqueuer_ready": [[0, -5]]}}, "data.enqueuer_ready[0][1]=-5"),
    ],
)
def test_malformed_pipeline_fields_are_named(tmp_path, meta, key):
    if "data" in meta:
        meta["data"].update(tracked=True, mid_epoch=False, iterators_created=1, epoch_end_rng=[])
    with pytest.raises(CheckpointCorruptError) as info:
        check_bundle(StateBundle(meta), tmp_path)
    assert key in str(info.value)


def test_rng_capture_extra_refuses_what_is_not_a_generator(tmp_path):
    with pytest.raises(TypeError, match=r"received 'flip' \(str\)"):
        kr.RngCapture(tmp_path / "run", extra=["flip"])
