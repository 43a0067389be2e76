"""Kill torture in CI: 25 SIGKILLs at random instants, saves included.

Runs benchmarks/torture.py as a real program. After every kill the newest
committed backup must verify and the next run must resume from exactly it;
the final weights must equal an uninterrupted run's.
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_25_random_sigkills_end_bit_identical(tmp_path):
    out = tmp_path / "torture.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "torture.py"),
            "--kills",
            "25",
            "--seed",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["kills"] == 25
    assert result["bit_identical"] is True
    assert result["resumed_from_newest_verified_backup"] >= 20
