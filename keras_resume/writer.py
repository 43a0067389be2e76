"""`BackgroundWriter`: runs saves on a background thread, at most one at a time.

The training thread takes a snapshot (host copies) and hands the writer a job
that serialises, checksums, flushes and commits it. Only one job is in flight:
a save that comes due while one is still writing waits for it first, so saves
commit in the order they were taken and no resume point is skipped.

A job's outcome is reported on the training thread, never on the writer's:
`poll()` (called between steps), `submit()` (before the next job) and `wait()`
(when `fit` ends or raises) run the job's `on_done(result)` or
`on_error(exception)` there, so a failed save raises where the user can see it.

Writer threads are not daemons: the interpreter does not exit while a save is
committing. A process killed outright (SIGKILL) leaves at most a staging
directory, which the commit protocol ignores and the next session removes.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

logger = logging.getLogger("keras_resume")

# Saves run at a lower CPU priority than training, so on a machine with few
# cores the writer takes the idle cycles rather than slowing the steps.
WRITER_NICENESS = 10


class _SaveTask:
    def __init__(self, what: str, tasks: list, low_priority: bool):
        self.what = what
        self.tasks = tasks  # [(work, on_done, on_error)], run in order
        self.results: list = []
        self.error: BaseException | None = None
        self.failed_task = None
        self.low_priority = low_priority
        self.thread = threading.Thread(target=self._run, name=f"keras_resume save: {what}")

    def _run(self) -> None:
        if self.low_priority:
            _lower_priority()
        for task in self.tasks:
            try:
                self.results.append(task[0]())
            except BaseException as e:  # reported on the training thread
                self.error, self.failed_task = e, task
                return


def _lower_priority() -> None:
    try:  # on Linux a thread is a task with its own nice value
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICENESS)
    except (AttributeError, OSError):
        pass


class BackgroundWriter:
    """At most one save in flight; outcomes reported on the calling thread.

    Args:
        low_priority: run the writer at nice +10 (Linux). Defaults to True.
    """

    def __init__(self, low_priority: bool = True):
        self.low_priority = low_priority
        self._job: _SaveTask | None = None
        self._group: list | None = None
        self._shared: dict = {}

    @property
    def busy(self) -> bool:
        """Whether a save is in flight."""
        return self._job is not None and self._job.thread.is_alive()

    def submit(
        self,
        what: str,
        prepare: Callable,
        on_done: Callable | None = None,
        on_error: Callable | None = None,
        background: bool = True,
    ) -> None:
        """Takes a save: `prepare()` here, then the work it returns on a writer thread.

        Waits for the save in flight first, so at most one snapshot is held.
        `prepare` runs on the calling thread and takes the snapshot; it returns
        the callable that writes and commits it (run here if not `background`).
        Inside `group()` the writes are collected and run together, in order,
        when the group ends (here, if any of them is not `background`).
        """
        if self._group is None:
            self.wait()
        try:
            work = prepare()
        except Exception as e:
            if on_error is None:
                raise
            on_error(e)
            return
        task = (work, on_done, on_error)
        if self._group is not None:
            self._group.append((what, task, background))
        elif background:
            self._start(what, [task])
        else:
            self._finish(_run_here(what, [task]))

    def _start(self, what: str, tasks: list) -> None:
        job = _SaveTask(what, tasks, self.low_priority)
        self._job = job
        job.thread.start()

    def group(self):
        """Collects the jobs submitted inside the block into one, run in order.

        Used at an epoch's end, where the best checkpoint and the backup are
        taken at the same instant: the second would otherwise wait for the first.
        """
        return _Group(self)

    def shared(self, key, make: Callable):
        """`make()`, computed once per group: snapshots taken at the same instant."""
        if self._group is None:
            return make()
        if key not in self._shared:
            self._shared[key] = make()
        return self._shared[key]

    def join(self) -> None:
        """Blocks until the save in flight has ended; its outcome stays to be reported.

        For readers: whoever looks at the directory in this process sees the
        save committed (or cleanly failed). A no-op on the writer thread itself.
        """
        job = self._job
        if job is not None and job.thread is not threading.current_thread():
            job.thread.join()

    def poll(self) -> None:
        """Reports a finished job's outcome, if one finished; never blocks."""
        job = self._job
        if job is not None and not job.thread.is_alive():
            self.wait()

    def wait(self) -> None:
        """Blocks until the save in flight has committed (or failed), and reports it."""
        job = self._take()
        if job is not None:
            self._finish(job)

    def discard_outcome(self) -> BaseException | None:
        """Waits for the save in flight; returns its error instead of reporting it.

        For a `fit` that is already unwinding from another exception.
        """
        job = self._take()
        if job is None:
            return None
        _report_done(job)  # a save that committed still gets its line
        if job.error is not None:
            logger.error("Background save (%s) failed: %s", job.what, job.error)
        return job.error

    def _take(self) -> _SaveTask | None:
        """The job in flight, once it has ended; it is no longer the writer's."""
        job = self._job
        if job is not None:
            job.thread.join()
            self._job = None
        return job

    @staticmethod
    def _finish(job: _SaveTask) -> None:
        _report_done(job)
        if job.error is not None:
            on_error = job.failed_task[2]
            if on_error is None:
                raise job.error
            on_error(job.error)


def _report_done(job: _SaveTask) -> None:
    """Runs `on_done(result)` of every task of `job` that completed."""
    for (_, on_done, _), result in zip(job.tasks, job.results):
        if on_done is not None:
            on_done(result)


def _run_here(what: str, tasks: list) -> _SaveTask:
    job = _SaveTask(what, tasks, low_priority=False)
    job._run()
    return job


_WRITERS: dict[str, BackgroundWriter] = {}
_WRITERS_LOCK = threading.Lock()


def background_writer(path) -> BackgroundWriter:
    """The one writer of a directory in this process, whichever object names it."""
    key = os.path.realpath(path)
    with _WRITERS_LOCK:
        return _WRITERS.setdefault(key, BackgroundWriter())


class _Group:
    def __init__(self, writer: BackgroundWriter):
        self.writer = writer

    def __enter__(self):
        if self.writer._group is None:
            self.writer.wait()
            self.writer._group = []
            self.outer = True
        else:
            self.outer = False
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.outer:
            return
        collected, self.writer._group = self.writer._group, None
        self.writer._shared = {}
        if not collected:
            return
        what = " + ".join(w for w, _, _ in collected)
        tasks = [task for _, task, _ in collected]
        if all(background for _, _, background in collected):
            self.writer._start(what, tasks)
        else:  # one of them must be on disk before training goes on
            self.writer._finish(_run_here(what, tasks))
