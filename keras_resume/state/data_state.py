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
from keras_resume.state.pipeline_state import PipelineState
from keras_resume.state.rng_state import capture_process_rng, restore_process_rng


class DataTracker:
    """Watches one `fit` call's data iterator; captures and replays its position."""

    def __init__(self, model, epoch_iterator):
        self.model = model
        self.epoch_iterator = epoch_iterator
        self.pipeline = PipelineState(epoch_iterator)
        self._forwarding = False  # fast_forward's iterators are not the run's
        self.py_dataset = backend.py_dataset_of(self.epoch_iterator)
        self.iterators_created = 0
        self.epoch_end_rng: list[dict] = []
        # A DataLoader's own torch generators, as each epoch's iterator was made.
        self.generators = backend.pipeline_generators(self.epoch_iterator)
        self.epoch_start_generators: list[dict] | None = None
        self._pending_generators: list[dict] | None = None
        self._patched = []
        # A PyDataset read by workers: the batches its enqueuer holds when an epoch
        # begins, prefetched in the epoch before (see backend.EnqueuerWatch).
        self.watch = None
        self.queued_at_epoch_start: list = []
        if self.epoch_iterator is None:
            warnings.warn(
                "keras_resume could not find the data iterator of this model.fit call "
                f"(Keras {backend.versions()['keras']}); a resumed run will restart "
                "the data pipeline from its first iterator, so it may not be exact.",
                stacklevel=3,
            )
            return
        generator = backend.python_generator_of(self.epoch_iterator)
        if generator is not None:
            warnings.warn(
                "model.fit reads the Python generator "
                f"{backend.describe_generator(generator)}: keras_resume cannot save or "
                "restore where a generator stands, so a resumed run draws its batches "
                "from a new generator, from its start, and is not bit-identical to an "
                "uninterrupted run. For exact resume, give fit a keras.utils.PyDataset "
                "(batches by index) or a tf.data.Dataset instead.",
                stacklevel=3,
            )
        elif backend.uses_persistent_iterator(self.epoch_iterator):
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
            enqueuer = backend.enqueuer_of(self.epoch_iterator)
            if enqueuer is not None:
                self.watch = backend.EnqueuerWatch(enqueuer, lambda: len(self.epoch_end_rng))
                self._wrap(adapter, "on_epoch_begin", self._noting_queue)
        if self.generators:
            # fit calls it right before it makes the epoch's iterator.
            self._wrap(self.epoch_iterator.data_adapter, "on_epoch_begin", self._at_epoch_start)

    def _wrap(self, obj, attribute, make_wrapper):
        original = getattr(obj, attribute)
        setattr(obj, attribute, make_wrapper(original))
        self._patched.append((obj, attribute))

    def _counting(self, original):
        def get_iterator():
            if not backend.iterators_draw_lazily():
                self._iterator_made()
            made = original()
            if not backend.iterators_draw_lazily():
                self.iterators_created += 1
                return made
            # `fit` makes the next epoch's iterator at the end of each epoch and
            # another at its start: on JAX and PyTorch only the one drawn from
            # makes the `tf.data` iterator whose making reshuffles.
            return self._count_first_draw(iter(made))

        return get_iterator

    def _iterator_made(self):
        if not self._forwarding:
            self.pipeline.iterator_made(self.model)

    def _count_first_draw(self, iterator):
        self._iterator_made()  # nothing drawn yet: the first draw makes the data iterator
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

    def _noting_queue(self, original):
        def on_epoch_begin():
            self.queued_at_epoch_start = self.watch.queued()
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
        if self.watch is not None:
            self.watch.detach()

    def capture(self, mid_epoch: bool, bundle=None) -> dict:
        if bundle is not None:
            self.pipeline.capture(bundle, mid_epoch)
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
        if self.watch is not None:
            # Mid-epoch, what the resumed epoch must begin with; at an epoch's
            # end (the enqueuer stopped), what the next one begins with.
            queued = self.queued_at_epoch_start if mid_epoch else self.watch.queued()
            state["enqueuer_ready"] = [list(label) for label in queued]
        return state

    def fast_forward(self, saved: dict, epochs_done: int) -> None:
        """Brings a fresh pipeline to where the saved one was at the resume epoch's start."""
        if self.epoch_iterator is None or not saved.get("tracked"):
            return
        # The resume epoch's own iterator is made by fit itself: made before a
        # mid-epoch save, not yet made at an epoch-boundary save.
        ahead = saved["iterators_created"] - (1 if saved["mid_epoch"] else 0)
        self._forwarding = True
        try:
            for i in range(max(ahead, 0)):
                # A cache in memory holds what the first epoch read (see pipeline_state).
                read_through = i == 0 and self.pipeline.memory_cache
                draw = backend.batches_per_epoch(self.epoch_iterator) if read_through else 0
                backend.open_iterator(self.epoch_iterator, draw=draw)
        finally:
            self._forwarding = False
        if saved.get("generators") and self.generators:
            self._pending_generators = saved["generators"]
        elif saved.get("generators"):
            self._restore_generators(saved["generators"])  # names what is missing
        if self.py_dataset is not None:
            replay = saved["epoch_end_rng"][:epochs_done]
            rebuild = None
            if self.watch is not None and "enqueuer_ready" in saved:
                rebuild = _ReadyRebuild(self.watch, self.py_dataset, saved["enqueuer_ready"])
            for version, state in enumerate(replay):
                if rebuild is not None:
                    rebuild.compute(version)
                restore_process_rng(state)
                self.py_dataset.on_epoch_end()
            self.epoch_end_rng = list(replay)
            if rebuild is not None:
                rebuild.compute(len(replay))
                rebuild.install()

    def restore_pipeline(self, bundle, where) -> None:
        """Puts the data pipeline's SeedGenerators where they were as the resumed epoch began."""
        problems = self.pipeline.restore(bundle)
        if problems:
            warnings.warn(
                f"The data pipeline's SeedGenerators were not restored from {where}: "
                + "; ".join(problems)
                + ". Its augmentation draws other random numbers than the uninterrupted "
                "run did, so the resumed run is not bit-identical.",
                stacklevel=3,
            )


