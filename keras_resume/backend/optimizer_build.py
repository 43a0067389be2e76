"""The optimizers of a model: where `save_weights` saves each, what it was built on,
building it as its first `apply` would, and how many steps it applied."""

from __future__ import annotations

import keras

from keras_resume.backend.arrays import read_int, sync_state
from keras_resume.backend.weights_walk import _SKIP, _walk_weights


def optimizers(model) -> list[tuple[str, object]]:
    """`[(path, optimizer)]`: every optimizer `save_weights` saves, where it saves it.

    `path` is the optimizer's group in the `.weights.h5` file (`optimizer`,
    `optimizer/inner_optimizer`, `d_optimizer`, ...).
    """
    return _walk_weights(model, lambda path, key, value: _SKIP, sync=False).optimizers


def built_on(optimizer) -> list | None:
    """The variables `optimizer` was built on (`optimizer.build(variables)`); None if unbuilt."""
    if not getattr(optimizer, "built", False):
        return None
    return list(getattr(optimizer, "_trainable_variables", []))


def build_optimizer(optimizer, variables) -> None:
    """Builds `optimizer` on exactly `variables`, as its first `apply` would.

    In the optimizer's name scope, as `apply` builds it: the variables get the
    paths of the original run's (a LossScaleOptimizer's inner optimizer's
    variables are `loss_scale_optimizer/adam/...`). Where `fit` builds the
    optimizer before any callback runs (`_symbolic_build`: JAX, PyTorch, a
    `tf.distribute` strategy), it is built already and this is not called.
    """
    from keras.src.backend.common.name_scope import name_scope

    with name_scope(optimizer.name, caller=optimizer):
        optimizer.build(list(variables))


def applied_steps(model) -> int:
    """How many times `model.optimizer` was applied: the batches it trained on.

    `optimizer.iterations` counts updates, not batches, with
    `gradient_accumulation_steps` (it is then a computed tensor); the raw
    counter below it counts every `apply`. A LossScaleOptimizer counts in its
    inner optimizer.
    """
    optimizer = getattr(model, "optimizer", None)
    while hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    counter = getattr(optimizer, "_iterations", None)
    if not isinstance(counter, keras.Variable):
        return 0
    sync_state(model)
    return read_int(counter)
