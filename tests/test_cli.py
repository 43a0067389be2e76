"""The `keras-resume` command line and `keras_resume.runs`, on real runs.

One small run (3 epochs of 4 steps, interrupted once and resumed) is trained
per module; tests that change a run work on a copy.
"""

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_resume as kr
from keras_resume import cli
from keras_resume import runs as krr
from tests.conftest import TESTS, Interrupt, tiny_data, tiny_model

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def callbacks(run):
    ckpt = kr.CheckpointDirectory(run)
    # ckpt.callbacks()'s set, with room for many backups and several best checkpoints.
    return [
        kr.FullStateResume(ckpt),
        kr.StepBackup(ckpt, every_n_steps=3, keep=50),
        kr.BestCheckpoint(ckpt, monitor="loss", keep=10),
        kr.RngCapture(ckpt),
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    keras.utils.set_random_seed(3)
    run = tmp_path_factory.mktemp("cli") / "run"
    x, y = tiny_data()
    model = tiny_model(optimizer=keras.optimizers.Adam(0.05))
    with pytest.raises(KeyboardInterrupt):
        model.fit(
            x, y, epochs=3, batch_size=8, verbose=0, callbacks=callbacks(run) + [Interrupt(7)]
        )
    model = tiny_model(optimizer=keras.optimizers.Adam(0.05))
    model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=callbacks(run))
    manifest = kr.CheckpointDirectory(run).read_manifest()
    assert manifest["resumes"], "the fixture must span a restart"
    assert len(manifest["history"]) == 3
    return types.SimpleNamespace(run=run, model=model, x=x, y=y, manifest=manifest)


@pytest.fixture
def copy(trained, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(trained.run, target, ignore=shutil.ignore_patterns(".lock"))
    return target


def run_cli(capsys, *args):
    status = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def without_age(rows):
    return [{k: v for k, v in row.items() if k != "age_s"} for row in rows]


def dirs(run):
    return sorted(p.name for p in Path(run).iterdir() if p.name.startswith(("backup", "best")))


# --- ls / show ---------------------------------------------------------------------------


def test_ls_rows_match_the_manifest(trained, capsys):
    status, out, _ = run_cli(capsys, "ls", trained.run, "--json")
    assert status == 0
    rows = json.loads(out)
    manifest = trained.manifest
    entries = manifest["checkpoints"]
    assert [r["id"] for r in rows] == [c["id"] for c in entries]
    newest_backup = [c for c in entries if c["kind"] == "backup"][-1]["id"]
    for row, entry in zip(rows, entries):
        assert row["dir"] == entry["dir"] and row["kind"] == entry["kind"]
        assert row["epoch"] == entry["epoch"] + 1  # as Keras prints it
        assert row["step_in_epoch"] == entry["step_in_epoch"]
        assert row["global_step"] == entry["global_step"]
        assert row["size"] == sum(f["size"] for f in entry["files"])
        assert row["value"] == entry["logs"].get("loss")
        assert row["resume"] == (entry["id"] == newest_backup)
        assert row["best"] == (entry["id"] == manifest["best"]["checkpoint_id"])
        assert row["age_s"] >= 0
    assert sum(r["resume"] for r in rows) == 1 and sum(r["best"] for r in rows) == 1
    assert without_age(krr.list_checkpoints(trained.run)) == without_age(rows)

    status, out, _ = run_cli(capsys, "ls", trained.run)
    assert status == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line.split()[:1]}
    for entry in entries:
        line = lines[str(entry["id"])]
        assert entry["kind"] in line
        assert ("resume" in line) == (entry["id"] == newest_backup)
        assert ("best" in line.split(entry["kind"], 1)[1]) == (
            entry["id"] == manifest["best"]["checkpoint_id"]
        )


def test_show_summary_entry_and_json(trained, capsys):
    manifest = trained.manifest
    status, out, _ = run_cli(capsys, "show", trained.run)
    assert status == 0
    assert "history" in out and "resume points" in out
    for record in manifest["history"]:
        assert f"{record['logs']['loss']:.6g}" in out
    best = manifest["best"]
    assert f"loss = {best['value']:.6g} (min) at epoch {best['epoch'] + 1}" in out
    assert f"resumes      {len(manifest['resumes'])};" in out

    status, out, _ = run_cli(capsys, "show", trained.run, "--json")
    assert status == 0 and json.loads(out) == manifest

    entry = manifest["checkpoints"][-1]
    status, out, _ = run_cli(capsys, "show", trained.run, entry["id"])
    assert status == 0
    for record in entry["files"]:
        assert record["path"] in out and record["sha256_blocks"][0] in out
    status, out, _ = run_cli(capsys, "show", trained.run, entry["id"], "--json")
    shown = json.loads(out)
    assert shown.pop("fingerprint_detail") == manifest["fingerprints"][entry["fingerprint"]]
    assert shown == entry

    status, _, err = run_cli(capsys, "show", trained.run, "999")
    assert status == 2 and "999" in err and str(trained.run) in err


