"""The manifest: one human-readable JSON file that lists every committed checkpoint.

Pure data: building, validating, reading and writing the manifest. A checkpoint
exists for keras_resume only once its entry is in the manifest, so the manifest
write is the commit point of every save.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from pathlib import Path

from keras_resume import storage
from keras_resume.errors import ManifestError, ManifestVersionError

MANIFEST_NAME = "manifest.json"
SELF_DESCRIPTION = "checkpoint.json"  # in every checkpoint directory
FORMAT = "keras-resume"
SCHEMA_VERSION = 2
# 2: file records carry SHA-256 per block (`sha256_blocks`), so verifying hashes
# blocks in parallel. Schema 1 (whole-file `sha256`) is still read.
READABLE_SCHEMA_VERSIONS = (1, 2)
KINDS = ("backup", "best")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_manifest() -> dict:
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "created": utc_now(),
        "next_id": 1,
        "checkpoints": [],
        "fingerprints": {},
        "best": None,
        "history": [],
        "resumes": [],
    }


def content_checksum(manifest: dict) -> str:
    """SHA-256 of the manifest's canonical JSON, its own checksum field left out."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_manifest(path: Path) -> dict | None:
    """Reads and validates a manifest; returns None when the file does not exist.

    Raises `ManifestError` naming the file when it is not JSON, fails its
    checksum (a flipped byte, a truncation, a hand edit) or its schema.
    """
    path = Path(path)
    try:
        manifest = read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ManifestError(
            f"Manifest {path} is not valid JSON ({e}). It was damaged or edited by "
            "hand; keras_resume rebuilds it from the checkpoints' own checkpoint.json "
            "when it next writes, or remove the directory to start a new run."
        ) from e
    _validate_header(manifest, path)  # a newer schema may checksum differently
    if manifest.get("checksum") != content_checksum(manifest):
        raise ManifestError(
            f"Manifest {path} fails its checksum: it was damaged or edited by hand. "
            "keras_resume rebuilds it from the checkpoints' own checkpoint.json."
        )
    validate(manifest, path)
    return manifest


def read_json(path: Path):
    """A JSON file of a run: a regular file (no link followed, `storage.open_regular`),
    parsed with bounded integers (`storage.loads_json`). Raises `FileNotFoundError`,
    `CheckpointCorruptError` (an `OSError`) or `ValueError`."""
    path = Path(path)
    return storage.loads_json(storage.read_regular(path.parent, path.name))


def write_manifest(path: Path, manifest: dict) -> None:
    validate(manifest, path)
    manifest["checksum"] = content_checksum(manifest)
    storage.atomic_write_json(path, manifest)


def _fail(path, what: str) -> None:
    raise ManifestError(
        f"Manifest {path} is invalid: {what}. It was not written by this version "
        "of keras_resume or was damaged; fix or remove it."
    )


def type_mismatch(where: str, value, types) -> str | None:
    """Describes why `value` is not of `types` (a bool is never an int), or None.

    Shared by the manifest schema here and the state.json schema in state/schema.py.
    """
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        names = " or ".join(t.__name__ for t in types)
        return f"{where} must be {names}, got {value!r:.80}"
    return None


def _check_type(path, where: str, value, types) -> None:
    problem = type_mismatch(where, value, types)
    if problem:
        _fail(path, problem)


def _validate_header(manifest, path) -> None:
    _check_type(path, "the top level", manifest, dict)
    if manifest.get("format") != FORMAT:
        _fail(path, f"format={manifest.get('format')!r}, expected {FORMAT!r}")
    version = manifest.get("schema_version")
    if isinstance(version, bool) or version not in READABLE_SCHEMA_VERSIONS:
        raise ManifestVersionError(
            f"Manifest {path} has schema_version={version!r}; this keras_resume "
            f"reads schema_version {READABLE_SCHEMA_VERSIONS}. Upgrade keras_resume to read it."
        )


