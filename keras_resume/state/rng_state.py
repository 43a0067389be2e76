"""Random number generator state: Python, NumPy, the backend, and every SeedGenerator.

Process-wide generators (`random`, `numpy.random`, the backend's) are captured
as JSON; the model's `keras.random.SeedGenerator` states as arrays.
"""

from __future__ import annotations

import random

import numpy as np

from keras_resume import backend
from keras_resume.state.bundle import StateBundle

GLOBAL = backend.GLOBAL_SEED_GENERATOR_NAME


def capture_process_rng() -> dict:
    """The state of Python's, NumPy's and the backend's global generators, as JSON."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "backend": backend.capture_backend_rng(),
        "backend_name": backend.name(),
    }


def restore_process_rng(state: dict) -> list[str]:
    """Restores `capture_process_rng`'s output; returns the parts that could not be."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if crosses_backend(state):
        return [cross_backend_message(state)]
    return backend.restore_backend_rng(state.get("backend", {}))


def crosses_backend(process_state: dict) -> bool:
    """Whether `capture_process_rng`'s state was taken on another Keras backend."""
    return process_state.get("backend_name", backend.name()) != backend.name()


def cross_backend_message(process_state: dict) -> str:
    return (
        f"random generator state cannot cross Keras backends (written on "
        f"{process_state.get('backend_name')}, this process runs {backend.name()}): each "
        "backend draws dropout masks, augmentation and shuffles with its own algorithm, "
        "so the SeedGenerator and backend generator states are not restored"
    )


def capture_seed_generators(model, bundle: StateBundle) -> None:
    generators = backend.seed_generators(model)
    bundle.meta["seed_generators"] = [name for name, _ in generators]
    bundle.put_arrays("seed_generators", [backend.to_numpy(g.state) for _, g in generators])


def restore_seed_generators(model, bundle: StateBundle) -> list[str]:
    """Assigns saved SeedGenerator states; returns what could not be matched.

    Layer generators are matched by position, like weights; Keras's global
    generator by its role.
    """
    saved = list(zip(bundle.meta.get("seed_generators", []), bundle.get_arrays("seed_generators")))
    saved_layer = [value for name, value in saved if name != GLOBAL]
    saved_global = [value for name, value in saved if name == GLOBAL]
    live_layer = [g for name, g in backend.seed_generators(model) if name != GLOBAL]
    if len(saved_layer) != len(live_layer):
        return [f"{len(saved_layer)} layer SeedGenerators saved, model has {len(live_layer)}"]
    pairs = list(zip(live_layer, saved_layer))
    if saved_global:
        pairs.append((backend.global_seed_generator(), saved_global[0]))
    unmatched = []
    for generator, value in pairs:
        if tuple(generator.state.shape) != value.shape:
            unmatched.append(f"SeedGenerator {generator.name} has another shape")
            continue
        generator.state.assign(value.astype(generator.state.dtype))
    return unmatched
