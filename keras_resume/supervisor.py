"""`keras-resume run`: reruns a training command that crashed, until it finishes.

A training script that uses `FullStateResume` continues where it stopped when it
is started again; this supervisor is the loop around it. It starts the command,
waits, and starts it again when it died of a signal (an out-of-memory kill, a
SIGKILL) or exited with a retryable status, with exponential backoff, up to
`--max-restarts` times. A SIGTERM or SIGINT sent to the supervisor is passed to
the command (keras-resume then saves and exits with status 143) and ends the
loop: nothing is restarted; a command still running `--grace` seconds later is
SIGKILLed. On Linux every command runs under a guard (`guard.py`, a child
subreaper): whatever the command started, even with `setsid`, is killed when it
ends or when the supervisor dies, even of SIGKILL.

    keras-resume run --max-restarts 5 -- python train.py --epochs 30
    python -m keras_resume.supervisor -- python train.py

With `--nprocs N` it launches a multi-process job (JAX, one host): N copies of
the command, each told the coordinator address, N and its process id through
environment variables, so that `keras.distribution.initialize()` needs no
arguments. When one process fails, the others are stopped (SIGTERM, then SIGKILL
after `--grace` seconds) and the whole job is started again.

    keras-resume run --nprocs 2 --max-restarts 5 -- python train.py

This module uses only the standard library, so the supervising process stays
small: it imports neither Keras nor TensorFlow.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger("keras_resume")

PROG = "keras-resume run"
# keras_resume.EXIT_PREEMPTED, repeated here so this module needs no Keras.
EXIT_PREEMPTED = 128 + signal.SIGTERM
DEFAULT_NO_RETRY_ON = "2,126,127"
DEFAULT_RETRY_ON = "any"
# Signals the supervisor passes on to the command; each one also ends the loop.
FORWARDED_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name)
)
_PR_SET_PDEATHSIG = 1
_LEFTOVER_WAIT_S = 10.0
_POLL_S = 0.05  # how often a multi-process job's processes are checked
DEFAULT_GRACE = 10.0
# The process between the supervisor and each command (Linux): see guard.py.
GUARD = Path(__file__).with_name("guard.py")
_KILL_TREE = getattr(signal, "SIGUSR1", None)  # asks the guard to SIGKILL the command's tree
COORDINATOR_HOST = "127.0.0.1"

DESCRIPTION = """\
Run a training command and start it again when it crashes. The command resumes
by itself: a script that uses keras_resume.FullStateResume continues from its
newest backup. Restarts after death by a signal (an out-of-memory kill), exit
status 137 or 143 (a SIGTERM save) and any other failure except 2, 126 and 127,
with exponential backoff. A SIGTERM or SIGINT sent to this process is passed to
the command, which saves and exits 143; nothing is restarted after it. A command
still running --grace seconds later (default 10) is SIGKILLed with every process
it started. On Linux each command runs under a small guard process, so nothing it
started (even with setsid) outlives it, or a SIGKILLed supervisor.

With --nprocs N, starts N copies of the command as one multi-process job (JAX on
one host); when any of them fails, stops the others and restarts all N.
"""
EPILOG = """\
example:
  keras-resume run --max-restarts 5 --backoff 10 -- python train.py --dir runs/exp1

  Restarts `python train.py --dir runs/exp1` up to 5 times, waiting 10 s, 20 s,
  40 s, 60 s, 60 s before the restarts. Exits with the command's last status
  (128 + N when it was killed by signal N).

multi-process example:
  keras-resume run --nprocs 2 --max-restarts 5 -- python train.py --dir runs/exp1

  Starts 2 copies, each with KERAS_RESUME_COORDINATOR=127.0.0.1:PORT (a free port,
  or --coordinator-port), KERAS_RESUME_NUM_PROCESSES=2, KERAS_RESUME_PROCESS_ID=0
  or 1, and the same values in KERAS_DISTRIBUTION_JOB_ADDRESSES,
  KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID, which
  keras.distribution.initialize() reads when called without arguments. When one
  process fails, the other gets SIGTERM, then SIGKILL after --grace seconds, and
  both start again (on a new port). Exits 0 when all exit 0, else with the status
  of the first process that failed. SIGTERM to the launcher goes to every process.

status lists (--retry-on, --no-retry-on) are comma-separated:
  143        exit status 143
  SIGKILL    killed by SIGKILL (also KILL or -9)
  signal     killed by any signal
  any        any failure (any nonzero status)
  none       nothing (for --no-retry-on)
