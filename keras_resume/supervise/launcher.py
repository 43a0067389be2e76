"""The multi-process launcher of `keras-resume run --nprocs N`: `Launcher` is the
restart loop (`Supervisor`) with a `ProcessJob` as its runner, which starts N copies
of the command, each told where it stands in the job, and stops the others when one
fails. Standard library only."""

from __future__ import annotations

import math
import shlex
import signal
import socket
import time
from dataclasses import dataclass

from keras_resume.supervise import posix
from keras_resume.supervise.messages import PROG, clock, logger, say
from keras_resume.supervise.restart import Attempt, Runner, Supervisor
from keras_resume.supervise.statuses import describe_status

COORDINATOR_HOST = "127.0.0.1"


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


class ProcessJob(Runner):
    """One attempt of a `Launcher`'s job: N processes, and the first one to fail."""

    announces_verdicts = True  # when the first process fails, as the others are stopped

    def __init__(self, loop: Launcher):
        super().__init__(loop)
        self._ended_ids: set[int] = set()

    def run_attempt(self, attempt: Attempt) -> int:
        loop, number = self.loop, attempt.number
        port = loop.coordinator_port or free_port()
        coordinator = f"{COORDINATOR_HOST}:{port}"
        failed = self._start_all(number, coordinator)
        attempt.pids = [proc.pid for proc in self.procs]
        if failed is None:
            logger.info(
                "%s: attempt %d started at %s: %d processes (pids %s), coordinator %s: %s",
                PROG,
                number,
                clock(attempt.started),
                loop.nprocs,
                ", ".join(map(str, attempt.pids)),
                coordinator,
                shlex.join(loop.command),
            )
            loop._forward()  # a signal that came just before the start
        else:
            self._stop_the_rest(number, *failed, started=False)
        first = self._watch(number, failed)
        attempt.ended = time.time()
        attempt.process, attempt.status = first if first is not None else (None, 0)
        for proc in self.procs:
            posix.kill_leftovers(proc.group, who=proc.who)
        return attempt.status

    def _start_all(self, number: int, coordinator: str) -> tuple[int, int] | None:
        """Starts the N processes; the (process id, status) of one that cannot start."""
        loop = self.loop
        self.procs, self._ended_ids = [], set()
        # Signals wait until all have started, so each one reaches every process.
        mask = posix.block_signals()
        try:
            for i in range(loop.nprocs):
                env = loop._attempt_env(number)
                env.update(distribution_env(coordinator, loop.nprocs, i))
                who = f"[process {i}]"
                setup = posix.child_setup(mask)
                proc = posix.spawn(loop.command, env, setup, prefix=f"{who} ", who=who)
                if isinstance(proc, int):
                    return i, proc
                self.procs.append(proc)
        finally:
            posix.restore_signals(mask)
        return None

    def _watch(self, number: int, first: tuple[int, int] | None) -> tuple[int, int] | None:
        """Waits for every process; after the first failure, stops the others.

        Returns:
            The process id and status of the first process that failed, or `None`
            when all exited 0.
        """
        loop = self.loop
        kill_at = math.inf if first is None else time.monotonic() + loop.grace
        stopping = False
        while True:
            for i, status in self._newly_ended():
                if status != 0 and first is None:
                    first = (i, status)
                    if loop.stop_signal is None:
                        kill_at = self._stop_the_rest(number, i, status)
            running = self.running()
            if not running:
                return first
            if loop.stop_signal is not None and not stopping:
                stopping = True  # the signal went to every process: give them the grace
                kill_at = min(kill_at, time.monotonic() + loop.grace)
            if time.monotonic() >= kill_at:
                posix.kill_stragglers(running, loop.grace)
                kill_at = math.inf
            time.sleep(posix.POLL_S)

    def _newly_ended(self) -> list[tuple[int, int]]:
        ended = []
        for i, proc in enumerate(self.procs):
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
        loop, running = self.loop, self.running()
        why = loop._why_last(number, status)
        if why is None:
            then = (
                f"restarting the job (attempt {number + 1} of {loop.max_restarts + 1}) in "
                f"{loop.delay(number):.1f} s"
            )
        else:
            then = f"ending the job: {why}"
        others = f"stopping the other {len(running)} process(es) and " if running else ""
        what = "ended with {}" if started else "could not start: {}"
        say(f"[process {process_id}] {what.format(describe_status(status))}; {others}{then}")
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        return time.monotonic() + loop.grace

    def ended(self, attempt: Attempt, status: int) -> str:
        if attempt.process is None:
            return f"the job ended with {describe_status(status)}"
        return f"[process {attempt.process}] ended first, with {describe_status(status)},"

    def passing_on(self, running: list[posix.Command]) -> str:
        pids = ", ".join(f"{proc.who} pid {proc.pid}" for proc in running)
        return (
            f"passing it to {len(running)} process(es) ({pids}), which get {self.loop.grace:g} s "
            "(--grace) to exit before SIGKILL; the job will not be restarted"
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

    def _new_runner(self) -> Runner:
        """What each attempt runs: the job of `nprocs` processes."""
        return ProcessJob(self)
