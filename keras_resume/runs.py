"""Looking into a run directory from Python: what the `keras-resume` command line shows.

Every helper takes a path, an fsspec URL or a `CheckpointDirectory`, reads the
manifest through the public `CheckpointDirectory` API, and never writes unless
its name says so (`export_model`, `prune`).

Example:

```python
import keras_resume as kr
from keras_resume import runs as krr

krr.list_checkpoints("runs/exp1")      # the rows of `keras-resume ls`
krr.history("runs/exp1")               # per-epoch logs across restarts
krr.plot("runs/exp1").savefig("curve.png")
```
"""

from __future__ import annotations

import json
import warnings
from datetime import datetime, timezone
from pathlib import Path

from keras_resume import retention, storage
from keras_resume.directory import CheckpointDirectory
from keras_resume.errors import CheckpointCorruptError, NoCheckpointError
from keras_resume.plotting import plot
from keras_resume.restoring import load_into_model

__all__ = [
    "export_model",
    "history",
    "list_checkpoints",
    "load_model",
    "open_run",
    "plot",
    "prune",
    "verify_run",
]

MODEL_JSON = "model.json"
WEIGHTS_FILE = "model.weights.h5"


# --- opening a run ----------------------------------------------------------------


def open_run(run) -> tuple[CheckpointDirectory, dict]:
    """Opens an existing run directory and reads its manifest.

    Use it before anything that reads a run, to tell a typo in the path from
    a run with nothing in it.

    Example:

    ```python
    ckpt, manifest = open_run("runs/exp1")
    ```

    Args:
        run: a path, an fsspec URL or a `CheckpointDirectory`.

    Returns:
        `(CheckpointDirectory, manifest dict)`.

    Raises:
        NoCheckpointError: the directory does not exist, or holds neither a
            `manifest.json` nor checkpoint directories.
        ManifestError: its manifest is foreign or damaged beyond rebuilding.
    """
    ckpt = run if isinstance(run, CheckpointDirectory) else CheckpointDirectory(run)
    ckpt.store.check_exists()
    manifest = ckpt.read_manifest()
    if not manifest["checkpoints"] and not Path(ckpt.manifest_path).exists():
        raise NoCheckpointError(
            f"{ckpt.location} is not a keras-resume run directory: it holds no manifest.json "
            "and no backup-*/best-* checkpoint directories. Pass the directory given to "
            "keras_resume.CheckpointDirectory (or StepBackup) during training."
        )
    return ckpt, manifest


def log_value(value):
    """A logged value as a float (`"nan"` as written for non-finite values), else None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _age_seconds(created: str, now: datetime) -> float | None:
    try:
        then = datetime.fromisoformat(created)
    except (TypeError, ValueError):
        return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=timezone.utc)
    return max((now - then).total_seconds(), 0.0)


def checkpoint_size(entry: dict) -> int:
    """The bytes of a checkpoint's files, from its manifest entry."""
    return sum(int(record["size"]) for record in entry["files"])


def _resume_id(ckpt: CheckpointDirectory) -> int | None:
    try:
        return ckpt.select("latest", verify=False)["id"]
    except NoCheckpointError:
        return None


def _best_id(manifest: dict) -> int | None:
    best = manifest.get("best") or {}
    return best.get("checkpoint_id")


def checkpoint_row(entry: dict, manifest: dict, resume_id=None, now=None) -> dict:
    """One checkpoint as `list_checkpoints` and `keras-resume ls --json` describe it."""
    monitor = (manifest.get("best") or {}).get("monitor")
    now = now or datetime.now(timezone.utc)
    return {
        "id": entry["id"],
        "dir": entry["dir"],
        "kind": entry["kind"],
        "epoch": entry["epoch"] + 1,
        "step_in_epoch": entry["step_in_epoch"],
        "epoch_complete": entry["epoch_complete"],
        "global_step": entry["global_step"],
        "monitor": monitor,
        "value": entry["logs"].get(monitor) if monitor else None,
        "size": checkpoint_size(entry),
        "created": entry["created"],
        "age_s": _age_seconds(entry["created"], now),
        "resume": entry["id"] == resume_id,
        "best": entry["id"] == _best_id(manifest),
    }


# --- the three notebook helpers -------------------------------------------------------


