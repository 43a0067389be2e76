"""One process of a multi-process JAX training job, for the scale-out tests.

Started N times (by the test, or by `keras-resume run --nprocs N`), with the
job's shape in the environment the launcher sets: KERAS_RESUME_COORDINATOR,
KERAS_RESUME_NUM_PROCESSES, KERAS_RESUME_PROCESS_ID. Trains a small model with
`keras.distribution.DataParallel` over every process's CPU device, on a
`tf.data` input sharded per process, with keras_resume's callbacks on one
shared directory; optionally SIGKILLs the whole job at a global step (every
process kills itself there), and writes each process's final state to
--out-PROCESS_ID.npz.

`--layout model` trains with `keras.distribution.ModelParallel` instead: the
Dense and BatchNormalization variables are split across the processes (a
mesh of 1 x N; with `--devices D` per process, (model, batch) = (N, D)), and
every process sees the whole batch. Final states are
then gathered whole on every process for the comparison.

`--restore-only --devices N` runs one process without a job: it restores
--dir into the model laid out over N host devices (N > 1: ModelParallel
over a 1 x N mesh) and writes that state to --out-0.npz.

    python tests/mp_train_script.py --dir D --out O [--kill-at-step K] [--layout model]
"""

import argparse
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

if "--devices" in sys.argv:  # host devices are made when JAX loads
    _count = sys.argv[sys.argv.index("--devices") + 1]
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={_count}"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_script import KillAtStep, build_model, final_state, make_data  # noqa: E402

import keras_resume as kr  # noqa: E402
from keras_resume import backend  # noqa: E402

BATCH = 8  # global batch: BATCH / num_processes rows from each process (DataParallel)


