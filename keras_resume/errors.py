"""The library's error types.

Every error raised on purpose by keras_resume derives from `KerasResumeError`, so
callers can catch one type. Messages name the file, the bad value and the fix.
"""


class KerasResumeError(Exception):
    """Base class of every error keras_resume raises on purpose."""


class ManifestError(KerasResumeError, ValueError):
    """The manifest is unreadable, has a foreign format, or fails validation."""


class ManifestVersionError(ManifestError):
    """The manifest was written by another (newer) schema version of keras_resume."""


class CheckpointCorruptError(KerasResumeError, OSError):
    """A checkpoint file is missing, truncated or fails its checksum."""


class CheckpointMismatchError(KerasResumeError, ValueError):
    """The checkpoint was written by a model with other variables or optimizer."""


class NoCheckpointError(KerasResumeError, FileNotFoundError):
    """No committed checkpoint of the requested kind exists."""


class DirectoryLockedError(KerasResumeError, RuntimeError):
    """Another live process holds the checkpoint directory's writer lock."""


class CheckpointDirectoryError(KerasResumeError, OSError):
    """The run directory cannot be written safely: not a directory, read-only, or a
    file or directory in it is a symbolic or hard link (keras_resume never writes
    through one)."""


class SaveError(KerasResumeError, OSError):
    """A checkpoint could not be written; the previous checkpoint is intact."""


class RemoteError(KerasResumeError, OSError):
    """A remote run directory (s3://, any fsspec URL) could not be read or written."""


class UnsupportedStrategyError(KerasResumeError, ValueError):
    """The model trains under a distribution strategy keras_resume cannot resume."""
