"""The Keras internals keras_resume builds on, each pinned by name.

keras_resume reads parts of Keras (and of TensorFlow and JAX) that are not
public API: modules under `keras.src`, private functions of `saving_lib`, and
private attributes of the trainer, optimizer, callbacks, epoch iterator, data
adapters and SeedGenerators. Each test id here is one of them, so a Keras
upgrade that moves or changes one fails under that name, instead of as a
resume that is no longer exact. `INTERNALS` pins where each lives and that the
call keras_resume makes still binds; `BEHAVIOURS` checks, on this process's
backend, that each still does what keras_resume relies on; `FIT_LOOPS` reads
each backend's `fit`. Cheap: imports, signatures and three fits of a model of
a few dozen parameters.

tests/test_versions.py runs this file under the oldest Keras pyproject.toml
accepts; the suite runs it under the newest. Code that starts using another
internal adds it here (and reaches it through the keras_resume/backend/ package).
"""

import importlib
import inspect
import os
import random

import keras
import numpy as np
import pytest

import keras_resume as kr
from keras_resume import backend
from keras_resume.state import callback_state
from tests.conftest import BACKENDS, all_variables, tiny_data

BACKEND = backend.name()
# Backends whose `fit` is read (their packages must be installed). The old-Keras
# environment of tests/test_versions.py has no PyTorch and says so here.
FIT_BACKENDS = os.environ.get("KERAS_RESUME_CONTRACT_BACKENDS", ",".join(BACKENDS)).split(",")


def _resolve(module: str, qualname: str):
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


