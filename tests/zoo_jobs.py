"""The zoo: realistic training jobs, written the way keras.io's guides write them.

Each job is a function `job(ctx)` that builds its model and data, trains through
`ctx.fit(...)` (which adds keras_resume's callbacks of one `CheckpointDirectory`
and, in the process that is to die, the SIGKILL), and returns the trained model
(and optionally a dict of extra text to compare, such as a CSV log).

Sizes are tiny: a few hundred to a few thousand parameters, 48 samples in
batches of 8 (6 steps an epoch), 3 or 4 epochs. Every layer and optimizer has an
explicit name, so variable paths do not depend on what the process ran before.

`ISSUE_ITEM` names the item of issue 14 a job reproduces (None: a job that
should resume exactly today). tests/zoo_script.py runs the jobs;
tests/test_zoo.py compares them.
"""

from __future__ import annotations

import math
import os
import signal
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

N, BATCH, EPOCHS = 48, 8, 3
STEPS = N // BATCH


@dataclass(frozen=True)
class Kill:
    """Where the job's process SIGKILLs itself: in fit number `fit`, epoch `epoch`
    (0-based, as in Keras's callbacks), after batch `batch` (1-based count of
    batches done in that epoch), or in `on_epoch_end` when batch is "end"."""

    fit: int = 0
    epoch: int = 1
    batch: int | str = 4


@dataclass(frozen=True)
class Job:
    name: str
    backend: str
    build: object
    item: str | None = None
    kill: Kill = Kill()
    every: int = 4

    @property
    def case(self) -> str:
        return f"{self.backend}-{self.name}"


JOBS: list[Job] = []


def job(name, backends, item=None, kill=Kill(), every=4):
    def register(fn):
        for backend in backends:
            JOBS.append(Job(name, backend, fn, item, kill, every))
        return fn

    return register


def jobs_for(backend):
    return [j for j in JOBS if j.backend == backend]


def find(case):
    return next(j for j in JOBS if j.case == case)


class KillCallback(keras.callbacks.Callback):
    """SIGKILLs this very process at the chosen batch (or in on_epoch_end).

    A mid-epoch kill first lets the backup write in flight (StepBackup writes in a
    background thread) commit, so that the rerun resumes from the newest step
    backup, mid-epoch, whatever the machine's load: the case tests a mid-epoch
    resume every time. (Kills during a write are tests/test_torture.py's.)
    """

    def __init__(self, epoch, batch, ckpt):
        super().__init__()
        self.kill_epoch, self.kill_batch = epoch, batch
        self.ckpt = ckpt
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        # With steps_per_execution, `batch` is the last batch of the execution.
        if self.epoch == self.kill_epoch and self.kill_batch != "end":
            if batch + 1 >= self.kill_batch:
                self.ckpt.writer.join()
                os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.kill_epoch and self.kill_batch == "end":
            os.kill(os.getpid(), signal.SIGKILL)


# --- data -----------------------------------------------------------------------------


def rng_for(name):
    return np.random.RandomState(sum(map(ord, name)))


def vectors(name, features=6, classes=3):
    rng = rng_for(name)
    x = rng.normal(size=(N, features)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0.5).astype("int32")
    return x, np.minimum(y, classes - 1)


def images(name, size=8, classes=3):
    rng = rng_for(name)
    x = rng.uniform(size=(N, size, size, 1)).astype("float32")
    y = (x[:, :4].mean(axis=(1, 2, 3)) > 0.5) + (x[:, :, :4].mean(axis=(1, 2, 3)) > 0.5)
    return x, y.astype("int32")


