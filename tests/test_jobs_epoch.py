"""Epoch-level state of real jobs (issue 14, A3/A5/A6), each mechanism tested directly.

- A3: a callback that changes optimizer state in `on_epoch_begin` (the Keras
  docstring's `LearningRateScheduler` of the current rate) must not apply it
  twice for a resumed epoch: `FullStateResume` assigns the checkpoint's state
  again where the resumed run reaches the backup's instant, whatever the order
  of the callbacks.
- A5: one directory holds successive fits (freeze, fit; unfreeze, recompile,
  `fit(initial_epoch=2)`): each fit resumes only from its own backups.
- A6: a `CSVLogger(append=True)` file is cut back to its length at the backup.

Interruptions here are in-process (a KeyboardInterrupt from a callback, as
tests/conftest.py's `Interrupt`); the SIGKILLed versions are tests/test_zoo.py's
cases `lr_scheduler_of_current_rate`, `fine_tuning_phases` and
`csv_logger_kill_at_epoch_end`. Tiny models of a few dozen parameters.
"""

import json
import math
import os

import keras
import numpy as np
import pytest

import keras_resume as kr
from keras_resume import manifest as mf
from keras_resume import retention
from keras_resume.callbacks import session as session_module
from keras_resume.errors import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    ManifestError,
    NoCheckpointError,
)
from keras_resume.restoring import assign_loaded
from keras_resume.state import append_logs, schema
from keras_resume.state.bundle import StateBundle
from tests.conftest import all_variables, tiny_data

STEPS, BATCH = 4, 8  # 32 samples: 4 steps an epoch


def _data():
    return tiny_data(STEPS * BATCH)


def _model(lr=0.01, name="job"):
    model = keras.Sequential(
        [
            keras.Input((3,), name="x"),
            keras.layers.Dense(4, activation="relu", name="hidden"),
            keras.layers.Dropout(0.2, name="dropout"),
            keras.layers.Dense(1, name="head"),
        ],
        name=name,
    )
    model.compile(keras.optimizers.Adam(lr, name="adam"), "mse")
    return model


class StopAt(keras.callbacks.Callback):
    """A Ctrl-C at a chosen moment: after batch `batch` (count in the epoch) of `epoch`,
    at the start of `epoch` ("begin") or in its `on_epoch_end` ("end")."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.stop_epoch, self.batch, self.epoch = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        if epoch == self.stop_epoch and self.batch == "begin":
            raise KeyboardInterrupt("simulated interruption")

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == self.stop_epoch and batch + 1 == self.batch:
            raise KeyboardInterrupt("simulated interruption")

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.stop_epoch and self.batch == "end":
            raise KeyboardInterrupt("simulated interruption")


def _fit(model, directory, stop=None, before=(), after=(), track=(), **kwargs):
    """`model.fit` with keras_resume's callbacks, `before` and `after` them in the list."""
    x, y = _data()
    ckpt = kr.CheckpointDirectory(directory)
    callbacks = [*before, *ckpt.callbacks(every_n_steps=3, monitor=None, track=list(track))]
    callbacks += [*after, *([stop] if stop is not None else [])]
    kwargs.setdefault("epochs", 3)
    try:
        return model.fit(
            x, y, batch_size=BATCH, shuffle=True, verbose=0, callbacks=callbacks, **kwargs
        )
    except KeyboardInterrupt:
        return None


def _decay(epoch, lr):
    return lr if epoch < 1 else float(lr * math.exp(-0.1))


def _scheduled_run(directory, order, stop=None):
    keras.utils.set_random_seed(0)
    model = _model()
    schedule = keras.callbacks.LearningRateScheduler(_decay)
    if order == "before":  # not tracked: listed before keras_resume's callbacks
        history = _fit(model, directory, stop, before=[schedule])
    else:
        history = _fit(model, directory, stop, track=[schedule])
    return model, history


def _assert_same(a, b):
    for i, (u, v) in enumerate(zip(all_variables(a), all_variables(b))):
        assert np.array_equal(u, v), f"variable {i} differs"


# --- A3: state changed in on_epoch_begin is not applied twice ------------------------


@pytest.mark.parametrize("order", ["tracked", "before"])
@pytest.mark.parametrize("where", [2, "begin"], ids=["mid_epoch", "epoch_start"])
def test_scheduler_of_the_current_rate_is_applied_once_for_the_resumed_epoch(
    tmp_path, order, where
):
    """Stopped in epoch 3 (after the rate was decayed twice) mid-epoch or as it
    begins; the resumed run must end with every variable of the uninterrupted one."""
    reference, ref_history = _scheduled_run(tmp_path / "ref", order)
    _scheduled_run(tmp_path / "run", order, stop=StopAt(2, where))
    resumed, history = _scheduled_run(tmp_path / "run", order)
    _assert_same(reference, resumed)
    assert float(resumed.optimizer.learning_rate) == float(reference.optimizer.learning_rate)
    assert history.history == ref_history.history


