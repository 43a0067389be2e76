"""Kill torture: SIGKILL a training process at random instants until it finishes.

keras_resume target: StepBackup(every_n_steps=1), so kills land inside saves
too. After every kill the newest committed backup must verify, the next run
must resume exactly from it (nothing lost but the steps after that commit),
and the final weights must be `numpy.array_equal` to an uninterrupted run.

keras target: the same model with Keras's BackupAndRestore(save_freq=1);
after every kill we count whether its directory still loads.

    python benchmarks/torture.py --kills 300 --json torture.json
    python benchmarks/torture.py --target keras --kills 100
    python benchmarks/torture.py --target keras --double-checkpoint --kills 100
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
STEPS_PER_EPOCH, BATCH = 24, 8
MAX_DELAY_S = 0.3  # after the worker reports it is training


def worker(target: str, run_dir: str, out: str, epochs: int, double: bool) -> None:
    import keras
    import numpy as np

    import keras_resume as kr

    keras.utils.set_random_seed(3)
    rng = np.random.RandomState(0)
    x = rng.normal(size=(STEPS_PER_EPOCH * BATCH, 16)).astype("float32")
    y = (x[:, :8].sum(axis=1) > 0).astype("float32")
    model = build_model()
    if target == "keras_resume":
        callbacks = kr.CheckpointDirectory(run_dir).callbacks(every_n_steps=1, monitor=None, keep=2)
    elif target == "keras":
        callbacks = [
            keras.callbacks.BackupAndRestore(
                run_dir, save_freq=1, double_checkpoint=double, delete_checkpoint=False
            )
        ]
    else:
        callbacks = []

    class Ready(keras.callbacks.Callback):
        """Says when the first step is trained, so kills land in training and saves,
        not in the interpreter's start, the restore, or tf.function tracing."""

        def on_train_begin(self, logs=None):
            self.start, self.said = int(model.optimizer.iterations.numpy()), False

        def on_train_batch_end(self, batch, logs=None):
            if not self.said and int(model.optimizer.iterations.numpy()) > self.start:
                print("READY", flush=True)
                self.said = True

    ready = Ready()
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=epochs,
        shuffle=True,
        verbose=0,
        callbacks=[*callbacks, ready],
    )
    np.savez(out, *[np.array(v.numpy()) for v in model.weights + model.optimizer.variables])


def _start(target, run_dir, out, epochs, double=False):
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        target,
        str(run_dir),
        str(out),
        str(epochs),
        str(int(double)),
    ]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )


def _wait_ready(proc) -> bool:
    line = proc.stdout.readline()
    return line.strip() == "READY"


def torture_keras_resume(kills: int, seed: int, workdir: Path, progress=print) -> dict:
    import numpy as np

    import keras_resume as kr

    epochs = max(3, math.ceil(kills * 8 / STEPS_PER_EPOCH) + 2)
    rand = random.Random(seed)
    ref = _start("none", workdir / "ref", workdir / "ref.npz", epochs)
    assert ref.wait(timeout=900) == 0, "the uninterrupted run failed"
    run_dir, out = workdir / "run", workdir / "out.npz"
    ckpt = kr.CheckpointDirectory(run_dir)
    done, start = 0, time.monotonic()
    expected_step, resumes_seen, resumed, resume_steps = None, 0, 0, []
    while True:
        proc = _start("keras_resume", run_dir, out, epochs)
        assert _wait_ready(proc), "worker did not start training"
        resumes = ckpt.read_manifest()["resumes"] if run_dir.exists() else []
        if expected_step is None:  # killed before any backup: a fresh start
            assert len(resumes) == resumes_seen, resumes
        else:  # resumed exactly from the newest committed backup seen after the kill
            assert len(resumes) == resumes_seen + 1, resumes
            assert resumes[-1]["global_step"] == expected_step, (resumes[-1], expected_step)
            resumed += 1
            resume_steps.append(expected_step)
        resumes_seen = len(resumes)
        if done >= kills:
            assert proc.wait(timeout=900) == 0, "the final run failed"
            break
        time.sleep(rand.uniform(0.0, MAX_DELAY_S))
        proc.kill()
        if proc.wait(timeout=60) == 0:
            break  # finished before the kill
        done += 1
        try:
            expected_step = ckpt.select("latest", verify=True)["global_step"]
        except kr.NoCheckpointError:
            expected_step = None
        if done % 25 == 0:
            progress(f"{done} kills, newest backup at step {expected_step}")
    final = np.load(out)
    reference = np.load(workdir / "ref.npz")
    identical = all(np.array_equal(final[k], reference[k]) for k in reference.files)
    return {
        "target": "keras_resume",
        "kills": done,
        "epochs": epochs,
        "total_steps": epochs * STEPS_PER_EPOCH,
        "bit_identical": identical,
        "resumed_from_newest_verified_backup": resumed,
        "resume_steps": resume_steps,
        "seconds": round(time.monotonic() - start, 1),
    }


def build_model():
    import keras

    model = keras.Sequential(
        [
            keras.Input((16,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy")
    return model


def torture_keras(kills: int, seed: int, workdir: Path, double: bool, progress=print) -> dict:
    import keras

    rand = random.Random(seed)
    unloadable, start = 0, time.monotonic()
    for i in range(kills):
        run_dir = workdir / f"keras-{i}"
        proc = _start("keras", run_dir, workdir / "unused.npz", 50, double)
        assert _wait_ready(proc), "worker did not start training"
        time.sleep(rand.uniform(0.0, MAX_DELAY_S))
        proc.kill()
        proc.wait(timeout=60)
        model = build_model()
        callback = keras.callbacks.BackupAndRestore(
            str(run_dir), save_freq=1, double_checkpoint=double
        )
        callback.set_model(model)
        try:
            callback.on_train_begin()  # what a rerun does first
        except Exception:  # noqa: BLE001 - any failure means the rerun cannot resume
            unloadable += 1
        if (i + 1) % 25 == 0:
            progress(f"{i + 1} kills, {unloadable} unloadable")
    return {
        "target": "keras BackupAndRestore" + (" (double_checkpoint)" if double else ""),
        "kills": kills,
        "unloadable": unloadable,
        "seconds": round(time.monotonic() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=25)
    parser.add_argument("--target", choices=["keras_resume", "keras"], default="keras_resume")
    parser.add_argument("--double-checkpoint", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.target == "keras_resume":
            result = torture_keras_resume(args.kills, args.seed, Path(tmp))
        else:
            result = torture_keras(args.kills, args.seed, Path(tmp), args.double_checkpoint)
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _, _, target, run_dir, out, epochs, double = sys.argv
        worker(target, run_dir, out, int(epochs), bool(int(double)))
    else:
        main()
