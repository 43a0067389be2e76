"""keras_resume: Keras 3 callbacks that make training survive interruption.

One manifest-driven checkpoint directory, exact (bit-identical) resume,
crash-safe commits. See README.md.

The names below are imported on first use, so that `keras-resume run` (the
supervisor, standard library only) does not load Keras and its backend.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "BestCheckpoint": "keras_resume.callbacks",
    "FullStateResume": "keras_resume.callbacks",
    "RngCapture": "keras_resume.callbacks",
    "SchedulerCapture": "keras_resume.callbacks",
    "StepBackup": "keras_resume.callbacks",
    "CheckpointDirectory": "keras_resume.directory",
    "CheckpointCorruptError": "keras_resume.errors",
    "CheckpointDirectoryError": "keras_resume.errors",
    "CheckpointMismatchError": "keras_resume.errors",
    "DirectoryLockedError": "keras_resume.errors",
    "KerasResumeError": "keras_resume.errors",
    "ManifestError": "keras_resume.errors",
    "ManifestVersionError": "keras_resume.errors",
    "NoCheckpointError": "keras_resume.errors",
    "RemoteError": "keras_resume.errors",
    "SaveError": "keras_resume.errors",
    "UnsupportedStrategyError": "keras_resume.errors",
    "EXIT_PREEMPTED": "keras_resume.preemption",
    "Preempted": "keras_resume.preemption",
    "RestoreInfo": "keras_resume.restoring",
    "restore": "keras_resume.restoring",
    "history": "keras_resume.runs",
    "list_checkpoints": "keras_resume.runs",
    "plot": "keras_resume.plotting",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'keras_resume' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_EXPORTS])
