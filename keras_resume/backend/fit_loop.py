"""The training loop inside `model.fit`, and what Keras's callbacks share with it.

`fit`'s own locals (its epoch iterator and callback list) read from its frame,
what a resume changes in the loop (the initial epoch, a skipped train step, a
model or metrics built early), the callbacks' base class and printing, and the
`tf.distribute` strategies keras_resume refuses.
"""

from __future__ import annotations

import sys

import keras

# BestCheckpoint's base class (Keras 3.11 and later): the monitor, mode and best value.
from keras.src.callbacks.monitor_callback import MonitorCallback  # noqa: F401

from keras_resume.backend.core import _tensorflow_loaded, name


def metric_variables(model) -> list:
    """The variables of the running epoch's metrics (reset at every epoch start)."""
    return list(model.metrics_variables)


def set_initial_epoch(model, epoch: int | None) -> None:
    # Read by every backend's `fit` right after `on_train_begin`, exactly as Keras's
    # own BackupAndRestore uses it.
    model._initial_epoch = epoch


def _fit_frame(model, frame):
    while frame is not None:
        if frame.f_code.co_name == "fit" and frame.f_locals.get("self") is model:
            return frame
        frame = frame.f_back
    return None


def find_epoch_iterator(model):
    """The `EpochIterator` of the `model.fit` call running now, or None.

    `fit` does not hand its data iterator to callbacks; it is a local variable
    of `fit` on every backend. Reading it lets keras_resume put the data
    pipeline back where it was, instead of replaying whole epochs.
    """
    frame = _fit_frame(model, sys._getframe(1))
    return frame.f_locals.get("epoch_iterator") if frame is not None else None


def fit_callbacks(model) -> list:
    """The callbacks of the `model.fit` call running now, in their order, or [].

    Read from `fit`'s local `callbacks`, the `CallbackList` it made before
    `on_train_begin` (user callbacks, then History and ProgbarLogger).
    """
    frame = _fit_frame(model, sys._getframe(1))
    callbacks = frame.f_locals.get("callbacks") if frame is not None else None
    return list(getattr(callbacks, "callbacks", None) or [])


def in_fit(model, frame) -> bool:
    """Whether `frame` (e.g. where a signal arrived) is inside `model.fit`."""
    return _fit_frame(model, frame) is not None


def skip_batches(args: tuple, count: int):
    """Draws the batches of one `train_function(*args)` call, training on none.

    On TensorFlow `train_function(iterator)` draws its `count` batches itself,
    and so does JAX's `train_function(state, iterator)`; on PyTorch `fit` has
    already drawn the one batch into `train_function(data)`. Returns the first.
    """
    if name() == "torch":
        return args[0][0]
    iterator = args[-1]
    batches = [next(iterator) for _ in range(count)]
    return batches[0]


def untrained_result(model, args: tuple, metrics_restored: bool):
    """What a `train_function(*args)` call that trained nothing returns.

    The running metrics as logs; on JAX also the training state it was given,
    with the metric variables just restored into the model when
    `metrics_restored` (JAX's `fit` keeps the state outside the variables
    during an epoch, and reads the metrics from it).
    """
    if name() != "jax":
        return model.get_metrics_result()
    from keras.src.backend.common.stateless_scope import StatelessScope

    state = tuple(args[0])
    metrics = list(state[-1])
    if metrics_restored:
        metrics = [v.value for v in model.metrics_variables]
    with StatelessScope(state_mapping=list(zip(model.metrics_variables, metrics))):
        logs = model.get_metrics_result()
    return logs, (*state[:-1], metrics)


def build_from_data(model, epoch_iterator) -> bool:
    """Builds a model that `fit` builds only at its first batch, drawing no batch.

    On TensorFlow without a `tf.distribute` strategy, `fit` builds nothing
    before `on_train_begin`: a subclassed model never called before `fit` gets
    its variables when the first train step is traced. A resume must load them
    earlier, so the model is built here as Keras's `_symbolic_build` builds it,
    on symbolic inputs of the dataset's `element_spec`: no iterator is made, no
    batch drawn. The optimizers are left to `ensure_built`, which builds each
    on the variables the checkpoint's was built on. Returns whether it built.
    On JAX and PyTorch (and with a strategy) `fit` has built the model already.
    """
    dataset = getattr(epoch_iterator, "_distributed_dataset", None)
    spec = getattr(dataset, "element_spec", None)
    if spec is None:
        return False
    from keras.src import tree
    from keras.src.backend import compute_output_spec
    from keras.src.trainers.data_adapters import data_adapter_utils

    def symbolic(value):
        if value is None:
            return None
        dtype = keras.backend.standardize_dtype(value.dtype)
        return keras.KerasTensor(value.shape, dtype)

    x, _, _ = data_adapter_utils.unpack_x_y_sample_weight(tree.map_structure(symbolic, spec))
    compute_output_spec(model, x, training=False)
    model._post_build()
    return True


def build_metrics(model, batch) -> None:
    """Creates the compiled metrics' variables, which Keras makes lazily at the first step.

    A mid-epoch resume must set them before training continues. Keras's own
    symbolic build only looks at the batch's shapes and dtypes.
    """
    compile_metrics = getattr(model, "_compile_metrics", None)
    compile_loss = getattr(model, "_compile_loss", None)
    if (compile_metrics is not None and not compile_metrics.built) or (
        compile_loss is not None and not compile_loss.built
    ):
        model._symbolic_build(data_batch=batch)


def monitor_mode(callback) -> str:
    """Which way a `MonitorCallback`'s comparison (`monitor_op`) goes: "min" or "max"."""
    from keras.src import ops

    return "min" if callback.monitor_op is ops.less else "max"


def print_msg(message: str) -> None:
    """Prints as Keras's callbacks do: to stdout, or to absl logging when Keras's
    interactive logging is off (`keras.config.disable_interactive_logging()`)."""
    from keras.src.utils import io_utils

    io_utils.print_msg(message)


def check_strategy(model=None) -> None:
    """Raises `UnsupportedStrategyError` for a `tf.distribute` strategy keras_resume refuses.

    `MultiWorkerMirroredStrategy`: across workers Keras 3's `fit` fails before
    any callback runs (it cannot convert a `PerReplica` batch,
    keras-team/keras#20585), and keras_resume has no multi-worker checkpoint
    protocol for TensorFlow; a single worker would train, but a second one
    later could not resume from its checkpoints. Checked for the strategy in
    scope (a callback made inside `strategy.scope()`) and for `model`'s.
    """
    if name() != "tensorflow" or not _tensorflow_loaded():
        return
    import tensorflow as tf

    strategy = getattr(model, "_distribute_strategy", None) if model is not None else None
    if strategy is None and tf.distribute.has_strategy():
        strategy = tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        from keras_resume.errors import UnsupportedStrategyError

        raise UnsupportedStrategyError(
            f"keras_resume cannot resume training under tf.distribute."
            f"MultiWorkerMirroredStrategy ({type(strategy).__name__}, "
            f"{strategy.num_replicas_in_sync} replicas): it does not train under Keras 3 "
            "today (model.fit fails across workers converting a PerReplica value, "
            "keras-team/keras#20585). On one machine use tf.distribute.MirroredStrategy. "
            "Across processes or hosts use the JAX backend: "
            "keras.distribution.initialize(...) and "
            "keras.distribution.set_distribution(keras.distribution.DataParallel(...)), "
            "launched with `keras-resume run --nprocs N`."
        )
