"""Trains on a `torch.utils.data.DataLoader` with its own seeded generator; may SIGKILL itself.

tests/test_data_state.py runs it on the PyTorch backend:

    python tests/dataloader_script.py OUT.npz DIR:KILL [DIR:KILL ...]

Each `DIR:KILL` is one 3-epoch `fit` with keras_resume's callbacks on `DIR`,
one after another in this process. KILL is `none`, `E,B` (SIGKILL in epoch E,
0-based, after batch B, once the backup in flight is written) or `E,end` (in
`on_epoch_end` of epoch E, after its backup). Every variable of each finished
fit is written to OUT.npz as `<i>/<n>`, as soon as it finishes.
"""

import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import keras_resume as kr  # noqa: E402

N, BATCH, EPOCHS = 32, 8, 3


class Kill(keras.callbacks.Callback):
    def __init__(self, epoch, batch, ckpt):
        super().__init__()
        self.kill_epoch, self.kill_batch, self.ckpt = epoch, batch, ckpt
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        mid_epoch = self.kill_batch != "end"
        if self.epoch == self.kill_epoch and mid_epoch and batch + 1 >= self.kill_batch:
            self.ckpt.writer.join()  # the mid-epoch backup is on disk: resume from it
            os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.kill_epoch and self.kill_batch == "end":
            self.ckpt.writer.join()
            os.kill(os.getpid(), signal.SIGKILL)


def train(directory, kill):
    keras.utils.set_random_seed(0)
    rng = np.random.RandomState(1)
    x = rng.normal(size=(N, 3)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
        batch_size=BATCH,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, name="hidden"),
            keras.layers.Dropout(0.2, name="dropout"),
            keras.layers.Dense(1, name="head"),
        ],
        name="loader_model",
    )
    model.compile(keras.optimizers.Adam(0.01, name="adam"), "mse")
    ckpt = kr.CheckpointDirectory(directory)
    callbacks = [
        kr.FullStateResume(ckpt),
        kr.StepBackup(ckpt, every_n_steps=2),
        kr.RngCapture(ckpt),
    ]
    if kill != "none":
        epoch, batch = kill.split(",")
        callbacks.append(Kill(int(epoch), batch if batch == "end" else int(batch), ckpt))
    model.fit(loader, epochs=EPOCHS, verbose=0, callbacks=callbacks)
    return [np.array(v.numpy()) for v in model.weights + model.optimizer.variables]


def main(out, jobs):
    results = {}
    for i, job in enumerate(jobs):
        directory, kill = job.rsplit(":", 1)
        for n, value in enumerate(train(directory, kill)):
            results[f"{i}/{n}"] = value
        np.savez(out, **results)  # before a later job's kill


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