def list_checkpoints(run) -> list[dict]:
    """The committed checkpoints of a run, oldest first, as `keras-resume ls` lists them.

    Use it in a notebook to see what a run saved, which checkpoint a resume
    would continue from, and which one is the best.

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
    ...               callbacks=kr.CheckpointDirectory(run).callbacks())
    >>> for row in kr.list_checkpoints(run):  # epochs 1-based, as Keras prints them
    ...     print(row["id"], row["kind"], row["epoch"], row["resume"], row["best"])
    2 backup 1 False False
    3 best 2 False True
    4 backup 2 True False

    Each row holds `id`, `dir`, `kind` ("backup" or "best"), `epoch`
    (1-based, as Keras prints it: the manifest's `epoch` + 1), `step_in_epoch`,
    `epoch_complete`, `global_step`, `monitor` (the best checkpoint's
    monitored metric, or None) and `value` (its value in this checkpoint's
    logs, or None), `size` (bytes), `created`, `age_s` (seconds since
    `created`), `resume` (True for the backup a resume picks: the newest) and
    `best` (True for the current best checkpoint).

    Args:
        run: a path, an fsspec URL or a `CheckpointDirectory`.

    Returns:
        A list of dicts, one per checkpoint.
    """
    ckpt, manifest = open_run(run)
    resume_id = _resume_id(ckpt)
    now = datetime.now(timezone.utc)
    return [checkpoint_row(e, manifest, resume_id, now) for e in manifest["checkpoints"]]


def _merged_history(manifest: dict) -> dict[str, list]:
    records = manifest["history"]
    merged: dict[str, list] = {"epoch": [r["epoch"] for r in records]}
    for name in sorted({k for r in records for k in r["logs"]}):
        merged[name] = [log_value(r["logs"].get(name)) for r in records]
    return merged


def history(run, as_frame: bool | None = None):
    """The per-epoch logs of a run across every restart, merged into one history.

    Use it to look at or plot the training curve of a run that was
    interrupted and resumed: each epoch appears once, with the logs of the
    attempt that completed it.

    Example:

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
    ...     model.fit(x, y, epochs=epochs, verbose=0,
    ...               callbacks=kr.CheckpointDirectory(run).callbacks(monitor=None))
    >>> train(epochs=1)
    >>> train(epochs=3)  # resumed: trains epochs 2 and 3
    >>> h = kr.history(run, as_frame=False)
    >>> h["epoch"], len(h["loss"])
    ([0, 1, 2], 3)

    Epochs are 0-based, as in Keras's `History.epoch`. A metric missing from
    an epoch's logs is None (NaN in a DataFrame).

    Args:
        run: a path, an fsspec URL or a `CheckpointDirectory`.
        as_frame: True returns a pandas DataFrame, False a dict of lists
            (`{"epoch": [...], metric: [...]}`), None (default) a DataFrame
            when pandas is importable and a dict otherwise.

    Returns:
        A pandas DataFrame or a dict of lists.
    """
    _, manifest = open_run(run)
    merged = _merged_history(manifest)
    if as_frame is False:
        return merged
    try:
        import pandas
    except ImportError:
        if as_frame:
            raise ImportError(
                "history(as_frame=True) needs pandas, which is not installed. "
                "Run `pip install pandas`, or pass as_frame=False for a dict of lists."
            ) from None
        return merged
    return pandas.DataFrame(merged)


# --- checking, exporting and pruning ----------------------------------------------


def verify_run(run, progress=None) -> list[dict]:
    """Re-checks the size and SHA-256 of every file of every checkpoint of a run.

    Use it after copying a run, or before relying on an old one: a damaged
    checkpoint is reported with the file at fault; nothing is changed.

    Example:

    ```python
    bad = [r for r in keras_resume.runs.verify_run("runs/exp1") if not r["ok"]]
    ```

    Args:
        run: a path, an fsspec URL or a `CheckpointDirectory`.
        progress: called as `progress(entry, result)` after each checkpoint.
            Defaults to None.

    Returns:
        One dict per checkpoint: `id`, `dir`, `kind`, `size` (bytes), `ok`,
        and `error` (the message naming the damaged file, or None).
    """
    ckpt, manifest = open_run(run)
    results = []
    for entry in manifest["checkpoints"]:
        try:
            ckpt.verify(entry)
            error = None
        except OSError as e:  # CheckpointCorruptError, or an unreadable file
            error = str(e)
        result = {
            "id": entry["id"],
            "dir": entry["dir"],
            "kind": entry["kind"],
            "size": checkpoint_size(entry),
            "ok": error is None,
            "error": error,
        }
        results.append(result)
        if progress is not None:
            progress(entry, result)
    return results


def parse_which(which):
    """A `which` from the command line: "12" becomes the id 12; "latest"/"best" stay."""
    if isinstance(which, str) and which.strip().isdigit():
        return int(which)
    return which


