"""The processes of a multi-process job (JAX: `keras.distribution.initialize`).

Their index and count, and the collectives every process must call together:
a broadcast, a barrier, an any-of. In a single-process run each is a no-op.
"""

from __future__ import annotations

import numpy as np

from keras_resume.backend.core import name


def process_index() -> int:
    """This process's index in a multi-process JAX job; 0 in a single-process run."""
    if name() != "jax" or not _jax_distributed():
        return 0
    import jax

    return jax.process_index()


def process_count() -> int:
    if name() != "jax" or not _jax_distributed():
        return 1
    import jax

    return jax.process_count()


def _jax_distributed() -> bool:
    # Asking jax.process_count() before jax.distributed.initialize would start
    # JAX's backends too early for a script that initializes afterwards.
    from jax._src import distributed

    return distributed.global_state.client is not None


def broadcast_int(value: int) -> int:
    """Process 0's `value`, on every process of the job (a collective: all must call it)."""
    if process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int64(value)))


def barrier(name: str, timeout_s: float | None = None) -> None:
    """Returns once every process of the job got here (a collective).

    With `timeout_s`, raises `TimeoutError` if some process has not got here
    by then (the coordination service's barrier, not a device collective).
    """
    if process_count() == 1:
        return
    if timeout_s is None:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
        return
    from jax._src import distributed

    try:
        distributed.global_state.client.wait_at_barrier(name, int(timeout_s * 1000))
    except Exception as e:  # noqa: BLE001 - JAX's runtime error for DEADLINE_EXCEEDED
        raise TimeoutError(str(e)) from e


def any_process(flag: bool) -> bool:
    """Whether `flag` is true on any process of the job (a collective)."""
    if process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.int32(bool(flag)))
    return bool(np.any(flags))
