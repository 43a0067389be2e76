"""`keras-resume run`: reruns a training command that crashed, until it finishes.

A training script that uses `FullStateResume` continues where it stopped when it
is started again; this supervisor is the loop around it. It starts the command,
waits, and starts it again when it died of a signal (an out-of-memory kill, a
SIGKILL) or exited with a retryable status, with exponential backoff, up to
`--max-restarts` times. A SIGTERM or SIGINT sent to the supervisor is passed to
the command (keras-resume then saves and exits with status 143) and ends the
loop: nothing is restarted.

    keras-resume run --max-restarts 5 -- python train.py --epochs 30
    python -m keras_resume.supervisor -- python train.py

This module uses only the standard library, so the supervising process stays
small: it imports neither Keras nor TensorFlow.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

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

DESCRIPTION = """\
Run a training command and start it again when it crashes. The command resumes
by itself: a script that uses keras_resume.FullStateResume continues from its
newest backup. Restarts after death by a signal (an out-of-memory kill), exit
status 137 or 143 (a SIGTERM save) and any other failure except 2, 126 and 127,
with exponential backoff. A SIGTERM or SIGINT sent to this process is passed to
the command, which saves and exits 143; nothing is restarted after it.
"""
EPILOG = """\
example:
  keras-resume run --max-restarts 5 --backoff 10 -- python train.py --dir runs/exp1

  Restarts `python train.py --dir runs/exp1` up to 5 times, waiting 10 s, 20 s,
  40 s, 60 s, 60 s before the restarts. Exits with the command's last status
  (128 + N when it was killed by signal N).

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
            `None` while it runs.
    """

    number: int
    pid: int | None
    started: float
    ended: float | None = None
    status: int | None = None

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


def _child_setup():
    """The function run in the child between fork and exec, or `None` off POSIX.

    It puts the command in a process group of its own, so that a Ctrl-C in the
    terminal reaches it once (through the supervisor) and what it leaves behind can
    be found, and, on Linux, asks the kernel to SIGKILL it if the supervisor dies
    (so even a SIGKILLed supervisor leaves no orphan).
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
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            if os.getppid() != parent:  # the supervisor died before the prctl
                os._exit(128 + int(signal.SIGKILL))

    return setup


