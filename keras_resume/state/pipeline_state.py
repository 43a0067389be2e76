"""The state a data pipeline keeps outside the model: SeedGenerators and `.cache()`.

Keras's preprocessing layers mapped over a `tf.data` pipeline (keras.io's
augmentation "option 2") draw from SeedGenerators that are not the model's:
the pipeline's functions read their state, so they are found there. Their
state is taken as each epoch's data iterator is made (the iterator's
prefetching moves it on unseen afterwards) and put back as the resumed epoch
begins, before its iterator is made. Generators the pipeline reaches some
other way are passed as `RngCapture(ckpt, extra=[...])`; live augmentation
layers reached neither way are named in a warning.

A `.cache()` in memory is filled by the first epoch that reads its input to
the end, and every later epoch reads that epoch's order. A resumed run's cache
starts empty: `DataTracker.fast_forward` reads the first epoch again through
the pipeline (`read_through`) so the cache holds what it held then.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np

from keras_resume import backend

SECTION = "data_seed_generators"


def generators_of(items) -> list:
    """SeedGenerators of `items` (SeedGenerators or layers, a layer's nested ones too)."""
    found = []
    for item in items:
        if isinstance(item, keras.random.SeedGenerator):
            found.append(item)
        elif isinstance(item, keras.layers.Layer):
            for layer in backend.layers_of(item):
                found.extend(backend.layer_seed_generators(layer))
        else:
            raise TypeError(
                f"RngCapture(extra=...) takes keras.random.SeedGenerator objects and Keras "
                f"layers; received {item!r} ({type(item).__name__})."
            )
    return found


class PipelineState:
    """The SeedGenerators and caches of the `tf.data` pipeline (if any) one `fit` reads."""

    def __init__(self, epoch_iterator):
        self.dataset = backend.tf_dataset_of(epoch_iterator)
        self.watched = self.dataset is not None or backend.py_dataset_of(epoch_iterator)
        self.generators: list = []
        self.caches: list[str] = []
        self.at_iterator: list | None = None  # states as the latest iterator was made
        self._checked = False
        if self.dataset is None:
            return
        self.caches = backend.cache_ops(self.dataset)
        variables = backend.pipeline_variables(self.dataset)
        if variables:
            self.generators = backend.seed_generators_reading(
                variables, backend.live_seed_generators()
            )
        for filename in self.caches:
            if filename:
                warnings.warn(
                    f"The tf.data pipeline of this fit caches to the file {filename!r} "
                    "(.cache(filename)). keras_resume neither saves nor checks that file: "
                    "a resumed run is exact only if it reads the same complete file the "
                    "interrupted run wrote. A run killed during its first epoch leaves the "
                    f"file incomplete with a lockfile ({filename}_0.lockfile), which "
                    "TensorFlow refuses; delete the cache files before rerunning then, or "
                    "use .cache() in memory, which keras_resume rebuilds on resume.",
                    stacklevel=4,
                )

    @property
    def memory_cache(self) -> bool:
        return "" in self.caches

    def add(self, extra) -> None:
        """Adds `RngCapture(extra=...)`'s generators (SeedGenerators or layers)."""
        for generator in generators_of(extra):
            if all(generator is not g for g in self.generators):
                self.generators.append(generator)
        self.at_iterator = None

    def _values(self) -> list[np.ndarray]:
        return [backend.seed_state(g) for g in self.generators]

    def iterator_made(self, model) -> None:
        """Called as an epoch's data iterator is made, before anything is drawn from it."""
        if not self._checked:
            self._checked = True
            self._warn_unreached(model)
        if self.generators:
            self.at_iterator = self._values()

    def capture(self, bundle, mid_epoch: bool) -> None:
        if not self.generators:
            return
        values = self.at_iterator if mid_epoch and self.at_iterator is not None else None
        bundle.meta[SECTION] = [g.state.path for g in self.generators]
        bundle.put_arrays(SECTION, values if values is not None else self._values())

    def restore(self, bundle) -> list[str]:
        """Puts the saved states back; returns what could not be matched."""
        names = bundle.meta.get(SECTION)
        if names is None:
            return (
                [f"{len(self.generators)} SeedGenerators of the data pipeline, none saved"]
                if self.generators
                else []
            )
        values = bundle.get_arrays(SECTION)
        live = [g.state.path for g in self.generators]
        if names != live:
            return [f"data pipeline SeedGenerators saved {names}, this run has {live}"]
        problems = []
        for generator, value in zip(self.generators, values):
            if tuple(generator.state.shape) != value.shape:
                problems.append(f"SeedGenerator {generator.state.path} has another shape")
                continue
            generator.state.assign(value.astype(generator.state.dtype))
        return problems

    def _warn_unreached(self, model) -> None:
        """Names live augmentation layers outside the model whose generators nothing captures."""
        if not self.watched:
            return
        in_model = {id(layer) for layer in backend.layers_of(model)}
        captured = {id(g) for g in self.generators}
        unreached = [
            layer
            for layer in backend.data_layers_with_seed_generators()
            if id(layer) not in in_model
            and not any(id(g) in captured for g in backend.layer_seed_generators(layer))
        ]
        if unreached:
            names = ", ".join(f"{layer.name} ({type(layer).__name__})" for layer in unreached)
            warnings.warn(
                f"Preprocessing layers outside the model hold SeedGenerators that "
                f"keras_resume does not capture: {names}. If the data pipeline uses them "
                "(in a PyDataset, a generator or a tf.py_function), a resumed run draws "
                "their randomness from where this process's generators stand, not where "
                "the interrupted run's stood, and is not bit-identical. Pass them as "
                "keras_resume.RngCapture(ckpt, extra=[...]).",
                stacklevel=5,
            )
