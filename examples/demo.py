"""keras_resume demo: kill a training process with SIGKILL, rerun it, compare.

Runs the same small training three ways, each in fresh processes:
  1. uninterrupted;
  2. with keras_resume, SIGKILLed mid-epoch, then rerun;
  3. with Keras's BackupAndRestore, SIGKILLed at the same step, then rerun.
and prints how far each interrupted run ends from the uninterrupted one.

    python examples/demo.py
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

EPOCHS, STEPS_PER_EPOCH, BATCH, EVERY, KILL_AT = 4, 16, 16, 10, 37


def train(mode: str, run_dir: str, out: str, kill_at: int | None) -> None:
    import keras
    import numpy as np

    import keras_resume as kr

    keras.utils.set_random_seed(7)
    rng = np.random.RandomState(0)
    x = rng.normal(size=(STEPS_PER_EPOCH * BATCH, 20)).astype("float32")
    y = (x[:, :10].sum(axis=1) > 0).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((20,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])

    class Kill(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if kill_at is not None and int(model.optimizer.iterations.numpy()) >= kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    if mode == "keras_resume":
        callbacks = kr.CheckpointDirectory(run_dir).callbacks(every_n_steps=EVERY, monitor="loss")
    elif mode == "keras":
        callbacks = [keras.callbacks.BackupAndRestore(run_dir, save_freq=EVERY)]
    else:
        callbacks = []
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=EPOCHS,
        shuffle=True,
        verbose=0,
        callbacks=[Kill(), *callbacks],
    )
    variables = model.weights + model.optimizer.variables
    np.savez(
        out,
        *[np.array(v.numpy()) for v in variables],
        steps=int(model.optimizer.iterations.numpy()),
    )


def run(mode: str, run_dir: Path, out: Path, kill_at=None) -> int:
    cmd = [sys.executable, __file__, "--worker", mode, str(run_dir), str(out)]
    if kill_at is not None:
        cmd.append(str(kill_at))
    return subprocess.run(cmd, stderr=subprocess.DEVNULL).returncode


def main() -> None:
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(
            f"Training {EPOCHS} epochs x {STEPS_PER_EPOCH} steps; backups every {EVERY} "
            f"steps; SIGKILL at step {KILL_AT} (epoch {KILL_AT // STEPS_PER_EPOCH + 1}, "
            "mid-epoch)."
        )
        run("none", tmp / "ref", tmp / "ref.npz")
        reference = np.load(tmp / "ref.npz")
        rows = []
        for mode, label in (("keras_resume", "keras_resume"), ("keras", "keras BackupAndRestore")):
            code = run(mode, tmp / mode, tmp / f"{mode}.npz", kill_at=KILL_AT)
            assert code == -signal.SIGKILL, f"{label}: expected SIGKILL, got exit code {code}"
            run(mode, tmp / mode, tmp / f"{mode}.npz")
            result = np.load(tmp / f"{mode}.npz")
            diffs = [
                np.abs(reference[k] - result[k]).max()
                for k in reference.files
                if k != "steps" and reference[k].dtype.kind == "f"
            ]
            same = all(np.array_equal(reference[k], result[k]) for k in reference.files)
            rows.append((label, int(result["steps"]), same, max(diffs)))
        print(
            f"\n{'after kill + rerun':<26}{'optimizer steps':>16}{'bit-identical':>15}"
            f"{'max |dw|':>12}"
        )
        print(f"{'(uninterrupted)':<26}{int(reference['steps']):>16}{'-':>15}{'-':>12}")
        for label, steps, same, diff in rows:
            print(f"{label:<26}{steps:>16}{str(same):>15}{diff:>12.3g}")
        print(
            "\nbit-identical = every model and optimizer variable numpy.array_equal to "
            "the uninterrupted run."
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _, _, mode, run_dir, out, *kill = sys.argv
        train(mode, run_dir, out, int(kill[0]) if kill else None)
    else:
        argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
        main()
