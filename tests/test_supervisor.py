"""keras-resume run: the supervisor that restarts a crashed training command.

Everything here is a real process: the supervisor runs in a fresh interpreter
(standalone from keras_resume/supervise/__main__.py, which needs only the standard
library, or as `python -m keras_resume.supervisor`), its commands are real scripts
that kill themselves or exit, and signals are real signals. Backoff is 0 to keep it fast.
"""

import argparse
import os
import signal
import subprocess
import sys
import time

import pytest

import keras_resume as kr
from keras_resume import supervisor
from tests.conftest import SCRIPT, SUBPROCESS_TIMEOUT, assert_identical, load_result, run_script

REPO = SCRIPT.parent.parent
MODULE = REPO / "keras_resume" / "supervise" / "__main__.py"
TIMEOUT = 60  # for a supervisor whose commands are the small scripts below
HANG_GUARD = 120  # seconds a wait for a file or a process may take before the test fails

# Runs the supervisor's file as `__main__`, and checks that it loaded neither Keras
# nor NumPy, nor any module outside the standard library but keras_resume.supervise
# and the package's lazy __init__ (the supervisor stays small).
STANDALONE = """\
import runpy, sys
before = set(sys.modules)
try:
    runpy.run_path(sys.argv.pop(1), run_name="__main__")
finally:
    heavy = sorted(m for m in ("keras", "tensorflow", "numpy") if m in sys.modules)
    assert not heavy, f"the supervisor imported {heavy}"
    ours = ("keras_resume", "keras_resume.supervise", "keras_resume.supervisor")
    foreign = sorted(
        m for m in set(sys.modules) - before
        if m.split(".")[0] not in sys.stdlib_module_names
        and m not in ours and not m.startswith("keras_resume.supervise.")
    )
    assert not foreign, f"the supervisor imported {foreign}"
"""

# A stand-in for a training script: counts its runs in a file, records the
# KERAS_RESUME_ATTEMPT it was given, fails its first FAILS runs as told
# (SIGKILL, or an exit status), then succeeds.
FAKE = """\
import os, signal, sys
counter, fails, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
n = int(open(counter).read()) + 1 if os.path.exists(counter) else 1
open(counter, "w").write(str(n))
with open(counter + ".attempts", "a") as f:
    f.write(os.environ.get("KERAS_RESUME_ATTEMPT", "unset") + "\\n")
if n <= fails:
    if how == "SIGKILL":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.exit(int(how))
print(f"fake training done after {n} runs")
"""

# Counts its runs; passes --kill-at-step 7 to the training script on the first
# run only (otherwise every restart would kill itself again), then becomes it.
KILL_ONCE = """\
import os, sys
counter, script, args = sys.argv[1], sys.argv[2], sys.argv[3:]
n = int(open(counter).read()) + 1 if os.path.exists(counter) else 1
open(counter, "w").write(str(n))
if n == 1:
    args += ["--kill-at-step", "7"]
os.execv(sys.executable, [sys.executable, script, *args])
"""

# The training script, held at global step 7 (after writing a marker file)
# until the SIGTERM the test sends reaches keras-resume's preemption watch.
HOLD_AT_STEP_7 = """\
import sys, time
import keras
import keras_resume as kr
from keras_resume import backend
from tests import train_script

marker = sys.argv.pop(1)
with open(marker + ".runs", "a") as f:
    f.write("run\\n")


class HoldUntilSigterm(keras.callbacks.Callback):
    def __init__(self, backup):
        super().__init__()
        self.backup = backup

    def on_train_batch_end(self, batch, logs=None):
        if backend.read_int(self.model.optimizer.iterations) == 7:
            open(marker, "w").close()
            deadline = time.monotonic() + 200
            while not self.backup.preemption.requested and time.monotonic() < deadline:
                time.sleep(0.02)


callbacks = kr.CheckpointDirectory.callbacks


def with_hold(self, *args, **kwargs):
    cbs = callbacks(self, *args, **kwargs)
    return cbs + [HoldUntilSigterm(next(c for c in cbs if isinstance(c, kr.StepBackup)))]


kr.CheckpointDirectory.callbacks = with_hold
sys.exit(train_script.main())
"""


