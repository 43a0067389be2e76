"""Input pipelines of real jobs (issue 14, A4/A7), run as real subprocesses by test_jobs_data.py.

Jobs, each written the way keras.io writes it:

- `threads`: a `keras.utils.PyDataset` that reshuffles in `on_epoch_end`, read
  by `workers=2` threads; `fit(shuffle=True)` shuffles the batch order too.
- `processes`: the same with `use_multiprocessing=True` (forked workers).
- `tfdata`: a `tf.data` pipeline shuffled, batched, `.cache()`d in memory, then
  augmented by Keras layers mapped over it (keras.io's "option 2"), prefetched.

    python tests/jobs_data_script.py --root R [--resume JOB] [--reference JOB] [--kill JOB]

One process runs, in this order: `--resume JOB` to completion (in `R/run-JOB`),
`--reference JOB` uninterrupted (in `R/ref-JOB`), then `--kill JOB` from
scratch in `R/run-JOB`, SIGKILLing itself mid-epoch. A process forks
PyDataset workers only before its first `tf.data` job (a fork after
TensorFlow's threads started can hang). Each job starts from
`keras.backend.clear_session()` and the same seed. A finished job writes
`out.npz` (every model, optimizer and SeedGenerator variable, the pipeline's
SeedGenerators, and the history) and `result.json` (its `fit`'s warnings and
the manifest's resumes).
"""

import argparse
import json
import os
import signal
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_resume as kr  # noqa: E402
from keras_resume import backend  # noqa: E402

JOBS = ("threads", "processes", "tfdata")
N, BATCH, EPOCHS = 16, 4, 3  # 4 steps an epoch
EVERY = 3  # backups at global steps 3, 6, 9, ...
KILL_AT = 7  # epoch 2, step 3: one step after the backup at step 6 (epoch 2, step 2)


def data(shape=(3,)):
    rng = np.random.RandomState(5)
    x = rng.normal(size=(N, *shape)).astype("float32")
    y = (x.reshape(N, -1).sum(axis=1, keepdims=True) > 0).astype("float32")
    return x, y


class Shuffling(keras.utils.PyDataset):
    """keras.io's PyDataset: batches by index, reshuffled in on_epoch_end."""

    def __init__(self, x, y, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y = x, y
        self.order = np.arange(len(x))

    def __len__(self):
        return len(self.x) // BATCH

    def __getitem__(self, index):
        idx = self.order[index * BATCH : (index + 1) * BATCH]
        return self.x[idx], self.y[idx]

    def on_epoch_end(self):
        np.random.shuffle(self.order)


def model_for(shape):
    model = keras.Sequential(
        [
            keras.Input(shape),
            keras.layers.Flatten(),
            keras.layers.Dense(4, activation="relu"),
            keras.layers.Dropout(0.25),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    return model


def make_job(name):
    """The model, fit's input, and the pipeline's augmentation layers (outside the model)."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(1)
    if name in ("threads", "processes"):
        x, y = data()
        dataset = Shuffling(x, y, workers=2, use_multiprocessing=name == "processes")
        return model_for((3,)), dataset, []
    import tensorflow as tf

    x, y = data((4, 4, 1))
    augmentation = [
        keras.layers.RandomFlip("horizontal", name="flip"),
        keras.layers.RandomTranslation(0.25, 0.25, name="translate"),
    ]

    def augment(images, labels):
        for layer in augmentation:
            images = layer(images)
        return images, labels

    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(N, seed=7).batch(BATCH).cache()
    ds = ds.map(augment).prefetch(2)
    return model_for((4, 4, 1)), ds, augmentation


class KillAt(keras.callbacks.Callback):
    """SIGKILLs this process once it trained `step` batches."""

    def __init__(self, step):
        super().__init__()
        self.step, self.seen = step, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def state_of(model, augmentation) -> dict:
    out = {}
    for i, v in enumerate(model.weights + model.optimizer.variables):
        out[f"{i}:{v.path}"] = backend.to_numpy(v)
    for name, generator in backend.seed_generators(model):
        out[f"seed/{name}"] = backend.to_numpy(generator.state)
    for layer in augmentation:
        for i, generator in enumerate(backend.layer_seed_generators(layer)):
            out[f"pipeline/{layer.name}/{i}"] = backend.seed_state(generator)
    return out


def run_job(name, directory: Path, kill: bool) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    model, dataset, augmentation = make_job(name)
    ckpt = kr.CheckpointDirectory(directory / "run")
    callbacks = [
        kr.FullStateResume(ckpt),
        # In the foreground: the backup at step 6 is on disk before the kill at 7.
        kr.StepBackup(ckpt, every_n_steps=EVERY, keep=2, background=False),
        kr.RngCapture(ckpt),
    ]
    if kill:
        callbacks.append(KillAt(KILL_AT))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(dataset, epochs=EPOCHS, callbacks=callbacks, verbose=0)
    np.savez(
        directory / "out.npz",
        history=json.dumps({"epoch": history.epoch, "history": history.history}, sort_keys=True),
        **state_of(model, augmentation),
    )
    result = {
        "fit_warnings": [
            str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)
        ],
        "resumes": [
            [r["epoch"], r["step_in_epoch"], r["global_step"]]
            for r in ckpt.read_manifest()["resumes"]
        ],
    }
    (directory / "result.json").write_text(json.dumps(result), encoding="utf-8")


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--resume", default=None, choices=JOBS)
    parser.add_argument("--reference", default=None, choices=JOBS)
    parser.add_argument("--kill", default=None, choices=JOBS)
    args = parser.parse_args(argv)
    if args.resume:
        run_job(args.resume, args.root / f"run-{args.resume}", kill=False)
    if args.reference:
        run_job(args.reference, args.root / f"ref-{args.reference}", kill=False)
    if args.kill:
        run_job(args.kill, args.root / f"run-{args.kill}", kill=True)
        raise SystemExit(f"{args.kill} was not killed at step {KILL_AT}")


if __name__ == "__main__":
    main(sys.argv[1:])