"""


@dataclass
class Attempt:
    """One run of the command: when it started and ended, and how it ended.

    Args:
        number: 1 for the first run, 2 for the first restart, ...
        pid: the process id of the command, or `None` if it could not be started.
        started: start time, seconds since the epoch (`time.time()`).
        ended: end time, seconds since the epoch; `None` while it runs.
        status: `Popen.returncode`: the exit status, or `-N` when killed by signal N;
            `None` while it runs. For a job of several processes: the status of the
            first one that failed.
        pids: the process ids of every process started (one without `--nprocs`).
        process: for a job of several processes, the id (0 to N - 1) of the first one
            that failed; `None` when none failed, or for a single command.
    """

    number: int
    pid: int | None
    started: float
    ended: float | None = None
    status: int | None = None
    pids: list[int] = field(default_factory=list)
    process: int | None = None

    @property
    def duration(self) -> float:
        return (self.ended if self.ended is not None else time.time()) - self.started


class StatusSet:
    """A set of exit statuses, parsed from a `--retry-on`/`--no-retry-on` list.

    Example:

    ```python
    codes = StatusSet.parse("143,SIGKILL")
    codes.matches(143), codes.matches(-9), codes.matches(1)  # True, True, False
    ```

    Args:
        text: comma-separated items: an exit status (`143`), a signal (`SIGKILL`,
            `KILL` or `-9`: killed by that signal), `signal` (killed by any signal),
            `any` (any nonzero status) or `none` (nothing).
        option: the option the text came from, named in error messages.
    """

    def __init__(self, text: str, option: str = "--retry-on"):
        self.text = text
        self.statuses: set[int] = set()  # exit statuses, and -N for "killed by signal N"
        self.any_signal = False
        self.any_failure = False
        items = [item.strip() for item in text.split(",")]
        if items == [""]:
            raise ValueError(
                f"{option}: empty list; give statuses like '143,SIGKILL', or 'none' for none"
            )
        for item in items:
            self._add(item, option)

    @classmethod
    def parse(cls, text: str, option: str = "--retry-on") -> StatusSet:
        return cls(text, option)

    def _add(self, item: str, option: str) -> None:
        word = item.lower()
        if word == "none":
            return
        if word in ("any", "all"):
            self.any_failure = True
            return
        if word in ("signal", "signals"):
            self.any_signal = True
            return
        try:
            number = int(item)
        except ValueError:
            number = None
        if number is not None:
            if number == 0:
                raise ValueError(
                    f"{option}: status 0 is success and is never retried; remove it from "
                    f"'{self.text}'"
                )
            if number > 255 or (number < 0 and -number not in _signal_numbers()):
                raise ValueError(
                    f"{option}: '{item}' in '{self.text}' is neither an exit status (1 to 255) "
                    "nor minus a signal number (-9 is SIGKILL); fix the list"
                )
            self.statuses.add(number)
            return
        name = item.upper()
        member = signal.Signals.__members__.get(name if name.startswith("SIG") else "SIG" + name)
        if member is None:
            raise ValueError(
                f"{option}: '{item}' in '{self.text}' is not an exit status, a signal name "
                "(SIGKILL), 'signal', 'any' or 'none'; fix the list"
            )
        self.statuses.add(-int(member))

    def matches(self, status: int) -> bool:
        """Whether a nonzero `Popen.returncode` is in the set."""
        if status == 0:
            return False
        if self.any_failure or status in self.statuses:
            return True
        return status < 0 and self.any_signal

    def __repr__(self) -> str:
        return f"StatusSet({self.text!r})"


def _signal_numbers() -> set[int]:
    return {int(s) for s in signal.Signals}


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_status(status: int) -> str:
    """Says how a command ended, from its `Popen.returncode`.

    Example: `describe_status(-9)` is `"exit status -9 (killed by SIGKILL)"`.
    """
    if status < 0:
        return f"exit status {status} (killed by {_signal_name(-status)})"
    notes = {
        EXIT_PREEMPTED: "128 + SIGTERM: saved and stopped, or terminated",
        126: "not executable",
        127: "command not found",
    }
    note = notes.get(status)
    if note is None and 128 < status < 128 + 65:
        note = f"128 + {_signal_name(status - 128)}"
    return f"exit status {status}" + (f" ({note})" if note else "")


def exit_code(status: int) -> int:
    """The supervisor's own exit status for a `Popen.returncode`: 128 + N for death by signal N."""
    return 128 - status if status < 0 else status


def _attempt_summary(attempt: Attempt) -> str:
    by = f" by process {attempt.process}" if attempt.process is not None else ""
    return f"#{attempt.number} {attempt.status}{by} ({attempt.duration:.1f} s)"


def _clock(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(seconds))


def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # it has just exited


