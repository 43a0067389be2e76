"""The guard between `keras-resume run` and its command: nothing the command starts
outlives the supervisor (Linux).

The supervisor starts `python guard.py REPORT_FD SUPERVISOR_PID WHO -- COMMAND...`
in a process group of its own. The guard makes itself a child subreaper
(`PR_SET_CHILD_SUBREAPER`): every process of the command's tree whose parent
dies, even one that left the process group with `setsid`, is handed to the guard,
never to init, so the guard can always find the whole tree. It then:

- starts the command and writes `pid N` (or why it could not start it) to REPORT_FD;
- passes SIGTERM, SIGINT and SIGHUP on to the command;
- on SIGUSR1 from the supervisor (its grace ran out) SIGKILLs the whole tree;
- when the supervisor dies, even of SIGKILL, gets SIGUSR2 (`PR_SET_PDEATHSIG`, and
  a check of its parent besides) and SIGKILLs the whole tree;
- when the command ends, SIGKILLs what it left running and exits with the command's
  status (dying of the same signal when a signal killed it).

The command itself gets `PR_SET_PDEATHSIG` SIGKILL, so a guard killed outright
takes the command with it. Standard library only, run as a script
(`python -I -S guard.py`, see `posix.py`): the supervisor stays small, and this
file needs no installed package, so it imports nothing from keras_resume.
"""

import ctypes
import os
import resource
import signal
import subprocess
import sys
import time

PROG = "keras-resume run"
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
KILL_TREE = signal.SIGUSR1  # from the supervisor: SIGKILL everything now
PARENT_DIED = signal.SIGUSR2  # the guard's PR_SET_PDEATHSIG
WATCHED = {*FORWARDED, signal.SIGCHLD, KILL_TREE, PARENT_DIED}
_TREE_WAIT_S = 10.0  # how long killing the tree may take before the guard gives up
_CHECK_S = 0.5  # how often the guard looks at its parent without being woken


def _say(message: str) -> None:
    try:
        os.write(2, f"{PROG}: {message}\n".encode(errors="replace"))
    except OSError:
        pass


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl({option}): {os.strerror(error)}")


def live_processes() -> list[tuple[int, int, int]]:
    """`(pid, parent pid, process group)` of every live (non-zombie) process, from /proc.

    Raises `OSError` where there is no /proc. The supervisor uses it too (posix.py).
    """
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
        if len(fields) > 2 and fields[0] not in ("Z", "X"):
            found.append((int(name), int(fields[1]), int(fields[2])))
    return found


def descendants(root: int) -> list[int]:
    """The live (non-zombie) descendants of process `root`, from /proc."""
    children: dict[int, list[int]] = {}
    for pid, parent, _ in live_processes():
        children.setdefault(parent, []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Guard:
    def __init__(self, command: list[str], supervisor: int, who: str):
        self.command, self.supervisor, self.who = command, supervisor, who
        self.me = os.getpid()
        self.proc: subprocess.Popen | None = None
        self.status: int | None = None  # the command's wait status, once reaped

    def reap(self) -> None:
        """Collects every exited child; keeps the command's status."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.proc is not None and pid == self.proc.pid:
                self.status = status
                self.proc.returncode = os.waitstatus_to_exitcode(status)

    def kill_tree(self) -> list[int]:
        """SIGKILLs every descendant until none is left; returns their pids."""
        killed: list[int] = []
        deadline = time.monotonic() + _TREE_WAIT_S
        while True:
            pids = descendants(self.me)
            if not pids or time.monotonic() > deadline:
                self.reap()
                return killed
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                if pid not in killed:
                    killed.append(pid)
            self.reap()
            time.sleep(0.005)

    def orphaned(self) -> bool:
        return os.getppid() != self.supervisor

    def run(self, report_fd: int) -> int:
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        _prctl(PR_SET_PDEATHSIG, int(PARENT_DIED))
        if self.orphaned():  # the supervisor died before the prctl
            return 128 + int(signal.SIGKILL)
        guard = self.me

        def setup():  # in the command, between fork and exec
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            _prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
            if os.getppid() != guard:
                os._exit(128 + int(signal.SIGKILL))

        with os.fdopen(report_fd, "w") as report:
            try:
                self.proc = subprocess.Popen(self.command, preexec_fn=setup)
            except FileNotFoundError:
                report.write("notfound\n")
                return 127
            except PermissionError:
                report.write("permission\n")
                return 126
            except OSError as e:
                report.write(f"oserror {e}\n")
                return 126
            report.write(f"pid {self.proc.pid}\n")
        return self.watch()

    def watch(self) -> int:
        while self.status is None:
            info = signal.sigtimedwait(WATCHED, _CHECK_S)
            self.reap()
            signum = info.si_signo if info is not None else None
            if signum in FORWARDED and self.status is None:
                self.proc.send_signal(signum)
            elif signum == KILL_TREE and info.si_pid == self.supervisor:
                self.kill_tree()
            if (signum == PARENT_DIED or info is None) and self.orphaned():
                killed = self.kill_tree()
                _say(
                    f"the supervisor (pid {self.supervisor}) died; killed {self.who} and the "
                    f"{len(killed)} process(es) of its tree (pids {', '.join(map(str, killed))})"
                )
                return 128 + int(signal.SIGKILL)
        left = descendants(self.me)
        if left:
            _say(
                f"killing {len(left)} process(es) {self.who} left running "
                f"(pids {', '.join(map(str, left))})"
            )
            self.kill_tree()
        return self.exit_as_the_command()

    def exit_as_the_command(self) -> int:
        code = os.waitstatus_to_exitcode(self.status)
        if code >= 0:
            return code
        signum = -code  # die of the same signal, so the supervisor sees how it ended
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        except (ValueError, OSError):
            pass
        if signum not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        os.kill(self.me, signum)
        return 128 + signum  # a signal that does not end a process


def main(argv: list[str]) -> int:
    report_fd, supervisor, who, dashes, *command = argv
    if dashes != "--" or not command:
        _say("guard: usage: guard.py REPORT_FD SUPERVISOR_PID WHO -- COMMAND...")
        return 2
    return Guard(command, int(supervisor), who).run(int(report_fd))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
