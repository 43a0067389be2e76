"""Realistic optimizer jobs (issue 14, A1/A2/A8), run as real subprocesses by test_jobs_optim.py.

Jobs, each written the way keras.io writes it:

- `accum_ema`: `AdamW(gradient_accumulation_steps=2, use_ema=True)`; a backup
  every 3 steps falls between two updates, with gradients accumulated.
- `mixed`: `set_dtype_policy("mixed_float16")`, so `compile` wraps the
  optimizer in a `LossScaleOptimizer` (an `inner_optimizer` of its own).
- `gan`: keras.io's DCGAN, shrunk: a `Model` subclass that holds the
  generator, the discriminator, their two optimizers and a `SeedGenerator`,
  with a custom `train_step`, `compile(d_optimizer=..., g_optimizer=...)`
  calling `super().compile()`, and never called before `fit`. TensorFlow and
  PyTorch only (see `GAN_BACKENDS`).

    python tests/jobs_optim_script.py --root R [--reference JOBS] [--resume JOB]
        [--kill JOB]

One process runs, in order: every `--reference` job uninterrupted (in
`R/ref-JOB`), then `--resume JOB` to completion (in `R/run-JOB`), then
`--kill JOB` from scratch in `R/run-JOB`, SIGKILLing itself mid-epoch. Each
job starts from `keras.backend.clear_session()` and the same seed, so jobs
share a process as they would run alone. A finished job writes `out.npz`
(every model, optimizer and SeedGenerator variable, and the history),
`saved.weights.h5` (`model.save_weights`, where the model allows it) and
`result.json` (the warnings of its `fit`, and those of `load_weights` of its
newest backup).
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

JOBS = ("accum_ema", "mixed", "gan")
GAN_BACKENDS = ("tensorflow", "torch")  # a JAX train_step is stateless: see the test module
STEPS_PER_EPOCH, BATCH, EPOCHS = 6, 4, 2
EVERY = 3  # backups at global steps 3, 6, 9, ...: 9 is between two accumulated updates
KILL_AT = 11  # epoch 2, step 5: two steps after the backup at step 9


def data():
    rng = np.random.RandomState(3)
    x = rng.normal(size=(STEPS_PER_EPOCH * BATCH, 3)).astype("float32")
    return x, (x @ np.array([[1.0], [-2.0], [0.5]], dtype="float32")).astype("float32")


def dense_model(optimizer):
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, activation="relu"),
            keras.layers.Dropout(0.25),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=optimizer, loss="mse", metrics=["mae"])
    return model


class GAN(keras.Model):
    """keras.io's DCGAN (generative/dcgan_overriding_train_step), on vectors."""

    def __init__(self, discriminator, generator, latent_dim):
        super().__init__()
        self.discriminator = discriminator
        self.generator = generator
        self.latent_dim = latent_dim
        self.seed_generator = keras.random.SeedGenerator(1337)

    def compile(self, d_optimizer, g_optimizer, loss_fn):
        super().compile()
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer
        self.loss_fn = loss_fn
        self.d_loss_metric = keras.metrics.Mean(name="d_loss")
        self.g_loss_metric = keras.metrics.Mean(name="g_loss")

    @property
    def metrics(self):
        return [self.d_loss_metric, self.g_loss_metric]

    def call(self, x):
        # Never called by the job. PyTorch's (and JAX's) `fit` builds the model
        # symbolically, through `call`; TensorFlow's does not, and the model
        # stays unbuilt (`model.built` False) there.
        return self.discriminator(x)

    def _noise(self, batch_size):
        return keras.random.normal((batch_size, self.latent_dim), seed=self.seed_generator)

    def _labels(self, batch_size):
        labels = keras.ops.concatenate(
            [keras.ops.ones((batch_size, 1)), keras.ops.zeros((batch_size, 1))], axis=0
        )
        return labels + 0.05 * keras.random.uniform(
            keras.ops.shape(labels), seed=self.seed_generator
        )

    def train_step(self, real):
        if isinstance(real, tuple):
            real = real[0]
        step = self._tf_step if keras.backend.backend() == "tensorflow" else self._torch_step
        d_loss, g_loss = step(real)
        self.d_loss_metric.update_state(d_loss)
        self.g_loss_metric.update_state(g_loss)
        return {"d_loss": self.d_loss_metric.result(), "g_loss": self.g_loss_metric.result()}

    def _tf_step(self, real):
        import tensorflow as tf

        batch_size = tf.shape(real)[0]
        fake = self.generator(self._noise(batch_size))
        combined = tf.concat([fake, real], axis=0)
        labels = self._labels(batch_size)
        with tf.GradientTape() as tape:
            d_loss = self.loss_fn(labels, self.discriminator(combined))
        grads = tape.gradient(d_loss, self.discriminator.trainable_weights)
        self.d_optimizer.apply_gradients(zip(grads, self.discriminator.trainable_weights))
        misleading = tf.zeros((batch_size, 1))
        with tf.GradientTape() as tape:
            g_loss = self.loss_fn(
                misleading, self.discriminator(self.generator(self._noise(batch_size)))
            )
        grads = tape.gradient(g_loss, self.generator.trainable_weights)
        self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_weights))
        return d_loss, g_loss

    def _torch_step(self, real):
        # keras.io's "Writing a training loop from scratch in PyTorch" GAN step.
        import torch

        batch_size = real.shape[0]
        real = torch.as_tensor(real)
        fake = self.generator(self._noise(batch_size))
        combined = torch.concat([fake, real], axis=0)
        labels = self._labels(batch_size)
        self.zero_grad()
        d_loss = self.loss_fn(labels, self.discriminator(combined))
        d_loss.backward()
        grads = [v.value.grad for v in self.discriminator.trainable_weights]
        with torch.no_grad():
            self.d_optimizer.apply(grads, self.discriminator.trainable_weights)
        misleading = torch.zeros((batch_size, 1))
        self.zero_grad()
        g_loss = self.loss_fn(
            misleading, self.discriminator(self.generator(self._noise(batch_size)))
        )
        g_loss.backward()
        grads = [v.value.grad for v in self.generator.trainable_weights]
        with torch.no_grad():
            self.g_optimizer.apply(grads, self.generator.trainable_weights)
        return d_loss, g_loss