def test_put_back_happens_at_the_first_trained_batch(tmp_path):
    """What a callback sets in on_epoch_begin of the resumed epoch is gone by the
    first trained batch: the rate the backup holds is what that batch trains with."""
    _scheduled_run(tmp_path / "run", "tracked", stop=StopAt(2, 2))
    saved = kr.CheckpointDirectory(tmp_path / "run").read_checkpoint("latest")
    assert (saved.entry["epoch"], saved.entry["step_in_epoch"]) == (2, 1)
    seen = []

    class Watch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(("epoch_begin", epoch, float(self.model.optimizer.learning_rate)))

        def on_train_batch_begin(self, batch, logs=None):
            seen.append(("batch", batch, float(self.model.optimizer.learning_rate)))

    keras.utils.set_random_seed(0)
    model = _model()
    schedule = keras.callbacks.LearningRateScheduler(_decay)
    _fit(model, tmp_path / "run", track=[schedule], after=[Watch()])
    rate = 0.01 * math.exp(-0.1) ** 2  # decayed as epochs 2 and 3 began
    assert seen[0][:2] == ("epoch_begin", 2)
    assert seen[0][2] == pytest.approx(rate * math.exp(-0.1), rel=1e-6)  # decayed again...
    first_trained = seen[2]  # batch 0 is skipped (trained before the interruption)
    assert first_trained[:2] == ("batch", 1)
    assert first_trained[2] == pytest.approx(rate, rel=1e-6)  # ...and put back


def test_assign_loaded_is_all_or_nothing(tmp_path):
    keras.utils.set_random_seed(0)
    model = _model()
    _fit(model, tmp_path / "run", epochs=1)
    loaded = kr.CheckpointDirectory(tmp_path / "run").read_checkpoint("latest")
    other = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(5, name="hidden"),
            keras.layers.Dense(1, name="head"),
        ]
    )
    other.compile(keras.optimizers.Adam(name="adam"), "mse")
    other.optimizer.build(other.trainable_variables)
    before = all_variables(other)
    with pytest.raises(CheckpointMismatchError, match="nothing was loaded"):
        assign_loaded(other, loaded, "here")
    for u, v in zip(before, all_variables(other)):
        assert np.array_equal(u, v)


# --- A5: successive fits in one directory -------------------------------------------


def _phases(directory, stop=None, keep_log=None):
    """keras.io's transfer learning: frozen base, fit 2 epochs; unfrozen, recompiled
    with a lower rate, fit(initial_epoch=2) to epoch 4."""
    keras.utils.set_random_seed(0)
    model = _model()
    hidden = model.get_layer("hidden")
    hidden.trainable = False
    model.compile(keras.optimizers.Adam(0.01, name="adam"), "mse")
    first = _fit(model, directory, epochs=2)
    hidden.trainable = True
    model.compile(keras.optimizers.Adam(1e-3, name="adam"), "mse")
    second = _fit(model, directory, stop, epochs=4, initial_epoch=2)
    if keep_log is not None:
        keep_log.append((first, second))
    return model


def test_fine_tuning_phases_in_one_directory_resume_the_interrupted_phase(tmp_path):
    reference = _phases(tmp_path / "ref")
    ref_ckpt = kr.CheckpointDirectory(tmp_path / "ref")
    fits = [mf.fit_of(c) for c in ref_ckpt.checkpoints("backup")]
    assert sorted(set(fits)) == [0, 1] and fits == sorted(fits)
    # Retention (keep=2) keeps the newest backup of fit 0: its phase's end.
    newest_of_first = [c for c in ref_ckpt.checkpoints("backup") if mf.fit_of(c) == 0]
    assert [(c["epoch"], c["epoch_complete"]) for c in newest_of_first] == [(1, True)]

    _phases(tmp_path / "run", stop=StopAt(3, 3))  # the newest backup: epoch 4, step 2
    ckpt = kr.CheckpointDirectory(tmp_path / "run")
    ids_before = {c["id"] for c in ckpt.checkpoints()}
    histories = []
    resumed = _phases(tmp_path / "run", keep_log=histories)
    _assert_same(reference, resumed)
    first, second = histories[0]
    assert first.epoch == [0, 1] and second.epoch == [2, 3]
    resumes = ckpt.read_manifest()["resumes"]
    assert [(r["fit"], r["epoch"]) for r in resumes[-2:]] == [(0, 2), (1, 3)]
    new = [c for c in ckpt.checkpoints() if c["id"] not in ids_before]
    assert new and all(mf.fit_of(c) == 1 for c in new)  # the finished phase trained nothing
    assert [(mf.fit_of(h), h["epoch"]) for h in ckpt.read_manifest()["history"]] == [
        (0, 0),
        (0, 1),
        (1, 2),
        (1, 3),
    ]


