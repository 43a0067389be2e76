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

    ```python
    ckpt = keras_resume.CheckpointDirectory("runs/exp1")
    model.fit(x, y, callbacks=[keras_resume.StepBackup(ckpt, every_n_steps=100),
                               keras_resume.RngCapture(ckpt),
                               keras_resume.FullStateResume(ckpt)])
    ```

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