# (module, qualname, call): `call` is how keras_resume (or Keras, calling our
# store subclasses) calls it: (positional count, keyword names), positional
# counting `self` for a method; None for a constant or class used as it is.
INTERNALS = [
    # backend/weights_walk.py, weights_file.py: `.weights.h5` outside `save_weights`.
    ("keras.src.saving.saving_lib", "H5IOStore", (1, ("mode",))),
    ("keras.src.saving.saving_lib", "H5IOStore.make", (2, ("metadata",))),
    ("keras.src.saving.saving_lib", "H5IOStore.get", (2, ())),
    ("keras.src.saving.saving_lib", "H5IOStore.__setitem__", (3, ())),
    ("keras.src.saving.saving_lib", "H5IOStore.close", (1, ())),
    (
        "keras.src.saving.saving_lib",
        "_save_state",
        (1, ("weights_store", "assets_store", "inner_path", "visited_saveables")),
    ),
    (
        "keras.src.saving.saving_lib",
        "_load_state",
        (
            1,
            (
                "weights_store",
                "assets_store",
                "inner_path",
                "skip_mismatch",
                "visited_saveables",
                "failed_saveables",
                "error_msgs",
            ),
        ),
    ),
    ("keras.src.saving.saving_lib", "_walk_saveable", (1, ())),
    ("keras.src.saving.saving_lib", "_raise_loading_failure", (1, ("warn_only",))),
    ("keras.src.optimizers.base_optimizer", "BaseOptimizer.save_own_variables", (2, ())),
    # backend/seeds.py, rng.py: seeds and SeedGenerators.
    ("keras.src.backend.common.global_state", "get_global_attribute", (1, ())),
    ("keras.src.utils.rng_utils", "GLOBAL_RANDOM_SEED", None),
    ("keras.src.random.seed_generator", "global_seed_generator", (0, ())),
    ("keras.src.layers.layer", "Layer._flatten_layers", (1, ("include_self", "recursive"))),
    # backend/fit_loop.py, pipelines.py: the training loop.
    ("keras.src.trainers.epoch_iterator", "EpochIterator._get_iterator", (1, ())),
    ("keras.src.trainers.trainer", "Trainer._symbolic_build", (1, ("data_batch",))),
    ("keras.src.trainers.trainer", "Trainer.get_metrics_result", (1, ())),
    ("keras.src.backend.common.stateless_scope", "StatelessScope", (0, ("state_mapping",))),
    (
        "keras.src.trainers.data_adapters.py_dataset_adapter",
        "PyDatasetAdapter.on_epoch_end",
        (1, ()),
    ),
    # backend/fit_loop.py: a model fit builds at its first batch, built from the data's spec.
    ("keras.src.backend", "compute_output_spec", (2, ("training",))),
    ("keras.src.trainers.data_adapters.data_adapter_utils", "unpack_x_y_sample_weight", (1, ())),
    ("keras.src.tree", "map_structure", (2, ())),
    ("keras.src.layers.layer", "Layer._post_build", (1, ())),
    # backend/rng.py and state/data_state.py: a torch DataLoader's generators.
    (
        "keras.src.trainers.data_adapters.torch_data_loader_adapter",
        "TorchDataLoaderAdapter.get_torch_dataloader",
        (1, ()),
    ),
    ("keras.src.trainers.data_adapters.data_adapter", "DataAdapter.on_epoch_begin", (1, ())),
    # callbacks/: BestCheckpoint is a MonitorCallback; messages go through io_utils.
    (
        "keras.src.callbacks.monitor_callback",
        "MonitorCallback",
        (0, ("monitor", "mode", "baseline", "min_delta")),
    ),
    ("keras.src.callbacks.monitor_callback", "MonitorCallback._set_monitor_op", (1, ())),
    ("keras.src.callbacks.monitor_callback", "MonitorCallback._is_improvement", (3, ())),
    ("keras.src.ops", "less", (2, ())),
    ("keras.src.utils.io_utils", "print_msg", (1, ())),
    # backend/rng.py: TensorFlow's process-wide generators (captured on every backend).
    ("tensorflow.python.eager.context", "context", (0, ())),
    ("tensorflow.python.eager.context", "global_seed", (0, ())),
    ("tensorflow.python.ops.stateful_random_ops", "global_generator", None),
    # backend/collectives.py: a multi-process JAX job.
    ("jax._src.distributed", "global_state.client", None),
    ("jax.experimental.multihost_utils", "broadcast_one_to_all", (1, ())),
    ("jax.experimental.multihost_utils", "sync_global_devices", (1, ())),
    ("jax.experimental.multihost_utils", "process_allgather", (1, ())),
]
if "jax" in FIT_BACKENDS:
    INTERNALS.append(("keras.src.backend.jax.trainer", "JAXTrainer.jax_state_sync", (1, ())))

# backend/enqueuer.py, pipelines.py: a PyDataset's enqueuer (EnqueuerWatch), a Python
# generator's adapter, and the tf.data pipeline's steps, functions and caches
# (pipeline_state.py).
_PYDATASET = "keras.src.trainers.data_adapters.py_dataset_adapter"
INTERNALS += [
    (_PYDATASET, "PyDatasetAdapter.on_epoch_begin", (1, ())),
    (_PYDATASET, "PyDatasetEnqueuer._send_py_dataset", (1, ())),
    (_PYDATASET, "PyDatasetEnqueuer.is_running", (1, ())),
    (_PYDATASET, "OrderedEnqueuer._run", (1, ())),
    (_PYDATASET, "OrderedEnqueuer.get", (1, ())),
    ("keras.src.trainers.data_adapters.generator_data_adapter", "peek_and_restore", (1, ())),
    ("keras.src.trainers.data_adapters.generator_data_adapter", "GeneratorDataAdapter", (1, ())),
    ("tensorflow.python.data.ops.cache_op", "CacheDataset", (2, ())),
    ("tensorflow.python.data.ops.dataset_ops", "DatasetV2._inputs", (1, ())),
    ("tensorflow.python.data.ops.dataset_ops", "DatasetV2._functions", (1, ())),
]
try:
    importlib.import_module("keras.src.layers.preprocessing.data_layer")
    INTERNALS.append(("keras.src.layers.preprocessing.data_layer", "DataLayer", (0, ())))