def validate(manifest, path="<manifest>") -> None:
    """Checks the manifest's structure; raises `ManifestError` naming the bad field."""
    _validate_header(manifest, path)
    for key, types in (
        ("next_id", int),
        ("checkpoints", list),
        ("fingerprints", dict),
        ("history", list),
        ("resumes", list),
    ):
        _check_type(path, key, manifest.get(key), types)
    if "best" not in manifest:
        _fail(path, "the key 'best' is missing")
    for fp_id, fp in manifest["fingerprints"].items():
        _validate_fingerprint(path, f"fingerprints[{fp_id!r}]", fp)
    seen_ids, seen_dirs = set(), set()
    for i, entry in enumerate(manifest["checkpoints"]):
        _validate_entry(path, i, entry, manifest)
        if entry["id"] in seen_ids or entry["id"] >= manifest["next_id"]:
            _fail(path, f"checkpoints[{i}].id={entry['id']} is repeated or >= next_id")
        if entry["dir"] in seen_dirs:
            _fail(path, f"checkpoints[{i}].dir={entry['dir']!r} is used twice")
        seen_ids.add(entry["id"])
        seen_dirs.add(entry["dir"])
    best = manifest["best"]
    if best is not None:
        _check_type(path, "best", best, dict)
        for key, types in (("monitor", str), ("mode", str), ("value", (int, float))):
            _check_type(path, f"best.{key}", best.get(key), types)
        if best["mode"] not in ("min", "max"):
            _fail(path, f"best.mode={best['mode']!r}, expected 'min' or 'max'")
    for i, item in enumerate(manifest["history"]):
        _check_type(path, f"history[{i}]", item, dict)
        _check_natural(path, f"history[{i}].epoch", item.get("epoch"))
        if "fit" in item:  # absent before keras_resume told successive fits apart: fit 0
            _check_natural(path, f"history[{i}].fit", item["fit"])
        _check_type(path, f"history[{i}].logs", item.get("logs"), dict)
    for i, item in enumerate(manifest["resumes"]):
        _check_type(path, f"resumes[{i}]", item, dict)


def _check_natural(path, where: str, value) -> None:
    _check_type(path, where, value, int)
    if value < 0:
        _fail(path, f"{where}={value} is negative")
    if value >= 2**63:
        _fail(path, f"{where}={str(value)[:30]} is not below 2**63")


def _validate_fingerprint(path, where: str, fp) -> None:
    _check_type(path, where, fp, dict)
    for key in ("variables", "optimizer_variables"):
        _validate_described(path, f"{where}.{key}", fp.get(key))
    if fp.get("optimizer") is not None:
        _check_type(path, f"{where}.optimizer", fp["optimizer"], str)
    if "weights_file" in fp:
        _validate_layout(path, f"{where}.weights_file", fp["weights_file"])
    if "optimizers" in fp:  # absent before keras_resume recorded every optimizer
        _validate_optimizers(path, where, fp["optimizers"])


def _validate_optimizers(path, where: str, records) -> None:
    """Each optimizer's record (see `backend.optimizers`)."""
    _check_type(path, f"{where}.optimizers", records, list)
    for j, record in enumerate(records):
        at = f"{where}.optimizers[{j}]"
        _check_type(path, at, record, dict)
        for key, types in (("path", str), ("class", str), ("built", bool)):
            _check_type(path, f"{at}.{key}", record.get(key), types)
        _validate_described(path, f"{at}.variables", record.get("variables"))
        built_on = record.get("built_on")
        if built_on is not None:
            _check_type(path, f"{at}.built_on", built_on, list)
            for k, index in enumerate(built_on):
                _check_natural(path, f"{at}.built_on[{k}]", index)


def _is_shape(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    )


def _validate_layout(path, where: str, layout) -> None:
    """The weights file's layout: `{"groups": [[path, class, [[key, shape, dtype]]]],
    "optimizer": path or None}` (see `backend.weights_layout`)."""
    _check_type(path, where, layout, dict)
    _check_type(path, f"{where}.groups", layout.get("groups"), list)
    _check_type(path, f"{where}.optimizer", layout.get("optimizer"), (str, type(None)))
    for j, group in enumerate(layout["groups"]):
        ok = (
            isinstance(group, list)
            and len(group) == 3
            and isinstance(group[0], str)
            and isinstance(group[1], (str, type(None)))
            and isinstance(group[2], list)
            and all(
                isinstance(item, list)
                and len(item) == 3
                and isinstance(item[0], str)
                and _is_shape(item[1])
                and isinstance(item[2], str)
                for item in group[2]
            )
        )
        if not ok:
            _fail(
                path,
                f"{where}.groups[{j}]={group!r:.200}, "
                "expected [path, class, [[key, shape, dtype]]]",
            )


