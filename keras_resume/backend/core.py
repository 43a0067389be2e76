"""Which Keras backend this process runs, and the versions a checkpoint records.

The one module of the package every other one may import; it imports none of them.
"""

from __future__ import annotations

import sys

import keras
import numpy as np


def name() -> str:
    return keras.backend.backend()


def versions() -> dict:
    from keras_resume import __version__

    info = {
        "keras_resume": __version__,
        "keras": keras.version(),
        "backend": name(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
    }
    module = sys.modules.get(_BACKEND_MODULES.get(name(), ""))
    if module is not None:
        info["backend_version"] = getattr(module, "__version__", "unknown")
    return info


_BACKEND_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def _tensorflow_loaded() -> bool:
    return "tensorflow" in sys.modules