@dataclass
class Supervisor:
    """Runs a command, and runs it again after a retryable failure.

    Use it from Python where `keras-resume run` is not a fit (a launcher of your
    own); the command line builds one of these.

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
    """

    command: list[str]
    max_restarts: int = 3
    backoff: float = 1.0
    max_backoff: float = 60.0
    retry_on: StatusSet | str = DEFAULT_RETRY_ON
    no_retry_on: StatusSet | str = DEFAULT_NO_RETRY_ON
    env: dict[str, str] | None = None
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
        self._proc: subprocess.Popen | None = None
        self._pending: list[int] = []

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
            proc = self._proc
            if proc is not None and proc.poll() is None:
                # Leaving abnormally (an exception above): leave no child behind.
                logger.error("%s: killing the command (pid %d) on the way out", PROG, proc.pid)
                self._kill_group(proc.pid)
                proc.wait()
                self._kill_leftovers(proc.pid)
            for signum, handler in handlers.items():
                signal.signal(signum, handler)

    def _loop(self) -> int:
        total = self.max_restarts + 1
        started = time.monotonic()
        status = None
        for number in range(1, total + 1):
            if self.stop_signal is not None:
                break
            status = self._run_once(number)
            if status == 0:
                break
            if self.stop_signal is not None:
                _say(
                    f"the command ended with {describe_status(status)} after "
                    f"{_signal_name(self.stop_signal)}; not restarting"
                )
                break
            if not self.retryable(status):
                which = (
                    f"--no-retry-on {self.no_retry_on.text}"
                    if self.no_retry_on.matches(status)
                    else f"--retry-on {self.retry_on.text}"
                )
                _say(f"{describe_status(status)} is not retried ({which}); stopping")
                break
            if number == total:
                _say(
                    f"{describe_status(status)} and no restarts left "
                    f"(--max-restarts {self.max_restarts}); stopping"
                )
                break
            wait = self.delay(number)
            _say(
                f"attempt {number + 1} of {total} after {describe_status(status)}; "
                f"restarting in {wait:.1f} s"
            )
            self._sleep(wait)
        if status is None:  # stopped by a signal before the first start
            code = 128 + self.stop_signal
        else:
            code = exit_code(status)
        runs = "; ".join(
            f"#{a.number} {a.status} ({a.duration:.1f} s)"
            for a in self.attempts
            if a.status is not None
        )
        _say(
            f"exiting with status {code} after {len(self.attempts)} attempt(s) in "
            f"{time.monotonic() - started:.1f} s" + (f": {runs}" if runs else "")
        )
        return code

    def _run_once(self, number: int) -> int:
        env = dict(os.environ)
        env.update(self.env or {})
        env["KERAS_RESUME_ATTEMPT"] = str(number)
        attempt = Attempt(number=number, pid=None, started=time.time())
        self.attempts.append(attempt)
        try:
            proc = subprocess.Popen(self.command, env=env, preexec_fn=_child_setup())
        except FileNotFoundError:
            attempt.ended, attempt.status = time.time(), 127
            _say(
                f"command not found: '{self.command[0]}' (no such file, and not on PATH); "
                "check its spelling, or give its full path after '--'"
            )
            return 127
        except PermissionError:
            attempt.ended, attempt.status = time.time(), 126
            _say(
                f"cannot execute '{self.command[0]}' (permission denied); make it "
                f"executable (chmod +x) or run it through its interpreter, e.g. "
                f"{PROG} -- python {self.command[0]}"
            )
            return 126
        except OSError as e:
            attempt.ended, attempt.status = time.time(), 126
            _say(f"cannot execute '{self.command[0]}': {e}; check that it is a program")
            return 126
        self._proc, attempt.pid = proc, proc.pid
        logger.info(
            "%s: attempt %d started at %s: pid %d, %s",
            PROG,
            number,
            time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(attempt.started)),
            proc.pid,
            shlex.join(self.command),
        )
        self._forward()  # a signal that came while the command was being started
        status = proc.wait()
        attempt.ended, attempt.status = time.time(), status
        logger.info(
            "%s: attempt %d ended at %s after %.1f s with %s",
            PROG,
            number,
            time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(attempt.ended)),
            attempt.duration,
            describe_status(status),
        )
        self._kill_leftovers(proc.pid)
        return status

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.stop_signal is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))

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
        self._pending.append(signum)
        proc = self._proc
        if proc is not None and proc.returncode is None:
            again = "" if first else " again"
            _say(
                f"got {_signal_name(signum)}{again}; passing it to the command (pid {proc.pid}) "
                "and waiting for it to exit; it will not be restarted"
            )
        elif first:
            _say(f"got {_signal_name(signum)}; stopping, no restart")
        self._forward()

    def _forward(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        while self._pending:
            signum = self._pending.pop(0)
            try:
                os.kill(proc.pid, signum)
            except ProcessLookupError:
                return

    def _kill_group(self, pgid: int) -> None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, AttributeError):
            pass

    def _kill_leftovers(self, pgid: int) -> None:
        """Kills what the command left running in its process group (its orphans)."""
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
            f"killing {len(members)} process(es) the command left running in its process "
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
            "%s: processes %s of the command's process group %d outlived SIGKILL for %.0f s",
            PROG,
            members,
            pgid,
            _LEFTOVER_WAIT_S,
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
        0 when the command succeeded; its last exit status (128 + N for death by
        signal N) otherwise; 2 for a usage error.
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
    supervisor = Supervisor(
        command,
        max_restarts=args.max_restarts,
        backoff=args.backoff,
        max_backoff=args.max_backoff,
        retry_on=retry,
        no_retry_on=no_retry,
    )
    return supervisor.run()


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
