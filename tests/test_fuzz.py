"""The manifest reader under fuzzing: only keras_resume's own errors escape."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import fuzz_manifest  # noqa: E402


def test_fuzzed_manifests_raise_only_documented_errors():
    counts = fuzz_manifest.run(examples=1000)
    assert sum(counts.values()) >= 1000
    assert counts["rejected"] > 0  # the mutations do reach the validator
