"""The public callbacks, one per file. They decide *when*; `state/` decides *what*."""

from keras_resume.callbacks.best_checkpoint import BestCheckpoint
from keras_resume.callbacks.full_state_resume import FullStateResume
from keras_resume.callbacks.rng_capture import RngCapture
from keras_resume.callbacks.scheduler_capture import SchedulerCapture
from keras_resume.callbacks.step_backup import StepBackup

__all__ = ["BestCheckpoint", "FullStateResume", "RngCapture", "SchedulerCapture", "StepBackup"]
