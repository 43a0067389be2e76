"""The restart loop of `keras-resume run`: `Supervisor` runs a command, and runs it
again after a retryable failure, with exponential backoff, until it succeeds, must
not be retried, or restarts run out; a SIGTERM or SIGINT it gets is passed on and
ends the loop. What one attempt runs is a `Runner`: `OneCommand` here, the
N-process job in `launcher.py`. Standard library only."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

from keras_resume.supervise import posix
from keras_resume.supervise.messages import PROG, clock, logger, say
from keras_resume.supervise.statuses import (
    DEFAULT_NO_RETRY_ON,
    DEFAULT_RETRY_ON,
    StatusSet,
    describe_status,
    exit_code,
    signal_name,
)

DEFAULT_GRACE = 10.0


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


def _attempt_summary(attempt: Attempt) -> str:
    by = f" by process {attempt.process}" if attempt.process is not None else ""
    return f"#{attempt.number} {attempt.status}{by} ({attempt.duration:.1f} s)"


class Runner:
    """What the restart loop runs in one attempt, and how messages speak of it.

    A runner starts its processes into `procs` (the current attempt's, by process id),
    waits for them and cleans up after them (`run_attempt`); the loop decides whether
    to restart, and passes signals to `running()`. It reads the loop it belongs to
    (`self.loop`, a `Supervisor`) for the command, the grace and the stop signal.
    """

    # Whether the runner says itself why a failed attempt is the last or is restarted
    # (a job says it when its first process fails, as it stops the others).
    announces_verdicts = False

    def __init__(self, loop: Supervisor):
        self.loop = loop
        self.procs: list[posix.Command] = []

    def running(self) -> list[posix.Command]:
        # returncode, not poll(): this runs in signal handlers too.
        return [proc for proc in self.procs if proc.returncode is None]

    def run_attempt(self, attempt: Attempt) -> int:
        """Starts, waits for and cleans up after one attempt; returns its status."""
        raise NotImplementedError

    def ended(self, attempt: Attempt, status: int) -> str:
        """How the attempt ended, as the start of a sentence."""
        raise NotImplementedError

    def passing_on(self, running: list[posix.Command]) -> str:
        """What happens to a stop signal that reaches `running`."""
        raise NotImplementedError


class OneCommand(Runner):
    """Runs the command once, in a process group of its own, under its guard."""

    def run_attempt(self, attempt: Attempt) -> int:
        loop, number = self.loop, attempt.number
        proc = posix.spawn(loop.command, loop._attempt_env(number), posix.child_setup())
        if isinstance(proc, int):
            attempt.ended, attempt.status = time.time(), proc
            return proc
        self.procs, attempt.pid, attempt.pids = [proc], proc.pid, [proc.pid]
        logger.info(
            "%s: attempt %d started at %s: pid %d, %s",
            PROG,
            number,
            clock(attempt.started),
            proc.pid,
            shlex.join(loop.command),
        )
        loop._forward()  # a signal that came while the command was being started
        status = self._wait(proc)
        attempt.ended, attempt.status = time.time(), status
        logger.info(
            "%s: attempt %d ended at %s after %.1f s with %s",
            PROG,
            number,
            clock(attempt.ended),
            attempt.duration,
            describe_status(status),
        )
        posix.kill_leftovers(proc.group)
        return status

    def _wait(self, proc: posix.Command) -> int:
        """Waits for the command; `grace` s after a stop signal, SIGKILLs its tree."""
        loop, killed = self.loop, False
        while True:
            try:
                return proc.wait(timeout=posix.POLL_S * 4)
            except subprocess.TimeoutExpired:
                pass
            stopped = loop._stopped_at
            if not killed and stopped is not None and time.monotonic() >= stopped + loop.grace:
                posix.kill_stragglers([proc], loop.grace, signal_name(loop.stop_signal))
                killed = True

    def ended(self, attempt: Attempt, status: int) -> str:
        return f"the command ended with {describe_status(status)}"

    def passing_on(self, running: list[posix.Command]) -> str:
        return (
            f"passing it to the command (pid {running[0].pid}), which gets "
            f"{self.loop.grace:g} s (--grace) to exit before SIGKILL; it will not be restarted"
        )


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
        self._runner = self._new_runner()
        self._pending: list[int] = []  # signals not yet passed on
        self._stopped_at: float | None = None  # time.monotonic() of the stop signal

    def _new_runner(self) -> Runner:
        """What each attempt runs: the one command."""
        return OneCommand(self)

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

    # --- the restart loop ---

    def _loop(self) -> int:
        started = time.monotonic()
        status = None
        for number in range(1, self.max_restarts + 2):
            if self.stop_signal is not None:
                break
            attempt = Attempt(number=number, pid=None, started=time.time())
            self.attempts.append(attempt)
            status = self._runner.run_attempt(attempt)
            if status == 0:
                break
            if self.stop_signal is not None:
                said = self._runner.ended(attempt, status)
                say(f"{said} after {signal_name(self.stop_signal)}; not restarting")
                break
            why = self._why_last(number, status)
            if not self._runner.announces_verdicts:
                self._announce(number, status, why)
            if why is not None:
                break
            self._sleep(self.delay(number))
        code = 128 + self.stop_signal if status is None else exit_code(status)
        runs = "; ".join(_attempt_summary(a) for a in self.attempts if a.status is not None)
        say(
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

    def _announce(self, number: int, status: int, why: str | None) -> None:
        """Says that attempt `number` is the last (`why`), or when the next one starts."""
        if why is not None:
            say(f"{why}; stopping")
            return
        say(
            f"attempt {number + 1} of {self.max_restarts + 1} after {describe_status(status)}; "
            f"restarting in {self.delay(number):.1f} s"
        )

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.stop_signal is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))

    def _attempt_env(self, number: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env or {})
        env["KERAS_RESUME_ATTEMPT"] = str(number)
        return env

    def _abandon(self) -> None:
        """Kills what still runs when `run` leaves abnormally (an exception): no orphans."""
        running = [proc for proc in self._runner.procs if proc.poll() is None]
        for proc in running:
            logger.error("%s: killing %s (pid %d) on the way out", PROG, proc.who, proc.pid)
            proc.kill_tree()
        for proc in running:
            proc.wait()
            posix.kill_leftovers(proc.group)

    # --- signals ---

    def _install_handlers(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}  # only the main thread can set signal handlers
        previous = {}
        for signum in posix.FORWARDED_SIGNALS:
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _on_signal(self, signum, frame) -> None:
        first = self.stop_signal is None
        if first:
            self.stop_signal = signum
            self._stopped_at = time.monotonic()
        self._pending.append(signum)
        running = self._runner.running()
        if running:
            again = "" if first else " again"
            say(f"got {signal_name(signum)}{again}; {self._runner.passing_on(running)}")
        elif first:
            say(f"got {signal_name(signum)}; stopping, no restart")
        self._forward()

    def _forward(self) -> None:
        """Passes the pending signals to every running process (kept until one runs)."""
        running = self._runner.running()
        if not running:
            return
        while self._pending:
            signum = self._pending.pop(0)
            for proc in running:
                proc.send_signal(signum)