except ImportError:  # Keras before 3.12
    INTERNALS.append(("keras.src.layers.preprocessing.tf_data_layer", "TFDataLayer", (0, ())))


@pytest.mark.parametrize(
    ("module", "qualname", "call"), INTERNALS, ids=[f"{m}:{q}" for m, q, _ in INTERNALS]
)
def test_internal_exists_and_our_call_binds(module, qualname, call):
    obj = _resolve(module, qualname)
    if call is None:
        return  # found (a constant, or a module global that may still be None)
    positional, keywords = call
    signature = inspect.signature(obj)
    # Raises TypeError if a parameter we pass is gone or a new one is required.
    signature.bind(*[None] * positional, **dict.fromkeys(keywords))


# --- Each backend's `model.fit`, read: what keras_resume finds in it -------------

TRAINERS = {
    "tensorflow": ("TensorFlowTrainer", "self.train_function(iterator)"),
    "jax": ("JAXTrainer", "self.train_function(state, iterator)"),
    "torch": ("TorchTrainer", "self.train_function(data)"),
}


@pytest.mark.parametrize("name", FIT_BACKENDS)
def test_fit_loop(name):
    """What backend.py's training-loop functions rely on in `fit` itself.

    `find_epoch_iterator`: a frame of a function named `fit` whose local
    `epoch_iterator` is the iterator. `wrap_train_function`: the train
    function is made before `on_train_begin` and called through
    `self.train_function` with the arguments `skip_batches` expects.
    `set_initial_epoch`: `_initial_epoch` is read after `on_train_begin`.
    `fit_callbacks`: `fit`'s local `callbacks` is the `CallbackList` made
    before `on_train_begin`.
    """
    class_name, call = TRAINERS[name]
    trainer = getattr(importlib.import_module(f"keras.src.backend.{name}.trainer"), class_name)
    fit = inspect.unwrap(trainer.fit)
    assert fit.__code__.co_name == "fit"
    assert "epoch_iterator" in fit.__code__.co_varnames
    source = inspect.getsource(fit)
    made = source.index("self.make_train_function()")
    begun = source.index("callbacks.on_train_begin()")
    assert made < begun < source.index("self._initial_epoch")
    assert source.index("callbacks = callbacks_module.CallbackList(") < begun
    assert begun < source.index(call)


# --- Behaviour on this process's backend: three tiny fits, observed ----------------


class _Shuffling(keras.utils.PyDataset):
    def __init__(self, x, y):
        super().__init__()
        self.x, self.y, self.reshuffles = x, y, 0

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return self.x[i * 8 : (i + 1) * 8], self.y[i * 8 : (i + 1) * 8]

    def on_epoch_end(self):
        self.reshuffles += 1


class _Probe(keras.callbacks.Callback):
    """Records what keras_resume's callbacks read, at the moments they read it."""

    def __init__(self, initial_epoch=None):
        super().__init__()
        self.initial_epoch = initial_epoch
        self.seen: dict = {"epochs": [], "train_calls": [], "iterators": 0, "adapter_ends": 0}

    def on_train_begin(self, logs=None):
        seen, model = self.seen, self.model
        iterator = backend.find_epoch_iterator(model)
        seen["epoch_iterator"] = iterator
        seen["fit_callbacks"] = backend.fit_callbacks(model)
        seen["params"] = dict(self.params)
        seen["train_function_made"] = model.train_function is not None
        if self.initial_epoch is not None:
            backend.set_initial_epoch(model, self.initial_epoch)
        original = model.train_function

        def train_function(*args):
            seen["train_calls"].append(len(args))
            return original(*args)

        model.train_function = train_function
        if iterator is not None:
            get_iterator = iterator._get_iterator

            def counting():
                seen["iterators"] += 1
                return get_iterator()

            iterator._get_iterator = counting
            adapter = getattr(iterator, "data_adapter", None)
            seen["adapter"] = adapter
            if backend.py_dataset_of(iterator) is not None:
                on_epoch_end = adapter.on_epoch_end

                def ending():
                    seen["adapter_ends"] += 1
                    return on_epoch_end()

                adapter.on_epoch_end = ending

    def on_epoch_begin(self, epoch, logs=None):
        backend.set_initial_epoch(self.model, None)
        self.seen["epochs"].append(epoch)
        history = getattr(self.model, "history", None)
        self.seen["history"] = (hasattr(history, "epoch"), hasattr(history, "history"))