def token_ids(name, length=10, vocab=40):
    rng = rng_for(name)
    x = rng.randint(1, vocab, size=(N, length)).astype("int32")
    y = (x[:, : length // 2].sum(axis=1) > x[:, length // 2 :].sum(axis=1)).astype("int32")
    return x, y


WORDS = "good bad great awful fun boring plot actor love hate film scene".split()


def sentences(name, length=6):
    rng = rng_for(name)
    picks = rng.randint(0, len(WORDS), size=(N, length))
    text = np.array([" ".join(WORDS[i] for i in row) for row in picks])
    positive = np.isin(picks, [0, 2, 4, 8]).sum(axis=1)
    negative = np.isin(picks, [1, 3, 5, 9]).sum(axis=1)
    return text, (positive > negative).astype("int32")


def tf():
    import tensorflow

    return tensorflow


def adam(lr=0.01, **kw):
    return keras.optimizers.Adam(lr, name="adam", **kw)


# --- RNNs and text ------------------------------------------------------------------


@job("lstm_text", ["torch"])
def lstm_text(ctx):
    """keras.io's "text classification with an LSTM": Embedding, LSTM, Dropout, sigmoid."""
    x, y = token_ids("lstm_text")
    inputs = keras.Input((10,), dtype="int32", name="tokens")
    h = layers.Embedding(40, 8, name="embedding")(inputs)
    h = layers.LSTM(8, name="lstm")(h)
    h = layers.Dropout(0.2, name="dropout")(h)
    outputs = layers.Dense(1, activation="sigmoid", name="head")(h)
    model = keras.Model(inputs, outputs, name="lstm_text")
    model.compile(adam(), "binary_crossentropy", metrics=["accuracy"])
    ctx.fit(model, x=x, y=y, batch_size=BATCH, epochs=EPOCHS, shuffle=True)
    return model


@job("bidirectional_gru", ["jax"])
def bidirectional_gru(ctx):
    """A stacked bidirectional GRU with recurrent dropout, validation_split."""
    x, y = token_ids("bidirectional_gru")
    x = np.concatenate([x, x[:12]])
    y = np.concatenate([y, y[:12]])  # 60 samples: 48 train, 12 validation
    inputs = keras.Input((10,), dtype="int32", name="tokens")
    h = layers.Embedding(40, 8, name="embedding")(inputs)
    h = layers.Bidirectional(layers.GRU(6, return_sequences=True, name="gru1"), name="bi1")(h)
    h = layers.Bidirectional(layers.GRU(4, dropout=0.2, name="gru2"), name="bi2")(h)
    outputs = layers.Dense(1, activation="sigmoid", name="head")(h)
    model = keras.Model(inputs, outputs, name="bidirectional_gru")
    model.compile(adam(), "binary_crossentropy", metrics=["accuracy"])
    ctx.fit(
        model, x=x, y=y, batch_size=BATCH, epochs=EPOCHS, validation_split=0.2, monitor="val_loss"
    )
    return model


@job("textvectorization_in_model", ["tensorflow"])
def textvectorization_in_model(ctx):
    """An end-to-end string model (TensorFlow only): TextVectorization adapted, inside."""
    text, y = sentences("textvectorization_in_model")
    vectorize = layers.TextVectorization(max_tokens=20, output_sequence_length=6, name="vectorize")
    vectorize.adapt(text)
    inputs = keras.Input((1,), dtype="string", name="text")
    h = vectorize(inputs)
    h = layers.Embedding(20, 8, name="embedding")(h)
    h = layers.GlobalAveragePooling1D(name="pool")(h)
    h = layers.Dropout(0.3, name="dropout")(h)
    outputs = layers.Dense(1, activation="sigmoid", name="head")(h)
    model = keras.Model(inputs, outputs, name="textvectorization_in_model")
    model.compile(adam(), "binary_crossentropy", metrics=["accuracy"])
    strings = tf().constant(text[:, None])  # Keras's array adapter takes no NumPy strings
    ctx.fit(model, x=strings, y=y, batch_size=BATCH, epochs=EPOCHS, shuffle=True)
    return model


@job("textvectorization_tfdata", ["jax"])
def textvectorization_tfdata(ctx):
    """keras.io's text classification on a non-TF backend: vectorize in the tf.data map."""
    text, y = sentences("textvectorization_tfdata")
    vectorize = layers.TextVectorization(max_tokens=20, output_sequence_length=6, name="vectorize")
    vectorize.adapt(text)
    ds = tf().data.Dataset.from_tensor_slices((text, y)).shuffle(N, seed=3).batch(BATCH)
    ds = ds.map(lambda t, label: (vectorize(t), label))
    inputs = keras.Input((6,), dtype="int32", name="tokens")
    h = layers.Embedding(20, 8, name="embedding")(inputs)
    h = layers.Conv1D(8, 3, activation="relu", name="conv")(h)
    h = layers.GlobalMaxPooling1D(name="pool")(h)
    outputs = layers.Dense(1, activation="sigmoid", name="head")(h)
    model = keras.Model(inputs, outputs, name="textvectorization_tfdata")
    model.compile(adam(), "binary_crossentropy", metrics=["accuracy"])
    ctx.fit(model, x=ds, epochs=EPOCHS)
    return model


@job("tfdata_cache", ["tensorflow"], item="A4")
def tfdata_cache(ctx):
    """keras.io's text classification pipeline: shuffled, mapped, then `.cache()`d."""
    x, y = token_ids("tfdata_cache")
    raw = tf().data.Dataset.from_tensor_slices((x, y)).shuffle(N, seed=1337).batch(BATCH)
    ds = raw.map(lambda t, label: (t % 30, label)).cache().prefetch(2)
    inputs = keras.Input((10,), dtype="int32", name="tokens")
    h = layers.Embedding(30, 8, name="embedding")(inputs)
    h = layers.GlobalAveragePooling1D(name="pool")(h)
    h = layers.Dropout(0.2, name="dropout")(h)
    outputs = layers.Dense(1, activation="sigmoid", name="head")(h)
    model = keras.Model(inputs, outputs, name="tfdata_cache")
    model.compile(adam(), "binary_crossentropy", metrics=["accuracy"])
    ctx.fit(model, x=ds, epochs=EPOCHS)
    return model


@job("structured_tfdata", ["torch"])
def structured_tfdata(ctx):
    """keras.io's structured data classification: StringLookup and Normalization adapted,
    applied in a tf.data map, dict inputs, on the PyTorch backend."""
    rng = rng_for("structured_tfdata")
    city = rng.choice(["paris", "oslo", "rome", "lima"], size=N)
    age = rng.uniform(20, 70, size=(N, 1)).astype("float32")
    y = ((city == "oslo") | (age[:, 0] > 50)).astype("int32")
    lookup = layers.StringLookup(output_mode="one_hot", name="city_lookup")
    lookup.adapt(city)
    norm = layers.Normalization(name="age_norm")
    norm.adapt(age)

    def encode(features, label):
        return {"city": lookup(features["city"]), "age": norm(features["age"])}, label

    ds = tf().data.Dataset.from_tensor_slices(({"city": city, "age": age}, y))
    ds = ds.shuffle(N, seed=5).batch(BATCH).map(encode)
    city_in = keras.Input((5,), name="city")
    age_in = keras.Input((1,), name="age")
    h = layers.Concatenate(name="concat")([city_in, age_in])
    h = layers.Dense(8, activation="relu", name="hidden")(h)
    h = layers.Dropout(0.2, name="dropout")(h)
    outputs = layers.Dense(1, activation="sigmoid", name="head")(h)
    model = keras.Model({"city": city_in, "age": age_in}, outputs, name="structured_tfdata")
    model.compile(adam(), "binary_crossentropy", metrics=["accuracy"])
    ctx.fit(model, x=ds, epochs=EPOCHS)
    return model


# --- preprocessing, validation, callbacks ---------------------------------------------


@job("normalization_early_stopping", ["tensorflow"])
def normalization_early_stopping(ctx):
    """Normalization adapted in the model; validation_data with validation_freq=2;
    EarlyStopping(restore_best_weights=True) that stops (and restores) after the kill;
    BestCheckpoint on val_loss."""
    x, _ = vectors("normalization_early_stopping")
    x = x * 5 + 3
    y = x @ np.linspace(-1, 1, 6).astype("float32")[:, None]
    xv, yv = x[:16] + 0.1, y[:16]
    norm = layers.Normalization(name="norm")
    norm.adapt(x)
    model = keras.Sequential(
        [
            keras.Input((6,), name="features"),
            norm,
            layers.Dense(8, activation="relu", name="hidden"),
            layers.Dense(1, name="out"),
        ],
        name="normalization_early_stopping",
    )
    model.compile(keras.optimizers.RMSprop(0.01, name="rmsprop"), "mse", metrics=["mae"])
    # min_delta so large that no epoch after the first counts as an improvement:
    # it stops at the end of epoch 2 and restores epoch 0's weights.
    early = keras.callbacks.EarlyStopping(
        monitor="loss", patience=2, min_delta=1e3, restore_best_weights=True
    )
    ctx.fit(
        model,
        x=x,
        y=y,
        batch_size=BATCH,
        epochs=4,
        shuffle=True,
        validation_data=(xv, yv),
        validation_freq=2,
        monitor="val_loss",
        track=[early],
    )
    return model


@job("cnn_batchnorm_class_weight", ["tensorflow"])
def cnn_batchnorm_class_weight(ctx):
    """A small CNN: Conv2D, BatchNormalization, MaxPooling, Dropout; class_weight;
    ReduceLROnPlateau."""
    x, y = images("cnn_batchnorm_class_weight")
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1), name="image"),
            layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv"),
            layers.BatchNormalization(name="bn"),
            layers.Activation("relu", name="relu"),
            layers.MaxPooling2D(name="pool"),
            layers.Flatten(name="flatten"),
            layers.Dropout(0.3, name="dropout"),
            layers.Dense(3, activation="softmax", name="head"),
        ],
        name="cnn_batchnorm_class_weight",
    )
    model.compile(adam(), "sparse_categorical_crossentropy", metrics=["accuracy"])
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor="loss", patience=1, factor=0.5, min_delta=1e3
    )
    ctx.fit(
        model,
        x=x,
        y=y,
        batch_size=BATCH,
        epochs=EPOCHS,
        shuffle=True,
        class_weight={0: 1.0, 1: 2.0, 2: 0.5},
        track=[plateau],
    )
    return model