def _validate_described(path, where: str, items) -> None:
    """A list of `[variable path, shape, dtype]`."""
    _check_type(path, where, items, list)
    for j, item in enumerate(items):
        ok = (
            isinstance(item, list)
            and len(item) == 3
            and isinstance(item[0], str)
            and _is_shape(item[1])
            and isinstance(item[2], str)
        )
        if not ok:
            _fail(path, f"{where}[{j}]={item!r:.200}, expected [path, shape, dtype]")


def _validate_entry(path, i: int, entry, manifest: dict) -> None:
    where = f"checkpoints[{i}]"
    _check_type(path, where, entry, dict)
    for key, types in (
        ("dir", str),
        ("kind", str),
        ("epoch_complete", bool),
        ("logs", dict),
        ("files", list),
        ("fingerprint", str),
    ):
        _check_type(path, f"{where}.{key}", entry.get(key), types)
    for key in ("id", "epoch", "step_in_epoch", "global_step"):
        _check_natural(path, f"{where}.{key}", entry.get(key))
    if "fit" in entry:  # absent before keras_resume told successive fits apart: fit 0
        _check_natural(path, f"{where}.fit", entry["fit"])
    if "training_stopped" in entry:
        _check_type(path, f"{where}.training_stopped", entry["training_stopped"], bool)
    if entry["kind"] not in KINDS:
        _fail(path, f"{where}.kind={entry['kind']!r}, expected one of {KINDS}")
    if entry["dir"] != f"{entry['kind']}-{entry['id']:06d}":
        _fail(path, f"{where}.dir={entry['dir']!r} does not match its kind and id")
    if entry["fingerprint"] not in manifest["fingerprints"]:
        _fail(path, f"{where}.fingerprint={entry['fingerprint']!r} is not in fingerprints")
    for j, record in enumerate(entry["files"]):
        _check_type(path, f"{where}.files[{j}]", record, dict)
        rel = record.get("path")
        _check_type(path, f"{where}.files[{j}].path", rel, str)
        parts = rel.split("/")
        if rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
            _fail(path, f"{where}.files[{j}].path={rel!r} points outside its checkpoint")
        _check_type(path, f"{where}.files[{j}].size", record.get("size"), int)
        _validate_checksums(path, f"{where}.files[{j}]", record)