def test_a_fit_counts_only_once_it_returned(tmp_path):
    keras.utils.set_random_seed(0)
    model = _model()
    assert session_module.fit_ordinal(model) == 0
    assert _fit(model, tmp_path / "run", stop=StopAt(0, 2), epochs=1) is None
    assert session_module.fit_ordinal(model) == 0  # a fit that raised: fit again continues it
    _fit(model, tmp_path / "run", epochs=1)
    assert session_module.fit_ordinal(model) == 1
    entries = kr.CheckpointDirectory(tmp_path / "run").checkpoints("backup")
    assert {mf.fit_of(c) for c in entries} == {0}
    assert session_module.fit_ordinal(_model()) == 0  # counted per model object


def _manifest_with_fits(fits):
    manifest = mf.new_manifest()
    manifest["fingerprints"]["f"] = {"variables": [], "optimizer_variables": []}
    for i, fit in enumerate(fits):
        entry = {
            "id": i,
            "dir": f"backup-{i:06d}",
            "kind": "backup",
            "epoch": i,
            "step_in_epoch": 0,
            "epoch_complete": True,
            "global_step": i,
            "logs": {},
            "files": [],
            "fingerprint": "f",
        }
        if fit is not None:
            entry["fit"] = fit
        manifest["checkpoints"].append(entry)
    manifest["next_id"] = len(fits)
    return manifest


def test_retention_keeps_the_newest_backup_of_every_other_fit():
    manifest = _manifest_with_fits([None, 0, 0, 1, 1, 2, 2, 2])
    policy = retention.for_saver("backup", 2, fit=2)
    doomed = retention.unlist(manifest, retention.plan(manifest, policy))
    assert [c["id"] for c in doomed] == [0, 1, 3, 5]
    assert [c["id"] for c in manifest["checkpoints"]] == [2, 4, 6, 7]


def test_prune_keeps_the_newest_backup_of_every_fit():
    manifest = _manifest_with_fits([0, 0, None, 1, 1])
    plan = retention.plan(manifest, retention.for_prune(keep_last=1, keep_best=0, every=None))
    assert sorted(plan) == [2, 4]
    assert plan[2] == ["newest backup of fit 0"]


def test_an_old_manifest_without_fits_reads_as_fit_0(tmp_path):
    keras.utils.set_random_seed(0)
    _fit(_model(), tmp_path / "run", epochs=1)
    ckpt = kr.CheckpointDirectory(tmp_path / "run")
    manifest = ckpt.read_manifest()
    for entry in manifest["checkpoints"]:
        del entry["fit"]
    mf.write_manifest(ckpt.manifest_path, manifest)
    newest = manifest["checkpoints"][-1]["id"]
    assert ckpt.select("latest", fit=0)["id"] == newest
    assert ckpt.select("latest")["id"] == newest
    with pytest.raises(NoCheckpointError, match="of fit 1"):
        ckpt.select("latest", fit=1)
    keras.utils.set_random_seed(0)
    model = _model()
    history = _fit(model, tmp_path / "run", epochs=1)  # fit 0: resumed as finished
    assert history.epoch == [0]


def test_history_records_of_another_fit_are_kept_apart():
    manifest = mf.new_manifest()
    mf.record_history(manifest, 2, {"loss": 1.0}, fit=1)
    mf.record_history(manifest, 2, {"loss": 3.0})  # fit 0 ran to epoch 3 before
    mf.record_history(manifest, 2, {"loss": 0.5}, fit=1)  # a replayed epoch replaces its own
    assert manifest["history"] == [
        {"epoch": 2, "logs": {"loss": 3.0}},
        {"epoch": 2, "fit": 1, "logs": {"loss": 0.5}},
    ]
    mf.validate(manifest)


def test_a_negative_fit_is_refused(tmp_path):
    manifest = _manifest_with_fits([-1])
    with pytest.raises(ManifestError, match=r"checkpoints\[0\]\.fit"):
        mf.validate(manifest)


# --- A6: CSVLogger(append=True) cut back to the backup's length ---------------------