@job("cnn_augmentation_in_model", ["jax"])
def cnn_augmentation_in_model(ctx):
    """keras.io's image classification "option 1": augmentation layers in the model."""
    x, y = images("cnn_augmentation_in_model")
    augment = keras.Sequential(
        [layers.RandomFlip("horizontal", name="flip"), layers.RandomRotation(0.1, name="rotate")],
        name="augment",
    )
    inputs = keras.Input((8, 8, 1), name="image")
    h = augment(inputs)
    h = layers.Rescaling(2.0, offset=-1.0, name="rescale")(h)
    h = layers.Conv2D(4, 3, activation="relu", name="conv")(h)
    h = layers.BatchNormalization(name="bn")(h)
    h = layers.GlobalAveragePooling2D(name="pool")(h)
    h = layers.Dropout(0.25, name="dropout")(h)
    outputs = layers.Dense(3, name="logits")(h)
    model = keras.Model(inputs, outputs, name="cnn_augmentation_in_model")
    model.compile(
        adam(),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    ctx.fit(model, x=x, y=y, batch_size=BATCH, epochs=EPOCHS, shuffle=True)
    return model


@job("cnn_batchnorm_sample_weight", ["torch"])
def cnn_batchnorm_sample_weight(ctx):
    """A CNN with BatchNormalization and Dropout, per-sample weights, SGD with momentum."""
    x, y = images("cnn_batchnorm_sample_weight")
    weights = np.where(y == 0, 0.5, 1.5).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1), name="image"),
            layers.Conv2D(4, 3, name="conv"),
            layers.BatchNormalization(name="bn"),
            layers.ReLU(name="relu"),
            layers.Flatten(name="flatten"),
            layers.Dropout(0.3, name="dropout"),
            layers.Dense(3, activation="softmax", name="head"),
        ],
        name="cnn_batchnorm_sample_weight",
    )
    model.compile(
        keras.optimizers.SGD(0.05, momentum=0.9, name="sgd"),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    ctx.fit(model, x=x, y=y, sample_weight=weights, batch_size=BATCH, epochs=EPOCHS, shuffle=True)
    return model


@job("augmentation_in_tfdata", ["tensorflow", "jax"], item="A4")
def augmentation_in_tfdata(ctx):
    """keras.io's image classification "option 2": augmentation mapped over tf.data."""
    x, y = images("augmentation_in_tfdata")
    augmentation_layers = [
        layers.RandomFlip("horizontal", name="flip"),
        layers.RandomRotation(0.1, name="rotate"),
    ]

    def augment(images):
        for layer in augmentation_layers:
            images = layer(images)
        return images

    ds = tf().data.Dataset.from_tensor_slices((x, y)).shuffle(N, seed=11).batch(BATCH)
    ds = ds.map(lambda img, label: (augment(img), label))
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1), name="image"),
            layers.Conv2D(4, 3, activation="relu", name="conv"),
            layers.Flatten(name="flatten"),
            layers.Dense(3, activation="softmax", name="head"),
        ],
        name="augmentation_in_tfdata",
    )
    model.compile(adam(), "sparse_categorical_crossentropy", metrics=["accuracy"])
    ctx.fit(model, x=ds, epochs=EPOCHS)
    return model