def _model_from_json(text: str, where: Path, custom_objects=None):
    import keras

    try:
        config = storage.loads_json(text)
    except ValueError as e:
        raise ValueError(
            f"{where} is not valid JSON ({e}). Use keras_resume.restore into your own "
            "model instead."
        ) from e
    try:
        return keras.models.model_from_json(text, custom_objects=custom_objects)
    except Exception as first:  # noqa: BLE001 - any deserialization failure is reported
        if not isinstance(config, dict) or "compile_config" not in config:
            raise ValueError(
                f"Cannot rebuild the model from {where} ({type(first).__name__}: {first}). "
                "Pass custom_objects for custom layers, or use keras_resume.restore into "
                "your own model instead."
            ) from first
        try:
            config.pop("compile_config")
            model = keras.models.model_from_json(json.dumps(config), custom_objects)
        except Exception:  # noqa: BLE001
            raise ValueError(
                f"Cannot rebuild the model from {where} ({type(first).__name__}: {first}). "
                "Pass custom_objects for custom layers, or use keras_resume.restore into "
                "your own model instead."
            ) from first
        warnings.warn(
            f"The compile config in {where} could not be rebuilt ({type(first).__name__}: "
            f"{first}); the model is loaded uncompiled, with its weights only (no optimizer). "
            "Pass custom_objects to keep it.",
            stacklevel=3,
        )
        return model


def load_model(run, which="latest", custom_objects=None):
    """Rebuilds a checkpoint's model from its `model.json` and loads the checkpoint into it.

    Use it to get a trained model back from a run without the code that
    built it: each checkpoint holds the model's architecture and compile
    config (`model.to_json()`), rebuilt with `keras.models.model_from_json`
    (Keras's safe mode: nothing is unpickled). A compiled model gets its
    optimizer state too; a model whose compile config cannot be rebuilt is
    loaded uncompiled with its weights only, with a warning.

    Example:

    ```python
    model, entry = keras_resume.runs.load_model("runs/exp1", which="best")
    model.predict(x)
    ```

    Args:
        run: a path, an fsspec URL or a `CheckpointDirectory`.
        which: "latest" (the newest backup), "best", or a checkpoint id.
            Defaults to "latest". A damaged checkpoint is skipped with a
            warning, as `restore` does.
        custom_objects: passed to `keras.models.model_from_json`.
            Defaults to None.

    Returns:
        `(model, entry)`: the model and the manifest entry it was loaded from.
    """
    ckpt, _ = open_run(run)
    entry = ckpt.select(parse_which(which), verify=True)
    root = ckpt.checkpoint_path(entry)
    if not any(record["path"] == MODEL_JSON for record in entry["files"]):
        raise ValueError(
            f"Checkpoint {root} has no {MODEL_JSON}: its model could not describe itself "
            "when it was saved (a subclassed model without get_config?). Use "
            "keras_resume.restore into your own model instead."
        )
    try:
        text = storage.read_regular(root, MODEL_JSON).decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointCorruptError(
            f"Cannot read {root / MODEL_JSON} ({e}). Use keras_resume.restore into your own "
            "model instead, or load another checkpoint."
        ) from e
    model = _model_from_json(text, root / MODEL_JSON, custom_objects)
    if not model.built:
        raise ValueError(
            f"The model rebuilt from {root / MODEL_JSON} is not built (its config holds no "
            "input shape). Use keras_resume.restore into your own built model instead."
        )
    # The files were verified by `select` just above. Read by keras_resume's
    # checked reader, never by Keras's (which follows HDF5 links out of the run):
    # an uncompiled model has no optimizer, and its own variables are loaded.
    loaded = ckpt.read_checkpoint(entry["id"], verify=False)
    with_optimizer = getattr(model, "optimizer", None) is not None
    load_into_model(model, ckpt, loaded, with_optimizer=with_optimizer)
    return model, entry