@pytest.mark.parametrize("order", ["after", "before"])
def test_csv_log_has_each_row_once_after_an_epoch_end_interruption(tmp_path, order):
    def run(directory, stop=None):
        keras.utils.set_random_seed(0)
        log = keras.callbacks.CSVLogger(str(directory / "log.csv"), append=True)
        placed = {"before": [log]} if order == "before" else {"after": [log]}
        directory.mkdir(exist_ok=True)
        _fit(_model(), directory / "run", stop, **placed)
        return (directory / "log.csv").read_text()

    reference = run(tmp_path / "ref")
    run(tmp_path / "run", stop=StopAt(1, "end"))
    assert len((tmp_path / "run" / "log.csv").read_text().splitlines()) == 3  # header, 2 rows
    assert run(tmp_path / "run") == reference
    assert len(reference.splitlines()) == 4


def _bundle(path, length):
    bundle = StateBundle()
    bundle.meta[append_logs.SECTION] = [{"path": os.path.abspath(path), "length": length}]
    return bundle


def test_cut_back_truncates_only_the_running_loggers_regular_files(tmp_path):
    ours, other = tmp_path / "ours.csv", tmp_path / "other.csv"
    ours.write_text("epoch,loss\n0,1.0\n1,0.5\n")
    other.write_text("not ours\n")
    logger = keras.callbacks.CSVLogger(str(ours), append=True)
    bundle = _bundle(ours, len("epoch,loss\n0,1.0\n"))
    bundle.meta[append_logs.SECTION].append({"path": str(other), "length": 0})
    assert append_logs.cut_back([logger], bundle, "backup-000001") == []
    assert ours.read_text() == "epoch,loss\n0,1.0\n"
    assert other.read_text() == "not ours\n"  # listed in the state, named by no logger


def test_cut_back_refuses_a_shorter_file_a_link_and_a_fifo(tmp_path):
    short = tmp_path / "short.csv"
    short.write_text("epoch\n")
    target = tmp_path / "target.csv"
    target.write_text("epoch,loss\n0,1.0\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    for path, expected in ((short, "fewer than"), (link, "symbolic link"), (fifo, "not a regular")):
        logger = keras.callbacks.CSVLogger(str(path), append=True)
        problems = append_logs.cut_back([logger], _bundle(path, 100), "backup-000001")
        assert len(problems) == 1 and expected in problems[0] and str(path) in problems[0]
    assert short.read_text() == "epoch\n"
    assert target.read_text() == "epoch,loss\n0,1.0\n"


def test_cut_back_to_nothing_makes_an_open_logger_write_its_header(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("epoch,loss\n0,1.0\n")
    logger = keras.callbacks.CSVLogger(str(path), append=True)
    logger.on_train_begin()  # opened already (listed before FullStateResume)
    assert logger.append_header is False
    assert append_logs.cut_back([logger], _bundle(path, 0), "backup-000001") == []
    assert path.read_text() == "" and logger.append_header is True
    logger.on_epoch_end(0, {"loss": 0.5})
    logger.on_train_end()
    assert path.read_text().splitlines() == ["epoch,loss,val_loss", "0,0.5,NA"]


def test_capture_records_local_appending_loggers_only(tmp_path):
    appending = keras.callbacks.CSVLogger(str(tmp_path / "a.csv"), append=True)
    (tmp_path / "a.csv").write_text("epoch\n")
    fresh = keras.callbacks.CSVLogger(str(tmp_path / "b.csv"), append=True)
    overwriting = keras.callbacks.CSVLogger(str(tmp_path / "c.csv"), append=False)
    loggers = append_logs.appending_loggers(
        [appending, fresh, overwriting, keras.callbacks.History()]
    )
    assert loggers == [appending, fresh]
    bundle = StateBundle()
    append_logs.capture(loggers, bundle)
    assert bundle.meta["append_logs"] == [
        {"path": str(tmp_path / "a.csv"), "length": 6},
        {"path": str(tmp_path / "b.csv"), "length": 0},
    ]
    json.dumps(bundle.meta)  # JSON only


@pytest.mark.parametrize(
    "records",
    [{"path": "x"}, [{"path": 3, "length": 1}], [{"path": "x", "length": -1}], ["x"]],
)
def test_a_malformed_append_logs_record_is_refused(tmp_path, records):
    bundle = StateBundle()
    bundle.meta["append_logs"] = records
    with pytest.raises(CheckpointCorruptError, match="append_logs"):
        schema.check_bundle(bundle, tmp_path)


def test_the_backup_records_the_csv_length_as_it_was_taken(tmp_path):
    log = tmp_path / "log.csv"
    keras.utils.set_random_seed(0)
    _fit(_model(), tmp_path / "run", after=[keras.callbacks.CSVLogger(str(log), append=True)])
    ckpt = kr.CheckpointDirectory(tmp_path / "run")
    newest = ckpt.read_checkpoint("latest")
    assert newest.bundle.meta["append_logs"] == [{"path": str(log), "length": log.stat().st_size}]
