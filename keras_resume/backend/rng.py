"""Random number generators owned by the backend, outside Python, NumPy and Keras.

TensorFlow's process-wide generators, torch's default ones, and the torch
generators a `DataLoader` given to `fit` draws its order from: captured as
JSON-able state and restored. Keras's own SeedGenerators are in `seeds`.
"""

from __future__ import annotations

import base64
import sys

import numpy as np

from keras_resume.backend.core import _tensorflow_loaded, name


def capture_backend_rng() -> dict:
    """JSON-able state of the process-wide random generators outside Python and NumPy.

    TensorFlow's generators are captured whenever TensorFlow is loaded, on every
    backend: `tf.data` pipelines (and Keras's own data adapters) draw from them.
    On PyTorch, torch's default generators: `fit(shuffle=True)` draws its
    permutation from them. JAX keeps no global generator.
    """
    state = {"global_seed": _global_seed()}
    if _tensorflow_loaded():
        from tensorflow.python.eager import context

        rng = getattr(context.context(), "_rng", None)
        if rng is not None:
            # Eager ops without an op seed draw it from this `random.Random`.
            state["tf_op_seed_rng"] = _python_rng_to_json(rng.getstate())
        generator = _tf_global_generator()
        if generator is not None:
            state["tf_global_generator"] = generator.state.numpy().tolist()
    if name() == "torch":
        import torch

        state["torch_cpu"] = torch.get_rng_state().tolist()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["torch_cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _global_seed():
    """The seed of `keras.utils.set_random_seed` (or `tf.random.set_seed`), None if unseeded.

    Without one, shuffles and unseeded ops draw from OS entropy in every
    process: no saved state can make a resume exact.
    """
    from keras.src.backend.common import global_state
    from keras.src.utils.rng_utils import GLOBAL_RANDOM_SEED

    seed = global_state.get_global_attribute(GLOBAL_RANDOM_SEED)
    if seed is None and _tensorflow_loaded():
        from tensorflow.python.eager import context

        seed = context.global_seed()
    return seed


def restore_backend_rng(state: dict) -> list[str]:
    """Restores what `capture_backend_rng` saved; returns what could not be restored."""
    missing = []
    if "tf_op_seed_rng" in state or "tf_global_generator" in state:
        import tensorflow as tf
        from tensorflow.python.eager import context

        if "tf_op_seed_rng" in state:
            rng = getattr(context.context(), "_rng", None)
            if rng is None:
                missing.append("tf_op_seed_rng (call keras.utils.set_random_seed first)")
            else:
                rng.setstate(_python_rng_from_json(state["tf_op_seed_rng"]))
        if "tf_global_generator" in state:
            generator = tf.random.get_global_generator()
            generator.state.assign(np.asarray(state["tf_global_generator"], dtype=np.int64))
    if "torch_cpu" in state or "torch_cuda" in state:
        if name() != "torch":
            return missing + [k for k in ("torch_cpu", "torch_cuda") if k in state]
        import torch

        if "torch_cpu" in state:
            torch.set_rng_state(torch.tensor(state["torch_cpu"], dtype=torch.uint8))
        if "torch_cuda" in state:
            if torch.cuda.is_available() and torch.cuda.device_count() == len(state["torch_cuda"]):
                torch.cuda.set_rng_state_all(
                    [torch.tensor(s, dtype=torch.uint8) for s in state["torch_cuda"]]
                )
            else:
                missing.append("torch_cuda (another number of CUDA devices)")
    return missing


def _tf_global_generator():
    from tensorflow.python.ops import stateful_random_ops

    return getattr(stateful_random_ops, "global_generator", None)


def _python_rng_to_json(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_rng_from_json(state) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def pipeline_generators(epoch_iterator) -> list[tuple[str, object]]:
    """`[(role, generator)]`: the torch generators a `torch.utils.data.DataLoader`
    given to `fit` draws its order from, besides torch's default generator.

    Each `iter(loader)` draws a seed from `loader.generator`, and its first batch
    draws the permutation of a `RandomSampler` from `sampler.generator` (or a
    `batch_sampler`'s sampler's). A generator the user made (`DataLoader(...,
    generator=torch.Generator().manual_seed(0))`) is in no process-wide state:
    it is captured here. torch's default generator (a `None` generator) is left
    out: `capture_backend_rng` holds it. The same generator under several
    roles is listed once. Only on JAX and PyTorch, where `fit` makes each
    epoch's loader iterator on the training thread when the epoch begins; on
    TensorFlow `tf.data` iterates the loader on its own threads.
    """
    if name() not in ("torch", "jax") or "torch" not in sys.modules:
        return []
    import torch
    from keras.src.trainers.data_adapters.torch_data_loader_adapter import (
        TorchDataLoaderAdapter,
    )

    adapter = getattr(epoch_iterator, "data_adapter", None)
    if not isinstance(adapter, TorchDataLoaderAdapter):
        return []
    loader = adapter.get_torch_dataloader()
    batch_sampler = getattr(loader, "batch_sampler", None)
    candidates = [
        ("DataLoader.generator", getattr(loader, "generator", None)),
        ("DataLoader.sampler.generator", getattr(loader.sampler, "generator", None)),
        (
            "DataLoader.batch_sampler.sampler.generator",
            getattr(getattr(batch_sampler, "sampler", None), "generator", None),
        ),
    ]
    found, seen = [], {id(torch.default_generator)}
    for role, generator in candidates:
        if isinstance(generator, torch.Generator) and id(generator) not in seen:
            seen.add(id(generator))
            found.append((role, generator))
    return found


def capture_generators(generators) -> list[dict]:
    """JSON-able states of `pipeline_generators`' generators: `get_state()` as base64."""
    return [
        {
            "role": role,
            "device": str(generator.device),
            "state": base64.b64encode(generator.get_state().numpy().tobytes()).decode("ascii"),
        }
        for role, generator in generators
    ]


def restore_generators(generators, saved: list) -> list[str]:
    """Sets `capture_generators`' states; returns what could not be set."""
    live = dict(generators)
    problems = []
    for record in saved:
        role = record.get("role")
        generator = live.pop(role, None)
        if generator is None:
            problems.append(f"{role} was saved, but the DataLoader has no such generator now")
            continue
        import torch

        try:
            raw = base64.b64decode(record["state"], validate=True)
            generator.set_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            problems.append(f"{role} ({record.get('device')}): saved state not usable ({e})")
    problems += [f"{role} is not in the checkpoint" for role in live]
    return problems
