"""`RngCapture`: puts every random generator's state into each backup."""

from __future__ import annotations

from keras_resume.callbacks.session import SessionCallback
from keras_resume.state import pipeline_state, rng_state


class RngCapture(SessionCallback):
    """Adds the state of every random number generator to each backup.

    Dropout masks, random augmentation, `numpy.random` and `random` draws all
    continue after a resume exactly where they stopped. Without it a resumed
    run trains on, but draws other random numbers than the uninterrupted run.

    Captured: Python's `random`, NumPy's global generator, the backend's global
    generators (TensorFlow's op-seed generator and global `tf.random.Generator`),
    and every `keras.random.SeedGenerator` of the model plus Keras's global one.
    SeedGenerators outside the model that a `tf.data` pipeline's `map` reads
    (Keras augmentation layers mapped over the dataset) are found and captured
    too, as each epoch's data iterator is made. Pass others the pipeline uses
    (in a `PyDataset`, a generator, a `tf.py_function`) as `extra`.
    Not captured: generators your own code creates (`numpy.random.default_rng()`).

    Example:

    An interrupted run with dropout and shuffling, resumed, ends with the
    weights of the uninterrupted one:

    >>> import tempfile
    >>> import keras
    >>> import numpy as np
    >>> import keras_resume as kr
    >>> x = np.random.default_rng(0).random((8, 2))
    >>> y = x.sum(axis=1, keepdims=True)
    >>> def train(run, epochs):
    ...     keras.utils.set_random_seed(0)
    ...     model = keras.Sequential([keras.Input((2,)), keras.layers.Dropout(0.5),
    ...                               keras.layers.Dense(1)])
    ...     model.compile(optimizer="sgd", loss="mse")
    ...     model.fit(x, y, batch_size=4, epochs=epochs, verbose=0, callbacks=[
    ...         kr.FullStateResume(run), kr.StepBackup(run), kr.RngCapture(run)])
    ...     return model.get_weights()
    >>> uninterrupted = train(tempfile.mkdtemp(), epochs=2)
    >>> run = tempfile.mkdtemp()
    >>> _ = train(run, epochs=1)  # stopped after epoch 1
    >>> resumed = train(run, epochs=2)  # rerun: epoch 2 draws the same masks and order
    >>> all(np.array_equal(a, b) for a, b in zip(uninterrupted, resumed))
    True

    Args:
        ckpt: a `CheckpointDirectory` or a path.
        extra: SeedGenerators, or layers holding them, that the data pipeline
            draws from outside the model and that keras_resume cannot find.
    """

    section = "rng"

    def __init__(self, ckpt, extra=(), **kwargs):
        super().__init__(ckpt, **kwargs)
        self.extra = list(extra)
        pipeline_state.generators_of(self.extra)  # a wrong item fails now, by name

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.session.providers[self.section] = self
        if self.extra:
            self.session.tracker.pipeline.add(self.extra)

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        # The generators an epoch's shuffle draws from, as the epoch begins: a
        # mid-epoch resume redraws that shuffle from them. FullStateResume sets
        # it instead on the epoch it resumes.
        started = self.session.epoch_start_rng
        if started is None or started[0] != epoch:
            self.session.epoch_start_rng = (epoch, rng_state.capture_process_rng())

    def capture_state(self, model, bundle) -> None:
        bundle.meta["rng"] = {"process": rng_state.capture_process_rng()}
        started = self.session.epoch_start_rng
        if bundle.meta.get("data", {}).get("mid_epoch") and started is not None:
            bundle.meta["rng"]["epoch_start"] = started[1]
        rng_state.capture_seed_generators(model, bundle)
