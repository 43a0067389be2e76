"""The schema of a checkpoint's `state.json`, checked before any variable is assigned.

A checkpoint that passes its checksums can still be from a buggy writer or
crafted by hand; this turns every malformed field into one
`CheckpointCorruptError` naming the file and the key, instead of a raw
KeyError halfway through a restore.
"""

from __future__ import annotations

from keras_resume.errors import CheckpointCorruptError
from keras_resume.manifest import type_mismatch
from keras_resume.state.bundle import STATE_FILE, StateBundle


class _Bad(Exception):
    pass


def _is(value, types, where):
    problem = type_mismatch(where, value, types)
    if problem:
        raise _Bad(problem)
    return value


def _ints(values, where, length=None):
    _is(values, list, where)
    if length is not None and len(values) != length:
        raise _Bad(f"{where} must have {length} items, has {len(values)}")
    for i, v in enumerate(values):
        _is(v, int, f"{where}[{i}]")
    return values


def _in_range(values, low, high, where):
    for i, v in enumerate(values):
        if not low <= v < high:
            raise _Bad(f"{where}[{i}]={v} is outside [{low}, {high})")


def _python_rng(state, where):
    state = _is(state, list, where)
    if len(state) != 3:
        raise _Bad(f"{where} must be [version, state, gauss]")
    _is(state[0], int, f"{where}[0]")
    internal = _ints(state[1], f"{where}[1]", 625)
    _in_range(internal[:624], 0, 2**32, f"{where}[1]")
    _in_range(internal[624:], 0, 625, f"{where}[1]")
    _is(state[2], (float, type(None)), f"{where}[2]")


def _process_rng(state, where):
    _is(state, dict, where)
    _python_rng(state.get("python"), f"{where}.python")
    numpy = _is(state.get("numpy"), list, f"{where}.numpy")
    if len(numpy) != 5 or numpy[0] != "MT19937":
        raise _Bad(f"{where}.numpy must be ['MT19937', keys, pos, has_gauss, cached]")
    _in_range(_ints(numpy[1], f"{where}.numpy[1]", 624), 0, 2**32, f"{where}.numpy[1]")
    _in_range([_is(numpy[2], int, f"{where}.numpy[2]")], 0, 625, f"{where}.numpy[2]")
    _in_range([_is(numpy[3], int, f"{where}.numpy[3]")], 0, 2, f"{where}.numpy[3]")
    _is(numpy[4], (int, float), f"{where}.numpy[4]")
    backend = _is(state.get("backend", {}), dict, f"{where}.backend")
    _is(backend.get("global_seed"), (int, type(None)), f"{where}.backend.global_seed")
    if "tf_op_seed_rng" in backend:
        _python_rng(backend["tf_op_seed_rng"], f"{where}.backend.tf_op_seed_rng")
    if "tf_global_generator" in backend:
        generator = _ints(backend["tf_global_generator"], f"{where}.backend.tf_global_generator")
        _in_range(generator, -(2**63), 2**63, f"{where}.backend.tf_global_generator")
    if "torch_cpu" in backend:
        _in_range(
            _ints(backend["torch_cpu"], f"{where}.backend.torch_cpu"),
            0,
            256,
            f"{where}.backend.torch_cpu",
        )
    for i, device in enumerate(
        _is(backend.get("torch_cuda", []), list, f"{where}.backend.torch_cuda")
    ):
        _in_range(
            _ints(device, f"{where}.backend.torch_cuda[{i}]"),
            0,
            256,
            f"{where}.backend.torch_cuda[{i}]",
        )
    _is(state.get("backend_name", ""), str, f"{where}.backend_name")


def _arrays(bundle, section, count, where):
    found = len(bundle.get_arrays(section))
    if found != count:
        raise _Bad(f"{where} lists {count} arrays, arrays.npz has {found}")


