"""Where the input pipeline stands, and how to put a new process's pipeline there.

A data pipeline's order can depend on how many iterators were made before
(`tf.data` reshuffles per iterator) and on the RNG state when a
`keras.utils.PyDataset` reshuffles in `on_epoch_end`. The tracker counts the
first and records the second, so a resumed run replays them cheaply instead
of replaying data or training.
"""

from __future__ import annotations

import warnings

from keras_resume import backend
from keras_resume.state.rng_state import capture_process_rng, restore_process_rng


class DataTracker:
    """Watches one `fit` call's data iterator; captures and replays its position."""

    def __init__(self, model, epoch_iterator):
        self.epoch_iterator = epoch_iterator
        self.py_dataset = backend.py_dataset_of(self.epoch_iterator)
        self.iterators_created = 0
        self.epoch_end_rng: list[dict] = []
        # A DataLoader's own torch generators, as each epoch's iterator was made.
        self.generators = backend.pipeline_generators(self.epoch_iterator)
        self.epoch_start_generators: list[dict] | None = None
        self._pending_generators: list[dict] | None = None
        self._patched = []
        if self.epoch_iterator is None:
            warnings.warn(
                "keras_resume could not find the data iterator of this model.fit call "
                f"(Keras {backend.versions()['keras']}); a resumed run will restart "
                "the data pipeline from its first iterator, so it may not be exact.",
                stacklevel=3,
            )
            return
        if backend.uses_persistent_iterator(self.epoch_iterator):
            warnings.warn(
                "fit(steps_per_epoch=...) keeps one data iterator across epochs; "
                "keras_resume resumes it at the right epoch and step, but the "
                "position of that iterator within the dataset is not restored, so a "
                "resumed run is not bit-identical. Leave steps_per_epoch unset for "
                "exact resume.",
                stacklevel=3,
            )
        self._wrap(self.epoch_iterator, "_get_iterator", self._counting)
        if self.py_dataset is not None:
            adapter = self.epoch_iterator.data_adapter
            self._wrap(adapter, "on_epoch_end", self._recording)
        if self.generators:
            # fit calls it right before it makes the epoch's iterator.
            self._wrap(self.epoch_iterator.data_adapter, "on_epoch_begin", self._at_epoch_start)

    def _wrap(self, obj, attribute, make_wrapper):
        original = getattr(obj, attribute)
        setattr(obj, attribute, make_wrapper(original))
        self._patched.append((obj, attribute))

    def _counting(self, original):
        def get_iterator():
            made = original()
            if not backend.iterators_draw_lazily():
                self.iterators_created += 1
                return made
            # `fit` makes the next epoch's iterator at the end of each epoch and
            # another at its start: on JAX and PyTorch only the one drawn from
            # makes the `tf.data` iterator whose making reshuffles.
            return self._count_first_draw(iter(made))

        return get_iterator

    def _count_first_draw(self, iterator):
        try:
            first = next(iterator)
        except StopIteration:
            return
        self.iterators_created += 1
        yield first
        yield from iterator

    def _recording(self, original):
        def on_epoch_end():
            # The RNG state the PyDataset's reshuffle will draw from.
            self.epoch_end_rng.append(capture_process_rng())
            return original()

        return on_epoch_end

    def _at_epoch_start(self, original):
        def on_epoch_begin():
            if self._pending_generators is not None:
                # The resumed epoch: its loader draws its order from where the
                # original run's did, so the skipped batches and the rest match.
                self._restore_generators(self._pending_generators)
                self._pending_generators = None
            self.epoch_start_generators = backend.capture_generators(self.generators)
            return original()

        return on_epoch_begin

    def _restore_generators(self, saved: list) -> None:
        problems = backend.restore_generators(self.generators, saved)
        if problems:
            warnings.warn(
                "keras_resume could not restore the torch generators of the DataLoader "
                f"given to fit ({'; '.join(problems)}): the resumed epoch draws another "
                "order than the original run. Pass the DataLoader built as in the "
                "original run (the same sampler and generator arguments).",
                stacklevel=3,
            )

    def detach(self) -> None:
        for obj, attribute in self._patched:
            obj.__dict__.pop(attribute, None)
        self._patched = []

    def capture(self, mid_epoch: bool) -> dict:
        state = {
            "iterators_created": self.iterators_created,
            "mid_epoch": mid_epoch,
            "epoch_end_rng": list(self.epoch_end_rng),
            "tracked": self.epoch_iterator is not None,
        }
        if self.generators:
            # The resume epoch's start: this epoch's, or (after its last batch)
            # now, which the next epoch's iterator draws from.
            started = self.epoch_start_generators if mid_epoch else None
            state["generators"] = started or backend.capture_generators(self.generators)
        return state

    def fast_forward(self, saved: dict, epochs_done: int) -> None:
        """Brings a fresh pipeline to where the saved one was at the resume epoch's start."""
        if self.epoch_iterator is None or not saved.get("tracked"):
            return
        # The resume epoch's own iterator is made by fit itself: made before a
        # mid-epoch save, not yet made at an epoch-boundary save.
        ahead = saved["iterators_created"] - (1 if saved["mid_epoch"] else 0)
        for _ in range(max(ahead, 0)):
            backend.open_iterator(self.epoch_iterator)
        if saved.get("generators") and self.generators:
            self._pending_generators = saved["generators"]
        elif saved.get("generators"):
            self._restore_generators(saved["generators"])  # names what is missing
        if self.py_dataset is not None:
            replay = saved["epoch_end_rng"][:epochs_done]
            for state in replay:
                restore_process_rng(state)
                self.py_dataset.on_epoch_end()
            self.epoch_end_rng = list(replay)