def training_env():
    """The environment tests/conftest.py's run_script gives the training script."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def supervise(*args, timeout=TIMEOUT, env=None):
    """Runs `keras-resume run ARGS` standalone in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-c", STANDALONE, str(MODULE), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def fake_command(tmp_path, fails, how):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE)
    counter = tmp_path / "runs"
    return [sys.executable, script, counter, fails, how], counter


def runs(counter):
    return int(counter.read_text()) if counter.exists() else 0


def restart_lines(stderr):
    return [line for line in stderr.splitlines() if "restarting in" in line]


def alive(pid):
    """Whether a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def wait_for(predicate, what, proc=None):
    deadline = time.monotonic() + HANG_GUARD
    while not predicate():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the supervisor exited ({proc.returncode}) before {what}:\n{err[-3000:]}")
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def test_sigkilled_twice_then_succeeds_after_two_restarts(tmp_path):
    command, counter = fake_command(tmp_path, fails=2, how="SIGKILL")
    proc = supervise("--backoff", 0, "--", *command)
    assert proc.returncode == 0, proc.stderr
    assert runs(counter) == 3
    assert restart_lines(proc.stderr) == [
        "keras-resume run: attempt 2 of 4 after exit status -9 (killed by SIGKILL); "
        "restarting in 0.0 s",
        "keras-resume run: attempt 3 of 4 after exit status -9 (killed by SIGKILL); "
        "restarting in 0.0 s",
    ]
    summary = proc.stderr.strip().splitlines()[-1]
    assert summary.startswith("keras-resume run: exiting with status 0 after 3 attempt(s)")
    assert "#1 -9 (" in summary and "#2 -9 (" in summary and "#3 0 (" in summary
    assert "fake training done after 3 runs" in proc.stdout
    # Each run is told which attempt it is.
    assert (tmp_path / "runs.attempts").read_text().split() == ["1", "2", "3"]


def test_non_retryable_exit_stops_at_once(tmp_path):
    command, counter = fake_command(tmp_path, fails=99, how="2")
    proc = supervise("--backoff", 0, "--", *command)
    assert proc.returncode == 2
    assert runs(counter) == 1
    assert restart_lines(proc.stderr) == []
    assert "exit status 2 is not retried (--no-retry-on 2,126,127); stopping" in proc.stderr


@pytest.mark.parametrize("how, status", [("3", 3), ("SIGKILL", 128 + signal.SIGKILL)])
def test_max_restarts_returns_the_last_status(tmp_path, how, status):
    command, counter = fake_command(tmp_path, fails=99, how=how)
    proc = supervise("--max-restarts", 1, "--backoff", 0, "--", *command)
    assert proc.returncode == status, proc.stderr
    assert runs(counter) == 2
    assert len(restart_lines(proc.stderr)) == 1
    assert "no restarts left (--max-restarts 1); stopping" in proc.stderr


@pytest.mark.parametrize(
    "options, fails, how, status, expected_runs",
    [
        (["--no-retry-on", "3"], 99, "3", 3, 1),  # a status made non-retryable
        (["--retry-on", "SIGKILL,143"], 99, "1", 1, 1),  # only these are retried
        (["--retry-on", "SIGKILL,143"], 1, "SIGKILL", 0, 2),
        (["--retry-on", "2"], 1, "2", 0, 2),  # naming 2 beats the default --no-retry-on
        (["--no-retry-on", "none"], 1, "2", 0, 2),
    ],
)
def test_status_lists_are_configurable(tmp_path, options, fails, how, status, expected_runs):
    command, counter = fake_command(tmp_path, fails=fails, how=how)
    proc = supervise(*options, "--backoff", 0, "--", *command)
    assert proc.returncode == status, proc.stderr
    assert runs(counter) == expected_runs


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "no command to run; put the training command after '--'"),
        (["--"], "no command to run; put the training command after '--'"),
        (["--retry-on", "bogus", "--", "true"], "--retry-on: 'bogus'"),
        (["--retry-on", "0", "--", "true"], "status 0 is success"),
        (["--retry-on", "3", "--no-retry-on", "3", "--", "true"], "both name 3"),
        (["--backoff", "-1", "--", "true"], "-1 is negative"),
    ],
)
def test_usage_errors_exit_2_and_say_what_to_do(args, message):
    proc = supervise(*args)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_command_not_found_or_not_executable(tmp_path):
    proc = supervise("--backoff", 0, "--", "no-such-training-command", "--epochs", 3)
    assert proc.returncode == 127
    assert "command not found: 'no-such-training-command'" in proc.stderr
    assert restart_lines(proc.stderr) == []
    script = tmp_path / "train.py"
    script.write_text("print('never runs')\n")
    proc = supervise("--backoff", 0, "--", script)
    assert proc.returncode == 126
    assert f"cannot execute '{script}' (permission denied)" in proc.stderr
    assert f"-- python {script}" in proc.stderr


def test_processes_left_behind_by_a_crashed_command_are_killed(tmp_path):
    # The command starts a helper (a data-loader worker, say) and is SIGKILLed: the
    # orphaned helper must not outlive it (it could hold the directory or the GPU).
    script = tmp_path / "leaves_a_worker.py"
    script.write_text(
        "import os, signal, subprocess, sys\n"
        "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"open({str(tmp_path / 'worker.pid')!r}, 'w').write(str(worker.pid))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = supervise("--max-restarts", 0, "--", sys.executable, script)
    assert proc.returncode == 128 + signal.SIGKILL, proc.stderr
    worker = int((tmp_path / "worker.pid").read_text())
    assert not alive(worker)
    assert "killing 1 process(es) the command left running" in proc.stderr
    assert f"(pids {worker})" in proc.stderr


def test_sigkilled_supervisor_leaves_no_orphan(tmp_path):
    pid_file = tmp_path / "child.pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)"
    proc = subprocess.Popen(
        [sys.executable, "-c", STANDALONE, str(MODULE), "--", sys.executable, "-c", code],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text(), "the child to start", proc)
        child = int(pid_file.read_text())
        assert alive(child)
        proc.kill()  # SIGKILL: the supervisor runs no cleanup of its own
        proc.wait(timeout=TIMEOUT)
        wait_for(lambda: not alive(child), "the orphaned child to die")
    finally:
        proc.kill()
        proc.communicate(timeout=TIMEOUT)


def test_sigint_is_forwarded_and_nothing_restarts(tmp_path):
    # The command turns SIGINT into exit status 3, which is retryable: the
    # supervisor must still stop, since it was asked to.
    ready, got = tmp_path / "ready", tmp_path / "got"
    code = (
        "import os, signal, sys, time\n"
        f"def on_int(signum, frame):\n"
        f"    open({str(got)!r}, 'a').write('SIGINT\\n')\n"
        "    sys.exit(3)\n"
        "signal.signal(signal.SIGINT, on_int)\n"
        f"open({str(ready)!r}, 'a').write('run\\n')\n"
        "time.sleep(300)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", STANDALONE, str(MODULE), "--backoff", "0", "--"]
        + [sys.executable, "-c", code],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(ready.exists, "the command to start", proc)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 3, stderr
    assert got.read_text() == "SIGINT\n"  # forwarded exactly once
    assert ready.read_text() == "run\n"  # started once: no restart
    assert "got SIGINT; passing it to the command" in stderr
    assert "after SIGINT; not restarting" in stderr
    assert restart_lines(stderr) == []


def test_supervised_training_killed_mid_epoch_ends_identical(tmp_path):
    run_script("--dir", tmp_path / "ref", "--out", tmp_path / "ref.npz", "--epochs", 2)
    wrapper = tmp_path / "kill_once.py"
    wrapper.write_text(KILL_ONCE)
    counter, out = tmp_path / "runs", tmp_path / "out.npz"
    proc = supervise(
        "--backoff",
        0,
        "--",
        sys.executable,
        wrapper,
        counter,
        SCRIPT,
        "--dir",
        tmp_path / "run",
        "--out",
        out,
        "--epochs",
        2,
        env=training_env(),
        timeout=2 * SUBPROCESS_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert runs(counter) == 2
    assert restart_lines(proc.stderr) == [
        "keras-resume run: attempt 2 of 4 after exit status -9 (killed by SIGKILL); "
        "restarting in 0.0 s"
    ]
    assert_identical(load_result(out), load_result(tmp_path / "ref.npz"))


def test_sigterm_to_the_supervisor_saves_and_exits_143(tmp_path):
    wrapper = tmp_path / "hold.py"
    wrapper.write_text(HOLD_AT_STEP_7)
    marker, run, out = tmp_path / "at-step-7", tmp_path / "run", tmp_path / "out.npz"
    proc = subprocess.Popen(
        [sys.executable, "-m", "keras_resume.supervisor", "--backoff", "0", "--"]
        + [sys.executable, str(wrapper), str(marker), "--dir", str(run), "--out", str(out)],
        cwd=REPO,
        env=training_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(marker.exists, "the training to reach step 7", proc)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == kr.EXIT_PREEMPTED == 143, stderr[-4000:]
    assert "got SIGTERM; passing it to the command" in stderr
    assert "SIGTERM: saved a full checkpoint" in stderr  # the training script's own save
    assert "exit status 143 (128 + SIGTERM: saved and stopped, or terminated) after SIGTERM" in (
        stderr
    )
    assert restart_lines(stderr) == []
    assert (tmp_path / "at-step-7.runs").read_text() == "run\n"
    assert not out.exists()
    newest = kr.CheckpointDirectory(run).checkpoints("backup")[-1]
    assert (newest["global_step"], newest["epoch_complete"]) == (7, False)


def test_backoff_doubles_up_to_the_cap_and_constants_agree():
    sup = supervisor.Supervisor(["train"], backoff=1.0, max_backoff=5.0)
    assert [sup.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert supervisor.Supervisor(["train"], max_backoff=60).delay(10_000) == 60
    assert supervisor.EXIT_PREEMPTED == kr.EXIT_PREEMPTED
    codes = supervisor.StatusSet("143,SIGKILL,signal")
    assert [codes.matches(s) for s in (143, -9, -11, 1, 0)] == [True, True, True, False, False]
    assert supervisor.describe_status(-9) == "exit status -9 (killed by SIGKILL)"


def test_help_has_an_example():
    proc = supervise("--help")
    assert proc.returncode == 0
    assert "example:" in proc.stdout
    assert "keras-resume run --max-restarts 5 --backoff 10 -- python train.py" in proc.stdout


def test_registers_as_a_subcommand_and_restores_signal_handlers():
    # As keras_resume/cli/ registers it: a subcommand whose dest is "command".
    parser = argparse.ArgumentParser(prog="keras-resume")
    run = parser.add_subparsers(dest="command").add_parser("run")
    supervisor.add_arguments(run)
    run.set_defaults(func=supervisor.run_command)
    exit_5 = [sys.executable, "-c", "import sys; sys.exit(5)"]
    args = parser.parse_args(["run", "--max-restarts", "0", "--", *exit_5])
    assert (args.command, args.training_command) == ("run", ["--", *exit_5])
    before = {s: signal.getsignal(s) for s in supervisor.FORWARDED_SIGNALS}
    assert args.func(args) == 5  # the supervisor, in this very process
    assert {s: signal.getsignal(s) for s in supervisor.FORWARDED_SIGNALS} == before