def _validate_checksums(path, where: str, record: dict) -> None:
    if "sha256_blocks" not in record:  # schema 1: one digest of the whole file
        _check_type(path, f"{where}.sha256", record.get("sha256"), str)
        return
    blocks, block_bytes = record["sha256_blocks"], record.get("block_bytes")
    _check_type(path, f"{where}.sha256_blocks", blocks, list)
    _check_type(path, f"{where}.block_bytes", block_bytes, int)
    if block_bytes < 1:
        _fail(path, f"{where}.block_bytes={block_bytes!r}, expected a positive integer")
    for k, digest in enumerate(blocks):
        _check_type(path, f"{where}.sha256_blocks[{k}]", digest, str)
    size = record["size"]
    expected = max(1, -(-size // block_bytes)) if size >= 0 else -1
    if len(blocks) != expected:
        _fail(
            path,
            f"{where} has {len(blocks)} block digests for {size} bytes in blocks of "
            f"{block_bytes}, expected {expected}",
        )


def self_description(manifest: dict, entry: dict) -> dict:
    """What a checkpoint directory stores about itself: its entry, fingerprint,
    and the run's best value and history as of its commit."""
    description = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "entry": entry,
        "fingerprint": manifest["fingerprints"][entry["fingerprint"]],
        "best": manifest["best"],
        "history": manifest["history"],
    }
    description["checksum"] = content_checksum(description)
    return description


def from_self_descriptions(descriptions: list[dict], where) -> dict:
    """Rebuilds a manifest from checkpoints' `checkpoint.json` (see `self_description`).

    Entries come from every description; the best value and the history from
    the newest. Resume records are not kept in checkpoints and start empty.
    """
    manifest = new_manifest()
    by_id = {}
    for description in sorted(descriptions, key=lambda d: str(d["entry"].get("created"))):
        by_id[description["entry"]["id"]] = description  # the newest of a repeated id wins
    for description in sorted(by_id.values(), key=lambda d: d["entry"]["id"]):
        entry = description["entry"]
        manifest["checkpoints"].append(entry)
        manifest["fingerprints"][entry["fingerprint"]] = description["fingerprint"]
        manifest["best"] = description["best"]
        manifest["history"] = description["history"]
    manifest["next_id"] = max((c["id"] for c in manifest["checkpoints"]), default=0) + 1
    validate(manifest, where)
    return manifest


def read_self_description(path: Path) -> dict:
    """Reads one `checkpoint.json`; raises `ManifestError` if it is not a valid one."""
    try:
        description = read_json(path)
    except (OSError, ValueError) as e:
        raise ManifestError(f"{path} is unreadable ({e})") from e
    _check_type(path, "the top level", description, dict)
    version = description.get("schema_version")
    if (
        description.get("format") != FORMAT
        or isinstance(version, bool)
        or version not in READABLE_SCHEMA_VERSIONS
    ):
        _fail(path, "format or schema_version is not this keras_resume's")
    if description.get("checksum") != content_checksum(description):
        _fail(path, "its checksum does not match (damaged or edited)")
    entry = description.get("entry")
    _check_type(path, "entry", entry, dict)
    _check_type(path, "fingerprint", description.get("fingerprint"), dict)
    probe = new_manifest()
    probe["fingerprints"][str(entry.get("fingerprint"))] = description["fingerprint"]
    probe["checkpoints"] = [entry]
    probe["next_id"] = entry.get("id", 0) + 1 if isinstance(entry.get("id"), int) else 0
    probe["best"] = description.get("best")
    probe["history"] = description.get("history")
    validate(probe, path)
    if entry["dir"] != Path(path).parent.name:
        _fail(path, f"entry.dir={entry['dir']!r} is not the directory it is in")
    return description


def json_safe_logs(logs: dict | None) -> dict:
    """Converts Keras logs (numpy / tensor scalars) into plain JSON floats."""
    out = {}
    for key, value in (logs or {}).items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        out[str(key)] = number if math.isfinite(number) else repr(number)
    return out


def record_history(manifest: dict, epoch: int, logs: dict, fit: int = 0) -> None:
    """Sets the logs of one epoch of fit number `fit`, replacing a record left by an
    interrupted attempt."""
    history = [h for h in manifest["history"] if (fit_of(h), h["epoch"]) != (fit, epoch)]
    record = {"epoch": epoch, "logs": json_safe_logs(logs)}
    if fit:  # a first fit's records read as before fits were told apart
        record["fit"] = fit
    history.append(record)
    manifest["history"] = sorted(history, key=lambda h: (fit_of(h), h["epoch"]))


def fit_of(record: dict) -> int:
    """The ordinal of the `fit` call a checkpoint entry or history record belongs to
    (see `session.fit_ordinal`); 0 for one written before fits were told apart."""
    return record.get("fit", 0)


def checkpoints_of_kind(manifest: dict, kind: str | None = None, fit: int | None = None):
    """Entries of `kind` (any if None) and of fit number `fit` (any if None), oldest first."""
    return [
        c
        for c in manifest["checkpoints"]
        if (kind is None or c["kind"] == kind) and (fit is None or fit_of(c) == fit)
    ]


def resume_point(entry: dict) -> tuple[int, int]:
    """The (epoch, step within that epoch) at which training continues after `entry`."""
    if entry["epoch_complete"]:
        return entry["epoch"] + 1, 0
    return entry["epoch"], entry["step_in_epoch"]