def gan_model():
    discriminator = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)],
        name="discriminator",
    )
    generator = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(3, activation="tanh")], name="generator"
    )
    gan = GAN(discriminator, generator, latent_dim=2)
    gan.compile(
        d_optimizer=keras.optimizers.Adam(1e-3),
        g_optimizer=keras.optimizers.Adam(1e-3),
        loss_fn=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    return gan


def make_job(name):
    """`(model, fit arguments)` of a job, in a fresh Keras session."""
    keras.backend.clear_session()
    keras.mixed_precision.set_dtype_policy("mixed_float16" if name == "mixed" else "float32")
    keras.utils.set_random_seed(0)
    x, y = data()
    if name == "gan":
        return gan_model(), {"x": x}
    optimizer = {
        "accum_ema": lambda: keras.optimizers.AdamW(
            1e-2, gradient_accumulation_steps=2, use_ema=True, ema_overwrite_frequency=4
        ),
        "mixed": lambda: keras.optimizers.Adam(1e-2),
    }[name]()
    return dense_model(optimizer), {"x": x, "y": y}


class KillAt(keras.callbacks.Callback):
    """SIGKILLs this process once it trained `step` batches."""

    def __init__(self, step):
        super().__init__()
        self.step, self.seen = step, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def state_of(model) -> dict:
    """Every model, optimizer and SeedGenerator variable, by a name unique in the job."""
    out = {}
    for i, v in enumerate(model.weights):
        out[f"weights/{i}:{v.path}"] = backend.to_numpy(v)
    for path, optimizer in backend.optimizers(model):
        for i, v in enumerate(optimizer.variables):
            out[f"{path}/{i}:{v.path}"] = backend.to_numpy(v)
    for name, generator in backend.seed_generators(model):
        out[f"seed/{name}"] = backend.to_numpy(generator.state)
    return out


def run_job(name, directory: Path, kill: bool) -> None:
    model, fit_args = make_job(name)
    ckpt = kr.CheckpointDirectory(directory / "run")
    callbacks = [
        kr.FullStateResume(ckpt),
        # In the foreground: the backup at step 9 is on disk before the kill at 11.
        kr.StepBackup(ckpt, every_n_steps=EVERY, keep=2, background=False),
        kr.RngCapture(ckpt),
    ]
    if kill:
        callbacks.append(KillAt(KILL_AT))
    with warnings.catch_warnings(record=True) as fit_warnings:
        warnings.simplefilter("always")
        history = model.fit(
            **fit_args, batch_size=BATCH, epochs=EPOCHS, callbacks=callbacks, verbose=0
        )
    arrays = state_of(model)
    np.savez(
        directory / "out.npz",
        history=json.dumps({"epoch": history.epoch, "history": history.history}, sort_keys=True),
        **arrays,
    )
    if model.built:  # save_weights refuses a model never called (the GAN)
        model.save_weights(directory / "saved.weights.h5")
    newest = ckpt.checkpoint_path(ckpt.read_manifest()["checkpoints"][-1])
    with warnings.catch_warnings(record=True) as load_warnings:
        warnings.simplefilter("always")
        if model.built:
            model.load_weights(newest / "model.weights.h5")
    result = {
        "fit_warnings": _messages(fit_warnings),
        "load_warnings": _messages(load_warnings),
        "backup": str(newest / "model.weights.h5"),
        "optimizers": [[p, type(o).__name__] for p, o in backend.optimizers(model)],
        "global_steps": [c["global_step"] for c in ckpt.read_manifest()["checkpoints"]],
    }
    (directory / "result.json").write_text(json.dumps(result), encoding="utf-8")
    keras.mixed_precision.set_dtype_policy("float32")


def _messages(caught) -> list[str]:
    # numpy's DeprecationWarnings about JAX's and torch's `__array__` are noise here.
    return [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--reference", default="", help="comma-separated jobs")
    parser.add_argument("--resume", default=None, choices=JOBS)
    parser.add_argument("--kill", default=None, choices=JOBS)
    args = parser.parse_args(argv)
    for name in filter(None, args.reference.split(",")):
        (args.root / f"ref-{name}").mkdir(parents=True, exist_ok=True)
        run_job(name, args.root / f"ref-{name}", kill=False)
    if args.resume:
        run_job(args.resume, args.root / f"run-{args.resume}", kill=False)
    if args.kill:
        (args.root / f"run-{args.kill}").mkdir(parents=True, exist_ok=True)
        run_job(args.kill, args.root / f"run-{args.kill}", kill=True)
        raise SystemExit(f"{args.kill} was not killed at step {KILL_AT}")


if __name__ == "__main__":
    main(sys.argv[1:])
