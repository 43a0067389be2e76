"""What goes into a checkpoint and back: model and optimizer, RNG, callbacks, data position.

Each module turns one kind of state into JSON-able metadata plus named numpy
arrays (`StateBundle`), and back. None of them decides when to save.
"""

from keras_resume.state.bundle import StateBundle

__all__ = ["StateBundle"]
