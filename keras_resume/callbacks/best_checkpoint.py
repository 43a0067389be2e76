"""`BestCheckpoint`: a best-only saver whose best value survives restarts."""

from __future__ import annotations

import logging
import math
import warnings

from keras_resume import backend
from keras_resume import manifest as mf
from keras_resume.callbacks.session import SessionCallback, check_positive_int

logger = logging.getLogger("keras_resume")


class BestCheckpoint(SessionCallback, backend.MonitorCallback):
    """Saves the model whenever the monitored metric improves; remembers the best.

    Like `keras.callbacks.ModelCheckpoint(save_best_only=True)`, but the best
    value lives in the manifest, so a restarted run only saves when it beats
    the best of every earlier attempt, and the file is committed atomically.
    The checkpoint holds model and optimizer variables in Keras's
    `.weights.h5` layout: `model.load_weights()` reads it, and
    `keras_resume.restore(model, path, which="best")` finds it.

    Example:

    >>> import tempfile
    >>> import keras
    >>> import numpy as np
    >>> import keras_resume as kr
    >>> x = np.random.default_rng(0).random((8, 2))
    >>> y = x.sum(axis=1, keepdims=True)
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> run = tempfile.mkdtemp()
    >>> _ = model.fit(x, y, validation_data=(x, y), epochs=2, verbose=0,
    ...               callbacks=[kr.BestCheckpoint(run, monitor="val_loss")])
    >>> best = kr.CheckpointDirectory(run).best()
    >>> best["monitor"], best["epoch"]  # 0-based: the second epoch was the better one
    ('val_loss', 1)
    >>> len(kr.list_checkpoints(run))  # keep=1: only the best is kept
    1
    >>> kr.restore(model, run, which="best").epoch
    1

    Args:
        ckpt: a `CheckpointDirectory` or a path.
        monitor: the metric to watch, from the epoch logs. Defaults to `"val_loss"`.
        mode: `"min"`, `"max"` or `"auto"` (decided from the metric). Defaults to `"auto"`.
        initial_value_threshold: only save once the metric beats this value.
        min_delta: smallest change that counts as an improvement. Defaults to 0.
        keep: how many best checkpoints to keep, newest (best) first. Defaults to 1.
        on_error: `"raise"` a `SaveError` when a save fails, or `"warn"` and
            keep training; the previous checkpoint is intact either way.
            Defaults to `"raise"`.
        background: write on a background thread (see `StepBackup`).
            Defaults to True.
        snapshot: `"auto"`, `"device"` or `"host"` (see `StepBackup`).
            Defaults to `"auto"`.
        verbose: 1 prints one line per save. Defaults to 0.
    """

    epoch_end_order = 0

    def __init__(
        self,
        ckpt,
        monitor: str = "val_loss",
        mode: str = "auto",
        initial_value_threshold: float | None = None,
        min_delta: float = 0,
        keep: int = 1,
        on_error: str = "raise",
        background: bool = True,
        snapshot: str = "auto",
        verbose: int = 0,
    ):
        super().__init__(
            ckpt,
            on_error=on_error,
            snapshot=snapshot,
            monitor=monitor,
            mode=mode,
            baseline=initial_value_threshold,
            min_delta=min_delta,
        )
        check_positive_int("keep", keep, allow_none=False)
        self.initial_value_threshold = initial_value_threshold
        self.keep = keep
        self.background = bool(background)
        self.verbose = verbose

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.best = self.initial_value_threshold
        self._sync_best()

    def _sync_best(self) -> None:
        """The manifest's best value is the truth, across restarts and failed saves."""
        saved = self.ckpt.best()
        if saved and saved["monitor"] == self.monitor:
            self.best = saved["value"]

    def after_epoch(self, epoch, logs):
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(
                f"BestCheckpoint: monitor={self.monitor!r} is not in the epoch logs "
                f"(available: {sorted(logs)}); nothing saved. Pass one of those names.",
                stacklevel=2,
            )
        elif self.monitor_op is None:
            self._set_monitor_op()
        if current is not None and not math.isnan(float(current)):
            if self._is_improvement(float(current), self.best):
                self._save(epoch, float(current), logs)
                return
        logs, fit = mf.json_safe_logs(logs), self.session.fit
        self.save(
            f"history of epoch {epoch + 1}",
            lambda: (
                lambda: self.ckpt.update_manifest(lambda m: mf.record_history(m, epoch, logs, fit))
            ),
        )

    def _save(self, epoch: int, current: float, logs: dict) -> None:
        previous = self.best
        position = {
            "epoch": epoch,
            "step_in_epoch": int(self.params.get("steps") or 0),
            "epoch_complete": True,
            "global_step": self.session.global_step,
        }
        mode = backend.monitor_mode(self)
        monitor = self.monitor
        logs, fit = mf.json_safe_logs(logs), self.session.fit

        def update(manifest, entry):
            manifest["best"] = {
                "monitor": monitor,
                "mode": mode,
                "value": current,
                "epoch": epoch,
                "checkpoint_id": entry["id"],
            }
            mf.record_history(manifest, epoch, logs, fit)

        def prepare():
            return self.snapshot("best", None, position, logs, update, self.keep)

        def done(entry):
            was = previous
            if was is None:
                was = float("inf") if mode == "min" else float("-inf")
            message = (
                f"Epoch {epoch + 1}: {monitor} improved from {was:.5f} to "
                f"{current:.5f}; saved {entry['dir']}"
            )
            if self.verbose:
                backend.print_msg(f"\n{message} in {self.ckpt.location}")
            logger.info("%s in %s", message, self.ckpt.location)

        # The next epoch compares with this value; a failed save puts back the
        # manifest's value (`_failed`).
        self.best = current
        self.save(f"best checkpoint of epoch {epoch + 1}", prepare, on_done=done)

    def _failed(self, what, e):
        try:  # a save that failed late may still have committed: the manifest decides
            self.best = self.initial_value_threshold
            self._sync_best()
        finally:
            super()._failed(what, e)