def free_port(host: str = COORDINATOR_HOST) -> int:
    """A TCP port that nothing listens on now, for a job's coordinator."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def distribution_env(coordinator: str, num_processes: int, process_id: int) -> dict[str, str]:
    """The environment variables that tell one process of a job where it stands.

    Example:

    ```python
    distribution_env("127.0.0.1:4321", 2, 1)["KERAS_DISTRIBUTION_PROCESS_ID"]  # "1"
    ```

    Args:
        coordinator: the coordinator's `host:port`.
        num_processes: how many processes the job has.
        process_id: this process's id, 0 to `num_processes - 1`.

    Returns:
        `KERAS_RESUME_COORDINATOR`, `KERAS_RESUME_NUM_PROCESSES`,
        `KERAS_RESUME_PROCESS_ID`, and the same values under the names that
        `keras.distribution.initialize()` reads when called without arguments
        (`KERAS_DISTRIBUTION_JOB_ADDRESSES`, `KERAS_DISTRIBUTION_NUM_PROCESSES`,
        `KERAS_DISTRIBUTION_PROCESS_ID`).
    """
    values = {"NUM_PROCESSES": str(num_processes), "PROCESS_ID": str(process_id)}
    env = {"KERAS_RESUME_COORDINATOR": coordinator, "KERAS_DISTRIBUTION_JOB_ADDRESSES": coordinator}
    for name, value in values.items():
        env[f"KERAS_RESUME_{name}"] = value
        env[f"KERAS_DISTRIBUTION_{name}"] = value
    return env


def check_nprocs(nprocs: int) -> None:
    if isinstance(nprocs, bool) or not isinstance(nprocs, int) or nprocs < 1:
        raise ValueError(
            f"--nprocs {nprocs}: give how many copies of the command to start, 1 or more "
            "(e.g. --nprocs 2)"
        )


def check_port(port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(
            f"--coordinator-port {port}: not a TCP port; give one from 1 to 65535, or leave "
            "the option out to let the launcher pick a free port"
        )


def _block_signals():
    """Holds the forwarded signals back (their handlers run at `_restore_signals`)."""
    if not hasattr(signal, "pthread_sigmask"):
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)


def _restore_signals(mask) -> None:
    if mask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _say(message: str) -> None:
    """One plain line on stderr, and the same through the "keras_resume" logger."""
    logger.info("%s: %s", PROG, message)
    line = f"{PROG}: {message}\n"
    try:
        sys.stderr.write(line)
        sys.stderr.flush()
    except RuntimeError:  # a signal handler interrupted a write in progress
        os.write(2, line.encode(errors="replace"))
    except (OSError, ValueError):
        pass  # stderr is closed: the log record above is all that can be done


def _process_group_members(pgid: int) -> list[int] | None:
    """Live (non-zombie) processes in a process group, from /proc; `None` without /proc."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    members = []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
        if len(fields) > 2 and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(name))
    return members


