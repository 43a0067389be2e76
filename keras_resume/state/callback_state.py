"""State of stateful callbacks (EarlyStopping, ReduceLROnPlateau, user callbacks).

Keras's callbacks reset their counters in `on_train_begin`, so a resumed run
forgets its patience. For the Keras callbacks named here we know which
attributes are state; any other callback takes part by defining
`get_state() -> dict` (JSON-able) and `set_state(dict)`.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_resume.state.bundle import StateBundle

# Only mutable training state: configuration (patience, min_delta, monitor_op)
# comes from the constructor and must not be overwritten (`min_delta` is negated
# lazily by MonitorCallback and would flip sign twice).
KNOWN_STATE = {
    keras.callbacks.EarlyStopping: ("wait", "stopped_epoch", "best", "best_epoch"),
    keras.callbacks.ReduceLROnPlateau: ("wait", "cooldown_counter", "best"),
    keras.callbacks.LearningRateScheduler: (),
    keras.callbacks.TerminateOnNaN: (),
}
# Attributes holding a list of arrays (or None), saved in `arrays.npz`.
KNOWN_ARRAYS = {keras.callbacks.EarlyStopping: ("best_weights",)}


def _known_type(callback):
    for cls in type(callback).__mro__:
        if cls in KNOWN_STATE:
            return cls
    return None


def check_supported(callback) -> None:
    """Raises a clear error at construction time for a callback we cannot capture."""
    if not isinstance(callback, keras.callbacks.Callback):
        raise TypeError(
            f"SchedulerCapture tracks Keras callbacks; received {callback!r} "
            f"({type(callback).__name__}). Pass callback instances, e.g. "
            "track=[keras.callbacks.ReduceLROnPlateau()]."
        )
    custom = hasattr(callback, "get_state") and hasattr(callback, "set_state")
    if not custom and _known_type(callback) is None:
        raise ValueError(
            f"SchedulerCapture cannot capture callback {type(callback).__name__}: it is "
            "not one whose state keras_resume knows. Give it `get_state()` returning a "
            "JSON-able dict and `set_state(state)`, or leave it out of `track`."
        )


def _to_json(value):
    if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0:
        return value.item()
    if hasattr(value, "numpy") and np.ndim(value) == 0:
        return np.asarray(value).item()
    return value


def capture_callbacks(callbacks: list, bundle: StateBundle) -> None:
    records = []
    for i, callback in enumerate(callbacks):
        record = {"class": type(callback).__name__}
        if hasattr(callback, "get_state") and hasattr(callback, "set_state"):
            record["custom"] = callback.get_state()
        else:
            known = _known_type(callback)
            record["attributes"] = {
                name: _to_json(getattr(callback, name, None)) for name in KNOWN_STATE[known]
            }
            for name in KNOWN_ARRAYS.get(known, ()):
                value = getattr(callback, name, None)
                record.setdefault("arrays", {})[name] = value is not None
                if value is not None:
                    bundle.put_arrays(f"callbacks/{i}/{name}", value)
        records.append(record)
    bundle.meta["callbacks"] = records


def restore_callbacks(callbacks: list, bundle: StateBundle) -> list[str]:
    """Puts callback state back; returns a description of each one that did not match."""
    records = bundle.meta.get("callbacks", [])
    problems = []
    if len(records) != len(callbacks):
        problems.append(f"{len(records)} tracked callbacks in the checkpoint, {len(callbacks)} now")
    for i, (callback, record) in enumerate(zip(callbacks, records)):
        if record.get("class") != type(callback).__name__:
            problems.append(
                f"tracked callback {i} was {record.get('class')}, is {type(callback).__name__}"
            )
            continue
        if "custom" in record:
            callback.set_state(record["custom"])
            continue
        known = _known_type(callback)
        # Only the attributes this module saves are ever set from a file.
        for name in KNOWN_STATE.get(known, ()):
            if name in record.get("attributes", {}):
                setattr(callback, name, record["attributes"][name])
        for name in KNOWN_ARRAYS.get(known, ()):
            present = record.get("arrays", {}).get(name, False)
            setattr(callback, name, bundle.get_arrays(f"callbacks/{i}/{name}") if present else None)
    return problems
