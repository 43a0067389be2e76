"""The manifest: one human-readable JSON file that lists every committed checkpoint.

Pure data: building, validating, reading and writing the manifest. A checkpoint
exists for keras_resume only once its entry is in the manifest, so the manifest
write is the commit point of every save.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path

from keras_resume import storage
from keras_resume.errors import ManifestError

MANIFEST_NAME = "manifest.json"
SELF_DESCRIPTION = "checkpoint.json"  # in every checkpoint directory
FORMAT = "keras-resume"
SCHEMA_VERSION = 1
KINDS = ("backup", "best")
_DIR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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


def read_manifest(path: Path) -> dict | None:
    """Reads and validates a manifest; returns None when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(
            f"Manifest {path} is not valid JSON ({e}). It may have been edited "
            "by hand or damaged; restore it from a backup or remove the directory "
            "to start a new run."
        ) from e
    validate(manifest, path)
    return manifest


def write_manifest(path: Path, manifest: dict) -> None:
    validate(manifest, path)
    storage.atomic_write_json(path, manifest)


def _fail(path, what: str) -> None:
    raise ManifestError(
        f"Manifest {path} is invalid: {what}. It was not written by this version "
        "of keras_resume or was damaged; fix or remove it."
    )


def _check_type(path, where: str, value, types) -> None:
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        names = " or ".join(t.__name__ for t in types)
        _fail(path, f"{where} must be {names}, got {value!r}")


def validate(manifest, path="<manifest>") -> None:
    """Checks the manifest's structure; raises `ManifestError` naming the bad field."""
    _check_type(path, "the top level", manifest, dict)
    if manifest.get("format") != FORMAT:
        _fail(path, f"format={manifest.get('format')!r}, expected {FORMAT!r}")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ManifestError(
            f"Manifest {path} has schema_version={version!r}; this keras_resume "
            f"reads schema_version={SCHEMA_VERSION}. Upgrade keras_resume to read it."
        )
    for key, types in (
        ("next_id", int),
        ("checkpoints", list),
        ("fingerprints", dict),
        ("history", list),
        ("resumes", list),
    ):
        _check_type(path, key, manifest.get(key), types)
    seen = set()
    for i, entry in enumerate(manifest["checkpoints"]):
        _validate_entry(path, i, entry, manifest)
        if entry["id"] in seen or entry["id"] >= manifest["next_id"]:
            _fail(path, f"checkpoints[{i}].id={entry['id']} is repeated or >= next_id")
        seen.add(entry["id"])
    best = manifest.get("best")
    if best is not None:
        _check_type(path, "best", best, dict)
        for key, types in (("monitor", str), ("mode", str), ("value", (int, float))):
            _check_type(path, f"best.{key}", best.get(key), types)
    for i, item in enumerate(manifest["history"]):
        _check_type(path, f"history[{i}]", item, dict)
        _check_type(path, f"history[{i}].epoch", item.get("epoch"), int)
        _check_type(path, f"history[{i}].logs", item.get("logs"), dict)


def _validate_entry(path, i: int, entry, manifest: dict) -> None:
    where = f"checkpoints[{i}]"
    _check_type(path, where, entry, dict)
    for key, types in (
        ("id", int),
        ("dir", str),
        ("kind", str),
        ("epoch", int),
        ("step_in_epoch", int),
        ("epoch_complete", bool),
        ("global_step", int),
        ("logs", dict),
        ("files", list),
        ("fingerprint", str),
    ):
        _check_type(path, f"{where}.{key}", entry.get(key), types)
    if entry["kind"] not in KINDS:
        _fail(path, f"{where}.kind={entry['kind']!r}, expected one of {KINDS}")
    if not _DIR_NAME.match(entry["dir"]) or ".." in entry["dir"]:
        _fail(path, f"{where}.dir={entry['dir']!r} is not a plain directory name")
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
        _check_type(path, f"{where}.files[{j}].sha256", record.get("sha256"), str)


def self_description(manifest: dict, entry: dict) -> dict:
    """What a checkpoint directory stores about itself: its entry, fingerprint,
    and the run's best value and history as of its commit."""
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "entry": entry,
        "fingerprint": manifest["fingerprints"][entry["fingerprint"]],
        "best": manifest["best"],
        "history": manifest["history"],
    }


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


def record_history(manifest: dict, epoch: int, logs: dict) -> None:
    """Sets the logs of one epoch, replacing a record left by an interrupted attempt."""
    history = [h for h in manifest["history"] if h["epoch"] != epoch]
    history.append({"epoch": epoch, "logs": json_safe_logs(logs)})
    manifest["history"] = sorted(history, key=lambda h: h["epoch"])


def checkpoints_of_kind(manifest: dict, kind: str | None = None) -> list[dict]:
    return [c for c in manifest["checkpoints"] if kind is None or c["kind"] == kind]


def resume_point(entry: dict) -> tuple[int, int]:
    """The (epoch, step within that epoch) at which training continues after `entry`."""
    if entry["epoch_complete"]:
        return entry["epoch"] + 1, 0
    return entry["epoch"], entry["step_in_epoch"]
