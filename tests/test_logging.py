"""verbose=1 prints one Keras-style line per save and per resume; the rest goes to the logger.

Real tiny training runs, real files; stdout through capsys, the "keras_resume" logger
through caplog.
"""

import ast
import logging
from pathlib import Path

import keras

import keras_resume as kr
from tests.conftest import Interrupt, tiny_data, tiny_model

PACKAGE = Path(__file__).resolve().parent.parent / "keras_resume"
# What runs inside the user's `fit` and `restore` (the command-line tools print by design).
IN_FIT = ["callbacks", "state", "restoring.py", "writer.py", "directory.py", "preemption.py"]
IN_FIT += ["storage.py", "manifest.py", "backend"]

# tiny_data(32) in batches of 4: 8 steps per epoch.
BATCH, STEPS = 4, 8


def _callbacks(ckpt, verbose, background=True, every=3):
    return [
        kr.FullStateResume(ckpt, verbose=verbose),
        kr.StepBackup(ckpt, every_n_steps=every, keep=100, background=background, verbose=verbose),
        kr.BestCheckpoint(ckpt, monitor="loss", keep=100, background=background, verbose=verbose),
        kr.RngCapture(ckpt),
    ]


def _fit(ckpt, callbacks, epochs=2):
    keras.utils.set_random_seed(3)
    x, y = tiny_data()
    model = tiny_model()
    try:
        model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=callbacks)
    except KeyboardInterrupt:
        return False
    return True


def _lines(text):
    """The printed lines; Keras-style messages start with a newline to end a progress bar."""
    return [line for line in text.splitlines() if line.strip()]


def _save_line(ckpt, entry, previous_best):
    """The exact line a committed checkpoint is announced with."""
    if entry["kind"] == "backup":
        if entry["epoch_complete"]:
            where = "end of epoch"
        else:
            where = f"step {entry['step_in_epoch']} of epoch"
        return f"Saved backup {entry['dir']} at {where} {entry['epoch'] + 1} to {ckpt.path}"
    was = float("inf") if previous_best is None else previous_best
    return (
        f"Epoch {entry['epoch'] + 1}: loss improved from {was:.5f} to "
        f"{entry['logs']['loss']:.5f}; saved {entry['dir']} in {ckpt.path}"
    )


def _expected_lines(ckpt, after_id=0):
    """One line per checkpoint committed with an id above `after_id`, in commit order."""
    entries = sorted(ckpt.checkpoints(), key=lambda c: c["id"])
    lines, best = [], None
    for entry in entries:
        if entry["id"] > after_id:
            lines.append(_save_line(ckpt, entry, best))
        if entry["kind"] == "best":
            best = entry["logs"]["loss"]
    return lines


def _messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "keras_resume"]


def test_one_line_per_background_save_by_the_end_of_fit(ckpt_dir, capsys, caplog):
    caplog.set_level(logging.INFO, logger="keras_resume")
    ckpt = kr.CheckpointDirectory(ckpt_dir)
    assert _fit(ckpt, _callbacks(ckpt, verbose=1), epochs=3)
    printed = _lines(capsys.readouterr().out)  # read as fit returns: every save confirmed

    expected = _expected_lines(ckpt)
    # Global steps 3, 6, ..., 21 and three epoch ends (step 24 is one): 7 + 3 backups.
    assert len(ckpt.checkpoints("backup")) == 10
    assert len(ckpt.checkpoints("best")) >= 1
    assert printed == expected
    assert len(set(printed)) == len(printed)  # no save announced twice
    # The logger gets the same lines (without the leading newline), and the fresh start.
    assert _messages(caplog) == [f"No backup in {ckpt.path}: starting a new run", *expected]