def model_parallel(devices, replicas=1):
    """Dense and BatchNormalization variables split along the mesh's "model" axis.

    With `replicas` > 1 the mesh is (model, batch) = (processes, devices per
    process): each process holds one slice of the model on all its devices,
    each device a different part of the batch, so every shard has a replica
    on each of the process's devices. Every process then feeds the whole batch.
    """
    if replicas == 1:
        mesh = keras.distribution.DeviceMesh((1, len(devices)), ("batch", "model"), devices)
    else:
        shape = (len(devices) // replicas, replicas)
        mesh = keras.distribution.DeviceMesh(shape, ("model", "batch"), devices)
    layout = keras.distribution.LayoutMap(mesh)
    layout[".*/dense/kernel"] = (None, "model")
    layout[".*/dense/bias"] = ("model",)
    layout[".*/batch_normalization/.*"] = ("model",)
    layout[".*/dense_1/kernel"] = ("model", None)
    return keras.distribution.ModelParallel(
        layout_map=layout, batch_dim_name="batch", auto_shard_dataset=replicas == 1
    )


def gathered_state(model):
    """`final_state`, with each variable sharded across processes gathered whole."""
    from jax.experimental import multihost_utils

    def read(variable):
        if backend.sharded_across_processes(variable):
            return np.array(multihost_utils.process_allgather(variable.value, tiled=True))
        return backend.to_numpy(variable)

    return final_state(model, read)


def restore_only(args):
    """Restores --dir into a model over --devices host devices of this one process."""
    devices = jax.devices()
    if len(devices) > 1:
        keras.distribution.set_distribution(model_parallel(devices))
    model = build_model("plateau")
    kr.restore(model, args.dir)
    arrays = gathered_state(model)
    arrays["devices"] = np.array(len(model.weights[0].value.sharding.device_set))
    arrays["history"] = np.array(json.dumps({}))
    np.savez(f"{args.out}-0.npz", **arrays)
    return 0


class KillAfterSaves(KillAtStep):
    """SIGKILLs this process at `step`, once its saves in flight are written.

    So that the newest committed backup is the same in every run of the test
    (the kill itself still lands mid-epoch, steps after that backup).
    """

    def __init__(self, step, ckpt):
        super().__init__(step)
        self.ckpt = ckpt

    def on_train_batch_end(self, batch, logs=None):
        if backend.read_int(self.model.optimizer.iterations) >= self.step:
            self.ckpt.wait()
        super().on_train_batch_end(batch, logs)


def restore_on_process_0_only(model, directory, process_id):
    """Process 0 restores alone: it must fail within the (shortened) timeout, saying why."""
    import time

    from keras_resume import multiprocess

    multiprocess.RESTORE_TIMEOUT_S = 3.0
    if process_id != 0:
        time.sleep(10)  # alive past the timeout, but never calling restore
        return 0
    try:
        kr.restore(model, directory)
    except TimeoutError as e:
        print(f"restore refused: {e}", flush=True)
        return 3
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--kill-at-step", type=int, default=None)
    parser.add_argument(
        "--kill-process", type=int, default=None, help="only this process kills itself"
    )
    parser.add_argument(
        "--kill-once", default=None, help="a marker file: kill only if it does not exist yet"
    )
    parser.add_argument(
        "--restore-on-process-0-only",
        action="store_true",
        help="process 0 calls keras_resume.restore, the others do not: expect a clear error",
    )
    parser.add_argument("--layout", default="data", choices=["data", "model"])
    parser.add_argument("--snapshot", default="auto", choices=["auto", "device", "host"])
    parser.add_argument("--restore-only", action="store_true")
    parser.add_argument("--devices", type=int, default=1, help="host devices of each process")
    args = parser.parse_args(argv)
    if args.restore_only:
        return restore_only(args)

    num_processes = int(os.environ["KERAS_RESUME_NUM_PROCESSES"])
    process_id = int(os.environ["KERAS_RESUME_PROCESS_ID"])
    keras.distribution.initialize(
        job_addresses=os.environ["KERAS_RESUME_COORDINATOR"],
        num_processes=num_processes,
        process_id=process_id,
    )
    if args.layout == "model":
        distribution = model_parallel(jax.devices(), replicas=jax.local_device_count())
        shards, local = 1, BATCH  # one model replica: every process feeds the whole batch
    else:
        distribution = keras.distribution.DataParallel(devices=jax.devices())
        shards, local = num_processes, BATCH // num_processes
    keras.distribution.set_distribution(distribution)
    keras.utils.set_random_seed(42)

    import tensorflow as tf

    (x, y), (xv, yv) = make_data()
    ds = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shard(shards, process_id % shards)
        .shuffle(len(x), seed=7)
        .batch(local, drop_remainder=True)
    )
    val = tf.data.Dataset.from_tensor_slices((xv, yv)).shard(shards, process_id % shards)
    val = val.batch(local, drop_remainder=True)

    model = build_model("plateau")
    if args.restore_on_process_0_only:
        return restore_on_process_0_only(model, args.dir, process_id)
    ckpt = kr.CheckpointDirectory(args.dir)
    callbacks = []
    kill = args.kill_at_step is not None and args.kill_process in (None, process_id)
    if kill and args.kill_once is not None:
        if os.path.exists(args.kill_once):
            kill = False
        else:
            open(args.kill_once, "w").close()
    if kill:
        callbacks.append(KillAfterSaves(args.kill_at_step, ckpt))
    callbacks += ckpt.callbacks(
        every_n_steps=args.every, monitor="val_loss", snapshot=args.snapshot
    )
    history = model.fit(ds, validation_data=val, epochs=args.epochs, callbacks=callbacks, verbose=0)
    arrays = gathered_state(model) if args.layout == "model" else final_state(model)
    arrays["history"] = np.array(json.dumps({"epoch": history.epoch, **history.history}))
    # What this process reads in the directory as soon as fit returns (process 0 commits).
    arrays["seen_after_fit/newest_backup_step"] = np.array(
        ckpt.checkpoints("backup")[-1]["global_step"]
    )
    np.savez(f"{args.out}-{process_id}.npz", **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
