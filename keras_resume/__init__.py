"""keras_resume: Keras 3 callbacks that make training survive interruption.

One manifest-driven checkpoint directory, exact (bit-identical) resume,
crash-safe commits. See README.md.
"""

__version__ = "0.1.0"

from keras_resume.callbacks import (  # noqa: E402
    BestCheckpoint,
    FullStateResume,
    RngCapture,
    SchedulerCapture,
    StepBackup,
)
from keras_resume.directory import CheckpointDirectory  # noqa: E402
from keras_resume.errors import (  # noqa: E402
    CheckpointCorruptError,
    CheckpointMismatchError,
    DirectoryLockedError,
    KerasResumeError,
    ManifestError,
    ManifestVersionError,
    NoCheckpointError,
    SaveError,
)
from keras_resume.preemption import EXIT_PREEMPTED, Preempted  # noqa: E402
from keras_resume.restore import RestoreInfo, restore  # noqa: E402

__all__ = [
    "BestCheckpoint",
    "CheckpointCorruptError",
    "CheckpointDirectory",
    "CheckpointMismatchError",
    "DirectoryLockedError",
    "EXIT_PREEMPTED",
    "FullStateResume",
    "KerasResumeError",
    "ManifestError",
    "ManifestVersionError",
    "NoCheckpointError",
    "Preempted",
    "RestoreInfo",
    "RngCapture",
    "SaveError",
    "SchedulerCapture",
    "StepBackup",
    "restore",
]
