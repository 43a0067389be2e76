"""`standard_callbacks`: the usual set of keras_resume callbacks, in the right order."""

from __future__ import annotations

from keras_resume.callbacks.best_checkpoint import BestCheckpoint
from keras_resume.callbacks.full_state_resume import FullStateResume
from keras_resume.callbacks.rng_capture import RngCapture
from keras_resume.callbacks.scheduler_capture import SchedulerCapture
from keras_resume.callbacks.step_backup import StepBackup


def standard_callbacks(
    ckpt,
    every_n_steps: int | None = None,
    monitor: str | None = "val_loss",
    mode: str = "auto",
    track: list | None = None,
    keep: int = 2,
    verbose: int = 0,
    snapshot: str = "auto",
) -> list:
    """The usual set of callbacks, in the right order, for `model.fit(callbacks=...)`.

    Returns `[FullStateResume, StepBackup, BestCheckpoint (if monitor),
    RngCapture, SchedulerCapture (if track), *track]`. The tracked callbacks
    are included: do not list them again. `snapshot` is the savers' (see
    `StepBackup`). `CheckpointDirectory.callbacks` returns this.
    """
    track = list(track or [])
    out = [
        FullStateResume(ckpt, verbose=verbose),
        StepBackup(
            ckpt, every_n_steps=every_n_steps, keep=keep, verbose=verbose, snapshot=snapshot
        ),
    ]
    if monitor:
        out.append(
            BestCheckpoint(ckpt, monitor=monitor, mode=mode, verbose=verbose, snapshot=snapshot)
        )
    out.append(RngCapture(ckpt))
    if track:
        out.append(SchedulerCapture(ckpt, track))
    return out + track
