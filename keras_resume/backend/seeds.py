"""Keras's `SeedGenerator`s: the model's layers', the global one, and the data layers'.

Found in the model, in Keras's global state, or among the process's live
objects; and each one's state read as a host array, whichever backend made it.
"""

from __future__ import annotations

import numpy as np

from keras_resume.backend.arrays import to_numpy
from keras_resume.backend.core import _tensorflow_loaded

GLOBAL_SEED_GENERATOR_NAME = "keras_global_seed_generator"


def seed_generators(model) -> list[tuple[str, object]]:
    """Every `SeedGenerator` that drives the model's randomness, in a stable order.

    Includes each layer's generators (Dropout, random augmentation, ...) and
    Keras's global generator, which unseeded `keras.random` calls use.
    """
    found = []
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for i, generator in enumerate(getattr(layer, "_seed_generators", [])):
            found.append((f"{layer.name}/seed_generator_{i}", generator))
    global_generator = existing_global_seed_generator()
    if global_generator is not None:
        found.append((GLOBAL_SEED_GENERATOR_NAME, global_generator))
    return found


def existing_global_seed_generator():
    """Keras's global `SeedGenerator` if unseeded `keras.random` calls made it, else None.

    `keras.random`'s `global_seed_generator()` makes one when there is none; this
    only looks. Keras keeps it in its global state under "global_seed_generator"
    (the constant `GLOBAL_SEED_GENERATOR` names the key from Keras 3.13 on).
    """
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator

    key = getattr(seed_generator, "GLOBAL_SEED_GENERATOR", "global_seed_generator")
    return global_state.get_global_attribute(key)


def global_seed_generator():
    """Keras's global `SeedGenerator`, made now if no unseeded `keras.random` call made it."""
    from keras.src.random.seed_generator import global_seed_generator as get

    return get()


def live_seed_generators() -> list:
    """Every `keras.random.SeedGenerator` of the process (a scan of the gc's objects)."""
    import gc

    from keras.src.random.seed_generator import SeedGenerator

    # type(), not isinstance(): some objects answer `__class__` with a deprecation warning.
    return [o for o in gc.get_objects() if issubclass(type(o), SeedGenerator)]


def seed_generators_reading(variables, generators) -> list:
    """Those of `generators` whose state is one of `variables`, in the order of `variables`."""
    by_state = {id(g.state.value): g for g in generators}
    return [by_state[id(v)] for v in variables if id(v) in by_state]


def seed_state(generator) -> np.ndarray:
    """A host copy of a SeedGenerator's state, whichever backend made it (tf.data on JAX:
    a TensorFlow variable in a JAX process)."""
    value = generator.state.value
    if _is_tf_value(value):
        return np.array(value.numpy(), copy=True)
    return to_numpy(generator.state)


def _is_tf_value(value) -> bool:
    return _tensorflow_loaded() and type(value).__module__.startswith("tensorflow.")


def layers_of(model) -> list:
    """`model` (or a layer) and every layer inside it."""
    return list(model._flatten_layers(include_self=True, recursive=True))


def layer_seed_generators(layer) -> list:
    """A layer's own SeedGenerators, with those it made for another backend (tf.data on JAX)."""
    own = list(getattr(layer, "_seed_generators", []))
    own += list(getattr(layer, "_backend_generators", {}).values())
    return own


def data_layers_with_seed_generators() -> list:
    """Every live Keras preprocessing layer made for data pipelines that holds a SeedGenerator."""
    import gc

    try:
        from keras.src.layers.preprocessing.data_layer import DataLayer
    except ImportError:  # Keras before 3.12: the same base, named for tf.data only
        from keras.src.layers.preprocessing.tf_data_layer import TFDataLayer as DataLayer

    return [
        o for o in gc.get_objects() if issubclass(type(o), DataLayer) and layer_seed_generators(o)
    ]