# --- verify ---------------------------------------------------------------------------------


def test_verify_passes_then_names_the_flipped_file(copy, capsys):
    status, out, _ = run_cli(capsys, "verify", copy)
    entries = kr.CheckpointDirectory(copy).checkpoints()
    assert status == 0
    assert [line.split()[:2] for line in out.splitlines() if line.startswith("ok")] == [
        ["ok", e["dir"]] for e in entries
    ]

    victim = entries[len(entries) // 2]
    damaged = copy / victim["dir"] / "model.weights.h5"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))

    status, out, _ = run_cli(capsys, "verify", copy)
    assert status == 1
    bad = [line for line in out.splitlines() if line.startswith("DAMAGED")]
    assert len(bad) == 1 and victim["dir"] in bad[0] and str(damaged) in bad[0]
    status, out, _ = run_cli(capsys, "verify", copy, "--json")
    report = json.loads(out)
    assert status == 1 and report["ok"] is False
    assert [r["id"] for r in report["checkpoints"] if not r["ok"]] == [victim["id"]]
    assert sum(r["ok"] for r in report["checkpoints"]) == len(entries) - 1


# --- export ---------------------------------------------------------------------------------


def test_export_keras_round_trip(trained, tmp_path, capsys):
    target = tmp_path / "latest.keras"
    status, out, err = run_cli(capsys, "export", trained.run, "--to", target, "--json")
    assert status == 0, err
    assert json.loads(out)["id"] == kr.CheckpointDirectory(trained.run).select("latest")["id"]
    loaded = keras.models.load_model(target)
    expected = trained.model.predict(trained.x, verbose=0)
    assert np.array_equal(loaded.predict(trained.x, verbose=0), expected)

    best = tmp_path / "best.keras"
    status, _, err = run_cli(capsys, "export", trained.run, "--which", "best", "--to", best)
    assert status == 0, err
    reference = tiny_model(optimizer=keras.optimizers.Adam(0.05))
    kr.restore(reference, trained.run, which="best")
    assert np.array_equal(
        keras.models.load_model(best).predict(trained.x, verbose=0),
        reference.predict(trained.x, verbose=0),
    )

    status, _, err = run_cli(capsys, "export", trained.run, "--to", tmp_path / "model.h5")
    assert status == 2 and "model.h5" in err and ".keras" in err
    status, _, err = run_cli(capsys, "export", trained.run, "--to", target)
    assert status == 2 and str(target) in err and "--overwrite" in err


def test_export_savedmodel_serves_the_same_outputs(trained, tmp_path, capsys):
    import tensorflow as tf

    target = tmp_path / "serving"
    status, _, err = run_cli(
        capsys, "export", trained.run, "--to", target, "--format", "savedmodel"
    )
    if keras.backend.backend() != "tensorflow":  # the suite run with KERAS_BACKEND=jax/torch
        assert status != 0 and not target.exists()
        assert f"needs the TensorFlow backend, this process uses '{keras.backend.backend()}'" in err
        return
    assert status == 0, err
    loaded = tf.saved_model.load(str(target))  # held: the function needs its variables
    served = loaded.serve(tf.constant(trained.x)).numpy()
    assert np.array_equal(served, trained.model.predict(trained.x, verbose=0))


def test_export_falls_back_to_weights_when_the_compile_config_cannot_be_rebuilt(tmp_path, capsys):
    def unregistered_loss(y_true, y_pred):
        return keras.ops.mean(keras.ops.square(y_true - y_pred), axis=-1)

    run, (x, y) = tmp_path / "run", tiny_data()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss=unregistered_loss)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[kr.StepBackup(run)])
    target = tmp_path / "m.keras"
    with pytest.warns(UserWarning, match="compile config"):
        status, _, err = run_cli(capsys, "export", run, "--to", target)
    assert status == 0, err
    loaded = keras.models.load_model(target)
    assert np.array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


