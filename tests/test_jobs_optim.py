"""Optimizers of real jobs (issue 14, A1/A2/A8): SIGKILLed mid-epoch, resumed bit for bit.

tests/jobs_optim_script.py holds the jobs: gradient accumulation with EMA,
mixed precision (a LossScaleOptimizer) and keras.io's DCGAN (a
custom `train_step` with two optimizers as attributes, never called before
`fit`). Per backend one chain of processes runs them all: the first runs
every job uninterrupted (the references) and then starts the first job,
SIGKILLed at global step 11 (epoch 2 of 2, step 5; the last backup is at
step 9, between two accumulated updates); each next process resumes the job killed
before it and starts the next one, killed the same way; the last resumes the
last job. Every variable of every optimizer, model and SeedGenerator must be
`numpy.array_equal` to the reference's, and the history equal.

The GAN runs on TensorFlow and PyTorch. On JAX a `train_step` is stateless:
`fit` hands it the variables of `model.optimizer` only, so a GAN with two
optimizers of its own needs a train_step written against JAX's stateless API
that carries both optimizers' variables itself; keras.io has no such example
and it is not tested here.
"""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

import keras_resume as kr
from keras_resume.directory import CheckpointDirectory
from keras_resume.errors import CheckpointMismatchError
from tests.conftest import (
    BACKENDS,
    SUBPROCESS_TIMEOUT,
    all_variables,
    script_env,
    tiny_data,
    tiny_model,
)
from tests.jobs_optim_script import GAN_BACKENDS, JOBS

SCRIPT = Path(__file__).parent / "jobs_optim_script.py"
JOBS_OF = {b: tuple(j for j in JOBS if j != "gan" or b in GAN_BACKENDS) for b in BACKENDS}
_CHAINS: dict = {}


def _run(backend, args, killed):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        env=script_env(backend),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    if killed:
        assert proc.returncode == -9, (
            f"expected SIGKILL, got {proc.returncode}\n{proc.stderr[-4000:]}"
        )
    else:
        assert proc.returncode == 0, f"job script failed:\n{proc.stderr[-4000:]}"


def chain(tmp_path_factory, backend) -> Path:
    """Runs the backend's chain of processes once per session; returns its root."""
    if backend not in _CHAINS:
        root = tmp_path_factory.mktemp(f"jobs-optim-{backend}")
        jobs = JOBS_OF[backend]
        try:
            _run(backend, ["--root", root, "--reference", ",".join(jobs), "--kill", jobs[0]], True)
            for done, nxt in zip(jobs, jobs[1:]):
                _run(backend, ["--root", root, "--resume", done, "--kill", nxt], True)
            _run(backend, ["--root", root, "--resume", jobs[-1]], False)
            _CHAINS[backend] = root
        except BaseException as e:  # one failure, reported by every test of the backend
            _CHAINS[backend] = e
    if isinstance(_CHAINS[backend], BaseException):
        raise _CHAINS[backend]
    return _CHAINS[backend]


def _result(root, name) -> dict:
    return json.loads((root / name / "result.json").read_text(encoding="utf-8"))


