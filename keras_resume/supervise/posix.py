"""POSIX process plumbing for `keras-resume run`: starting a command in a process
group of its own, under its guard (`guard.py`, Linux), passing signals to it, and
killing what it and its tree leave behind. Standard library only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from keras_resume.supervise.messages import PROG, logger, say
from keras_resume.supervise.statuses import describe_status

# Signals the supervisor passes on to the command; each one also ends the loop.
FORWARDED_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name)
)
# The process between the supervisor and each command (Linux): see guard.py.
GUARD = Path(__file__).with_name("guard.py")
POLL_S = 0.05  # how often a running process is checked
_KILL_TREE = getattr(signal, "SIGUSR1", None)  # asks the guard to SIGKILL the command's tree
_PR_SET_PDEATHSIG = 1
_LEFTOVER_WAIT_S = 10.0


def send(pid: int, signum: int) -> None:
    """`os.kill`, quiet when the process has just exited."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # it has just exited


def block_signals():
    """Holds the forwarded signals back (their handlers run at `restore_signals`)."""
    if not hasattr(signal, "pthread_sigmask"):
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)


def restore_signals(mask) -> None:
    if mask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def process_group_members(pgid: int) -> list[int] | None:
    """Live (non-zombie) processes in a process group, from /proc; `None` without /proc."""
    # guard.py is POSIX-only (it imports resource and needs SIGUSR1): imported here only.
    from keras_resume.supervise.guard import live_processes

    try:
        return [pid for pid, _, group in live_processes() if group == pgid]
    except OSError:
        return None


def reap_orphans() -> None:
    """Collects orphans handed to this process (when it is PID 1 in a container)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def child_setup(mask=None):
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


class Command:
    """A started command, as the supervisor sees it: through its guard on Linux.

    `pid` is the command's own; `group` its process group (the guard's pid when
    guarded); `who` how messages name it ("the command", "[process 1]"). Signals go
    through the guard, which passes them on; `kill_tree` SIGKILLs the command and
    every process it started.
    """

    def __init__(self, popen: subprocess.Popen, pid: int, guarded: bool, who: str = "the command"):
        self.popen, self.pid, self.guarded, self.who = popen, pid, guarded, who
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
            send(self.popen.pid, signum)

    def kill_tree(self) -> None:
        if self.guarded and self.popen.poll() is None:
            send(self.popen.pid, _KILL_TREE)
        else:
            kill_group(self.group)


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
        return None, Command(popen, int(line[4:]), guarded=True, who=who)
    popen.wait()
    return line or f"oserror its guard ended with {describe_status(popen.returncode)}", None


def _start(command: list[str], env: dict[str, str], setup, who: str) -> Command:
    """Starts the command, under its guard where there is one; raises `OSError`."""
    if not _use_guard():
        popen = subprocess.Popen(command, env=env, preexec_fn=setup)
        return Command(popen, popen.pid, guarded=False, who=who)
    failure, started = _start_guarded(command, env, setup, who)
    if failure is None:
        return started
    if failure == "notfound":
        raise FileNotFoundError(command[0])
    if failure == "permission":
        raise PermissionError(command[0])
    raise OSError(failure.partition(" ")[2] or failure)


def spawn(
    command: list[str], env: dict[str, str], setup, prefix: str = "", who: str = "the command"
):
    """Starts the command (a `Command`); on failure says why and returns 127 or 126."""
    program = command[0]
    try:
        return _start(command, env, setup, who)
    except FileNotFoundError:
        say(
            f"{prefix}command not found: '{program}' (no such file, and not on PATH); "
            "check its spelling, or give its full path after '--'"
        )
        return 127
    except PermissionError:
        say(
            f"{prefix}cannot execute '{program}' (permission denied); make it "
            f"executable (chmod +x) or run it through its interpreter, e.g. "
            f"{PROG} -- python {program}"
        )
        return 126
    except OSError as e:
        say(f"{prefix}cannot execute '{program}': {e}; check that it is a program")
        return 126


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, AttributeError):
        pass


def kill_stragglers(running: list[Command], grace: float, after: str = "SIGTERM") -> None:
    """SIGKILLs the tree of each command still running `grace` s after a signal."""
    for proc in running:
        say(
            f"{proc.who} (pid {proc.pid}) still running {grace:g} s after "
            f"{after} (--grace {grace:g}); killing it and every process it started "
            "(SIGKILL)"
        )
        proc.kill_tree()


def kill_leftovers(pgid: int, who: str = "the command") -> None:
    """Kills what the command left running in its process group (its orphans).

    Call it only once every process of the attempt was waited for: it collects
    any exited child of this process.
    """
    if os.name != "posix":
        return
    members = process_group_members(pgid)
    if members is None:  # no /proc: ask the kernel whether the group is empty
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        members = ["?"]
    if not members:
        return
    say(
        f"killing {len(members)} process(es) {who} left running in its process "
        f"group {pgid} (pids {', '.join(map(str, members))})"
    )
    kill_group(pgid)
    deadline = time.monotonic() + _LEFTOVER_WAIT_S
    while time.monotonic() < deadline:
        reap_orphans()
        members = process_group_members(pgid)
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