class NoConfig(keras.Model):
    """A subclassed model whose constructor takes an array: it cannot describe itself."""

    def __init__(self, table):
        super().__init__()
        self.table = table
        self.dense = keras.layers.Dense(1)

    def call(self, inputs):
        return self.dense(inputs)


def test_export_without_model_json_says_what_to_do(tmp_path, capsys):
    run, (x, y) = tmp_path / "run", tiny_data()
    model = NoConfig(np.ones(3))
    model(x[:1])
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[kr.StepBackup(run)])
    assert all(
        f["path"] != "model.json" for f in kr.CheckpointDirectory(run).checkpoints()[0]["files"]
    )
    status, _, err = run_cli(capsys, "export", run, "--to", tmp_path / "m.keras")
    assert status == 1
    assert "model.json" in err and "keras_resume.restore into your own model" in err
    assert not (tmp_path / "m.keras").exists()


# --- prune ----------------------------------------------------------------------------------


def expected_kept(manifest, keep_last, keep_best, every):
    entries = manifest["checkpoints"]
    backups = [c for c in entries if c["kind"] == "backup"]
    bests = [c for c in entries if c["kind"] == "best"]
    kept = {backups[-1]["id"], manifest["best"]["checkpoint_id"]}
    kept |= {c["id"] for c in backups[len(backups) - keep_last :]} if keep_last else set()
    kept |= {c["id"] for c in bests[len(bests) - keep_best :]} if keep_best else set()
    kept |= {c["id"] for c in backups if c["epoch_complete"] and (c["epoch"] + 1) % every == 0}
    return kept


def test_prune_dry_run_then_prune_then_resume(copy, capsys):
    ckpt = kr.CheckpointDirectory(copy)
    manifest = ckpt.read_manifest()
    assert len(ckpt.checkpoints("best")) >= 2 and len(ckpt.checkpoints("backup")) >= 5
    kept = expected_kept(manifest, keep_last=2, keep_best=1, every=2)
    removed = {c["id"] for c in manifest["checkpoints"]} - kept
    # the epoch-end backup of epoch 2 (1-based) stays, the mid-epoch ones before it go
    assert any(
        c["epoch"] == 1 and c["epoch_complete"]
        for c in ckpt.checkpoints("backup")
        if c["id"] in kept
    )
    assert removed
    args = ["prune", copy, "--keep-last", "2", "--keep-best", "1", "--keep-every-epochs", "2"]

    before = ((copy / "manifest.json").read_bytes(), dirs(copy))
    status, out, _ = run_cli(capsys, *args, "--dry-run", "--json")
    assert status == 0
    plan = json.loads(out)
    assert {r["id"] for r in plan["kept"]} == kept
    assert {r["id"] for r in plan["removed"]} == removed
    assert ((copy / "manifest.json").read_bytes(), dirs(copy)) == before

    status, out, _ = run_cli(capsys, *args)
    assert status == 0 and "Removed" in out
    after = kr.CheckpointDirectory(copy).read_manifest()
    assert {c["id"] for c in after["checkpoints"]} == kept
    assert dirs(copy) == sorted(c["dir"] for c in after["checkpoints"])
    assert after["history"] == manifest["history"] and after["best"] == manifest["best"]
    status, _, _ = run_cli(capsys, "verify", copy)
    assert status == 0

    newest = [c for c in after["checkpoints"] if c["kind"] == "backup"][-1]
    keras.utils.set_random_seed(3)
    x, y = tiny_data()
    model = tiny_model(optimizer=keras.optimizers.Adam(0.05))
    cbs = callbacks(copy)
    history = model.fit(x, y, epochs=4, batch_size=8, verbose=0, callbacks=cbs)
    assert cbs[0].resumed_from.checkpoint_id == newest["id"]
    assert history.epoch == [0, 1, 2, 3]
    final = kr.CheckpointDirectory(copy).read_manifest()
    assert len(final["resumes"]) == len(manifest["resumes"]) + 1


def test_prune_never_removes_the_newest_backup_or_the_best(copy, capsys):
    manifest = kr.CheckpointDirectory(copy).read_manifest()
    status, out, _ = run_cli(capsys, "prune", copy, "--keep-last", "0", "--keep-best", "0")
    assert status == 0
    newest = [c for c in manifest["checkpoints"] if c["kind"] == "backup"][-1]
    left = {c["id"] for c in kr.CheckpointDirectory(copy).checkpoints()}
    assert left == {newest["id"], manifest["best"]["checkpoint_id"]}
    status, _, err = run_cli(capsys, "prune", copy, "--keep-every-epochs", "0")
    assert status == 2 and "--keep-every-epochs" in err