def _arrays(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _names(path) -> list[str]:
    found = []
    with h5py.File(path, "r") as f:
        f.visit(found.append)
    return sorted(found)


def _cases(jobs_filter=lambda backend, job: True):
    return [
        pytest.param(b, j, marks=pytest.mark.xdist_group(f"jobs-optim-{b}"), id=f"{b}-{j}")
        for b in BACKENDS
        for j in JOBS_OF[b]
        if jobs_filter(b, j)
    ]


@pytest.mark.parametrize("backend, job", _cases())
def test_job_sigkilled_mid_epoch_resumes_bit_identical(tmp_path_factory, backend, job):
    root = chain(tmp_path_factory, backend)
    reference = _arrays(root / f"ref-{job}" / "out.npz")
    resumed = _arrays(root / f"run-{job}" / "out.npz")
    assert sorted(reference) == sorted(resumed)
    differ = [k for k in reference if not np.array_equal(reference[k], resumed[k])]
    assert differ == [], f"{len(differ)} of {len(reference)} arrays differ: {differ[:5]}"
    # It resumed mid-epoch, from the backup at global step 9 (epoch 2, step 3):
    # with gradient_accumulation_steps=2, one batch's gradients accumulated.
    resumes = CheckpointDirectory(root / f"run-{job}" / "run").read_manifest()["resumes"]
    assert [(r["epoch"], r["step_in_epoch"], r["global_step"]) for r in resumes] == [(1, 3, 9)]
    for name in (f"ref-{job}", f"run-{job}"):
        skipped = [w for w in _result(root, name)["fit_warnings"] if "Skipping variable" in w]
        assert skipped == []


@pytest.mark.parametrize("backend, job", _cases(lambda b, j: j.startswith("accum")))
def test_global_step_counts_batches_not_accumulated_updates(tmp_path_factory, backend, job):
    root = chain(tmp_path_factory, backend)
    # 12 batches, 6 optimizer updates: backups every 3 batches, the last two kept.
    for name in (f"ref-{job}", f"run-{job}"):
        assert _result(root, name)["global_steps"] == [9, 12]


@pytest.mark.parametrize("backend, job", _cases(lambda b, j: j != "gan"))
def test_backup_file_has_the_structure_save_weights_writes(tmp_path_factory, backend, job):
    root = chain(tmp_path_factory, backend)
    for name in (f"ref-{job}", f"run-{job}"):
        result = _result(root, name)
        backup = _names(result["backup"])
        assert backup == _names(root / name / "saved.weights.h5")
        if job == "mixed":
            assert "optimizer/inner_optimizer/vars" in backup
            assert [p for p, _ in result["optimizers"]] == [
                "optimizer",
                "optimizer/inner_optimizer",
            ]
        assert result["load_warnings"] == []  # model.load_weights(backup file) warns nothing


@pytest.mark.parametrize("backend, job", _cases(lambda b, j: j == "gan"))
def test_gan_checkpoint_records_each_optimizer_and_what_it_was_built_on(
    tmp_path_factory, backend, job
):
    root = chain(tmp_path_factory, backend)
    manifest = CheckpointDirectory(root / f"run-{job}" / "run").read_manifest()
    (fp,) = {json.dumps(f, sort_keys=True) for f in manifest["fingerprints"].values()}
    fp = json.loads(fp)
    by_path = {r["path"]: r for r in fp["optimizers"]}
    assert sorted(by_path) == ["d_optimizer", "g_optimizer", "optimizer"]
    paths = [v[0] for v in fp["variables"]]
    built_on = {p: [paths[i] for i in r["built_on"] or []] for p, r in by_path.items()}
    assert built_on["d_optimizer"] == [p for p in paths if p.startswith("discriminator/")]
    assert built_on["g_optimizer"] == [p for p in paths if p.startswith("generator/")]
    if backend == "tensorflow":
        # super().compile()'s default RMSprop is never used, and was never built:
        # the restore did not build it either (else the fingerprints would differ).
        assert by_path["optimizer"]["built"] is False


# --- In this process (its backend), no subprocess ------------------------------------


def _trained(tmp_path, optimizer="adam"):
    model = tiny_model(optimizer=optimizer)
    x, y = tiny_data(16)
    keras.utils.set_random_seed(0)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[kr.StepBackup(tmp_path / "run")])
    return model


def test_checkpoint_without_optimizer_records_still_restores(tmp_path):
    """A backup written before the fingerprint listed its optimizers restores as before."""
    model = _trained(tmp_path)
    ckpt = CheckpointDirectory(tmp_path / "run")

    def drop_records(manifest):
        for fp in manifest["fingerprints"].values():
            fp.pop("optimizers")

    ckpt.update_manifest(drop_records)
    fresh = tiny_model()  # its optimizer is not built: built on the trainable variables
    kr.restore(fresh, ckpt)
    assert all_variables(fresh) and all(
        np.array_equal(a, b) for a, b in zip(all_variables(fresh), all_variables(model))
    )
    assert len(all_variables(fresh)) == len(all_variables(model))


def test_restore_names_an_optimizer_the_model_lacks(tmp_path):
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        _trained(tmp_path)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    plain = tiny_model()
    plain.optimizer.build(plain.trainable_variables)
    with pytest.raises(CheckpointMismatchError, match="optimizer 'optimizer/inner_optimizer'"):
        kr.restore(plain, tmp_path / "run")


@pytest.mark.parametrize(
    "record",
    [
        "optimizer",
        {"path": "optimizer", "class": "Adam", "variables": [], "built": 1},
        {"path": "optimizer", "class": "Adam", "variables": [[1]], "built": True},
        {"path": "optimizer", "class": "Adam", "variables": [], "built": True, "built_on": [-1]},
    ],
)
def test_malformed_optimizer_record_rejected(record):
    from keras_resume import manifest as mf
    from keras_resume.errors import ManifestError

    manifest = mf.new_manifest()
    fp = {"variables": [], "optimizer_variables": [], "optimizer": None, "optimizers": [record]}
    manifest["fingerprints"]["fp"] = fp
    with pytest.raises(ManifestError, match=r"fingerprints\['fp'\]\.optimizers\[0\]"):
        mf.validate(manifest)