def _model():
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dropout(0.2), keras.layers.Dense(1)]
    )
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    return model


def _fit(x, y=None, initial_epoch=None, epochs=2):
    keras.utils.set_random_seed(0)
    model = _model()
    probe = _Probe(initial_epoch)
    batches = {"batch_size": 8} if isinstance(x, np.ndarray) else {}
    model.fit(x, y, epochs=epochs, verbose=0, shuffle=False, callbacks=[probe], **batches)
    return model, probe.seen


@pytest.fixture(scope="module")
def fits():
    x, y = tiny_data(16)  # 2 steps of 8
    out = {"numpy": _fit(x, y, initial_epoch=1, epochs=3)}
    dataset = _Shuffling(x, y)
    out["pydataset"] = (*_fit(dataset), dataset)
    if BACKEND == "tensorflow" or backend._tensorflow_loaded():
        import tensorflow as tf

        out["tfdata"] = _fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8))
    return out


BEHAVIOURS = []


def behaviour(name, backends=None):
    def register(check):
        if backends is None or BACKEND in backends:
            BEHAVIOURS.append(pytest.param(check, id=name))
        return check

    return register


@behaviour("Trainer.fit:epoch_iterator found from a callback")
def _(fits, tmp_path):
    from keras.src.trainers.epoch_iterator import EpochIterator

    assert isinstance(fits["numpy"][1]["epoch_iterator"], EpochIterator)


@behaviour("Trainer.fit:train_function made before on_train_begin, called per step")
def _(fits, tmp_path):
    seen = fits["numpy"][1]
    assert seen["train_function_made"]
    # Epochs 1 and 2 of 2 steps; (iterator), (state, iterator) or (data).
    assert seen["train_calls"] == [2 if BACKEND == "jax" else 1] * 4


@behaviour("Trainer.fit:callbacks is the CallbackList, found from a callback")
def _(fits, tmp_path):
    found = fits["numpy"][1]["fit_callbacks"]
    assert any(isinstance(c, _Probe) for c in found)
    assert any(isinstance(c, keras.callbacks.History) for c in found)