def export_model(run, to, which="latest", format="keras", overwrite=False) -> dict:
    """Exports a checkpoint as a deployable model: a `.keras` file or a TF SavedModel.

    Use it to hand the best (or latest) model of a run to serving or to
    someone without the training code. The model is rebuilt as in
    `load_model`, then saved with `model.save` or
    `model.export(format="tf_saved_model")`.

    Example:

    ```python
    keras_resume.runs.export_model("runs/exp1", "best.keras", which="best")
    keras.models.load_model("best.keras").predict(x)
    ```

    Args:
        run: a path, an fsspec URL or a `CheckpointDirectory`.
        to: the target: a path ending in `.keras` for format "keras", a
            directory for "savedmodel".
        which: "latest", "best", or a checkpoint id. Defaults to "latest".
        format: "keras" or "savedmodel" (TensorFlow backend only).
            Defaults to "keras".
        overwrite: replace an existing target. Defaults to False.

    Returns:
        A dict describing the export: `to`, `format`, and the checkpoint's
        `id`, `dir`, `kind`, `epoch` (1-based), `step_in_epoch`, `global_step`.
    """
    import keras

    to = Path(to)
    if format not in ("keras", "savedmodel"):
        raise ValueError(
            f"Invalid value for argument format. Received: format={format!r}. "
            "Expected 'keras' or 'savedmodel'."
        )
    if format == "keras" and to.suffix != ".keras":
        raise ValueError(
            f"Invalid export target {to}: format 'keras' writes a .keras file. Give a path "
            "ending in .keras, or use format 'savedmodel' for a directory."
        )
    if format == "savedmodel" and keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"Cannot export {to} as a SavedModel: it needs the TensorFlow backend, this process "
            f"uses {keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow, or export with "
            "format 'keras'."
        )
    if to.exists() and not overwrite:
        raise FileExistsError(
            f"Export target {to} already exists. Remove it, choose another path, or pass "
            "overwrite=True (--overwrite)."
        )
    model, entry = load_model(run, which)
    to.parent.mkdir(parents=True, exist_ok=True)
    if format == "keras":
        model.save(str(to))
    else:
        model.export(str(to), format="tf_saved_model", verbose=False)
    return {
        "to": str(to),
        "format": format,
        "id": entry["id"],
        "dir": entry["dir"],
        "kind": entry["kind"],
        "epoch": entry["epoch"] + 1,
        "step_in_epoch": entry["step_in_epoch"],
        "global_step": entry["global_step"],
    }


def prune(run, keep_last=1, keep_best=1, keep_every_epochs=None, dry_run=False) -> dict:
    """Removes old checkpoints of a run, keeping the ones a rule asks for.

    Use it to reclaim disk space from a run that kept many checkpoints. It
    keeps the newest `keep_last` backups, the newest `keep_best` best
    checkpoints, and the backups written at the end of every
    `keep_every_epochs`-th epoch; the newest backup (where a resume
    continues), the newest backup of each earlier `fit` of the script (see
    `FullStateResume`) and the current best are never removed. Crash-safe: the
    entries leave the manifest first (one atomic write, under the
    directory's writer lock, so not while a training process writes), then
    their directories are deleted; a crash in between leaves only unlisted
    directories, which the next training session removes.

    Example:

    ```python
    keras_resume.runs.prune("runs/exp1", keep_last=2, keep_every_epochs=10)
    ```

    Args:
        run: a path, an fsspec URL or a `CheckpointDirectory`.
        keep_last: backups to keep, newest first. Defaults to 1.
        keep_best: best checkpoints to keep, newest first. Defaults to 1.
        keep_every_epochs: also keep each backup that completed an epoch
            whose 1-based number is a multiple of it. Defaults to None.
        dry_run: only report what would be removed. Defaults to False.

    Returns:
        `{"kept": [...], "removed": [...], "freed": bytes, "dry_run": bool}`;
        `kept` and `removed` hold `list_checkpoints` rows, the kept ones with
        `reasons`.
    """
    for name, value, low in (
        ("keep_last", keep_last, 0),
        ("keep_best", keep_best, 0),
        ("keep_every_epochs", keep_every_epochs, 1),
    ):
        if value is None and name == "keep_every_epochs":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(
                f"Invalid value for argument {name}. Received: {name}={value!r}. "
                f"Expected an integer >= {low}."
            )
    ckpt, manifest = open_run(run)
    policy = retention.for_prune(keep_last, keep_best, keep_every_epochs)
    plan = retention.plan(manifest, policy)
    removed: list[dict] = [c for c in manifest["checkpoints"] if c["id"] not in plan]
    if removed and not dry_run:
        manifest, plan, removed = ckpt.retain(policy)
    backups = [c for c in manifest["checkpoints"] if c["kind"] == "backup"]
    resume_id = backups[-1]["id"] if backups else None  # what select("latest") picks
    now = datetime.now(timezone.utc)
    kept = [
        {**checkpoint_row(c, manifest, resume_id, now), "reasons": plan[c["id"]]}
        for c in manifest["checkpoints"]
        if c["id"] in plan
    ]
    gone = [checkpoint_row(c, manifest, None, now) for c in removed]
    return {
        "kept": kept,
        "removed": gone,
        "freed": sum(row["size"] for row in gone),
        "dry_run": bool(dry_run),
    }
