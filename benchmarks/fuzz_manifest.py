"""Fuzz the manifest reader: only keras_resume's documented errors may escape.

Starts from a real manifest and mutates it with hypothesis: random JSON values
in any field, removed keys, random bytes, truncation. `read_manifest` and the
rebuild path must return a valid manifest or raise `KerasResumeError`.

    python benchmarks/fuzz_manifest.py --examples 5000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from keras_resume import manifest as mf  # noqa: E402
from keras_resume.errors import KerasResumeError  # noqa: E402

BASE = {
    **mf.new_manifest(),
    "next_id": 3,
    "checkpoints": [
        {
            "id": 2,
            "dir": "backup-000002",
            "kind": "backup",
            "epoch": 1,
            "step_in_epoch": 5,
            "epoch_complete": False,
            "global_step": 17,
            "training_stopped": False,
            "logs": {"loss": 0.5},
            "created": "2026-11-23T00:00:00+00:00",
            "versions": {},
            "files": [{"path": "model.weights.h5", "size": 10, "sha256": "ab" * 32}],
            "fingerprint": "fp",
        }
    ],
    "fingerprints": {
        "fp": {
            "variables": [["d/kernel", [3, 4], "float32"]],
            "optimizer": "Adam",
            "optimizer_variables": [["adam/iteration", [], "int64"]],
        }
    },
    "best": {"monitor": "val_loss", "mode": "min", "value": 0.4, "epoch": 0, "checkpoint_id": 2},
    "history": [{"epoch": 0, "logs": {"loss": 0.9}}],
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


ALL_PATHS = [p for p in _paths(BASE) if p]


@st.composite
def mutated_manifests(draw):
    manifest = json.loads(json.dumps(BASE))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(ALL_PATHS))
        parent = manifest
        try:
            for key in path[:-1]:
                parent = parent[key]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = draw(json_values)
        except (KeyError, IndexError, TypeError):
            pass
    text = json.dumps(manifest)
    if draw(st.booleans()):  # keep the checksum valid: only the schema can catch it
        body = json.loads(text)
        body["checksum"] = mf.content_checksum(body)
        text = json.dumps(body)
    mode = draw(st.sampled_from(["json", "truncate", "bytes"]))
    data = text.encode()
    if mode == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif mode == "bytes":
        data = draw(st.binary(max_size=200))
    return data


def check(data: bytes, directory: Path) -> str:
    path = directory / mf.MANIFEST_NAME
    path.write_bytes(data)
    try:
        manifest = mf.read_manifest(path)
    except KerasResumeError:
        return "rejected"
    mf.validate(manifest, path)
    return "accepted"


def run(examples: int) -> dict:
    counts = {"accepted": 0, "rejected": 0}
    with tempfile.TemporaryDirectory() as tmp:

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(mutated_manifests())
        def fuzz(data):
            counts[check(data, Path(tmp))] += 1

        fuzz()
    return counts


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000)
    args = parser.parse_args()
    result = run(args.examples)
    print(json.dumps({"examples": sum(result.values()), **result}))