def test_every_save_of_an_interrupted_run_and_the_resume_get_one_line(ckpt_dir, capsys, caplog):
    caplog.set_level(logging.INFO, logger="keras_resume")
    ckpt = kr.CheckpointDirectory(ckpt_dir)
    # Written on the training thread, so each save is confirmed before the interruption.
    assert not _fit(ckpt, [Interrupt(13), *_callbacks(ckpt, verbose=1, background=False)])
    first = _lines(capsys.readouterr().out)
    assert first == _expected_lines(ckpt)
    # Steps 3 and 6, best + backup at the end of epoch 1, then steps 9 and 12.
    assert first[-1] == f"Saved backup backup-000006 at step 4 of epoch 2 to {ckpt.path}"
    assert len(first) == 6

    caplog.clear()
    assert _fit(ckpt, _callbacks(ckpt, verbose=1))
    second = _lines(capsys.readouterr().out)
    resume = (
        f"Resumed {ckpt.path} at epoch 2, step 4 of {STEPS}: skipping 4 batches "
        "(from backup-000006)"
    )
    assert second[0] == resume
    assert second[1:] == _expected_lines(ckpt, after_id=6)
    assert len(second) > 1
    assert [m for m in _messages(caplog) if m.startswith("Resumed")] == [resume]


def test_verbose_0_prints_nothing_and_logs_saves_and_resume(ckpt_dir, capsys, caplog):
    caplog.set_level(logging.INFO, logger="keras_resume")
    ckpt = kr.CheckpointDirectory(ckpt_dir)
    assert not _fit(ckpt, [Interrupt(13), *_callbacks(ckpt, verbose=0)])
    assert _fit(ckpt, _callbacks(ckpt, verbose=0))
    assert capsys.readouterr().out == ""

    messages = _messages(caplog)
    resumes = [m for m in messages if m.startswith("Resumed")]
    assert len(resumes) == 1
    assert resumes[0].startswith(f"Resumed {ckpt.path} at epoch 2, step 4 of {STEPS}:")
    # Every save of the resumed fit is logged once, after the resume line.
    resumed_from = int(resumes[0].rsplit("backup-", 1)[1].rstrip(")"))
    after = messages[messages.index(resumes[0]) + 1 :]
    assert after == _expected_lines(ckpt, after_id=resumed_from)
    assert len(after) > 0


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_no_bare_print_and_every_print_msg_is_behind_verbose():
    sources = []
    for name in IN_FIT:
        path = PACKAGE / name
        sources += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    assert len(sources) > 10
    printing = 0
    for path in sources:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node, name in _calls(tree):
            assert name not in ("print", "sys.stdout.write", "sys.stderr.write"), (
                f"{path}:{node.lineno}: {name}(...) prints directly; use "
                "logging.getLogger('keras_resume'), or io_utils.print_msg behind `if self.verbose:`"
            )
        behind_verbose = {
            id(node)
            for branch in ast.walk(tree)
            if isinstance(branch, ast.If) and ast.unparse(branch.test) == "self.verbose"
            for stmt in branch.body
            for node, _ in _calls(stmt)
        }
        # backend.print_msg is the one wrapper around Keras's io_utils.print_msg (the
        # version seam); its own body is the only call allowed outside `if self.verbose:`.
        wrapper = {
            id(node)
            for fn in ast.walk(tree)
            if path.parent.name == "backend"
            and isinstance(fn, ast.FunctionDef)
            and fn.name == "print_msg"
            for node, _ in _calls(fn)
        }
        for node, name in _calls(tree):
            if name in ("io_utils.print_msg", "backend.print_msg") and id(node) not in wrapper:
                assert id(node) in behind_verbose, (
                    f"{path}:{node.lineno}: {name} outside `if self.verbose:`"
                )
                printing += 1
    # One each: StepBackup's save line, BestCheckpoint's, FullStateResume's resume line.
    assert printing == 3


def test_a_save_in_flight_at_an_interruption_still_gets_its_line(ckpt_dir, capsys):
    ckpt = kr.CheckpointDirectory(ckpt_dir)
    assert not _fit(ckpt, [Interrupt(5), *_callbacks(ckpt, verbose=1, every=1)])
    assert _fit(ckpt, _callbacks(ckpt, verbose=1, every=1))
    printed = _lines(capsys.readouterr().out)
    assert [line for line in printed if not line.startswith("Resumed")] == _expected_lines(ckpt)


def test_rerunning_a_finished_run_says_nothing_is_left(ckpt_dir, capsys):
    ckpt = kr.CheckpointDirectory(ckpt_dir)
    assert _fit(ckpt, _callbacks(ckpt, verbose=0, every=None))
    capsys.readouterr()
    assert _fit(ckpt, _callbacks(ckpt, verbose=1, every=None))
    (line,) = [x for x in _lines(capsys.readouterr().out) if x.startswith("Resumed")]
    assert "epochs are trained; nothing left to train" in line
