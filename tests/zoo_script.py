"""Runs the zoo's jobs (tests/zoo_jobs.py) in one process, for tests/test_zoo.py.

    python tests/zoo_script.py reference --root R [--tag ref] [--cases C,...]
    python tests/zoo_script.py kill --root R --cases C
    python tests/zoo_script.py resume --root R [--cases C,...]

The backend is KERAS_BACKEND's; without --cases, every job of that backend.

- `reference` trains each job uninterrupted, one after the other, in R/TAG/CASE/
  and writes R/TAG/CASE.npz (its final state).
- `kill` trains one job in R/run/CASE/ until the job's Kill point SIGKILLs this
  process; a job that ends otherwise writes R/kill/CASE.error and exits 3.
- `resume` reruns each job in its R/run/CASE/ (FullStateResume continues from the
  newest backup) and writes R/resume/CASE.npz.

A job that raises writes CASE.error (the traceback) instead of CASE.npz, and the
next job runs. Before each job: `keras.backend.clear_session()` and
`keras.utils.set_random_seed`, so a job trains the same in any process.

The final state: every model weight, every variable of every optimizer the model
holds (`model.optimizer` and optimizers kept as attributes, as a GAN does), every
SeedGenerator's state; and, as JSON, the variable paths, each fit's history and
resume point, the job's extra texts and the warnings it raised.
"""

import argparse
import json
import os
import sys
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_resume as kr  # noqa: E402
from keras_resume import backend  # noqa: E402
from tests import zoo_jobs  # noqa: E402

SEED = 1234


class Context:
    """What a job trains through: one CheckpointDirectory for all its fits."""

    def __init__(self, job, workdir: Path, kill: bool):
        self.job = job
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kill = kill
        self.ckpt = kr.CheckpointDirectory(workdir / "run")
        self.histories = []
        self.resumed = []  # per fit: [epoch, step] FullStateResume continued from, or None

    def path(self, name):
        return str(self.workdir / name)

    def fit(self, model, *, monitor=None, track=(), callbacks=(), **kwargs):
        fit_index = len(self.histories)
        every = self.job.every
        cbs = self.ckpt.callbacks(every_n_steps=every, monitor=monitor, track=list(track))
        cbs += list(callbacks)
        kill = self.job.kill
        if self.kill and kill.fit == fit_index:
            cbs.append(zoo_jobs.KillCallback(kill.epoch, kill.batch, self.ckpt))
        history = model.fit(callbacks=cbs, verbose=0, **kwargs)
        self.histories.append({"epoch": history.epoch, **_plain(history.history)})
        resume = next(c for c in cbs if isinstance(c, kr.FullStateResume)).resumed_from
        self.resumed.append(None if resume is None else [resume.initial_epoch, resume.initial_step])
        return history


def _plain(value):
    """History values as JSON: floats, exactly (repr round-trips)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return float(np.asarray(value))


def optimizers_of(model):
    """`model.optimizer`, then optimizers kept as attributes (by attribute name)."""
    found = [model.optimizer] if model.optimizer is not None else []
    for name in sorted(vars(model)):
        value = vars(model)[name]
        if isinstance(value, keras.optimizers.Optimizer) and all(value is not o for o in found):
            found.append(value)
    return found


def final_state(model):
    arrays, paths = {}, {}

    def put(key, path, value):
        arrays[key] = value
        paths[key] = path

    for i, v in enumerate(model.weights):
        put(f"model/{i:03d}", v.path, backend.to_numpy(v))
    for j, optimizer in enumerate(optimizers_of(model)):
        for i, v in enumerate(optimizer.variables):
            if isinstance(v, keras.Variable):
                put(f"optimizer{j}/{i:03d}", v.path, backend.to_numpy(v))
            else:  # with gradient accumulation, `iterations` is a computed tensor
                put(f"optimizer{j}/{i:03d}", "(tensor)", keras.ops.convert_to_numpy(v))
    for i, (name, generator) in enumerate(backend.seed_generators(model)):
        put(f"seed/{i:03d}", name, backend.to_numpy(generator.state))
    return arrays, paths


def run_job(job, workdir: Path, out: Path, kill: bool):
    keras.backend.clear_session()
    keras.utils.set_random_seed(SEED)
    ctx = Context(job, workdir, kill)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = job.build(ctx)
    model, extras = result if isinstance(result, tuple) else (result, {})
    arrays, paths = final_state(model)
    said = sorted({f"{w.category.__name__}: {w.message}"[:400] for w in caught})
    meta = {
        "paths": paths,
        "histories": ctx.histories,
        "extras": extras,
        "warnings": said,
        "resumed": ctx.resumed,
    }
    np.savez(out, meta=np.array(json.dumps(meta)), **arrays)


def write_error(path: Path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["reference", "kill", "resume"])
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--tag", default="ref")
    parser.add_argument("--cases", default=None, help="comma-separated Job.case names")
    args = parser.parse_args(argv)
    name = keras.backend.backend()
    if args.cases:
        jobs = [zoo_jobs.find(c) for c in args.cases.split(",")]
    else:
        jobs = zoo_jobs.jobs_for(name)
    assert all(j.backend == name for j in jobs), f"KERAS_BACKEND is {name}"
    if args.mode == "kill":
        (job,) = jobs
        try:
            run_job(job, args.root / "run" / job.case, args.root / "kill.npz", kill=True)
            text = "the job finished without reaching its kill point"
        except Exception:
            text = traceback.format_exc()
        write_error(args.root / "kill" / f"{job.case}.error", text)
        return 3
    tag = args.tag if args.mode == "reference" else "resume"
    for job in jobs:
        workdir = args.root / ("run" if args.mode == "resume" else tag) / job.case
        out = args.root / tag / f"{job.case}.npz"
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            run_job(job, workdir, out, kill=False)
        except Exception:
            write_error(out.with_suffix(".error"), traceback.format_exc())
    return 0


if __name__ == "__main__":
    sys.exit(main())
