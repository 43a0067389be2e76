"""Model and optimizer variables, the model fingerprint, and the running metrics.

Weights go to Keras's own `.weights.h5` layout (`model.save_weights`), so a
plain `model.load_weights()` reads a checkpoint without keras_resume.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from keras_resume import backend, hdf5
from keras_resume.errors import CheckpointCorruptError, CheckpointMismatchError
from keras_resume.state import shards
from keras_resume.state.bundle import StateBundle

WEIGHTS_FILE = "model.weights.h5"
CONFIG_FILE = "model.json"  # the model's architecture, for export to a deployable model


def _describe(variables) -> list[list]:
    return [[v.path, list(v.shape), str(v.dtype)] for v in variables]


def fingerprint(model, weights: list | None = None) -> dict:
    """What a checkpoint needs to match: variable paths, shapes, dtypes, optimizers,
    and the layout of its weights file (`weights_file`: each group's path, the
    class that saves it, its datasets' keys, shapes and dtypes; see
    `backend.weights_layout`), which tells apart architectures whose variables
    have the same shapes, and bounds what a restore reads from the file.

    `weights`: the `snapshot_weights` result this fingerprint describes.

    `optimizers` lists every optimizer `save_weights` saves (`model.optimizer`,
    a LossScaleOptimizer's `inner_optimizer`, the optimizers a custom
    `train_step` keeps as attributes): its path in the `.weights.h5` file, its
    class, its variables, and `built_on`, the positions in `model.weights` of
    the variables it was built on (None if it was not built, or was built on
    variables outside the model). A restore rebuilds each on exactly those.
    """
    optimizer = getattr(model, "optimizer", None)
    variables = model.weights
    positions = {id(v): i for i, v in enumerate(variables)}
    records = []
    for path, found in backend.optimizers(model):
        on = backend.built_on(found)
        indices = None if on is None else [positions.get(id(v)) for v in on]
        records.append(
            {
                "path": path,
                "class": type(found).__name__,
                "variables": _describe(found.variables),
                "built": on is not None,
                "built_on": None if indices is None or None in indices else indices,
            }
        )
    return {
        "variables": _describe(variables),
        "optimizer": type(optimizer).__name__ if optimizer is not None else None,
        "optimizer_variables": _describe(optimizer.variables) if optimizer is not None else [],
        "weights_file": backend.weights_layout(model, weights),
        "optimizers": records,
    }


def fingerprint_id(fp: dict) -> str:
    text = json.dumps(fp, sort_keys=True).encode("utf-8")
    return hashlib.sha256(text).hexdigest()[:16]


def ensure_built(model, saved: dict, where: str, build=None) -> None:
    """Builds the optimizers as the checkpoint's were built, so their variables exist.

    Each optimizer the checkpoint lists as built is built on exactly the
    variables it was built on then (`fingerprint`'s `built_on`); an optimizer
    that was not built (the unused default of a custom model's
    `super().compile()`) stays unbuilt. A checkpoint written before
    keras_resume recorded that builds `model.optimizer` on the trainable
    variables, as `fit` does. A model whose variables do not exist yet is
    built by `build()` where given (inside `fit`: from the data's shapes, as
    fit's first batch would build it), else refused.
    """
    missing = _differences("variable", saved["variables"], _describe(model.weights))
    if not model.built and (missing or not model.weights) and build is not None and build():
        missing = _differences("variable", saved["variables"], _describe(model.weights))
    if not model.built and (missing or not model.weights):
        # A model whose layers are all built (a custom model holding built
        # sub-models, never called itself) has every variable: it restores.
        raise ValueError(
            f"Cannot restore {where} into model {model.name!r}: the model is not built. "
            "Build it first (call it on a batch, or give it an `Input`), then restore."
        )
    if "optimizers" not in saved:
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            backend.build_optimizer(optimizer, model.trainable_variables)
        return
    if missing:
        return  # check_compatible names the differences; nothing is built or loaded
    live = dict(backend.optimizers(model))
    weights = model.weights
    for record in saved["optimizers"]:
        optimizer = live.get(record["path"])
        if not record["built"] or optimizer is None or optimizer.built:
            continue  # not built then; or check_compatible reports it; or built already
        if record["built_on"] is None:
            raise CheckpointMismatchError(
                f"Checkpoint {where}: optimizer {record['path']!r} ({record['class']}) was "
                "built on variables outside the model, and is not built now, so its "
                "state has nowhere to go; nothing was loaded. Build it first "
                "(optimizer.build(variables)), on the variables it trains, then restore."
            )
        if all(0 <= i < len(weights) for i in record["built_on"]):
            backend.build_optimizer(optimizer, [weights[i] for i in record["built_on"]])


_INTEGER_DTYPES = {"int32", "int64"}


def _same_dtype(saved: str, live: str) -> bool:
    """Equal dtypes, or both 32/64-bit integers.

    Step counters (the optimizer's `iteration`) are int64 on TensorFlow and
    int32 on JAX and PyTorch: a checkpoint crossing backends assigns the count
    into the other width, exactly, below 2**31 steps.
    """
    return saved == live or {saved, live} <= _INTEGER_DTYPES


def _differences(label: str, saved: list, live: list, limit: int = 8) -> list[str]:
    out = []
    if len(saved) != len(live):
        out.append(f"{label}: checkpoint has {len(saved)}, model has {len(live)}")
    for (s_path, s_shape, s_dtype), (l_path, l_shape, l_dtype) in zip(saved, live):
        if s_shape != l_shape or not _same_dtype(s_dtype, l_dtype):
            out.append(
                f"{label} {l_path!r} (checkpoint: {s_path!r}): shape/dtype "
                f"{s_shape}/{s_dtype} in the checkpoint, {l_shape}/{l_dtype} in the model"
            )
    if len(out) > limit:
        out = out[:limit] + [f"... and {len(out) - limit} more"]
    return out


def _without_optimizers(fp: dict) -> list:
    """The layout's groups, less every optimizer's (its group and those under it)."""
    layout = fp["weights_file"]
    paths = {r["path"] for r in fp.get("optimizers", [])} | {layout.get("optimizer")}
    paths.discard(None)

    def of_an_optimizer(group: str) -> bool:
        return any(group == p or group.startswith(f"{p}/") for p in paths)

    return [g for g in layout["groups"] if not of_an_optimizer(g[0])]


def _layout_differences(saved: dict, live: dict, with_optimizer: bool, limit: int = 8) -> list:
    """How the weights files' layouts of two fingerprints differ: group paths and
    classes, then datasets."""
    if with_optimizer:
        saved_groups, live_groups = saved["weights_file"]["groups"], live["weights_file"]["groups"]
    else:
        saved_groups, live_groups = _without_optimizers(saved), _without_optimizers(live)
    out = []
    if len(saved_groups) != len(live_groups):
        out.append(
            f"weights file groups: checkpoint has {len(saved_groups)}, model has {len(live_groups)}"
        )
    for (s_path, s_class, s_data), (l_path, l_class, l_data) in zip(saved_groups, live_groups):
        if s_path != l_path or s_class != l_class:
            out.append(
                f"layer {l_path or '(the model)'!r} is a {l_class} in the model; the checkpoint "
                f"has a {s_class} at {s_path or '(the model)'!r}"
            )
            continue
        s_spec = [(k, shape, dtype) for k, shape, dtype in s_data]
        l_spec = [(k, shape, dtype) for k, shape, dtype in l_data]
        same = len(s_spec) == len(l_spec) and all(
            sk == lk and ss == ls and _same_dtype(sd, ld)
            for (sk, ss, sd), (lk, ls, ld) in zip(s_spec, l_spec)
        )
        if not same:
            out.append(
                f"layer {l_path!r} ({l_class}) saves {[s[1:] for s in l_spec]} in the model, "
                f"{[s[1:] for s in s_spec]} in the checkpoint"
            )
    if len(out) > limit:
        out = out[:limit] + [f"... and {len(out) - limit} more"]
    return out


def _optimizer_differences(saved: list, live: list) -> list[str]:
    """Differences between the optimizers of a checkpoint and a model, matched by path."""
    live_by_path = {r["path"]: r for r in live}
    saved_paths = {r["path"] for r in saved}
    out = []
    for record in saved:
        path, found = record["path"], live_by_path.get(record["path"])
        label = "optimizer" if path == "optimizer" else f"optimizer {path!r}"
        if found is None:
            out.append(f"optimizer {path!r} ({record['class']}): the model has no optimizer there")
        elif found["class"] != record["class"]:
            out.append(f"{label}: checkpoint has {record['class']}, model has {found['class']}")
        else:
            out += _differences(f"{label} variable", record["variables"], found["variables"])
    for record in live:
        if record["path"] not in saved_paths and record["built"]:
            out.append(
                f"optimizer {record['path']!r} ({record['class']}): the model has it, "
                "the checkpoint has no state for it"
            )
    return out


def check_compatible(saved: dict, model, where: str, with_optimizer: bool = True) -> None:
    """Raises `CheckpointMismatchError`, before any variable changes, if `model` differs.

    Variables are matched by position (as `.weights.h5` files are), so layer
    names that Keras numbers differently in a new session do not matter; the
    weights file's groups (paths Keras derives from attribute names and layer
    classes, not from layer names) and the class saving each are compared too,
    where the checkpoint recorded them. `with_optimizer=False` compares the
    model's own variables only.
    """
    live = fingerprint(model)
    problems = _differences("variable", saved["variables"], live["variables"])
    compare_optimizer = with_optimizer and saved["optimizer"] is not None
    if "weights_file" in saved:
        problems += _layout_differences(saved, live, compare_optimizer)
    if with_optimizer and "optimizers" in saved:
        problems += _optimizer_differences(saved["optimizers"], live["optimizers"])
    elif compare_optimizer:
        if saved["optimizer"] != live["optimizer"]:
            problems.append(
                f"optimizer: checkpoint has {saved['optimizer']}, model has {live['optimizer']}"
            )
        else:
            problems += _differences(
                "optimizer variable", saved["optimizer_variables"], live["optimizer_variables"]
            )
    if problems:
        raise CheckpointMismatchError(
            f"Checkpoint {where} does not match model {model.name!r}; nothing was loaded.\n  "
            + "\n  ".join(problems)
            + "\nRebuild the model exactly as it was when the checkpoint was written, "
            "or point keras_resume at another directory."
        )


def snapshot_weights(
    model, buffers: dict | None = None, on_device: bool = False, sharded_only: bool = False
) -> list:
    """Copies of the model and optimizer variables, as `save_weights` lays them out.

    `buffers`: arrays of a previous snapshot, no longer in use, to copy into.
    `on_device`: copy in accelerator memory instead (`backend.device_snapshot`).
    `sharded_only`: only this process's shards of variables sharded across
    processes (see `state.shards`).
    """
    return backend.snapshot_weights(model, buffers, on_device, sharded_only)


def write_weights(snapshot: list, directory: Path) -> list[str]:
    """Writes a snapshot as `model.weights.h5`, the file `model.save_weights` writes.

    Variables sharded across processes go to this process's `shards.h5`
    instead. Returns the names of the files written.
    """
    sharded = backend.write_weights(snapshot, directory / WEIGHTS_FILE)
    return [WEIGHTS_FILE] + shards.write_shards(sharded, directory)


def write_own_shards(snapshot: list, directory: Path) -> list[str]:
    """Writes only the shards of a `sharded_only` snapshot (another process's part)."""
    return shards.write_shards(backend.sharded_entries(snapshot), directory)


def read_weights(directory: Path, fp: dict | None = None) -> dict:
    """Reads `model.weights.h5` into memory (nothing is assigned).

    `fp`: the checkpoint's fingerprint. With its `weights_file` layout only the
    datasets it lists are read, each checked against it first; without (an
    older checkpoint), no more bytes than its variables hold. A variable
    sharded across processes is not read yet: its entry is a
    `shards.ShardedVariable`, read shard by shard when it is assigned.
    """
    sharded = shards.read_index(directory)
    layout = (fp or {}).get("weights_file")
    if layout is not None:
        listed = {
            (path, key): (shape, dtype)
            for path, _, data in layout["groups"]
            for key, shape, dtype in data
        }
        for where, variable in sharded.items():
            spec = listed.get(where)
            if spec is None or tuple(spec[0]) != tuple(variable.shape) or spec[1] != variable.dtype:
                raise CheckpointCorruptError(
                    f"The shards of {directory} hold {variable.name!r} as {variable.shape}/"
                    f"{variable.dtype}; the checkpoint's fingerprint lists "
                    f"{'nothing there' if spec is None else f'{spec[0]}/{spec[1]}'}. The files "
                    "were altered; resume from another checkpoint."
                )
        groups = backend.read_weights(directory, WEIGHTS_FILE, layout["groups"], skip=set(sharded))
    else:
        budget = None
        if fp is not None:  # twice the listed bytes: a dtype that differs is reported by name
            budget = (
                2
                * sum(
                    hdf5.nbytes(shape, dtype)
                    for _, shape, dtype in fp["variables"] + fp["optimizer_variables"]
                )
                + 2**20
            )
        groups = backend.read_weights(directory, WEIGHTS_FILE, budget=budget)
    for (path, key), variable in sharded.items():
        groups.setdefault(path, {})[key] = variable
    return groups


def stage_weights(model, weights: dict, where: str, with_optimizer: bool = True) -> dict:
    """Checks every value read by `read_weights` against the variable it goes into,
    and reads the sharded ones; returns what `backend.assign_weights` assigns.

    Raises `CheckpointMismatchError` before any variable changes: each group
    the model saves must be in the checkpoint with the same keys, each value
    the variable's shape and dtype.
    """
    targets = backend.weight_targets(model, with_optimizer=with_optimizer)
    classes = getattr(targets, "classes", {})
    problems = []
    wanted: dict = {}
    for (path, key), target in targets.items():
        wanted.setdefault(path, {})[key] = target
    for path in classes:
        wanted.setdefault(path, {})
    for path, keys in wanted.items():
        saved = weights.get(path, {})
        label = f"{path or '(the model)'!r} ({classes.get(path)})"
        if set(saved) != set(keys):
            problems.append(
                f"layer {label} saves {len(keys)} values, the checkpoint has "
                f"{len(saved)} there ({sorted(saved)[:6]})"
            )
            continue
        for key, target in keys.items():
            value = saved[key]
            shape, dtype = backend.value_spec(target)
            v_shape, v_dtype = backend.value_spec(value)
            if v_shape != shape or not _same_dtype(v_dtype, dtype):
                problems.append(
                    f"layer {label} value {key}: {v_shape}/{v_dtype} in the checkpoint, "
                    f"{shape}/{dtype} in the model"
                )
    if problems:
        shown = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
        raise CheckpointMismatchError(
            f"Checkpoint {where} does not match model {model.name!r}; nothing was loaded.\n  "
            + "\n  ".join(shown)
            + "\nRebuild the model exactly as it was when the checkpoint was written, "
            "or point keras_resume at another directory."
        )
    staged = {}
    for path, keys in wanted.items():
        staged[path] = {}
        for key, target in keys.items():
            value = weights[path][key]
            if isinstance(value, shards.ShardedVariable):
                value = backend.array_from_regions(target, value.read)
            staged[path][key] = value
    return staged


def assign_weights(model, weights: dict, where: str = "", with_optimizer: bool = True) -> None:
    """Assigns weights read by `read_weights`, all or nothing (see `stage_weights`),
    as `model.load_weights` would.

    Each sharded variable is read in the layout the model has now: each
    process reads only the regions its own devices hold.
    """
    staged = stage_weights(model, weights, where or model.name, with_optimizer)
    backend.assign_weights(model, staged, with_optimizer=with_optimizer)


def capture_metrics(model, bundle: StateBundle) -> None:
    """Saves the running epoch's metric accumulators (for a mid-epoch checkpoint).

    `metrics/i` holds each accumulator's value as the model reads it. Under a
    `tf.distribute` strategy each replica also keeps its own copy:
    `metrics_replicas/j` stacks the copies of accumulator `per_replica[j]`.
    """
    variables = backend.metric_variables(model)
    bundle.meta["metrics"] = {"count": len(variables)}
    bundle.put_arrays("metrics", [backend.to_numpy(v) for v in variables])
    replicas = [backend.replica_values(v) for v in variables]
    per_replica = [i for i, copies in enumerate(replicas) if copies is not None]
    if per_replica:
        bundle.meta["metrics"]["per_replica"] = per_replica
        bundle.put_arrays("metrics_replicas", [np.stack(replicas[i]) for i in per_replica])


def restore_metrics(model, bundle: StateBundle) -> bool:
    """Puts the metric accumulators back; returns False if the metrics differ.

    Each replica's own copy where the model has as many replicas as the
    checkpoint, else the value as read (a strategy spreads it over its replicas).
    """
    values = bundle.get_arrays("metrics")
    variables = backend.metric_variables(model)
    if len(values) != len(variables) or any(
        tuple(v.shape) != a.shape for v, a in zip(variables, values)
    ):
        return False
    per_replica = bundle.meta.get("metrics", {}).get("per_replica", [])
    copies = dict(zip(per_replica, bundle.get_arrays("metrics_replicas")))
    for i, (variable, value) in enumerate(zip(variables, values)):
        if i in copies and backend.assign_replica_values(variable, copies[i]):
            continue
        variable.assign(value)
    return True


def capture_replicas(model, bundle: StateBundle) -> None:
    """Saves every replica's copy of the non-trainable variables whose copies differ.

    Under a `tf.distribute` strategy each replica updates the variables a layer
    assigns during the step (BatchNormalization's moving statistics) from its
    own share of the batch, so their copies drift apart, and `.weights.h5`
    holds the first replica's only. `replicas/j` stacks the copies of
    `model.non_trainable_variables[variables[j]]`. Trainable and optimizer
    variables are not looked at: the optimizer updates every copy alike.
    """
    variables = model.non_trainable_variables
    differ = [i for i, v in enumerate(variables) if backend.replicas_differ(v)]
    if differ:
        bundle.meta["replicas"] = {"variables": differ}
        bundle.put_arrays(
            "replicas", [np.stack(backend.replica_values(variables[i])) for i in differ]
        )


def restore_replicas(model, bundle: StateBundle) -> None:
    """Puts back `capture_replicas`'s copies, where the model has as many replicas.

    Elsewhere (one device, or another number of replicas) every copy keeps the
    first replica's value, loaded from `.weights.h5`.
    """
    indices = bundle.meta.get("replicas", {}).get("variables", [])
    variables = model.non_trainable_variables
    for i, copies in zip(indices, bundle.get_arrays("replicas")):
        if i < len(variables):
            backend.assign_replica_values(variables[i], copies)


def model_config(model) -> str | None:
    """The model's architecture and compile config as Keras JSON; None if it has none.

    What `keras.models.model_from_json` rebuilds (subclassed models without
    `get_config` cannot be described: export then says so).
    """
    try:
        return model.to_json()
    except Exception:  # noqa: BLE001 - NotImplementedError, TypeError from custom configs
        return None