# --- transformers, multi-output, subclassing ------------------------------------------


class TokenAndPositionEmbedding(layers.Layer):
    """keras.io's text classification with a transformer: token plus position embedding."""

    def __init__(self, vocab, length, dim, **kwargs):
        super().__init__(**kwargs)
        self.length = length
        self.tokens = layers.Embedding(vocab, dim, name="token_embedding")
        self.positions = layers.Embedding(length, dim, name="position_embedding")

    def call(self, x):
        return self.tokens(x) + self.positions(keras.ops.arange(self.length))


@job("transformer_classifier", ["tensorflow", "torch"])
def transformer_classifier(ctx):
    """A KerasHub-style encoder: token and position embeddings, MultiHeadAttention,
    LayerNormalization, feed-forward, residuals; AdamW with weight decay; functional."""
    x, y = token_ids("transformer_classifier", length=8, vocab=30)
    tokens = keras.Input((8,), dtype="int32", name="tokens")
    h = TokenAndPositionEmbedding(30, 8, 8, name="embeddings")(tokens)
    attention = layers.MultiHeadAttention(2, 4, dropout=0.1, name="attention")(h, h)
    h = layers.LayerNormalization(epsilon=1e-6, name="ln1")(h + attention)
    ff = layers.Dense(16, activation="gelu", name="ff1")(h)
    ff = layers.Dense(8, name="ff2")(layers.Dropout(0.1, name="ff_dropout")(ff))
    h = layers.LayerNormalization(epsilon=1e-6, name="ln2")(h + ff)
    h = layers.GlobalAveragePooling1D(name="pool")(h)
    outputs = layers.Dense(2, name="logits")(h)
    model = keras.Model(tokens, outputs, name="transformer_classifier")
    model.compile(
        keras.optimizers.AdamW(5e-3, weight_decay=0.01, name="adamw"),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    ctx.fit(model, x=x, y=y, batch_size=BATCH, epochs=EPOCHS, shuffle=True)
    return model


@job("multi_output_steps_per_execution", ["tensorflow"])
def multi_output_steps_per_execution(ctx):
    """A functional model with two named outputs, a loss per output, loss_weights,
    per-output metrics, steps_per_execution=2 (PyTorch allows only 1)."""
    x, y = vectors("multi_output")
    inputs = keras.Input((6,), name="features")
    h = layers.Dense(12, activation="relu", name="shared")(inputs)
    h = layers.Dropout(0.2, name="dropout")(h)
    cls = layers.Dense(3, activation="softmax", name="cls")(h)
    reg = layers.Dense(1, name="reg")(h)
    model = keras.Model(inputs, {"cls": cls, "reg": reg}, name="multi_output")
    model.compile(
        adam(),
        loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"},
        loss_weights={"cls": 1.0, "reg": 0.5},
        metrics={"cls": ["accuracy"], "reg": ["mae"]},
        steps_per_execution=2,
    )
    targets = {"cls": y, "reg": x[:, :1] * 2}
    ctx.fit(model, x=x, y=targets, batch_size=BATCH, epochs=EPOCHS, shuffle=True)
    return model


class ResidualMLP(keras.Model):
    """keras.io's "subclassing": layers in __init__, call(inputs, training)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense1 = layers.Dense(8, activation="relu", name="dense1")
        self.dense2 = layers.Dense(8, name="dense2")
        self.dropout = layers.Dropout(0.2, name="dropout")
        self.head = layers.Dense(3, name="head")

    def call(self, inputs, training=False):
        h = self.dense1(inputs)
        h = h + self.dense2(self.dropout(h, training=training))
        return self.head(h)


@job("subclassed_model", ["tensorflow", "torch"])
def subclassed_model(ctx):
    """A subclassed model, SGD with Nesterov momentum, validation_data."""
    x, y = vectors("subclassed_model")
    model = ResidualMLP(name="residual_mlp")
    model.compile(
        keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True, name="sgd"),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    ctx.fit(
        model,
        x=x,
        y=y,
        batch_size=BATCH,
        epochs=EPOCHS,
        shuffle=True,
        validation_data=(x[:16], y[:16]),
    )
    return model


# --- optimizers: schedules, accumulation, EMA, mixed precision ------------------------


def small_classifier(name, optimizer, dropout=0.2):
    model = keras.Sequential(
        [
            keras.Input((6,), name="features"),
            layers.Dense(8, activation="relu", name="hidden"),
            layers.Dropout(dropout, name="dropout"),
            layers.Dense(3, activation="softmax", name="head"),
        ],
        name=name,
    )
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@job("lr_scheduler_of_current_rate", ["tensorflow", "jax"], item="A3", kill=Kill(0, 2, 4), every=3)
def lr_scheduler_of_current_rate(ctx):
    """LearningRateScheduler with the Keras docstring's function of the current rate.

    Killed in epoch 2, after the rate was decayed twice (a kill in epoch 1 would hide a
    resume that decays from the initial rate again)."""

    def scheduler(epoch, lr):
        return lr if epoch < 1 else float(lr * math.exp(-0.1))

    x, y = vectors("lr_scheduler_of_current_rate")
    model = small_classifier("lr_scheduler_of_current_rate", adam())
    schedule = keras.callbacks.LearningRateScheduler(scheduler)
    ctx.fit(model, x=x, y=y, batch_size=BATCH, epochs=EPOCHS, shuffle=True, track=[schedule])
    return model


@job("gradient_accumulation", ["tensorflow", "torch"], item="A1")
def gradient_accumulation(ctx):
    """AdamW(gradient_accumulation_steps=2): an effective batch of 16 in batches of 8."""
    x, y = vectors("gradient_accumulation")
    optimizer = keras.optimizers.AdamW(0.01, gradient_accumulation_steps=2, name="adamw")
    model = small_classifier("gradient_accumulation", optimizer)
    ctx.fit(model, x=x, y=y, batch_size=BATCH, epochs=EPOCHS, shuffle=True)
    return model


@job("gradient_accumulation_ema", ["jax"], item="A1")
def gradient_accumulation_ema(ctx):
    """Gradient accumulation with an exponential moving average of the weights."""
    x, y = vectors("gradient_accumulation_ema")
    optimizer = keras.optimizers.AdamW(
        0.01, gradient_accumulation_steps=2, use_ema=True, ema_momentum=0.9, name="adamw"
    )
    model = small_classifier("gradient_accumulation_ema", optimizer)
    ctx.fit(model, x=x, y=y, batch_size=BATCH, epochs=EPOCHS, shuffle=True)
    return model


@job("mixed_precision", ["tensorflow", "torch"], item="A8")
def mixed_precision(ctx):
    """keras.io's mixed precision guide: mixed_float16 policy (a LossScaleOptimizer), the
    output layer in float32."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        x, y = vectors("mixed_precision")
        inputs = keras.Input((6,), name="features")
        h = layers.Dense(16, activation="relu", name="hidden")(inputs)
        h = layers.Dropout(0.2, name="dropout")(h)
        h = layers.Dense(3, name="logits")(h)
        outputs = layers.Activation("softmax", dtype="float32", name="probs")(h)
        model = keras.Model(inputs, outputs, name="mixed_precision")
        model.compile(adam(), "sparse_categorical_crossentropy", metrics=["accuracy"])
        ctx.fit(model, x=x, y=y, batch_size=BATCH, epochs=EPOCHS, shuffle=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return model


# --- inputs: PyDataset, torch DataLoader ----------------------------------------------


class ShufflingSequence(keras.utils.PyDataset):
    """keras.io's PyDataset: batches by index, reshuffled in on_epoch_end."""

    def __init__(self, x, y, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y = x, y
        self.order = np.arange(len(x))

    def __len__(self):
        return len(self.x) // BATCH

    def __getitem__(self, index):
        idx = self.order[index * BATCH : (index + 1) * BATCH]
        return self.x[idx], self.y[idx]

    def on_epoch_end(self):
        np.random.shuffle(self.order)


@job("pydataset_workers", ["tensorflow", "jax", "torch"], item="A7")
def pydataset_workers(ctx):
    """A PyDataset read by 2 worker threads."""
    x, y = vectors("pydataset_workers")
    data = ShufflingSequence(x, y, workers=2, use_multiprocessing=False)
    model = small_classifier("pydataset_workers", adam())
    ctx.fit(model, x=data, epochs=EPOCHS)
    return model


@job("torch_dataloader", ["torch"])
def torch_dataloader(ctx):
    """A torch DataLoader with shuffle=True and a seeded generator, on the torch backend."""
    import torch

    x, y = vectors("torch_dataloader")
    data = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y).long())
    loader = torch.utils.data.DataLoader(
        data, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    model = small_classifier("torch_dataloader", adam())
    ctx.fit(model, x=loader, epochs=EPOCHS)
    return model


# --- custom train_step: a GAN ---------------------------------------------------------

LATENT = 4


def gan_parts():
    generator = keras.Sequential(
        [
            keras.Input((LATENT,), name="z"),
            layers.Dense(8, name="g_hidden"),
            layers.LeakyReLU(0.2, name="g_act"),
            layers.Dense(6, name="g_out"),
        ],
        name="generator",
    )
    discriminator = keras.Sequential(
        [
            keras.Input((6,), name="sample"),
            layers.Dense(8, name="d_hidden"),
            layers.LeakyReLU(0.2, name="d_act"),
            layers.Dropout(0.2, name="d_dropout"),
            layers.Dense(1, name="d_out"),
        ],
        name="discriminator",
    )
    return generator, discriminator


class GAN(keras.Model):
    """keras.io's DCGAN, shrunk: two optimizers as attributes, a SeedGenerator, never
    called before fit. train_step is the backend's (TensorFlow: GradientTape; PyTorch:
    autograd, as keras.io's "customizing fit() with PyTorch")."""

    def __init__(self, discriminator, generator, **kwargs):
        super().__init__(**kwargs)
        self.discriminator = discriminator
        self.generator = generator
        self.seed_generator = keras.random.SeedGenerator(1337)

    def compile(self, d_optimizer, g_optimizer, loss_fn):
        super().compile()
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer
        self.loss_fn = loss_fn
        self.d_loss_metric = keras.metrics.Mean(name="d_loss")
        self.g_loss_metric = keras.metrics.Mean(name="g_loss")

    @property
    def metrics(self):
        return [self.d_loss_metric, self.g_loss_metric]

    def call(self, samples):
        # Only for Keras's PyTorch trainer, which calls an unbuilt model once before
        # fit (TensorFlow's does not): the discriminator's verdict.
        return self.discriminator(samples)

    def _batch(self, real):
        batch = keras.ops.shape(real)[0]
        z = keras.random.normal((batch, LATENT), seed=self.seed_generator)
        labels = keras.ops.concatenate([keras.ops.ones((batch, 1)), keras.ops.zeros((batch, 1))])
        return batch, z, labels

    def train_step(self, real):
        if keras.backend.backend() == "torch":
            return self._torch_train_step(real)
        tf_ = tf()
        batch, z, labels = self._batch(real)
        fake = self.generator(z)
        combined = keras.ops.concatenate([fake, real])
        with tf_.GradientTape() as tape:
            d_loss = self.loss_fn(labels, self.discriminator(combined, training=True))
        grads = tape.gradient(d_loss, self.discriminator.trainable_weights)
        self.d_optimizer.apply_gradients(zip(grads, self.discriminator.trainable_weights))
        z = keras.random.normal((batch, LATENT), seed=self.seed_generator)
        misleading = keras.ops.zeros((batch, 1))
        with tf_.GradientTape() as tape:
            g_loss = self.loss_fn(misleading, self.discriminator(self.generator(z)))
        grads = tape.gradient(g_loss, self.generator.trainable_weights)
        self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_weights))
        return self._report(d_loss, g_loss)

    def _torch_train_step(self, real):
        import torch

        batch, z, labels = self._batch(real)
        fake = self.generator(z)
        combined = keras.ops.concatenate([fake.detach(), real])
        self.zero_grad()
        d_loss = self.loss_fn(labels, self.discriminator(combined, training=True))
        d_loss.backward()
        weights = self.discriminator.trainable_weights
        with torch.no_grad():
            self.d_optimizer.apply([v.value.grad for v in weights], weights)
        z = keras.random.normal((batch, LATENT), seed=self.seed_generator)
        misleading = keras.ops.zeros((batch, 1))
        self.zero_grad()
        g_loss = self.loss_fn(misleading, self.discriminator(self.generator(z)))
        g_loss.backward()
        weights = self.generator.trainable_weights
        with torch.no_grad():
            self.g_optimizer.apply([v.value.grad for v in weights], weights)
        return self._report(d_loss, g_loss)

    def _report(self, d_loss, g_loss):
        self.d_loss_metric.update_state(d_loss)
        self.g_loss_metric.update_state(g_loss)
        return {"d_loss": self.d_loss_metric.result(), "g_loss": self.g_loss_metric.result()}


