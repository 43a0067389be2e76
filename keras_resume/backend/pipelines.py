"""The data pipeline `model.fit` reads, seen through its `EpochIterator`.

What feeds it (a PyDataset, a `tf.data.Dataset`, a Python generator), what a
`tf.data` pipeline holds (caches, variables), how `fit` makes and draws its
iterators, and how it learns the data ran out.
"""

from __future__ import annotations

from keras_resume.backend.core import _tensorflow_loaded, name


def py_dataset_of(epoch_iterator):
    """The user's `keras.utils.PyDataset` behind an epoch iterator, or None."""
    adapter = getattr(epoch_iterator, "data_adapter", None)
    return getattr(adapter, "py_dataset", None)


def tf_dataset_of(epoch_iterator):
    """The `tf.data.Dataset` `fit` reads (`TFDatasetAdapter._dataset`), on any backend, or None."""
    dataset = getattr(getattr(epoch_iterator, "data_adapter", None), "_dataset", None)
    return dataset if _is_tf_dataset(dataset) else None


def _is_tf_dataset(value) -> bool:
    if not _tensorflow_loaded():
        return False
    import tensorflow as tf

    return isinstance(value, tf.data.Dataset)


def pipeline_datasets(dataset) -> list:
    """`dataset` and every dataset it reads from (`_inputs()`), each once, output first."""
    found, seen, todo = [], set(), [dataset]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        todo.extend(current._inputs())
    return found


def cache_ops(dataset) -> list[str]:
    """The `.cache()` steps of a `tf.data` pipeline: each one's file name, "" for memory."""
    from tensorflow.python.data.ops.cache_op import CacheDataset

    return [
        d._filename.numpy().decode("utf-8", "replace")
        for d in pipeline_datasets(dataset)
        if isinstance(d, CacheDataset)
    ]


def pipeline_variables(dataset) -> list:
    """The TensorFlow variables the pipeline's functions (`map`, `filter`, ...) read.

    A Keras preprocessing layer mapped over the pipeline reads its SeedGenerator's
    state there (on JAX and PyTorch, the TensorFlow twin the layer made for it).
    """
    found, seen = [], set()
    for d in pipeline_datasets(dataset):
        for wrapper in d._functions():
            for variable in wrapper.function.graph.variables:
                if id(variable) not in seen:
                    seen.add(id(variable))
                    found.append(variable)
    return found


def python_generator_of(epoch_iterator):
    """The Python generator `fit` reads (`GeneratorDataAdapter`), or None.

    The adapter keeps it inside the function that chains the batches it
    peeked at to the rest (`peek_and_restore`).
    """
    import types

    from keras.src.trainers.data_adapters.generator_data_adapter import GeneratorDataAdapter

    adapter = getattr(epoch_iterator, "data_adapter", None)
    if not isinstance(adapter, GeneratorDataAdapter):
        return None
    for cell in getattr(adapter.generator, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if isinstance(value, types.GeneratorType):
            return value
    return None


def describe_generator(generator) -> str:
    """`qualname` (file:line of its definition), as a message names a generator."""
    code = generator.gi_code
    return f"{generator.__qualname__} ({code.co_filename}:{code.co_firstlineno})"


def enqueuer_of(epoch_iterator):
    """The `OrderedEnqueuer` reading a PyDataset with workers (`workers>1` or
    `use_multiprocessing`), or None."""
    if py_dataset_of(epoch_iterator) is None:
        return None
    return getattr(epoch_iterator.data_adapter, "enqueuer", None)


def iterators_draw_lazily() -> bool:
    """Whether `fit`'s `_get_iterator` returns something that makes the data
    iterator only when first drawn from (JAX, PyTorch) rather than at once (TensorFlow)."""
    return name() != "tensorflow"


def is_end_of_data(error: BaseException) -> bool:
    """Whether `error`, raised by a train step, is how `fit` learns its data ran out.

    An input of unknown size (a sharded or filtered `tf.data.Dataset`) ends its
    epoch with StopIteration, or TensorFlow's OutOfRangeError: control flow,
    not a failure.
    """
    if isinstance(error, StopIteration):
        return True
    if _tensorflow_loaded():
        import tensorflow as tf

        return isinstance(error, tf.errors.OutOfRangeError)
    return False


def open_iterator(epoch_iterator, draw: int | None = 0) -> None:
    """Makes the data iterator `fit` makes at an epoch's start, and draws `draw` batches.

    What matters is what making it changes: a `tf.data` shuffle reshuffles per
    iterator, and one read through fills a `.cache()`. On TensorFlow
    `_get_iterator` makes the dataset's iterator; on JAX and PyTorch it returns
    a generator (or loader) that makes one only when first drawn from, so the
    dataset's iterator is made here directly. `draw=None` draws to the end.
    """
    iterator = epoch_iterator._get_iterator()
    dataset = getattr(getattr(epoch_iterator, "data_adapter", None), "_dataset", None)
    if name() != "tensorflow" and _is_tf_dataset(dataset):
        made = iter(dataset)
    else:
        made = iter(iterator)
    drawn = 0
    while draw is None or drawn < draw:
        try:
            next(made)
        except StopIteration:
            break
        except Exception as e:  # noqa: BLE001 - TensorFlow's end of data
            if is_end_of_data(e):
                break
            raise
        drawn += 1


def batches_per_epoch(epoch_iterator) -> int | None:
    """The batches `fit` draws from each epoch's iterator; None: until the data ends."""
    return getattr(epoch_iterator, "_num_batches", None) or None


def uses_persistent_iterator(epoch_iterator) -> bool:
    """True when `fit` keeps one data iterator across epochs (`steps_per_epoch` set)."""
    return bool(getattr(epoch_iterator, "steps_per_epoch", None))
