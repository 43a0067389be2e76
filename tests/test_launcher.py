"""keras-resume run --nprocs N: the launcher of a multi-process job.

Real processes and real signals, as in test_supervisor.py: the launcher runs
standalone in a fresh interpreter (standard library only), its N processes are
one small script (CHILD) that records its environment and pid, then behaves as
the test's mode says. Backoff is 0 and every wait has a timeout.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from keras_resume import supervisor
from tests.test_supervisor import MODULE, STANDALONE, alive

TIMEOUT = 30  # seconds for one launcher run of these small scripts

# One process of the job. Writes env.<id>.<attempt>.json (its pid, its job
# variables, and whether the previous attempt's processes were still alive when
# it started), then: ok: exits 0; crash-once: process 1 exits 137 the first time
# (marker file), once process 0 is up and sleeping, and process 0 sleeps through
# attempt 1; ignore-term: process 0 ignores SIGTERM and sleeps, process 1 exits 3;
# term-143: both sleep, and on SIGTERM write term.<id> and exit 143; fail: process
# 1 exits 3 while process 0 sleeps.
CHILD = """\
import json, os, signal, sys, time
out, mode = sys.argv[1], sys.argv[2]
pid = os.getpid()
i = int(os.environ["KERAS_RESUME_PROCESS_ID"])
attempt = int(os.environ["KERAS_RESUME_ATTEMPT"])


def path(name):
    return os.path.join(out, name)


def write(name, text):
    with open(path(name + ".tmp"), "w") as f:
        f.write(text)
    os.replace(path(name + ".tmp"), path(name))


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def wait_for(name):
    deadline = time.monotonic() + 30
    while not os.path.exists(path(name)) and time.monotonic() < deadline:
        time.sleep(0.01)


def on_term(signum, frame):
    write(f"term.{i}", "SIGTERM")
    sys.exit(143)


if mode == "term-143":
    signal.signal(signal.SIGTERM, on_term)
if mode == "ignore-term" and i == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
previous = []
for name in os.listdir(out):
    if name.startswith("env.") and name.endswith(f".{attempt - 1}.json"):
        previous.append(json.load(open(path(name)))["pid"])
prefixes = ("KERAS_RESUME_", "KERAS_DISTRIBUTION_")
env = {k: v for k, v in os.environ.items() if k.startswith(prefixes)}
record = {"pid": pid, "env": env, "previous_alive": [p for p in previous if alive(p)]}
write(f"env.{i}.{attempt}.json", json.dumps(record))
if mode == "crash-once" and i == 1 and not os.path.exists(path("crashed")):
    wait_for("env.0.1.json")
    write("crashed", "")
    sys.exit(137)
if mode == "crash-once" and i == 0 and attempt == 1:
    time.sleep(60)
if mode in ("ignore-term", "fail") and i == 1:
    wait_for(f"env.0.{attempt}.json")
    sys.exit(3)
if mode in ("ignore-term", "fail", "term-143"):
    time.sleep(60)
"""


@pytest.fixture
def job(tmp_path):
    """The command line of a CHILD job in `mode`; its files go to tmp_path/out."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out = tmp_path / "out"
    out.mkdir()

    def command(mode):
        return [sys.executable, str(script), str(out), mode]

    command.out = out
    return command