@behaviour("CSVLogger: filename, append, append_header decided in on_train_begin")
def _(fits, tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("epoch,loss\n")
    logger = keras.callbacks.CSVLogger(str(path), append=True)
    assert logger.filename == str(path) and logger.append is True
    logger.on_train_begin()
    assert logger.append_header is False  # the file has its header: not written again
    path.write_text("")
    logger.append_header = True  # what append_logs.cut_back sets after cutting to nothing
    logger.on_epoch_end(0, {"loss": 1.0})
    logger.on_train_end()
    assert path.read_text().splitlines()[0] == "epoch,loss,val_loss"


@behaviour("Trainer._initial_epoch read after on_train_begin")
def _(fits, tmp_path):
    assert fits["numpy"][1]["epochs"] == [1, 2]


@behaviour("Callback.params steps and epochs")
def _(fits, tmp_path):
    params = fits["numpy"][1]["params"]
    assert (params["steps"], params["epochs"]) == (2, 3)


@behaviour("Trainer.history is a History during fit")
def _(fits, tmp_path):
    assert fits["numpy"][1]["history"] == (True, True)


@behaviour("EpochIterator._get_iterator called through the instance, per epoch")
def _(fits, tmp_path):
    seen = fits["numpy"][1]
    assert seen["iterators"] >= 2
    assert backend.uses_persistent_iterator(seen["epoch_iterator"]) is False


@behaviour("PyDatasetAdapter.py_dataset and on_epoch_end")
def _(fits, tmp_path):
    _, seen, dataset = fits["pydataset"]
    assert backend.py_dataset_of(seen["epoch_iterator"]) is dataset
    assert seen["adapter_ends"] >= 1 and dataset.reshuffles >= 1


@behaviour("TFDatasetAdapter._dataset", backends=("tensorflow",))
def _(fits, tmp_path):
    import tensorflow as tf

    adapter = fits["tfdata"][1]["adapter"]
    assert isinstance(adapter._dataset, tf.data.Dataset)


@behaviour("Optimizer.iterations counts the trained steps")
def _(fits, tmp_path):
    assert backend.read_int(fits["numpy"][0].optimizer.iterations) == 4


@behaviour("Trainer.jax_state_sync", backends=("jax",))
def _(fits, tmp_path):
    model = fits["numpy"][0]
    model.jax_state_sync()
    assert len(backend.to_numpy(model.weights[0]).shape) == 2


@behaviour("Layer._seed_generators and SeedGenerator.state")
def _(fits, tmp_path):
    model = fits["numpy"][0]
    dropout = model.layers[1]
    assert len(dropout._seed_generators) == 1
    generator = dropout._seed_generators[0]
    assert [g for _, g in backend.seed_generators(model)][0] is generator
    assert tuple(generator.state.shape) == (2,)


@behaviour("global_state:the global SeedGenerator of unseeded keras.random")
def _(fits, tmp_path):
    keras.random.uniform((1,))  # an unseeded call makes (or draws from) the global one
    found = backend.existing_global_seed_generator()
    assert found is not None and found is backend.global_seed_generator()
    before = backend.to_numpy(found.state)
    keras.random.uniform((1,))
    assert not np.array_equal(before, backend.to_numpy(found.state))


@behaviour("rng_utils.GLOBAL_RANDOM_SEED holds set_random_seed's seed")
def _(fits, tmp_path):
    keras.utils.set_random_seed(7)
    assert backend._global_seed() == 7


@behaviour("Trainer._compile_metrics/_compile_loss built by _symbolic_build")
def _(fits, tmp_path):
    model = _model()
    x, y = tiny_data(8)
    assert not model._compile_metrics.built and not model._compile_loss.built
    backend.build_metrics(model, (x, y))
    assert model._compile_metrics.built and model._compile_loss.built
    assert len(backend.metric_variables(model)) == 4  # loss and mae: total and count each


@behaviour("saving_lib._save_state walk writes the file save_weights writes")
def _(fits, tmp_path):
    import h5py

    model = fits["numpy"][0]
    model.save_weights(str(tmp_path / "keras.weights.h5"))
    backend.write_weights(backend.snapshot_weights(model), tmp_path / "ours.weights.h5")

    def content(path):
        found = {}
        with h5py.File(path, "r") as f:
            f.visititems(
                lambda name, obj: found.__setitem__(
                    name, obj[()] if isinstance(obj, h5py.Dataset) else dict(obj.attrs)
                )
            )
        return found

    theirs, ours = content(tmp_path / "keras.weights.h5"), content(tmp_path / "ours.weights.h5")
    assert sorted(theirs) == sorted(ours)
    assert any("optimizer" in name for name in ours)
    for name, value in theirs.items():
        if isinstance(value, dict):
            assert value == ours[name], name
        else:
            assert np.array_equal(value, ours[name]), name


@behaviour("saving_lib._load_state through our in-memory store; a failure raises")
def _(fits, tmp_path):
    model = fits["numpy"][0]
    path = tmp_path / "w.weights.h5"
    model.save_weights(str(path))
    groups = backend.read_weights(tmp_path, path.name)
    keras.utils.set_random_seed(1)
    other = _model()
    other.build((None, 3))
    other.optimizer.build(other.trainable_variables)
    backend.assign_weights(other, groups)
    for a, b in zip(all_variables(model), all_variables(other)):
        assert np.array_equal(a, b)
    wrong = {p: {k: np.zeros((5, 5), "float32") for k in v} for p, v in groups.items()}
    with pytest.raises(ValueError, match="could not be loaded"):
        backend.assign_weights(other, wrong)


@behaviour("MonitorCallback: monitor_op, best, _is_improvement")
def _(fits, tmp_path):
    from keras.src import ops

    low = kr.BestCheckpoint(tmp_path / "a", monitor="loss")
    low._set_monitor_op()
    assert low.monitor_op is ops.less and low._is_improvement(1.0, 2.0)
    high = kr.BestCheckpoint(tmp_path / "b", monitor="accuracy", mode="max")
    high._set_monitor_op()
    assert high.monitor_op is not ops.less and high._is_improvement(2.0, 1.0)
    assert hasattr(low, "best")


@behaviour("EarlyStopping/ReduceLROnPlateau state attributes")
def _(fits, tmp_path):
    for cls in (keras.callbacks.EarlyStopping, keras.callbacks.ReduceLROnPlateau):
        callback = cls()
        callback.on_train_begin()  # where both reset their state
        names = callback_state.KNOWN_STATE[cls] + callback_state.KNOWN_ARRAYS.get(cls, ())
        missing = [name for name in names if not hasattr(callback, name)]
        assert missing == [], f"{cls.__name__} has no {missing}"


@behaviour("Variable.path and .value")
def _(fits, tmp_path):
    variable = fits["numpy"][0].weights[0]
    assert isinstance(variable.path, str) and "/" in variable.path
    assert tuple(variable.value.shape) == tuple(variable.shape)


@behaviour("tf context._rng: the op-seed generator after set_random_seed")
def _(fits, tmp_path):
    import tensorflow as tf  # noqa: F401 - loaded on every backend for tf.data
    from tensorflow.python.eager import context

    keras.utils.set_random_seed(3)
    assert isinstance(context.context()._rng, random.Random)
    assert context.global_seed() == 3


@behaviour("tf stateful_random_ops.global_generator")
def _(fits, tmp_path):
    import tensorflow as tf

    generator = tf.random.get_global_generator()
    assert backend._tf_global_generator() is generator


@behaviour("tf EagerTensor._numpy (a host view)", backends=("tensorflow",))
def _(fits, tmp_path):
    variable = fits["numpy"][0].weights[0]
    view = backend._host_view(variable)
    assert isinstance(view, np.ndarray) and view.shape == tuple(variable.shape)


@behaviour("Trainer._distribute_strategy", backends=("tensorflow",))
def _(fits, tmp_path):
    assert hasattr(fits["numpy"][0], "_distribute_strategy")


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="subclassed")
        self.hidden = keras.layers.Dense(4, name="hidden")
        self.head = keras.layers.Dense(1, name="head")

    def call(self, x, training=False):
        return self.head(self.hidden(x))