def _reap_orphans() -> None:
    """Collects orphans handed to this process (when it is PID 1 in a container)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _child_setup(mask=None):
    """The function run in the child between fork and exec, or `None` off POSIX.

    It puts the child (the command's guard on Linux, else the command) in a process
    group of its own, so that a Ctrl-C in the terminal reaches the command once
    (through the supervisor) and what it leaves behind can be found, and, on Linux,
    asks the kernel to SIGKILL the child if the supervisor dies before the guard
    replaces that with its own cleanup (see guard.py). `mask`: the signal mask the
    child gets, when the supervisor blocked signals while starting it.
    """
    if os.name != "posix":
        return None
    parent = os.getpid()
    prctl = None
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            prctl = None

    def setup():
        os.setpgid(0, 0)
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            if os.getppid() != parent:  # the supervisor died before the prctl
                os._exit(128 + int(signal.SIGKILL))

    return setup


def _use_guard() -> bool:
    return sys.platform.startswith("linux") and bool(sys.executable) and GUARD.is_file()


def _start_guarded(command: list[str], env: dict, setup, who: str):
    """Starts `command` under its guard; `(None, Command)`, or `(why, None)` if it
    could not start ("notfound", "permission" or "oserror MESSAGE")."""
    read_end, write_end = os.pipe()
    try:
        argv = [sys.executable, "-I", "-S", str(GUARD), str(write_end), str(os.getpid()), who]
        popen = subprocess.Popen(
            [*argv, "--", *command], env=env, preexec_fn=setup, pass_fds=(write_end,)
        )
    finally:
        os.close(write_end)
    with os.fdopen(read_end) as report:
        line = report.readline().strip()  # the guard writes it once the command started
    if line.startswith("pid "):
        return None, Command(popen, int(line[4:]), guarded=True)
    popen.wait()
    return line or f"oserror its guard ended with {describe_status(popen.returncode)}", None


class Command:
    """A started command, as the supervisor sees it: through its guard on Linux.

    `pid` is the command's own; `group` its process group (the guard's pid when
    guarded). Signals go through the guard, which passes them on; `kill_tree`
    SIGKILLs the command and every process it started.
    """

    def __init__(self, popen: subprocess.Popen, pid: int, guarded: bool):
        self.popen, self.pid, self.guarded = popen, pid, guarded
        self.group = popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.popen.wait(timeout)

    def send_signal(self, signum: int) -> None:
        if self.popen.returncode is None:
            _send(self.popen.pid, signum)

    def kill_tree(self) -> None:
        if self.guarded and self.popen.poll() is None:
            _send(self.popen.pid, _KILL_TREE)
        else:
            try:
                os.killpg(self.group, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, AttributeError):
                pass


@dataclass
class Supervisor:
    """Runs a command, and runs it again after a retryable failure.

    Use it from Python where `keras-resume run` is not a fit (a launcher of your
    own); the command line builds one of these (a `Launcher` for `--nprocs`).

    Example:

    ```python
    from keras_resume.supervisor import Supervisor

    sup = Supervisor(["python", "train.py"], max_restarts=5, backoff=10)
    status = sup.run()  # the exit status keras-resume run would exit with
    for attempt in sup.attempts:
        print(attempt.number, attempt.status, round(attempt.duration, 1))
    ```

    Args:
        command: the program and its arguments (a list, run without a shell).
        max_restarts: how many times to start the command again. Defaults to `3`.
        backoff: seconds to wait before the first restart; the wait doubles with each
            restart. Defaults to `1.0`.
        max_backoff: the longest wait, in seconds. Defaults to `60.0`.
        retry_on: statuses that restart the command, a `StatusSet` or its text.
            Defaults to `"any"`.
        no_retry_on: statuses that stop at once, checked first. Defaults to
            `"2,126,127"`.
        env: extra environment variables for the command. Each run also gets
            `KERAS_RESUME_ATTEMPT` (1, 2, ...). Defaults to `None`.
        grace: seconds the command may take to exit after a SIGTERM or SIGINT was
            passed on to it, before it and every process it started are SIGKILLed.
            Defaults to `10.0`.

    On Linux every command runs under a small guard process (`guard.py`), a child
    subreaper: when the command ends, or the supervisor dies (even of SIGKILL),
    every process the command started is killed, also one that called `setsid`.
    """

    command: list[str]
    max_restarts: int = 3
    backoff: float = 1.0
    max_backoff: float = 60.0
    retry_on: StatusSet | str = DEFAULT_RETRY_ON
    no_retry_on: StatusSet | str = DEFAULT_NO_RETRY_ON
    env: dict[str, str] | None = None
    grace: float = DEFAULT_GRACE
    attempts: list[Attempt] = field(default_factory=list, init=False)
    stop_signal: int | None = field(default=None, init=False)

    def __post_init__(self):
        if not self.command:
            raise ValueError(
                f"{PROG}: no command to run; put the training command after '--', e.g. "
                f"{PROG} -- python train.py"
            )
        self.command = [os.fspath(part) for part in self.command]
        if isinstance(self.retry_on, str):
            self.retry_on = StatusSet(self.retry_on, "--retry-on")
        if isinstance(self.no_retry_on, str):
            self.no_retry_on = StatusSet(self.no_retry_on, "--no-retry-on")
        if not self.grace >= 0:
            raise ValueError(f"--grace {self.grace}: give 0 or more seconds")
        self._procs: list[Command] = []  # the current attempt's, by process id
        self._pending: list[int] = []  # signals not yet passed on
        self._stopped_at: float | None = None  # time.monotonic() of the stop signal

    def delay(self, restart: int) -> float:
        """Seconds to wait before restart number `restart` (1 for the first)."""
        return min(self.backoff * 2.0 ** min(restart - 1, 64), self.max_backoff)

    def retryable(self, status: int) -> bool:
        return not self.no_retry_on.matches(status) and self.retry_on.matches(status)

    def run(self) -> int:
        """Runs the command until it succeeds, must not be retried, or restarts run out.

        Returns:
            The exit status for the supervisor: the command's last exit status, or
            128 + N when it was killed by signal N (143 for a SIGTERM save).
        """
        handlers = self._install_handlers()
        try:
            return self._loop()
        finally:
            self._abandon()
            for signum, handler in handlers.items():
                signal.signal(signum, handler)

    # --- the restart loop, shared by one command and a job of several processes ---

    def _loop(self) -> int:
        started = time.monotonic()
        status = None
        for number in range(1, self.max_restarts + 2):
            if self.stop_signal is not None:
                break
            status = self._run_once(number)
            if status == 0:
                break
            if self.stop_signal is not None:
                _say(
                    f"{self._ended(status)} after {_signal_name(self.stop_signal)}; not restarting"
                )
                break
            why = self._why_last(number, status)
            if why is not None:
                self._report_last(why)
                break
            wait = self.delay(number)
            self._report_restart(number, status, wait)
            self._sleep(wait)
        code = 128 + self.stop_signal if status is None else exit_code(status)
        runs = "; ".join(_attempt_summary(a) for a in self.attempts if a.status is not None)
        _say(
            f"exiting with status {code} after {len(self.attempts)} attempt(s) in "
            f"{time.monotonic() - started:.1f} s" + (f": {runs}" if runs else "")
        )
        return code

    def _why_last(self, number: int, status: int) -> str | None:
        """Why attempt `number`, which failed with `status`, is the last; `None` to restart."""
        if not self.retryable(status):
            which = (
                f"--no-retry-on {self.no_retry_on.text}"
                if self.no_retry_on.matches(status)
                else f"--retry-on {self.retry_on.text}"
            )
            return f"{describe_status(status)} is not retried ({which})"
        if number > self.max_restarts:
            return (
                f"{describe_status(status)} and no restarts left "
                f"(--max-restarts {self.max_restarts})"
            )
        return None

    def _report_last(self, why: str) -> None:
        _say(f"{why}; stopping")

    def _report_restart(self, number: int, status: int, wait: float) -> None:
        _say(
            f"attempt {number + 1} of {self.max_restarts + 1} after {describe_status(status)}; "
            f"restarting in {wait:.1f} s"
        )

    def _ended(self, status: int) -> str:
        return f"the command ended with {describe_status(status)}"

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.stop_signal is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))

    # --- one attempt ---

    def _new_attempt(self, number: int) -> Attempt:
        attempt = Attempt(number=number, pid=None, started=time.time())
        self.attempts.append(attempt)
        return attempt

    def _attempt_env(self, number: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env or {})
        env["KERAS_RESUME_ATTEMPT"] = str(number)
        return env

    def _run_once(self, number: int) -> int:
        attempt = self._new_attempt(number)
        proc = self._spawn(self._attempt_env(number), _child_setup())
        if isinstance(proc, int):
            attempt.ended, attempt.status = time.time(), proc
            return proc
        self._procs, attempt.pid, attempt.pids = [proc], proc.pid, [proc.pid]
        logger.info(
            "%s: attempt %d started at %s: pid %d, %s",
            PROG,
            number,
            _clock(attempt.started),
            proc.pid,
            shlex.join(self.command),
        )
        self._forward()  # a signal that came while the command was being started
        status = self._wait(proc)
        attempt.ended, attempt.status = time.time(), status
        logger.info(
            "%s: attempt %d ended at %s after %.1f s with %s",
            PROG,
            number,
            _clock(attempt.ended),
            attempt.duration,
            describe_status(status),
        )
        self._kill_leftovers(proc.group)
        return status

    def _wait(self, proc: Command) -> int:
        """Waits for the command; `grace` s after a stop signal, SIGKILLs its tree."""
        killed = False
        while True:
            try:
                return proc.wait(timeout=_POLL_S * 4)
            except subprocess.TimeoutExpired:
                pass
            stopped = self._stopped_at
            if not killed and stopped is not None and time.monotonic() >= stopped + self.grace:
                self._kill_stragglers([proc], _signal_name(self.stop_signal))
                killed = True

    def _spawn(self, env: dict[str, str], setup, prefix: str = "", who: str = "the command"):
        """Starts the command (a `Command`); on failure says why and returns 127 or 126."""
        program = self.command[0]
        try:
            if not _use_guard():
                popen = subprocess.Popen(self.command, env=env, preexec_fn=setup)
                return Command(popen, popen.pid, guarded=False)
            failure, started = _start_guarded(self.command, env, setup, who)
            if failure is None:
                return started
            if failure == "notfound":
                raise FileNotFoundError(program)
            if failure == "permission":
                raise PermissionError(program)
            raise OSError(failure.partition(" ")[2] or failure)
        except FileNotFoundError:
            _say(
                f"{prefix}command not found: '{program}' (no such file, and not on PATH); "
                "check its spelling, or give its full path after '--'"
            )
            return 127
        except PermissionError:
            _say(
                f"{prefix}cannot execute '{program}' (permission denied); make it "
                f"executable (chmod +x) or run it through its interpreter, e.g. "
                f"{PROG} -- python {program}"
            )
            return 126
        except OSError as e:
            _say(f"{prefix}cannot execute '{program}': {e}; check that it is a program")
            return 126

    def _running(self) -> list[Command]:
        # returncode, not poll(): this runs in signal handlers too.
        return [proc for proc in self._procs if proc.returncode is None]

    def _abandon(self) -> None:
        """Kills what still runs when `run` leaves abnormally (an exception): no orphans."""
        running = [proc for proc in self._procs if proc.poll() is None]
        for proc in running:
            logger.error("%s: killing %s (pid %d) on the way out", PROG, self._who(proc), proc.pid)
            proc.kill_tree()
        for proc in running:
            proc.wait()
            self._kill_leftovers(proc.group)

    def _who(self, proc: Command) -> str:
        return "the command"

    # --- signals ---

    def _install_handlers(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}  # only the main thread can set signal handlers
        previous = {}
        for signum in FORWARDED_SIGNALS:
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _on_signal(self, signum, frame) -> None:
        first = self.stop_signal is None
        if first:
            self.stop_signal = signum
            self._stopped_at = time.monotonic()
        self._pending.append(signum)
        running = self._running()
        if running:
            again = "" if first else " again"
            _say(f"got {_signal_name(signum)}{again}; {self._passing_on(running)}")
        elif first:
            _say(f"got {_signal_name(signum)}; stopping, no restart")
        self._forward()

    def _passing_on(self, running: list[Command]) -> str:
        return (
            f"passing it to the command (pid {running[0].pid}), which gets {self.grace:g} s "
            "(--grace) to exit before SIGKILL; it will not be restarted"
        )

    def _forward(self) -> None:
        """Passes the pending signals to every running process (kept until one runs)."""
        running = self._running()
        if not running:
            return
        while self._pending:
            signum = self._pending.pop(0)
            for proc in running:
                proc.send_signal(signum)

    # --- what the command leaves behind ---

    def _kill_group(self, pgid: int) -> None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, AttributeError):
            pass

    def _kill_stragglers(self, running: list[Command], after: str = "SIGTERM") -> None:
        for proc in running:
            _say(
                f"{self._who(proc)} (pid {proc.pid}) still running {self.grace:g} s after "
                f"{after} (--grace {self.grace:g}); killing it and every process it started "
                "(SIGKILL)"
            )
            proc.kill_tree()

    def _kill_leftovers(self, pgid: int, who: str = "the command") -> None:
        """Kills what the command left running in its process group (its orphans).

        Call it only once every process of the attempt was waited for: it collects
        any exited child of this process.
        """
        if os.name != "posix":
            return
        members = _process_group_members(pgid)
        if members is None:  # no /proc: ask the kernel whether the group is empty
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            members = ["?"]
        if not members:
            return
        _say(
            f"killing {len(members)} process(es) {who} left running in its process "
            f"group {pgid} (pids {', '.join(map(str, members))})"
        )
        self._kill_group(pgid)
        deadline = time.monotonic() + _LEFTOVER_WAIT_S
        while time.monotonic() < deadline:
            _reap_orphans()
            members = _process_group_members(pgid)
            if not members:
                return
            time.sleep(0.02)
        logger.warning(
            "%s: processes %s of %s's process group %d outlived SIGKILL for %.0f s",
            PROG,
            members,
            who,
            pgid,
            _LEFTOVER_WAIT_S,
        )


@dataclass
class Launcher(Supervisor):
    """Runs N copies of a command as one multi-process job, and reruns the whole job.

    Each process gets the coordinator address, the number of processes and its own
    id in `KERAS_RESUME_COORDINATOR`, `KERAS_RESUME_NUM_PROCESSES` and
    `KERAS_RESUME_PROCESS_ID`, and in the variables `keras.distribution.initialize()`
    reads when called without arguments (`KERAS_DISTRIBUTION_JOB_ADDRESSES`,
    `KERAS_DISTRIBUTION_NUM_PROCESSES`, `KERAS_DISTRIBUTION_PROCESS_ID`). When any
    process fails, the others get SIGTERM, then SIGKILL `grace` seconds later (one
    stuck in a collective with the dead one never returns), and the job starts again
    under the same rules as `Supervisor`, on a fresh port unless `coordinator_port`
    is given. A SIGTERM or SIGINT to the launcher goes to every process, with the
    same grace; nothing is restarted after it.

    Example:

    ```python
    from keras_resume.supervisor import Launcher

    job = Launcher(["python", "train.py"], nprocs=2, max_restarts=5, grace=30)
    status = job.run()  # 0 when every process exited 0
    print([(a.number, a.process, a.status) for a in job.attempts])
    ```

    Args:
        nprocs: how many processes to start. Defaults to `2`.
        coordinator_port: the coordinator's port on 127.0.0.1, or `None` for a free
            port chosen before each attempt. Defaults to `None`.
        grace: seconds a process gets to exit after SIGTERM before SIGKILL.
            Defaults to `10.0`.
        **kwargs: `Supervisor`'s arguments.
    """

    nprocs: int = 2
    coordinator_port: int | None = None

    def __post_init__(self):
        super().__post_init__()
        check_nprocs(self.nprocs)
        if self.coordinator_port is not None:
            check_port(self.coordinator_port)
        self._ended_ids: set[int] = set()

    def _attempt_env(self, number: int, process_id: int = 0, coordinator: str = "") -> dict:
        env = super()._attempt_env(number)
        env.update(distribution_env(coordinator, self.nprocs, process_id))
        return env

    def _run_once(self, number: int) -> int:
        attempt = self._new_attempt(number)
        port = self.coordinator_port or free_port()
        coordinator = f"{COORDINATOR_HOST}:{port}"
        failed = self._start_all(number, coordinator)
        attempt.pids = [proc.pid for proc in self._procs]
        if failed is None:
            logger.info(
                "%s: attempt %d started at %s: %d processes (pids %s), coordinator %s: %s",
                PROG,
                number,
                _clock(attempt.started),
                self.nprocs,
                ", ".join(map(str, attempt.pids)),
                coordinator,
                shlex.join(self.command),
            )
            self._forward()  # a signal that came just before the start
        else:
            self._stop_the_rest(number, *failed, started=False)
        first = self._watch(number, failed)
        attempt.ended = time.time()
        attempt.process, attempt.status = first if first is not None else (None, 0)
        for i, proc in enumerate(self._procs):
            self._kill_leftovers(proc.group, who=f"[process {i}]")
        return attempt.status

    def _start_all(self, number: int, coordinator: str) -> tuple[int, int] | None:
        """Starts the N processes; the (process id, status) of one that cannot start."""
        self._procs, self._ended_ids = [], set()
        # Signals wait until all have started, so each one reaches every process.
        mask = _block_signals()
        try:
            for i in range(self.nprocs):
                env = self._attempt_env(number, i, coordinator)
                who = f"[process {i}]"
                proc = self._spawn(env, _child_setup(mask), prefix=f"{who} ", who=who)
                if isinstance(proc, int):
                    return i, proc
                self._procs.append(proc)
        finally:
            _restore_signals(mask)
        return None

    def _watch(self, number: int, first: tuple[int, int] | None) -> tuple[int, int] | None:
        """Waits for every process; after the first failure, stops the others.

        Returns:
            The process id and status of the first process that failed, or `None`
            when all exited 0.
        """
        kill_at = math.inf if first is None else time.monotonic() + self.grace
        stopping = False
        while True:
            for i, status in self._newly_ended():
                if status != 0 and first is None:
                    first = (i, status)
                    if self.stop_signal is None:
                        kill_at = self._stop_the_rest(number, i, status)
            running = self._running()
            if not running:
                return first
            if self.stop_signal is not None and not stopping:
                stopping = True  # the signal went to every process: give them the grace
                kill_at = min(kill_at, time.monotonic() + self.grace)
            if time.monotonic() >= kill_at:
                self._kill_stragglers(running)
                kill_at = math.inf
            time.sleep(_POLL_S)

    def _newly_ended(self) -> list[tuple[int, int]]:
        ended = []
        for i, proc in enumerate(self._procs):
            if i in self._ended_ids or proc.poll() is None:
                continue
            self._ended_ids.add(i)
            logger.info("%s: [process %d] ended with %s", PROG, i, describe_status(proc.returncode))
            ended.append((i, proc.returncode))
        return ended

    def _stop_the_rest(
        self, number: int, process_id: int, status: int, started: bool = True
    ) -> float:
        """Says what the failure of one process means, SIGTERMs the others; the SIGKILL time."""
        running = self._running()
        why = self._why_last(number, status)
        if why is None:
            then = (
                f"restarting the job (attempt {number + 1} of {self.max_restarts + 1}) in "
                f"{self.delay(number):.1f} s"
            )
        else:
            then = f"ending the job: {why}"
        others = f"stopping the other {len(running)} process(es) and " if running else ""
        what = "ended with {}" if started else "could not start: {}"
        _say(f"[process {process_id}] {what.format(describe_status(status))}; {others}{then}")
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        return time.monotonic() + self.grace

    def _report_last(self, why: str) -> None:
        pass  # _stop_the_rest said it when the process failed

    def _report_restart(self, number: int, status: int, wait: float) -> None:
        pass  # _stop_the_rest said it when the process failed

    def _ended(self, status: int) -> str:
        process = self.attempts[-1].process
        if process is None:
            return f"the job ended with {describe_status(status)}"
        return f"[process {process}] ended first, with {describe_status(status)},"

    def _who(self, proc: Command) -> str:
        return f"[process {self._procs.index(proc)}]"

    def _passing_on(self, running: list[Command]) -> str:
        pids = ", ".join(f"{self._who(proc)} pid {proc.pid}" for proc in running)
        return (
            f"passing it to {len(running)} process(es) ({pids}), which get {self.grace:g} s "
            "(--grace) to exit before SIGKILL; the job will not be restarted"
        )


def _non_negative(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text} is negative; give 0 or more")
        return value

    parse.__name__ = kind.__name__
    return parse


def _at_least_one(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a whole number; give how many processes to start, e.g. --nprocs 2"
        ) from None
    try:
        check_nprocs(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).split(" ", 1)[1]) from None
    return value


def _port(text):
    try:
        value = int(text)
    except ValueError:
        value = text
    try:
        check_port(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).split(" ", 1)[1]) from None
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds `keras-resume run`'s options and its command to an argument parser.

    Use it to register `run` as a subcommand of a larger command line; pair it with
    `run_command`.

    Example:

    ```python
    sub = parser.add_subparsers(dest="subcommand")
    run = sub.add_parser("run", help="rerun a training command that crashed")
    supervisor.add_arguments(run)
    run.set_defaults(func=supervisor.run_command)
    ```

    Args:
        parser: the parser to add to. Its description and epilog are set (with an
            example) unless it has its own.
    """
    if parser.description is None:
        parser.description = DESCRIPTION
    if parser.epilog is None:
        parser.epilog = EPILOG
    if parser.formatter_class is argparse.HelpFormatter:
        parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keeps the example
    parser.add_argument(
        "--max-restarts",
        type=_non_negative(int),
        default=3,
        metavar="N",
        help="start the command again at most N times (default: 3)",
    )
    parser.add_argument(
        "--backoff",
        type=_non_negative(float),
        default=1.0,
        metavar="SECONDS",
        help="wait before the first restart, doubled for each next one (default: 1)",
    )
    parser.add_argument(
        "--max-backoff",
        type=_non_negative(float),
        default=60.0,
        metavar="SECONDS",
        help="the longest wait between restarts (default: 60)",
    )
    parser.add_argument(
        "--retry-on",
        default=None,
        metavar="CODES",
        help=f"statuses that restart the command (default: {DEFAULT_RETRY_ON}: any failure "
        "not in --no-retry-on); see the list syntax below",
    )
    parser.add_argument(
        "--no-retry-on",
        default=None,
        metavar="CODES",
        help=f"statuses that stop at once, checked before --retry-on (default: "
        f"{DEFAULT_NO_RETRY_ON}: usage error, not executable, command not found)",
    )
    parser.add_argument(
        "--nprocs",
        type=_at_least_one,
        default=None,
        metavar="N",
        help="start N copies of the command as one multi-process job and restart all of "
        "them when one fails (default: one command, no job variables)",
    )
    parser.add_argument(
        "--coordinator-port",
        type=_port,
        default=None,
        metavar="PORT",
        help="with --nprocs: the coordinator's port on 127.0.0.1 (default: a free port, "
        "chosen again for each attempt)",
    )
    parser.add_argument(
        "--grace",
        type=_non_negative(float),
        default=None,
        metavar="SECONDS",
        help=f"how long the command may take to exit after this supervisor passed it a "
        f"SIGTERM or SIGINT (with --nprocs: also after another process failed) before it "
        f"and every process it started get SIGKILL; make it longer than a checkpoint "
        f"save (default: {DEFAULT_GRACE:g})",
    )
    parser.add_argument(
        "training_command",  # not "command": a CLI's subcommand dest is often called that
        nargs=argparse.REMAINDER,
        metavar="command",
        help="the training command and its arguments, after '--'",
    )


