"""Input pipeline state (keras_resume/state/data_state.py): what makes a resumed epoch
draw the batches of the original run."""

import json
import subprocess
import sys

import numpy as np
import pytest

from keras_resume import backend
from tests.conftest import SUBPROCESS_TIMEOUT, TESTS, script_env

# --- A torch DataLoader's own generators ----------------------------------------------


def test_dataloader_generator_state_round_trips_through_json():
    torch = pytest.importorskip("torch")
    original = torch.Generator().manual_seed(5)
    torch.randperm(10, generator=original)
    saved = json.loads(json.dumps(backend.capture_generators([("DataLoader.generator", original)])))
    assert isinstance(saved[0]["state"], str) and saved[0]["device"] == "cpu"
    expected = torch.randperm(10, generator=original)
    fresh = torch.Generator().manual_seed(99)
    assert backend.restore_generators([("DataLoader.generator", fresh)], saved) == []
    assert torch.equal(torch.randperm(10, generator=fresh), expected)


def test_unusable_or_missing_generator_state_is_named():
    torch = pytest.importorskip("torch")
    live = [("DataLoader.generator", torch.Generator().manual_seed(1))]
    before = live[0][1].get_state()
    bad = [{"role": "DataLoader.generator", "device": "cpu", "state": "not base64!"}]
    (problem,) = backend.restore_generators(live, bad)
    assert problem.startswith("DataLoader.generator (cpu): saved state not usable")
    assert torch.equal(live[0][1].get_state(), before)  # left as it was
    short = [{"role": "DataLoader.generator", "device": "cpu", "state": "AAAA"}]
    assert "not usable" in backend.restore_generators(live, short)[0]
    other = [{"role": "DataLoader.sampler.generator", "device": "cpu", "state": "AAAA"}]
    assert backend.restore_generators(live, other) == [
        "DataLoader.sampler.generator was saved, but the DataLoader has no such generator now",
        "DataLoader.generator is not in the checkpoint",
    ]


def _dataloader_script(tmp_path, *jobs, expect_killed=False):
    """Runs tests/dataloader_script.py's `jobs` in one PyTorch process; each finished
    job's variables, in order."""
    out = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}.npz"
    proc = subprocess.run(
        [sys.executable, str(TESTS / "dataloader_script.py"), str(out), *jobs],
        env=script_env("torch"),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    if expect_killed:
        assert proc.returncode == -9, f"expected SIGKILL, got {proc.returncode}\n{proc.stderr}"
    else:
        assert proc.returncode == 0, f"dataloader script failed:\n{proc.stderr[-4000:]}"
    if not out.exists():
        return []
    with np.load(out) as data:
        keys = sorted(data.files, key=lambda k: tuple(map(int, k.split("/"))))
        return [[data[k] for k in keys if k.startswith(f"{i}/")] for i in range(len(jobs))]


def test_sigkilled_fit_on_seeded_dataloader_resumes_bit_identical(tmp_path):
    """`DataLoader(shuffle=True, generator=torch.Generator().manual_seed(0))` on PyTorch.

    Killed mid-epoch (the resumed epoch skips its first batches) and at an
    epoch's end; both reruns must end where an uninterrupted run ends. Three
    processes: kill A; resume A, then kill B; resume B, then the uninterrupted C.
    """
    pytest.importorskip("torch")
    mid, end, control = tmp_path / "mid", tmp_path / "end", tmp_path / "control"
    _dataloader_script(tmp_path, f"{mid}:1,3", expect_killed=True)
    # The mid-epoch backup holds the generator's state, as JSON.
    states = [json.loads(p.read_text())["data"] for p in mid.rglob("state.json")]
    saved = [s["generators"] for s in states if s["mid_epoch"]]
    assert saved and [g["role"] for g in saved[0]] == ["DataLoader.generator"]
    resumed_mid, _ = _dataloader_script(tmp_path, f"{mid}:none", f"{end}:0,end", expect_killed=True)
    resumed_end, uninterrupted = _dataloader_script(tmp_path, f"{end}:none", f"{control}:none")
    assert len(resumed_mid) == len(resumed_end) == len(uninterrupted) > 0
    for resumed in (resumed_mid, resumed_end):
        assert all(np.array_equal(a, b) for a, b in zip(resumed, uninterrupted))
