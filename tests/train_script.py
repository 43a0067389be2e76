"""A training script the crash tests launch as a real subprocess.

It trains a small model with every source of randomness keras_resume must
capture, optionally SIGKILLs itself at a chosen global step, and writes the
final state (every variable, the history) to --out for comparison.

    python tests/train_script.py --dir D --out O.npz [--kill-at-step K]
        [--input numpy|pydataset|tfdata] [--sched schedule|plateau] [--no-rng] [--no-seed]
        [--devices N]

`--devices N` trains on N CPU devices of one process: a `MirroredStrategy`
on TensorFlow, a `keras.distribution.DataParallel` on JAX.
"""

import argparse
import contextlib
import json
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _host_devices_for_jax(argv):
    """JAX makes its host devices at import, so `--devices N` sets them before keras loads."""
    if "--devices" in argv and os.environ.get("KERAS_BACKEND") == "jax":
        count = argv[argv.index("--devices") + 1]
        flag = f"--xla_force_host_platform_device_count={count}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()


_host_devices_for_jax(sys.argv)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_resume as kr  # noqa: E402
from keras_resume import backend  # noqa: E402

N_TRAIN, N_VAL, BATCH = 96, 32, 8


def parse_args(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--input", default="numpy", choices=["numpy", "pydataset", "tfdata"])
    parser.add_argument("--sched", default="plateau", choices=["schedule", "plateau"])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--kill-at-step", type=int, default=None)
    parser.add_argument("--no-rng", action="store_true", help="leave RngCapture out")
    parser.add_argument("--no-seed", action="store_true", help="skip set_random_seed")
    parser.add_argument(
        "--kill-in-upload",
        type=int,
        default=None,
        help="remote runs: SIGKILL after the first file of the N-th checkpoint upload",
    )
    parser.add_argument("--snapshot", default="auto", choices=["auto", "device", "host"])
    parser.add_argument("--devices", type=int, default=1, help="CPU devices to train on")
    parser.add_argument(
        "--restore-only",
        action="store_true",
        help="build the model, keras_resume.restore(--dir) into it, and write that state",
    )
    return parser.parse_args(argv)


def make_data():
    rng = np.random.RandomState(0)  # the data itself is fixed; shuffles are not
    x = rng.normal(size=(N_TRAIN + N_VAL, 8, 8, 1)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 0).astype("int32") + (x[:, 0, 0, 0] > 1).astype("int32")
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])


class ShufflingPyDataset(keras.utils.PyDataset):
    """Reshuffles in place in on_epoch_end with NumPy's global RNG, like Keras's docs."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y
        self.order = np.arange(len(x))

    def __len__(self):
        return len(self.x) // BATCH

    def __getitem__(self, i):
        idx = self.order[i * BATCH : (i + 1) * BATCH]
        return self.x[idx], self.y[idx]

    def on_epoch_end(self):
        np.random.shuffle(self.order)


def make_inputs(kind, x, y):
    if kind == "numpy":
        return {"x": x, "y": y, "batch_size": BATCH, "shuffle": True}
    if kind == "pydataset":
        return {"x": ShufflingPyDataset(x, y)}
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(N_TRAIN, seed=7).batch(BATCH)
    return {"x": ds}


def build_model(sched):
    if sched == "schedule":
        lr = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=5, decay_rate=0.7)
    else:
        lr = 0.01
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.RandomFlip("horizontal"),
            keras.layers.GaussianNoise(0.1),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def distribute(devices):
    """The scope to build the model in, training it on `devices` CPU devices of this process.

    Must run before anything else touches the backend: TensorFlow splits its
    CPU into logical devices only before its runtime starts.
    """
    if devices == 1:
        return contextlib.nullcontext()
    name = keras.backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * devices
        )
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(devices)]).scope()
    if name == "jax":
        import jax

        found = jax.devices()
        if len(found) != devices:
            raise SystemExit(f"--devices {devices}: JAX sees {len(found)} devices (XLA_FLAGS?)")
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=found))
        return contextlib.nullcontext()
    raise SystemExit(f"--devices {devices} is not supported on the {name} backend")


class KillAtStep(keras.callbacks.Callback):
    """SIGKILLs this very process once the optimizer has taken `step` steps."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if backend.read_int(self.model.optimizer.iterations) >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def kill_in_upload(n):
    """Dies in the middle of the n-th checkpoint upload: one file is up, the rest not."""
    from keras_resume import remote

    uploads = [0]
    put = remote.MirroredLocation._put_file

    def dying_put(self, local, target):
        put(self, local, target)
        if target.endswith("model.weights.h5"):
            uploads[0] += 1
            if uploads[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)

    remote.MirroredLocation._put_file = dying_put


def final_state(model, read=backend.to_numpy):
    """Every variable, SeedGenerator state and replica copy; `read(variable)` reads a weight."""
    arrays = {}
    for prefix, variables in (("model", model.weights), ("optimizer", model.optimizer.variables)):
        for i, v in enumerate(variables):
            arrays[f"{prefix}/{i}/{v.path}"] = read(v)
    for i, (name, gen) in enumerate(backend.seed_generators(model)):
        arrays[f"seed/{i}/{name}"] = backend.to_numpy(gen.state)
    # Under a tf.distribute strategy, every replica's copy: they can differ.
    for i, v in enumerate(model.variables + model.optimizer.variables):
        copies = backend.replica_values(v)
        if copies is not None:
            arrays[f"replicas/{i}/{v.path}"] = np.stack(copies)
    return arrays


def devices_used(model):
    """How many devices hold the model's first variable."""
    variable = model.weights[0]
    if keras.backend.backend() == "jax":
        return len(variable.value.sharding.device_set)
    copies = backend.replica_values(variable)
    return 1 if copies is None else len(copies)


def main(argv=None):
    args = parse_args(argv)
    scope = distribute(args.devices)
    if not args.no_seed:
        keras.utils.set_random_seed(42)
    (x, y), (xv, yv) = make_data()
    with scope:
        model = build_model(args.sched)
    if args.restore_only:
        return restore_only(model, args)
    callbacks = []
    if args.kill_at_step is not None:
        callbacks.append(KillAtStep(args.kill_at_step))
    track = []
    if args.sched == "plateau":
        track = [
            keras.callbacks.ReduceLROnPlateau(patience=1, factor=0.5, min_delta=10.0),
            keras.callbacks.EarlyStopping(patience=2, min_delta=10.0),
        ]
    if args.kill_in_upload is not None:
        kill_in_upload(args.kill_in_upload)
    ckpt = kr.CheckpointDirectory(args.dir)
    callbacks += ckpt.callbacks(
        every_n_steps=args.every, monitor="val_loss", track=track, snapshot=args.snapshot
    )
    if args.no_rng:
        callbacks = [c for c in callbacks if not isinstance(c, kr.RngCapture)]
    history = model.fit(
        **make_inputs(args.input, x, y),
        validation_data=(xv, yv),
        epochs=args.epochs,
        callbacks=callbacks,
        verbose=0,
    )
    arrays = final_state(model)
    if args.devices > 1:
        arrays["devices"] = np.array(devices_used(model))
    arrays["history"] = np.array(json.dumps({"epoch": history.epoch, **history.history}))
    np.savez(args.out, **arrays)
    return 0


def restore_only(model, args):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kr.restore(model, args.dir)
    arrays = final_state(model)
    said = [str(w.message) for w in caught]
    arrays["history"] = np.array(json.dumps({"warnings": said, "backend": keras.backend.backend()}))
    np.savez(args.out, **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