def _status_sets(args) -> tuple[StatusSet, StatusSet]:
    retry_text = args.retry_on if args.retry_on is not None else DEFAULT_RETRY_ON
    no_retry_text = args.no_retry_on if args.no_retry_on is not None else DEFAULT_NO_RETRY_ON
    retry = StatusSet(retry_text, "--retry-on")
    no_retry = StatusSet(no_retry_text, "--no-retry-on")
    both = retry.statuses & no_retry.statuses
    if both and args.no_retry_on is None:
        # Naming a status in --retry-on beats the default --no-retry-on list.
        no_retry.statuses -= both
        no_retry.text = ",".join(str(s) for s in sorted(no_retry.statuses)) or "none"
    elif both:
        named = ", ".join(str(s) for s in sorted(both))
        raise ValueError(
            f"--retry-on '{retry.text}' and --no-retry-on '{no_retry.text}' both name {named}; "
            "name each status in one of them"
        )
    return retry, no_retry


def run_command(args: argparse.Namespace) -> int:
    """Runs `keras-resume run` from parsed arguments; returns the exit status.

    Args:
        args: the namespace of a parser that `add_arguments` set up.

    Returns:
        0 when the command succeeded (with `--nprocs`: every process); its last exit
        status (128 + N for death by signal N; with `--nprocs`, the status of the
        first process that failed) otherwise; 2 for a usage error.
    """
    command = list(args.training_command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        sys.stderr.write(
            f"{PROG}: error: no command to run; put the training command after '--', e.g.\n"
            f"  {PROG} --max-restarts 3 -- python train.py\n"
        )
        return 2
    try:
        retry, no_retry = _status_sets(args)
    except ValueError as e:
        sys.stderr.write(f"{PROG}: error: {e}\n")
        return 2
    nprocs = getattr(args, "nprocs", None)
    job_options = [
        name
        for name, value in (("--coordinator-port", getattr(args, "coordinator_port", None)),)
        if value is not None
    ]
    if nprocs is None and job_options:
        named = " and ".join(job_options)
        verb = "applies" if len(job_options) == 1 else "apply"
        sys.stderr.write(
            f"{PROG}: error: {named} {verb} to a multi-process job only; add --nprocs N "
            f"(e.g. --nprocs 2), or leave {named} out\n"
        )
        return 2
    grace = getattr(args, "grace", None)
    options = dict(
        grace=DEFAULT_GRACE if grace is None else grace,
        max_restarts=args.max_restarts,
        backoff=args.backoff,
        max_backoff=args.max_backoff,
        retry_on=retry,
        no_retry_on=no_retry,
    )
    if nprocs is None:
        return Supervisor(command, **options).run()
    if nprocs == 1:
        # One process: the single-command supervisor, with the job's variables.
        port = args.coordinator_port or free_port()
        env = distribution_env(f"{COORDINATOR_HOST}:{port}", 1, 0)
        return Supervisor(command, env=env, **options).run()
    launcher = Launcher(command, nprocs=nprocs, coordinator_port=args.coordinator_port, **options)
    return launcher.run()


def main(argv: list[str] | None = None) -> int:
    """The `keras-resume run` command line on its own (`python -m keras_resume.supervisor`).

    Example:

    ```python
    from keras_resume import supervisor

    status = supervisor.main(["--max-restarts", "2", "--", "python", "train.py"])
    ```

    Args:
        argv: the arguments, without the program name. Defaults to `sys.argv[1:]`.
    """
    parser = argparse.ArgumentParser(prog=PROG)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
