"""Remote run directories: a real S3 API on loopback (moto's server), driven through s3fs."""

import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_resume as kr
from keras_resume import cli, remote
from tests.conftest import (
    TESTS,
    all_variables,
    assert_identical,
    load_result,
    run_script,
    tiny_data,
    tiny_model,
)


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = {k: os.environ.get(k) for k in _ENV}
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
    )
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir("runs")
    yield fs
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv(remote.CACHE_ENV, str(path))
    return path


def _remote_names(fs, url):
    fs.invalidate_cache()
    return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(url.removeprefix("s3://"), detail=False))


def test_remote_run_commits_to_s3_and_restores_on_a_fresh_machine(s3_endpoint, cache):
    url = "s3://runs/exp1"
    keras.utils.set_random_seed(0)
    model = tiny_model()
    x, y = tiny_data()
    ckpt = kr.CheckpointDirectory(url)
    assert repr(ckpt) == "CheckpointDirectory('s3://runs/exp1')"
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=2,
        verbose=0,
        callbacks=ckpt.callbacks(every_n_steps=3, monitor="loss"),
    )
    manifest = kr.CheckpointDirectory(url).read_manifest()
    listed = sorted(c["dir"] for c in manifest["checkpoints"])
    assert _remote_names(s3_endpoint, url) == sorted([*listed, "manifest.json"])
    shutil.rmtree(cache)  # another machine: nothing local
    assert cli.main(["verify", url]) == 0
    listed_ids = [row["id"] for row in kr.list_checkpoints(url)]
    assert listed_ids == [c["id"] for c in manifest["checkpoints"]]
    fresh = tiny_model()
    fresh.build((None, 3))
    info = kr.restore(fresh, url)
    assert info.global_step == 8
    for a, b in zip(all_variables(model), all_variables(fresh)):
        assert np.array_equal(a, b)


def test_crash_in_the_middle_of_an_upload_resumes_exactly(s3_endpoint, cache, tmp_path):
    run_script("--dir", tmp_path / "local", "--out", tmp_path / "ref.npz")
    url = "s3://runs/crash"
    # Dies after the first file of the 4th upload: that checkpoint is half up.
    run_script("--dir", url, "--out", tmp_path / "x.npz", "--kill-in-upload", 4, expect_killed=True)
    committed = {c["dir"] for c in kr.CheckpointDirectory(url).read_manifest()["checkpoints"]}
    names = set(_remote_names(s3_endpoint, url)) - {"manifest.json"}
    (partial,) = names - committed
    assert "model.weights.h5" in _remote_names(s3_endpoint, f"{url}/{partial}")
    assert "state.json" not in _remote_names(s3_endpoint, f"{url}/{partial}")
    shutil.rmtree(cache)  # restarted elsewhere
    run_script("--dir", url, "--out", tmp_path / "resumed.npz")
    assert_identical(load_result(tmp_path / "ref.npz"), load_result(tmp_path / "resumed.npz"))
    final = {c["dir"] for c in kr.CheckpointDirectory(url).read_manifest()["checkpoints"]}
    assert set(_remote_names(s3_endpoint, url)) - {"manifest.json"} == final
    assert partial not in final


NO_FSSPEC = """
import sys
sys.modules["fsspec"] = None  # as if not installed
sys.path.insert(0, {root!r})
import keras_resume as kr
from tests.conftest import tiny_data, tiny_model
x, y = tiny_data()
model = tiny_model()
model.fit(x, y, epochs=1, verbose=0, callbacks=kr.CheckpointDirectory({local!r}).callbacks())
print("local ok", len(kr.CheckpointDirectory({local!r}).checkpoints("backup")))
try:
    kr.CheckpointDirectory("s3://bucket/run")
except ImportError as e:
    print("remote:", e)
"""


def test_local_paths_need_no_fsspec(tmp_path):
    script = NO_FSSPEC.format(root=str(TESTS.parent), local=str(tmp_path / "run"))
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "local ok 1" in proc.stdout
    assert "pip install keras-resume[remote]" in proc.stdout