@job("gan_custom_train_step", ["tensorflow", "torch"], item="A2")
def gan_custom_train_step(ctx):
    rng = rng_for("gan")
    real = (rng.normal(size=(N, 6)) * 0.5 + np.arange(6)).astype("float32")
    generator, discriminator = gan_parts()
    gan = GAN(discriminator, generator, name="gan")
    gan.compile(
        d_optimizer=keras.optimizers.Adam(1e-3, beta_1=0.5, name="d_adam"),
        g_optimizer=keras.optimizers.Adam(1e-3, beta_1=0.5, name="g_adam"),
        loss_fn=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    ctx.fit(gan, x=real, batch_size=BATCH, epochs=EPOCHS, shuffle=True, monitor=None)
    return gan


# --- several fits into one directory; CSVLogger ----------------------------------------


@job("fine_tuning_phases", ["tensorflow", "torch"], item="A5", kill=Kill(fit=1, epoch=3, batch=4))
def fine_tuning_phases(ctx):
    """keras.io's transfer learning guide: freeze the base, fit; unfreeze, recompile with
    a low rate, fit(initial_epoch=2) into the same directory. Killed in the second fit."""
    x, y = vectors("fine_tuning_phases")
    base = keras.Sequential(
        [
            keras.Input((6,), name="features"),
            layers.Dense(8, activation="relu", name="base_dense"),
            layers.BatchNormalization(name="base_bn"),
        ],
        name="base",
    )
    inputs = keras.Input((6,), name="features")
    h = base(inputs, training=False)
    h = layers.Dropout(0.2, name="dropout")(h)
    outputs = layers.Dense(3, activation="softmax", name="head")(h)
    model = keras.Model(inputs, outputs, name="fine_tuning_phases")
    base.trainable = False
    model.compile(adam(), "sparse_categorical_crossentropy", metrics=["accuracy"])
    ctx.fit(model, x=x, y=y, batch_size=BATCH, epochs=2, shuffle=True)
    base.trainable = True
    model.compile(adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    ctx.fit(model, x=x, y=y, batch_size=BATCH, epochs=4, initial_epoch=2, shuffle=True)
    return model


@job("csv_logger_kill_at_epoch_end", ["tensorflow", "jax"], item="A6", kill=Kill(0, 1, "end"))
def csv_logger_kill_at_epoch_end(ctx):
    """CSVLogger(append=True); killed in on_epoch_end after the logger wrote its row."""
    x, y = vectors("csv_logger_kill_at_epoch_end")
    model = small_classifier("csv_logger_kill_at_epoch_end", adam())
    log = ctx.path("training.csv")
    ctx.fit(
        model,
        x=x,
        y=y,
        batch_size=BATCH,
        epochs=EPOCHS,
        shuffle=True,
        callbacks=[keras.callbacks.CSVLogger(log, append=True)],
    )
    with open(log) as f:
        return model, {"training.csv": f.read()}