# --- plot and the Python helpers ------------------------------------------------------------


def test_plot_writes_a_png_with_the_resume_lines(trained, tmp_path, capsys):
    out = tmp_path / "curve.png"
    status, _, err = run_cli(capsys, "plot", trained.run, "--out", out)
    assert status == 0, err
    assert out.read_bytes()[:8] == PNG_SIGNATURE

    figure = krr.plot(trained.run, metrics=["loss"])
    axes = figure.axes[0]
    resume_lines = [line for line in axes.lines if line.get_gid() == "resume"]
    steps = max(c["step_in_epoch"] for c in trained.manifest["checkpoints"] if c["epoch_complete"])
    expected = [r["epoch"] + r["step_in_epoch"] / steps for r in trained.manifest["resumes"]]
    assert [line.get_xdata()[0] for line in resume_lines] == expected
    (loss,) = [line for line in axes.lines if line.get_gid() == "metric:loss"]
    history = trained.manifest["history"]
    assert list(loss.get_xdata()) == [r["epoch"] + 1 for r in history]
    assert list(loss.get_ydata()) == [r["logs"]["loss"] for r in history]
    (star,) = [line for line in axes.lines if line.get_gid() == "best"]
    assert star.get_xdata()[0] == trained.manifest["best"]["epoch"] + 1

    status, _, err = run_cli(capsys, "plot", trained.run, "--out", out, "--metrics", "nope")
    assert status == 1 and "nope" in err and "loss" in err


def test_plot_without_matplotlib_names_the_extra(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    status, _, err = run_cli(capsys, "plot", trained.run, "--out", tmp_path / "c.png")
    assert status == 1 and "pip install 'keras-resume[plot]'" in err
    assert not (tmp_path / "c.png").exists()


def test_history_helper(trained, monkeypatch):
    merged = krr.history(trained.run, as_frame=False)
    assert merged == kr.CheckpointDirectory(trained.run).history()
    assert merged["epoch"] == [0, 1, 2]
    monkeypatch.setitem(sys.modules, "pandas", None)  # pandas absent: a dict by default
    assert krr.history(trained.run) == merged
    with pytest.raises(ImportError, match="pip install pandas"):
        krr.history(trained.run, as_frame=True)


# --- errors, help, the entry point ------------------------------------------------------


@pytest.mark.parametrize("command", ["ls", "show", "verify", "prune", "export", "plot"])
def test_missing_and_foreign_directories_exit_2(command, tmp_path, capsys):
    extra = {"export": ["--to", tmp_path / "m.keras"], "plot": ["--out", tmp_path / "c.png"]}
    missing = tmp_path / "no-such-run"
    status, _, err = run_cli(capsys, command, missing, *extra.get(command, []))
    assert status == 2 and str(missing) in err and "does not exist" in err

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    status, _, err = run_cli(capsys, command, foreign, *extra.get(command, []))
    assert status == 2 and str(foreign) in err and "something-else" in err

    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("hello")
    status, _, err = run_cli(capsys, command, unrelated, *extra.get(command, []))
    assert status == 2 and str(unrelated) in err and "not a keras-resume run" in err
    assert not (unrelated / ".lock").exists() and not missing.exists()


def test_every_subcommand_help_has_an_example(capsys):
    status, out, _ = run_cli(capsys, "--help")
    assert status == 0 and "Example" in out
    for command in ("ls", "show", "verify", "export", "prune", "plot"):
        status, out, _ = run_cli(capsys, command, "--help")
        assert status == 0 and "Example" in out and f"keras-resume {command}" in out, command


def test_cli_works_without_the_supervisor_module(trained, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_resume.supervise", None)  # import fails
    monkeypatch.delattr(kr, "supervise", raising=False)
    status, _, err = run_cli(capsys, "run", "--help")
    assert status == 2 and "invalid choice: 'run'" in err
    status, _, _ = run_cli(capsys, "ls", trained.run)
    assert status == 0


def test_python_dash_m_entry_point(trained):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "keras_resume", "ls", str(trained.run), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert without_age(json.loads(proc.stdout)) == without_age(krr.list_checkpoints(trained.run))


def test_run_is_handed_to_the_supervisor(capsys):
    status, _, err = run_cli(
        capsys, "run", "--max-restarts", "0", "--", sys.executable, "-c", "raise SystemExit(3)"
    )
    assert status == 3 and "status 3" in err