class _ReadyRebuild:
    """Rebuilds the batches a PyDataset's enqueuer held when the resumed epoch began.

    A batch labelled `(version, index)` was `py_dataset[index]` after `version`
    of the PyDataset's `on_epoch_end` calls: it is computed again while the
    replay of those calls has the PyDataset in that state. `(PRE, j)` is the
    `j`-th batch `fit` had queued before training began, which this process's
    `fit` queued the same way (same script, same seed).
    """

    def __init__(self, watch, py_dataset, labels):
        self.watch, self.py_dataset = watch, py_dataset
        self.labels = [tuple(label) for label in labels]
        self.batches: dict[int, object] = {}
        self.problems: list[str] = []
        for position, (version, index) in enumerate(self.labels):
            if version != watch.PRE:
                continue
            if 0 <= index < len(watch.ready_before):
                self.batches[position] = watch.ready_before[index]
            else:
                self.problems.append(
                    f"batch {position} of the queue was prefetched before training began "
                    f"(index {index}), and this run prefetched {len(watch.ready_before)}"
                )

    def compute(self, version: int) -> None:
        for position, (made_at, index) in enumerate(self.labels):
            if made_at == version and position not in self.batches:
                self.batches[position] = self.py_dataset[index]

    def install(self) -> None:
        missing = [p for p in range(len(self.labels)) if p not in self.batches]
        if missing and not self.problems:
            self.problems.append(f"batches {missing} were made after the epochs replayed")
        if self.watch.running():
            self.problems.append("its enqueuer is already running")
        if self.problems:
            warnings.warn(
                f"keras_resume could not rebuild the {len(self.labels)} batches the "
                f"enqueuer of {type(self.py_dataset).__name__} (workers="
                f"{self.py_dataset.workers}) had prefetched when the resumed epoch began: "
                + "; ".join(self.problems)
                + ". The resumed run trains on other batches first, so it is not "
                "bit-identical. Set workers=1 and use_multiprocessing=False for exact resume.",
                stacklevel=4,
            )
            return
        self.watch.replace_ready([self.batches[p] for p in range(len(self.labels))], self.labels)