class _BuildProbe(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        model = self.model
        self.built_by_fit = all(layer.built for layer in (model.hidden, model.head))
        iterator = backend.find_epoch_iterator(model)
        self.built_here = backend.build_from_data(model, iterator)
        self.shapes = [tuple(v.shape) for v in model.weights]
        self.optimizer_built = model.optimizer.built


@behaviour("Trainer.fit builds a never-called subclassed model before on_train_begin, or not")
def _(fits, tmp_path):
    x, y = tiny_data(16)
    model = _Subclassed()
    model.compile(optimizer="sgd", loss="mse")
    probe = _BuildProbe()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[probe])
    # TensorFlow (no strategy) builds it as it traces the first step; JAX and
    # PyTorch in _symbolic_build before the callbacks. build_from_data builds it
    # from TFEpochIterator._distributed_dataset.element_spec, the optimizer left unbuilt.
    assert probe.built_by_fit is (BACKEND != "tensorflow")
    assert probe.built_here is (BACKEND == "tensorflow")
    assert probe.shapes == [(3, 4), (4,), (4, 1), (1,)]
    assert probe.optimizer_built is (BACKEND != "tensorflow")


@behaviour(
    "DataLoader: iter() right after DataAdapter.on_epoch_begin, drawing from its generator",
    backends=("torch", "jax"),
)
def _(fits, tmp_path):
    import torch

    log = []

    class Logging(torch.utils.data.DataLoader):
        def __iter__(self):
            log.append(("iter", self.generator.get_state()))
            return super().__iter__()

    class Probe(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            iterator = backend.find_epoch_iterator(self.model)
            self.generators = backend.pipeline_generators(iterator)
            adapter = iterator.data_adapter
            begin = adapter.on_epoch_begin

            def on_epoch_begin():
                log.append(("begin", generator.get_state()))
                return begin()

            adapter.on_epoch_begin = on_epoch_begin

    x, y = tiny_data(16)
    generator = torch.Generator().manual_seed(0)
    loader = Logging(
        torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
        batch_size=8,
        shuffle=True,
        generator=generator,
    )
    assert loader.sampler.generator is generator  # RandomSampler draws its order from it
    probe = Probe()
    _model().fit(loader, epochs=2, verbose=0, shuffle=False, callbacks=[probe])
    assert probe.generators == [("DataLoader.generator", generator)]
    begins = [i for i, (what, _) in enumerate(log) if what == "begin"]
    assert len(begins) == 2
    for i in begins:
        assert log[i + 1][0] == "iter" and torch.equal(log[i + 1][1], log[i][1])


@behaviour("OrderedEnqueuer: indices set before _send_py_dataset; ready_queue first; stop drains")
def _(fits, tmp_path):
    from keras.src.trainers.data_adapters.py_dataset_adapter import OrderedEnqueuer

    x, y = tiny_data(16)
    dataset = _Shuffling(x, y)
    enqueuer = OrderedEnqueuer(dataset, workers=2)
    watch = backend.EnqueuerWatch(enqueuer, lambda: 0)
    enqueuer.start()
    first = next(enqueuer.get())
    enqueuer.stop()  # the batches prefetched behind `first` move to ready_queue
    queued = list(enqueuer.ready_queue.queue)
    labels = [index for _, index in watch.queued()]
    watch.detach()
    # Every batch submitted is first, queued, or (a stop that timed out) still a future.
    assert len(labels) == len(queued) + enqueuer.future_queue.qsize() == dataset.num_batches - 1
    assert all(np.array_equal(b[0], dataset[i][0]) for b, i in zip(queued, labels))
    assert not any(np.array_equal(first[0], dataset[i][0]) for i in labels)


@behaviour("GeneratorDataAdapter keeps the generator in its chaining function")
def _(fits, tmp_path):
    from keras.src.trainers.data_adapters.generator_data_adapter import GeneratorDataAdapter

    def batches():
        yield np.zeros((2, 3)), np.zeros((2, 1))

    generator = batches()
    iterator = type("EpochIterator", (), {"data_adapter": GeneratorDataAdapter(generator)})()
    assert backend.python_generator_of(iterator) is generator


@behaviour("tf.data: CacheDataset._filename, functions' graph.variables")
def _(fits, tmp_path):
    import tensorflow as tf

    flip = keras.layers.RandomFlip("horizontal")
    ds = tf.data.Dataset.from_tensor_slices(np.zeros((4, 2, 2, 1), "float32"))
    ds = ds.cache(str(tmp_path / "c")).map(flip).cache()
    assert backend.cache_ops(ds) == ["", str(tmp_path / "c")]
    found = backend.seed_generators_reading(
        backend.pipeline_variables(ds), backend.live_seed_generators()
    )
    assert len(found) == 1 and found[0] in backend.layer_seed_generators(flip)


@pytest.mark.parametrize("check", BEHAVIOURS)
def test_behaviour(check, fits, tmp_path):
    check(fits, tmp_path)