def _check(bundle: StateBundle) -> None:
    meta = bundle.meta
    if "data" in meta:
        data = _is(meta["data"], dict, "data")
        _is(data.get("tracked"), bool, "data.tracked")
        _is(data.get("mid_epoch"), bool, "data.mid_epoch")
        created = _is(data.get("iterators_created"), int, "data.iterators_created")
        _in_range([created], 0, 10**6, "data.iterators_created")
        for i, state in enumerate(_is(data.get("epoch_end_rng"), list, "data.epoch_end_rng")):
            _process_rng(state, f"data.epoch_end_rng[{i}]")
        for i, record in enumerate(_is(data.get("generators", []), list, "data.generators")):
            _is(record, dict, f"data.generators[{i}]")
            for key in ("role", "device", "state"):  # state: base64, checked as it is set
                _is(record.get(key), str, f"data.generators[{i}].{key}")
        if "enqueuer_ready" in data:
            for i, label in enumerate(_is(data["enqueuer_ready"], list, "data.enqueuer_ready")):
                where = f"data.enqueuer_ready[{i}]"
                _in_range(_ints(label, where, 2), -1, 10**9, where)
    if "rng" in meta:
        rng = _is(meta["rng"], dict, "rng")
        _process_rng(rng.get("process"), "rng.process")
        if "epoch_start" in rng:
            _process_rng(rng["epoch_start"], "rng.epoch_start")
    if "data_seed_generators" in meta:
        names = _is(meta["data_seed_generators"], list, "data_seed_generators")
        for i, name in enumerate(names):
            _is(name, str, f"data_seed_generators[{i}]")
        _arrays(bundle, "data_seed_generators", len(names), "data_seed_generators")
    if "seed_generators" in meta:
        names = _is(meta["seed_generators"], list, "seed_generators")
        for i, name in enumerate(names):
            _is(name, str, f"seed_generators[{i}]")
        _arrays(bundle, "seed_generators", len(names), "seed_generators")
    if "metrics" in meta:
        count = _is(_is(meta["metrics"], dict, "metrics").get("count"), int, "metrics.count")
        _arrays(bundle, "metrics", count, "metrics")
        per_replica = _ints(meta["metrics"].get("per_replica", []), "metrics.per_replica")
        _in_range(per_replica, 0, count, "metrics.per_replica")
        _arrays(bundle, "metrics_replicas", len(per_replica), "metrics.per_replica")
    if "replicas" in meta:
        replicas = _is(meta["replicas"], dict, "replicas")
        indices = _ints(replicas.get("variables"), "replicas.variables")
        _in_range(indices, 0, 10**9, "replicas.variables")
        _arrays(bundle, "replicas", len(indices), "replicas.variables")
    if "append_logs" in meta:
        for i, record in enumerate(_is(meta["append_logs"], list, "append_logs")):
            _is(record, dict, f"append_logs[{i}]")
            _is(record.get("path"), str, f"append_logs[{i}].path")
            length = _is(record.get("length"), int, f"append_logs[{i}].length")
            _in_range([length], 0, 2**63, f"append_logs[{i}].length")
    if "callbacks" in meta:
        for i, record in enumerate(_is(meta["callbacks"], list, "callbacks")):
            _is(record, dict, f"callbacks[{i}]")
            _is(record.get("class"), str, f"callbacks[{i}].class")
            _is(record.get("attributes", {}), dict, f"callbacks[{i}].attributes")
            for name, present in _is(
                record.get("arrays", {}), dict, f"callbacks[{i}].arrays"
            ).items():
                _is(present, bool, f"callbacks[{i}].arrays.{name}")


def check_bundle(bundle: StateBundle, directory) -> None:
    """Raises `CheckpointCorruptError` naming the file and key of a malformed field."""
    try:
        _check(bundle)
    except _Bad as e:
        raise CheckpointCorruptError(
            f"Checkpoint state {directory}/{STATE_FILE} is malformed: {e}. The checkpoint "
            "cannot be used; resume from another one (select it by id), or delete it."
        ) from None
