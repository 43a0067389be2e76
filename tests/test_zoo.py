"""The zoo: realistic jobs (tests/zoo_jobs.py), SIGKILLed mid-epoch, resumed, compared bit for bit.

Per backend, once per session (tests/zoo_script.py does the training):

1. one process trains every job of the backend uninterrupted, one after the other;
2. one process per job trains it with keras_resume's callbacks until the job's
   kill point, where the process SIGKILLs itself (mid-epoch: 2 steps after the
   newest step backup; or inside on_epoch_end);
3. one process reruns every killed job in its directory, so that FullStateResume
   continues it, to the end.

Each case then asserts that every model weight, every variable of every
optimizer and every SeedGenerator state is `numpy.array_equal` to the
uninterrupted run's, and that the per-epoch logs and the job's extra files (a
CSV log) are equal. For a case that is not exact, a second uninterrupted run
(the determinism control) says whether the job is deterministic at all; its
verdict is in the failure message.

Set KERAS_RESUME_ZOO_REPORT=FILE to have each backend's verdicts appended to
FILE (JSON lines). KERAS_RESUME_ZOO_CASES=name,... (with `-k`) trains only those
jobs: a developer's quick run; every other case then fails.
"""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests import zoo_jobs
from tests.conftest import BACKENDS, script_env

ZOO_SCRIPT = Path(__file__).parent / "zoo_script.py"
TIMEOUT = 600
EXACT = "exact"


# One compute thread per process: the processes run two at a time on a 2-core
# machine, and idle pool threads that spin cost CPU time (about 17% measured).
ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
}


def _script(backend, *args):
    return subprocess.Popen(
        [sys.executable, str(ZOO_SCRIPT), *map(str, args)],
        env={**script_env(backend), **ONE_THREAD},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc):
    try:
        _, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
    return proc.returncode, stderr


def _result(path: Path):
    """(arrays, meta) of a job's final state, or the last line of its traceback."""
    if path.with_suffix(".error").exists():
        lines = path.with_suffix(".error").read_text().strip().splitlines()
        return lines[-1] if lines else "(empty traceback)"
    if not path.exists():
        return "no result written"
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != "meta"}
        meta = json.loads(str(data["meta"]))
    return arrays, meta


def compare(expected, got) -> str:
    """What differs between two final states; "" if nothing does."""
    arrays_a, meta_a = expected
    arrays_b, meta_b = got
    if sorted(arrays_a) != sorted(arrays_b):
        return f"different variables: {sorted(set(arrays_a) ^ set(arrays_b))[:4]}"
    problems = []
    renamed = [k for k in arrays_a if meta_a["paths"][k] != meta_b["paths"][k]]
    if renamed:
        first = renamed[0]
        problems.append(
            f"{len(renamed)} variable paths differ ({meta_a['paths'][first]!r} uninterrupted, "
            f"{meta_b['paths'][first]!r} resumed)"
        )
    differ = [k for k in arrays_a if not np.array_equal(arrays_a[k], arrays_b[k])]
    if differ:
        dw = max(
            float(np.max(np.abs(arrays_a[k].astype("float64") - arrays_b[k].astype("float64"))))
            if arrays_a[k].shape == arrays_b[k].shape
            else float("inf")
            for k in differ
        )
        names = [meta_a["paths"][k] for k in differ[:3]]
        problems.append(
            f"differs: {len(differ)} of {len(arrays_a)} variables, max|dw| {dw:.3g} {names}"
        )
    if meta_a["histories"] != meta_b["histories"]:
        problems.append("history differs")
    if meta_a["extras"] != meta_b["extras"]:
        problems.append(f"extras differ: {sorted(meta_a['extras'])}")
    return "; ".join(problems)


