"""Plotting a run's training curve: `plot`, the only matplotlib user.

matplotlib is an optional extra (`pip install 'keras-resume[plot]'`) and is
imported when `plot` is called, never when this module is, so importing
`keras_resume` or `keras_resume.runs` (which re-exports `plot`) never needs it.
"""

from __future__ import annotations

import math

__all__ = ["plot", "resume_positions"]

PLOT_INSTALL = "pip install 'keras-resume[plot]'"


def _steps_per_epoch(manifest: dict) -> int | None:
    steps = [c["step_in_epoch"] for c in manifest["checkpoints"] if c["epoch_complete"]]
    return max(steps) if steps else None


def resume_positions(manifest: dict) -> list[float]:
    """Where each resume happened on the 1-based epoch axis of `plot`.

    A resume at the start of (0-based) epoch `e` sits at `e` (the end of the
    `e`-th epoch as Keras prints it); one at step `s` of it at `e + s / steps`,
    the steps of an epoch read from an epoch-end checkpoint (half way when no
    such checkpoint is listed).
    """
    steps = _steps_per_epoch(manifest)
    positions = []
    for resume in manifest["resumes"]:
        epoch = resume.get("epoch")
        step = resume.get("step_in_epoch") or 0
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            continue
        if step and steps:
            fraction = min(step / steps, 1.0)
        else:
            fraction = 0.5 if step else 0.0
        positions.append(epoch + fraction)
    return positions


def _default_metrics(merged: dict) -> list[str]:
    names = [k for k in merged if k != "epoch"]
    losses = [k for k in names if "loss" in k]
    return losses or names


def plot(run, metrics: list[str] | None = None):
    """Plots a run's per-epoch metrics across restarts, with resumes and the best epoch.

    Use it to see at a glance how an interrupted run trained: one curve per
    metric over the epochs (1-based, as Keras prints them), a dashed
    vertical line where each resume continued, and a star on the best epoch
    of the monitored metric. Needs matplotlib (`pip install
    'keras-resume[plot]'`). The figure is not attached to pyplot, so it
    draws with no GUI backend; a notebook shows it when it is the cell's
    value.

    Example:

    >>> import os
    >>> import tempfile
    >>> import keras
    >>> import numpy as np
    >>> import keras_resume as kr
    >>> x = np.random.default_rng(0).random((8, 2))
    >>> y = x.sum(axis=1, keepdims=True)
    >>> run = tempfile.mkdtemp()
    >>> def train(epochs):  # the training script, run twice
    ...     keras.utils.set_random_seed(0)
    ...     model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    ...     model.compile(optimizer="sgd", loss="mse")
    ...     model.fit(x, y, validation_data=(x, y), epochs=epochs, verbose=0,
    ...               callbacks=kr.CheckpointDirectory(run).callbacks())
    >>> train(epochs=1)
    >>> train(epochs=2)  # resumed at the start of epoch 2
    >>> fig = kr.plot(run, metrics=["loss", "val_loss"])
    >>> fig.axes[0].get_legend_handles_labels()[1]
    ['loss', 'val_loss', 'resumed', 'best val_loss = ... (epoch 2)']
    >>> fig.savefig(os.path.join(run, "curve.png"))

    Args:
        run: a path, an fsspec URL or a `CheckpointDirectory`.
        metrics: the metric names to plot. Defaults to None: every metric
            whose name contains "loss", or every metric when none does.

    Returns:
        A `matplotlib.figure.Figure`.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            f"keras_resume.plot needs matplotlib, which is not installed. Run `{PLOT_INSTALL}` "
            "(or `pip install matplotlib`)."
        ) from None
    # runs.py imports this module to re-export `plot`: import it here, not at the top.
    from keras_resume.runs import _merged_history, log_value, open_run

    ckpt, manifest = open_run(run)
    merged = _merged_history(manifest)
    if not merged["epoch"]:
        raise ValueError(
            f"Run {ckpt.location} has no completed epoch in its manifest's history: nothing "
            "to plot. Plot it after its first epoch ends."
        )
    available = [k for k in merged if k != "epoch"]
    metrics = list(metrics) if metrics else _default_metrics(merged)
    missing = [m for m in metrics if m not in available]
    if missing:
        raise ValueError(
            f"Invalid value for argument metrics. Received: metrics={missing!r}: not logged in "
            f"the history of {ckpt.location}. Logged metrics: {available}."
        )
    x = [e + 1 for e in merged["epoch"]]
    figure = Figure(figsize=(7, 4.2), layout="constrained")
    axes = figure.add_subplot()
    for name in metrics:
        y = [math.nan if v is None else v for v in merged[name]]
        axes.plot(x, y, marker="o", label=name, gid=f"metric:{name}")
    for i, position in enumerate(resume_positions(manifest)):
        axes.axvline(
            position,
            color="0.45",
            linestyle="--",
            linewidth=1,
            label="resumed" if i == 0 else None,
            gid="resume",
        )
    best = manifest.get("best")
    if best and isinstance(best.get("epoch"), int):
        bx = best["epoch"] + 1
        label = f"best {best['monitor']} = {log_value(best['value']):.4g} (epoch {bx})"
        if best["monitor"] in metrics:
            axes.plot(
                [bx],
                [log_value(best["value"])],
                marker="*",
                markersize=15,
                color="gold",
                markeredgecolor="black",
                linestyle="none",
                label=label,
                gid="best",
            )
        else:
            axes.axvline(bx, color="gold", linestyle=":", linewidth=2, label=label, gid="best")
    axes.set_xlabel("epoch")
    axes.set_ylabel(", ".join(metrics))
    axes.set_title(str(ckpt.location), fontsize="medium")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    if len(x) < 15:
        axes.set_xticks(x)
    return figure
