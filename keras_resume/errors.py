"""The library's error types.

Every error raised on purpose by keras_resume derives from `KerasResumeError`, so
callers can catch one type. Messages name the file, the bad value and the fix.
"""


class KerasResumeError(Exception):
    """Base class of every error keras_resume raises on purpose.

    Example:

    >>> import tempfile
    >>> import keras
    >>> import keras_resume as kr
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> try:
    ...     kr.restore(model, tempfile.mkdtemp())  # an empty directory: nothing to restore
    ... except kr.KerasResumeError as e:
    ...     print(type(e).__name__)
    NoCheckpointError
    """


class ManifestError(KerasResumeError, ValueError):
    """The manifest is unreadable, has a foreign format, or fails validation.

    Example:

    >>> import os
    >>> import tempfile
    >>> import keras_resume as kr
    >>> run = tempfile.mkdtemp()
    >>> with open(os.path.join(run, "manifest.json"), "w") as f:
    ...     _ = f.write("not JSON")  # damaged, and no checkpoint to rebuild it from
    >>> try:
    ...     kr.list_checkpoints(run)
    ... except kr.ManifestError as e:
    ...     print(type(e).__name__)
    ManifestError
    """


class ManifestVersionError(ManifestError):
    """The manifest was written by another (newer) schema version of keras_resume.

    Example:

    >>> import json
    >>> import os
    >>> import tempfile
    >>> import keras_resume as kr
    >>> run = tempfile.mkdtemp()
    >>> with open(os.path.join(run, "manifest.json"), "w") as f:
    ...     json.dump({"format": "keras-resume", "schema_version": 99}, f)
    >>> try:
    ...     kr.list_checkpoints(run)
    ... except kr.ManifestVersionError as e:
    ...     print(type(e).__name__, isinstance(e, kr.ManifestError))
    ManifestVersionError True
    """


class CheckpointCorruptError(KerasResumeError, OSError):
    """A checkpoint file is missing, truncated or fails its checksum.

    Example:

    >>> import pathlib
    >>> import tempfile
    >>> import warnings
    >>> import keras
    >>> import numpy as np
    >>> import keras_resume as kr
    >>> x = np.random.default_rng(0).random((8, 2))
    >>> y = x.sum(axis=1, keepdims=True)
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> run = tempfile.mkdtemp()
    >>> _ = model.fit(x, y, epochs=1, verbose=0, callbacks=[kr.StepBackup(run, keep=1)])
    >>> for weights in pathlib.Path(run).glob("backup-*/model.weights.h5"):
    ...     _ = weights.write_bytes(b"")  # truncate the only backup's weights
    >>> try:
    ...     with warnings.catch_warnings():
    ...         warnings.simplefilter("ignore")  # "Skipping damaged checkpoint ..."
    ...         kr.restore(model, run)
    ... except kr.CheckpointCorruptError as e:
    ...     print(type(e).__name__)
    CheckpointCorruptError
    """


class CheckpointMismatchError(KerasResumeError, ValueError):
    """The checkpoint was written by a model with other variables or optimizer.

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
    >>> _ = model.fit(x, y, epochs=1, verbose=0, callbacks=[kr.StepBackup(run)])
    >>> wider = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    >>> wider.compile(optimizer="sgd", loss="mse")
    >>> try:
    ...     kr.restore(wider, run)  # nothing is loaded into `wider`
    ... except kr.CheckpointMismatchError as e:
    ...     print(type(e).__name__)
    CheckpointMismatchError
    """


class NoCheckpointError(KerasResumeError, FileNotFoundError):
    """No committed checkpoint of the requested kind exists.

    Example:

    >>> import tempfile
    >>> import keras
    >>> import keras_resume as kr
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> try:
    ...     kr.restore(model, tempfile.mkdtemp(), which="best")
    ... except kr.NoCheckpointError as e:
    ...     print(type(e).__name__, isinstance(e, FileNotFoundError))
    NoCheckpointError True
    """


class DirectoryLockedError(KerasResumeError, RuntimeError):
    """Another live process holds the checkpoint directory's writer lock.

    Raised when a second process (a duplicate job, a second notebook kernel)
    starts training into a directory a live one writes; give each run its own
    directory.

    Example:

    >>> import keras_resume as kr
    >>> issubclass(kr.DirectoryLockedError, kr.KerasResumeError)
    True
    >>> issubclass(kr.DirectoryLockedError, RuntimeError)
    True
    """


class CheckpointDirectoryError(KerasResumeError, OSError):
    """The run directory cannot be written safely: not a directory, read-only, or a
    file or directory in it is a symbolic or hard link (keras_resume never writes
    through one).

    Example:

    >>> import os
    >>> import tempfile
    >>> import keras
    >>> import numpy as np
    >>> import keras_resume as kr
    >>> x = np.random.default_rng(0).random((8, 2))
    >>> y = x.sum(axis=1, keepdims=True)
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> not_a_dir = os.path.join(tempfile.mkdtemp(), "notes.txt")
    >>> with open(not_a_dir, "w") as f:
    ...     _ = f.write("a file, not a directory")
    >>> try:
    ...     model.fit(x, y, epochs=1, verbose=0, callbacks=[kr.StepBackup(not_a_dir)])
    ... except kr.CheckpointDirectoryError as e:
    ...     print(type(e).__name__)
    CheckpointDirectoryError
    """


class SaveError(KerasResumeError, OSError):
    """A checkpoint could not be written; the previous checkpoint is intact.

    `StepBackup` and `BestCheckpoint` raise it from `fit` (`on_error="raise"`,
    the default) when a save fails: a full disk, an I/O error.

    Example:

    >>> import keras_resume as kr
    >>> issubclass(kr.SaveError, kr.KerasResumeError), issubclass(kr.SaveError, OSError)
    (True, True)
    """


class RemoteError(KerasResumeError, OSError):
    """A remote run directory (s3://, any fsspec URL) could not be read or written.

    Example:

    >>> import keras_resume as kr
    >>> issubclass(kr.RemoteError, kr.KerasResumeError), issubclass(kr.RemoteError, OSError)
    (True, True)
    """


class UnsupportedStrategyError(KerasResumeError, ValueError):
    """The model trains under a distribution strategy keras_resume cannot resume.

    Example:

    >>> import keras_resume as kr
    >>> issubclass(kr.UnsupportedStrategyError, kr.KerasResumeError)
    True
    >>> issubclass(kr.UnsupportedStrategyError, ValueError)
    True
    """
