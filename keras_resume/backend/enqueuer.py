"""`EnqueuerWatch`: labels the batches of a PyDataset's `OrderedEnqueuer`.

Keras's enqueuer prefetches batches on worker threads or processes; the watch
tells which of its queued batches belongs to which epoch and index, so that a
resume puts the same batches back in the same order.
"""

from __future__ import annotations

import collections
import queue


class _LabelledIndices:
    """The enqueuer's index iterator, telling its watch each index it submits."""

    def __init__(self, inner, watch):
        self.inner, self.watch = inner, watch

    def __iter__(self):
        return self

    def __next__(self):
        index = next(self.inner)
        if self.watch.active:
            self.watch.labels.append((self.watch.version(), index))
        return index


class EnqueuerWatch:
    """Labels every batch of a PyDataset's `OrderedEnqueuer`, in the order `fit` gets them.

    The enqueuer's thread submits `py_dataset[i]` for the epoch's indices to its
    workers (`_run`, which sets `indices` and then calls `_send_py_dataset`);
    `get()` yields the batches of `ready_queue` first, then those of
    `future_queue`. `stop()`, at every epoch's end, moves the batches still
    queued (prefetched, not yet trained on) to `ready_queue`, and the next
    epoch begins with them. On JAX and PyTorch `fit` builds the model from one
    batch of a pass it then stops (`_symbolic_build`), so every epoch begins
    with up to `max_queue_size` batches of the epoch before; TensorFlow's `fit`
    does no such pass.

    `labels` follows that queue: `(version, index)` for a batch submitted when
    `version()` was what it returns then (the PyDataset's `on_epoch_end` calls
    so far), `(PRE, j)` for the `j`-th batch already in `ready_queue` when the
    watch began (`ready_before`).
    """

    PRE = -1

    def __init__(self, enqueuer, version):
        self.enqueuer = enqueuer
        self.version = version
        self.active = True
        self.ready_before = list(enqueuer.ready_queue.queue)
        self.labels = collections.deque((self.PRE, j) for j in range(len(self.ready_before)))
        # Batches left in `future_queue` (a stop that timed out waiting): unknown.
        self.labels.extend((self.PRE, -1) for _ in range(enqueuer.future_queue.qsize()))
        send, get = enqueuer._send_py_dataset, enqueuer.get

        def send_py_dataset():
            if not isinstance(enqueuer.indices, _LabelledIndices):
                enqueuer.indices = _LabelledIndices(enqueuer.indices, self)
            return send()

        def labelled_get():
            for inputs in get():
                if self.active and self.labels:
                    self.labels.popleft()
                yield inputs

        enqueuer._send_py_dataset = send_py_dataset
        enqueuer.get = labelled_get

    def queued(self) -> list:
        """The labels of the batches queued now, the next one `fit` gets first."""
        return list(self.labels)

    def running(self) -> bool:
        return self.enqueuer.is_running()

    def replace_ready(self, batches: list, labels: list) -> None:
        """Makes `batches` (labelled `labels`) the whole queue; the enqueuer must be stopped."""
        enqueuer = self.enqueuer
        while True:  # a future left behind by a stop: not a batch of the run resumed
            try:
                enqueuer.future_queue.get_nowait()
                enqueuer.future_queue.task_done()
            except queue.Empty:
                break
        ready = enqueuer.ready_queue
        with ready.mutex:
            ready.queue.clear()
            ready.queue.extend(batches)
        self.labels = collections.deque(labels)

    def detach(self) -> None:
        self.active = False
        enqueuer = self.enqueuer
        for attribute in ("_send_py_dataset", "get"):
            enqueuer.__dict__.pop(attribute, None)
        indices = getattr(enqueuer, "indices", None)
        if isinstance(indices, _LabelledIndices) and indices.watch is self:
            enqueuer.indices = indices.inner