class Zoo:
    """One backend's three stages, run once; then the verdict of each case."""

    def __init__(self, backend, root: Path):
        self.backend, self.root = backend, root
        self.jobs = zoo_jobs.jobs_for(backend)
        only = os.environ.get("KERAS_RESUME_ZOO_CASES")  # a developer's quick run: a,b,...
        if only:
            self.jobs = [j for j in self.jobs if j.name in only.split(",")]
        self.verdicts, self.controls, self.warnings = {}, {}, {}

    def run(self):
        root, backend = self.root, self.backend
        reference = _script(backend, "reference", "--root", root)
        with ThreadPoolExecutor(1) as pool:  # with the reference process: 2 at a time
            killed = dict(zip(self.jobs, pool.map(self._kill, self.jobs)))
        ref_rc, ref_err = _finish(reference)
        assert ref_rc == 0, f"reference process failed:\n{ref_err[-3000:]}"
        died = [j for j in self.jobs if killed[j] is None]
        if died:
            rc, err = _finish(_script(backend, "resume", "--root", root, "--cases", _names(died)))
            assert rc == 0, f"resume process failed:\n{err[-3000:]}"
        for job in self.jobs:
            self.verdicts[job.case] = self._verdict(job, killed[job])
        failing = [j for j in self.jobs if self.verdicts[j.case] != EXACT]
        if failing:
            self._determinism_control(failing)
        self._report()
        return self

    def _kill(self, job):
        """None if the process died by SIGKILL at the kill point, else what happened."""
        rc, stderr = _finish(
            _script(self.backend, "kill", "--root", self.root, "--cases", job.case)
        )
        if rc == -9:
            return None
        error = self.root / "kill" / f"{job.case}.error"
        lines = error.read_text().strip().splitlines() if error.exists() else stderr.splitlines()
        return f"kill run ended with status {rc}: {lines[-1] if lines else ''}"

    def _verdict(self, job, kill_problem):
        expected = _result(self.root / "ref" / f"{job.case}.npz")
        if isinstance(expected, str):
            return f"crash in the uninterrupted run: {expected}"
        if kill_problem is not None:
            return kill_problem
        got = _result(self.root / "resume" / f"{job.case}.npz")
        if isinstance(got, str):
            return f"crash on resume: {got}"
        self.warnings[job.case] = got[1]["warnings"]
        problems = [p for p in (compare(expected, got), _resume_point(job, got[1])) if p]
        return "; ".join(problems) or EXACT

    def _determinism_control(self, failing):
        runnable = [j for j in failing if not self.verdicts[j.case].startswith("crash in the un")]
        if not runnable:
            return
        tag = ["--tag", "control", "--cases", _names(runnable)]
        rc, err = _finish(_script(self.backend, "reference", "--root", self.root, *tag))
        for job in runnable:
            first = _result(self.root / "ref" / f"{job.case}.npz")
            second = _result(self.root / "control" / f"{job.case}.npz")
            if isinstance(second, str):
                self.controls[job.case] = f"second uninterrupted run crashed: {second}"
            else:
                differ = compare(first, second)
                self.controls[job.case] = (
                    f"two uninterrupted runs differ: {differ}"
                    if differ
                    else "two uninterrupted runs are identical"
                )

    def _report(self):
        target = os.environ.get("KERAS_RESUME_ZOO_REPORT")
        if not target:
            return
        with open(target, "a") as f:
            for job in self.jobs:
                row = {
                    "case": job.name,
                    "backend": self.backend,
                    "item": job.item,
                    "verdict": self.verdicts[job.case],
                    "control": self.controls.get(job.case),
                    "warnings": self.warnings.get(job.case, []),
                }
                f.write(json.dumps(row) + "\n")


def _resume_point(job, meta) -> str:
    """ "" if the rerun continued where the case means it to; else what it did."""
    kill = job.kill
    resumed = meta["resumed"][kill.fit] if len(meta["resumed"]) > kill.fit else None
    if kill.batch == "end":
        return "" if resumed is not None else "the rerun did not resume"
    if resumed is None or resumed[0] != kill.epoch or not 0 < resumed[1] < kill.batch:
        return f"resumed at [epoch, step] {resumed}, not mid-epoch {kill.epoch}"
    return ""


def _names(jobs):
    return ",".join(j.case for j in jobs)


_ZOOS = {}


def zoo(backend, tmp_path_factory):
    if backend not in _ZOOS:
        _ZOOS[backend] = Zoo(backend, tmp_path_factory.mktemp(f"zoo-{backend}")).run()
    return _ZOOS[backend]


CASES = [
    pytest.param(
        job.backend, job.case, id=job.case, marks=pytest.mark.xdist_group(f"zoo-{job.backend}")
    )
    for backend in BACKENDS
    for job in zoo_jobs.jobs_for(backend)
]


def test_the_zoo_is_large_enough():
    assert len(zoo_jobs.JOBS) >= 25
    assert {j.backend for j in zoo_jobs.JOBS} == set(BACKENDS)
    assert len({j.case for j in zoo_jobs.JOBS}) == len(zoo_jobs.JOBS)


@pytest.mark.parametrize(("backend", "case"), CASES)
def test_sigkilled_job_resumes_bit_identical(tmp_path_factory, backend, case):
    run = zoo(backend, tmp_path_factory)
    assert case in run.verdicts, f"{case} was left out by KERAS_RESUME_ZOO_CASES"
    verdict = run.verdicts[case]
    control = run.controls.get(case, "")
    item = zoo_jobs.find(case).item
    assert verdict == EXACT, (
        f"{case}: {verdict}"
        + (f"\ndeterminism control: {control}" if control else "")
        + (f"\n(issue 14 item {item})" if item else "")
    )