def launch(*args):
    return subprocess.Popen(
        [sys.executable, "-c", STANDALONE, str(MODULE), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc, timeout=TIMEOUT):
    """Waits for the launcher; returns (status, stderr, seconds it took from now)."""
    started = time.monotonic()
    try:
        _, stderr = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return proc.returncode, stderr, time.monotonic() - started


def records(out, attempt):
    found = {}
    for path in out.glob(f"env.*.{attempt}.json"):
        found[int(path.name.split(".")[1])] = json.loads(path.read_text())
    return found


def wait_for_files(out, names, proc):
    deadline = time.monotonic() + TIMEOUT
    while not all((out / name).exists() for name in names):
        if proc.poll() is not None:
            pytest.fail(f"the launcher exited ({proc.returncode}):\n{proc.communicate()[1]}")
        assert time.monotonic() < deadline, f"gave up waiting for {names}"
        time.sleep(0.02)


def test_every_process_gets_its_id_the_coordinator_and_the_keras_variables(job):
    status, stderr, _ = finish(launch("--nprocs", 2, "--", *job("ok")))
    assert status == 0, stderr
    seen = records(job.out, 1)
    assert sorted(seen) == [0, 1]
    coordinators = {seen[i]["env"]["KERAS_RESUME_COORDINATOR"] for i in (0, 1)}
    assert len(coordinators) == 1
    (coordinator,) = coordinators
    host, port = coordinator.split(":")
    assert host == "127.0.0.1" and 1 <= int(port) <= 65535
    # Variables of these prefixes that the test run itself has (a developer's
    # KERAS_RESUME_ZOO_REPORT) pass through unchanged; the launcher's own are set.
    prefixes = ("KERAS_RESUME_", "KERAS_DISTRIBUTION_")
    inherited = {k: v for k, v in os.environ.items() if k.startswith(prefixes)}
    for i in (0, 1):
        assert seen[i]["env"] == {
            **inherited,
            "KERAS_RESUME_ATTEMPT": "1",
            "KERAS_RESUME_COORDINATOR": coordinator,
            "KERAS_RESUME_NUM_PROCESSES": "2",
            "KERAS_RESUME_PROCESS_ID": str(i),
            # what keras.distribution.initialize() reads when given no arguments
            "KERAS_DISTRIBUTION_JOB_ADDRESSES": coordinator,
            "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
            "KERAS_DISTRIBUTION_PROCESS_ID": str(i),
        }
    assert seen[0]["pid"] != seen[1]["pid"]
    assert "exiting with status 0 after 1 attempt(s)" in stderr


def test_fixed_coordinator_port_and_nprocs_1(job):
    status, stderr, _ = finish(launch("--nprocs", 1, "--coordinator-port", 4321, "--", *job("ok")))
    assert status == 0, stderr
    (only,) = records(job.out, 1).values()
    assert only["env"]["KERAS_DISTRIBUTION_JOB_ADDRESSES"] == "127.0.0.1:4321"
    assert only["env"]["KERAS_DISTRIBUTION_NUM_PROCESSES"] == "1"
    assert only["env"]["KERAS_RESUME_PROCESS_ID"] == "0"


def test_a_crashed_process_stops_the_other_and_the_whole_job_restarts(job):
    status, stderr, _ = finish(launch("--nprocs", 2, "--backoff", 0, "--", *job("crash-once")))
    assert status == 0, stderr
    first, second = records(job.out, 1), records(job.out, 2)
    assert sorted(first) == sorted(second) == [0, 1]
    assert not records(job.out, 3)
    # The sleeping process 0 of attempt 1 was stopped before attempt 2 started.
    assert not alive(first[0]["pid"])
    assert second[0]["previous_alive"] == second[1]["previous_alive"] == []
    assert {second[i]["env"]["KERAS_RESUME_ATTEMPT"] for i in (0, 1)} == {"2"}
    assert (
        "[process 1] ended with exit status 137 (128 + SIGKILL); stopping the other 1 "
        "process(es) and restarting the job (attempt 2 of 4) in 0.0 s"
    ) in stderr
    assert "exiting with status 0 after 2 attempt(s)" in stderr
    assert "#1 137 by process 1 (" in stderr


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace(job):
    proc = launch("--nprocs", 2, "--grace", 1, "--max-restarts", 0, "--", *job("ignore-term"))
    status, stderr, took = finish(proc)
    assert status == 3, stderr
    stubborn = records(job.out, 1)[0]["pid"]
    assert not alive(stubborn)
    assert (
        "[process 1] ended with exit status 3; stopping the other 1 process(es) and ending "
        "the job: exit status 3 and no restarts left (--max-restarts 0)"
    ) in stderr
    assert (
        f"[process 0] (pid {stubborn}) still running 1 s after SIGTERM (--grace 1); "
        "killing it and every process it started (SIGKILL)"
    ) in stderr
    assert took < 15  # the grace, not the child's 60 s sleep


def test_sigterm_to_the_launcher_reaches_every_process_and_restarts_nothing(job):
    proc = launch("--nprocs", 2, "--backoff", 0, "--", *job("term-143"))
    wait_for_files(job.out, ["env.0.1.json", "env.1.1.json"], proc)
    pids = [records(job.out, 1)[i]["pid"] for i in (0, 1)]
    proc.send_signal(signal.SIGTERM)
    status, stderr, _ = finish(proc)
    assert status == 143, stderr
    assert (job.out / "term.0").read_text() == (job.out / "term.1").read_text() == "SIGTERM"
    assert not any(alive(pid) for pid in pids)
    assert not records(job.out, 2)
    assert "got SIGTERM; passing it to 2 process(es)" in stderr
    assert re.search(r"\[process [01]\] ended first, with exit status 143", stderr)
    assert "after SIGTERM; not restarting" in stderr
    assert "killing it and every process" not in stderr  # both exited within the grace
    assert "exiting with status 143 after 1 attempt(s)" in stderr


def test_max_restarts_exhausted_exits_with_the_failing_status(job):
    proc = launch("--nprocs", 2, "--max-restarts", 1, "--backoff", 0, "--", *job("fail"))
    status, stderr, _ = finish(proc)
    assert status == 3, stderr
    sleepers = [records(job.out, n)[0]["pid"] for n in (1, 2)]
    assert not any(alive(pid) for pid in sleepers)
    assert not records(job.out, 3)
    assert "restarting the job (attempt 2 of 2) in 0.0 s" in stderr
    assert "ending the job: exit status 3 and no restarts left (--max-restarts 1)" in stderr
    assert "#1 3 by process 1 (" in stderr and "#2 3 by process 1 (" in stderr


def test_a_command_that_cannot_start_is_not_retried():
    status, stderr, _ = finish(launch("--nprocs", 2, "--", "no-such-training-command"))
    assert status == 127
    assert "[process 0] command not found: 'no-such-training-command'" in stderr
    assert "[process 0] could not start: exit status 127 (command not found); ending the job" in (
        stderr
    )
    assert "exiting with status 127 after 1 attempt(s)" in stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nprocs", 0], "argument --nprocs: 0: give how many copies of the command"),
        (["--nprocs", "two"], "argument --nprocs: 'two' is not a whole number"),
        (["--nprocs", 2, "--coordinator-port", 70000], "70000: not a TCP port; give one"),
        (["--coordinator-port", 4321], "--coordinator-port applies to a multi-process job"),
        (["--nprocs", 2, "--grace", -1], "-1 is negative"),
    ],
)
def test_usage_errors_name_the_value_and_what_to_do(args, message):
    status, stderr, _ = finish(launch(*args, "--", "true"))
    assert status == 2
    assert message in stderr


def test_help_mentions_nprocs_with_an_example():
    proc = subprocess.run(
        [sys.executable, "-c", STANDALONE, str(MODULE), "--help"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0
    assert "--nprocs N" in proc.stdout
    assert "keras-resume run --nprocs 2 --max-restarts 5 -- python train.py" in proc.stdout
    assert "KERAS_DISTRIBUTION_JOB_ADDRESSES" in proc.stdout


def test_launcher_checks_its_arguments():
    with pytest.raises(ValueError, match="--nprocs 0: give how many copies"):
        supervisor.Launcher(["train"], nprocs=0)
    env = supervisor.distribution_env("127.0.0.1:4321", 3, 2)
    assert env["KERAS_DISTRIBUTION_PROCESS_ID"] == env["KERAS_RESUME_PROCESS_ID"] == "2"
    assert env["KERAS_DISTRIBUTION_NUM_PROCESSES"] == "3"
