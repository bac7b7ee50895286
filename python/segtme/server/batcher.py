"""One micro-batching worker per model, shared by every stream.

All tiles of all concurrent DetectTME streams (and AnalyzeImage calls) go through one
``MicroBatcher``: a bounded queue drained by **one** worker thread that runs the model on
micro-batches of up to ``max_batch`` same-shaped inputs, waiting at most ``max_wait_s`` after the
first queued item for more to arrive. Each submitted item gets a ``concurrent.futures.Future``.

Cancellation: every item belongs to a ``JobToken``. ``JobToken.cancel()`` (called when a stream
is cancelled, times out or fails) makes the batcher drop that job's queued items at once (their
futures are cancelled) and makes blocked ``submit`` calls return; a batch already on the device
finishes, but its results for the cancelled job are discarded.

Fairness: batches are taken round-robin over jobs (the job served least recently first), so
equal streams progress at the same rate whatever order their tiles were queued in.

Isolation: if a batch raises, each of its items is retried alone, so one bad input fails only its
own future (its own stream), never the other streams' tiles that happened to share the batch.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import weakref
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """The job was cancelled while waiting (queue full or result pending)."""


class JobToken:
    """Cancellation flag of one job (stream). Cheap; thread-safe."""

    def __init__(self, name: str = ""):
        self.name = name
        self._event = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            cbs, self._callbacks = self._callbacks, []
        for cb in cbs:
            try:
                cb()
            except Exception:  # pragma: no cover - defensive
                log.exception("job %s: cancel callback failed", self.name)

    def on_cancel(self, cb: Callable[[], None]) -> None:
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(cb)
                return
        cb()

    def wait(self, timeout: float | None) -> bool:
        return self._event.wait(timeout)


@dataclass
class _Item:
    payload: Any
    key: Hashable
    job: JobToken
    future: Future = field(default_factory=Future)
    t_submit: float = field(default_factory=time.perf_counter)


@dataclass
class BatcherStats:
    batches: int = 0
    items: int = 0
    dropped: int = 0
    failed: int = 0
    busy_s: float = 0.0

    @property
    def mean_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0


class MicroBatcher:
    """Shared micro-batching worker.

    fn: runs the model on a list of payloads that share one ``key`` (e.g. array shape) and
        returns one result per payload, in order. Called only from the worker thread.
    max_batch: largest micro-batch (1 = batching off).
    max_wait_s: how long the worker waits after the first item for a batch to fill.
    max_queue: queued items (all jobs together); ``submit`` blocks when full (backpressure).
    """

    def __init__(self, fn: Callable[[list[Any]], Sequence[Any]], *, max_batch: int = 8, max_wait_s: float = 0.01,
                 max_queue: int = 64, name: str = "model"):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.fn = fn
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self.max_queue = int(max_queue)
        self.name = name
        self.stats = BatcherStats()
        self._q: collections.deque[_Item] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        #: fairness: per job, the sequence number of its last item taken into a batch
        self._last_served: "weakref.WeakKeyDictionary[JobToken, int]" = weakref.WeakKeyDictionary()
        self._seq = 0
        self._thread = threading.Thread(target=self._run, name=f"segtme-batcher-{name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ client side
    def submit(self, payload: Any, job: JobToken, key: Hashable = None, timeout: float | None = None) -> Future:
        """Queue one input; returns its future. Blocks while the queue is full; raises
        ``Cancelled`` if ``job`` is cancelled meanwhile, ``TimeoutError`` after ``timeout`` s,
        ``RuntimeError`` if the batcher is closed."""
        item = _Item(payload, key if key is not None else _shape_key(payload), job)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while True:
                if self._closed:
                    raise RuntimeError("batcher is shut down")
                if job.cancelled:
                    raise Cancelled(job.name)
                if len(self._q) < self.max_queue:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError("model queue full")
                # short waits so a cancelled job notices promptly even without a notify
                self._cv.wait(0.05 if remaining is None else min(0.05, remaining))
            self._q.append(item)
            self._cv.notify_all()
        return item.future

    def drop(self, job: JobToken) -> int:
        """Remove ``job``'s queued items (their futures are cancelled); returns how many."""
        with self._cv:
            keep, gone = collections.deque(), []
            for it in self._q:
                (gone if it.job is job else keep).append(it)
            self._q = keep
            self.stats.dropped += len(gone)
            self._cv.notify_all()
        for it in gone:
            it.future.cancel()
        return len(gone)

    @property
    def queued(self) -> int:
        with self._cv:
            return len(self._q)

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop the worker; queued items are cancelled."""
        with self._cv:
            self._closed = True
            items, self._q = list(self._q), collections.deque()
            self._cv.notify_all()
        for it in items:
            it.future.cancel()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker side
    def _take_batch(self) -> list[_Item] | None:
        with self._cv:
            while not self._closed:
                self._purge_cancelled_locked()
                if self._q:
                    break
                self._cv.wait()
            if self._closed:
                return None
            first_t = time.monotonic()
            key = self._q[0].key
            while self.max_batch > 1:
                n_same = sum(1 for it in self._q if it.key == key and not it.job.cancelled)
                if n_same >= self.max_batch:
                    break
                remaining = first_t + self.max_wait_s - time.monotonic()
                if remaining <= 0:
                    break
                self._cv.wait(remaining)
                if self._closed:
                    return None
                self._purge_cancelled_locked()
                if not self._q:
                    return []
                key = self._q[0].key
            batch = self._fair_batch_locked()
            self._cv.notify_all()  # wake submitters blocked on a full queue
        return [it for it in batch if it.future.set_running_or_notify_cancel()]

    def _fair_batch_locked(self) -> list[_Item]:
        """Take the next micro-batch off the queue, round-robin over jobs: the job served least
        recently leads (its oldest item fixes the batch's shape key), then the batch is filled
        by taking one item per job in that order, repeatedly, among items of the same key. With
        ``max_batch`` 1 this is plain round-robin between streams, so equal streams progress at
        equal rates however their tiles arrived in the queue."""
        order: list[JobToken] = []
        items: dict[int, list[_Item]] = {}
        for it in self._q:
            lst = items.get(id(it.job))
            if lst is None:
                order.append(it.job)
                items[id(it.job)] = lst = []
            lst.append(it)
        order.sort(key=lambda j: self._last_served.get(j, -1))  # stable: queue order breaks ties
        key = items[id(order[0])][0].key
        queues = [collections.deque(it for it in items[id(j)] if it.key == key) for j in order]
        batch: list[_Item] = []
        while len(batch) < self.max_batch and any(queues):
            for q in queues:
                if q and len(batch) < self.max_batch:
                    batch.append(q.popleft())
        taken = {id(it) for it in batch}
        self._q = collections.deque(it for it in self._q if id(it) not in taken)
        for it in batch:
            self._seq += 1
            self._last_served[it.job] = self._seq
        return batch

    def _purge_cancelled_locked(self) -> None:
        if any(it.job.cancelled or it.future.cancelled() for it in self._q):
            keep = collections.deque()
            for it in self._q:
                if it.job.cancelled or it.future.cancelled():
                    it.future.cancel()
                    self.stats.dropped += 1
                else:
                    keep.append(it)
            self._q = keep

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                results = list(self.fn([it.payload for it in batch]))
                if len(results) != len(batch):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} inputs")
            except BaseException as e:  # noqa: BLE001 - isolate: retry items one by one
                if len(batch) == 1:
                    self.stats.failed += 1
                    batch[0].future.set_exception(e)
                else:
                    log.warning("batch of %d failed (%s); retrying items one by one", len(batch), e)
                    for it in batch:
                        if it.job.cancelled:
                            it.future.set_exception(Cancelled(it.job.name))
                            continue
                        try:
                            it.future.set_result(list(self.fn([it.payload]))[0])
                        except BaseException as e1:  # noqa: BLE001
                            self.stats.failed += 1
                            it.future.set_exception(e1)
                self.stats.batches += 1
                self.stats.items += len(batch)
                self.stats.busy_s += time.perf_counter() - t0
                continue
            self.stats.batches += 1
            self.stats.items += len(batch)
            self.stats.busy_s += time.perf_counter() - t0
            for it, r in zip(batch, results):
                if it.job.cancelled:
                    it.future.set_exception(Cancelled(it.job.name))
                else:
                    it.future.set_result(r)


def _shape_key(payload: Any) -> Hashable:
    shape = getattr(payload, "shape", None)
    return tuple(shape) if shape is not None else None
