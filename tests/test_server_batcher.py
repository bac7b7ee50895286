"""The shared micro-batcher: batching, per-item futures, cancellation, isolation, backpressure."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from segtme.server.batcher import Cancelled, JobToken, MicroBatcher


class Recorder:
    """Batch function that records batch sizes; optionally blocks until released; fails on -1."""

    def __init__(self, gate: threading.Event | None = None):
        self.sizes: list[int] = []
        self.gate = gate

    def __call__(self, items):
        if self.gate is not None:
            assert self.gate.wait(10)
        if any(np.asarray(x).ravel()[0] == -1 for x in items):
            raise ValueError("bad item")
        self.sizes.append(len(items))
        return [np.asarray(x) * 2 for x in items]


def test_items_are_batched_and_results_routed() -> None:
    gate = threading.Event()
    rec = Recorder(gate)
    b = MicroBatcher(rec, max_batch=4, max_wait_s=0.2, max_queue=32)
    try:
        job = JobToken("a")
        # the first item blocks the worker; the next ones queue up and form full batches
        futs = [b.submit(np.full((2, 2), i), job) for i in range(9)]
        gate.set()
        out = [f.result(10) for f in futs]
        assert [int(o[0, 0]) for o in out] == [2 * i for i in range(9)]
        assert sum(rec.sizes) == 9 and max(rec.sizes) == 4
        assert b.stats.items == 9 and b.stats.batches == len(rec.sizes)
    finally:
        b.close()


def test_batches_only_group_equal_shapes() -> None:
    rec = Recorder()
    b = MicroBatcher(rec, max_batch=8, max_wait_s=0.05)
    try:
        job = JobToken()
        futs = [b.submit(np.ones((2, 2) if i % 2 else (3, 3)), job) for i in range(6)]
        outs = [f.result(10) for f in futs]
        assert [o.shape for o in outs] == [(3, 3), (2, 2)] * 3
    finally:
        b.close()


def test_max_batch_one_disables_batching() -> None:
    rec = Recorder()
    b = MicroBatcher(rec, max_batch=1, max_wait_s=0.05)
    try:
        job = JobToken()
        for f in [b.submit(np.ones(3), job) for _ in range(5)]:
            f.result(10)
        assert rec.sizes == [1] * 5
    finally:
        b.close()


def test_cancelled_job_items_are_dropped_and_other_jobs_continue() -> None:
    gate = threading.Event()
    rec = Recorder(gate)
    b = MicroBatcher(rec, max_batch=2, max_wait_s=0.0, max_queue=64)
    try:
        a, other = JobToken("a"), JobToken("b")
        first = b.submit(np.ones(1), other)  # occupies the worker (blocked on gate)
        time.sleep(0.1)
        fa = [b.submit(np.ones(1), a) for _ in range(10)]
        fb = [b.submit(np.full(1, 3), other) for _ in range(3)]
        a.cancel()
        dropped = b.drop(a)
        assert dropped == 10 and all(f.cancelled() for f in fa)
        gate.set()
        assert int(first.result(10)[0]) == 2
        assert [int(f.result(10)[0]) for f in fb] == [6, 6, 6]
        assert sum(rec.sizes) == 4  # none of job a's ten items reached the model
    finally:
        b.close()


def test_exception_in_one_item_fails_only_that_item() -> None:
    gate = threading.Event()
    rec = Recorder(gate)
    b = MicroBatcher(rec, max_batch=4, max_wait_s=0.2)
    try:
        j1, j2 = JobToken("1"), JobToken("2")
        good1 = b.submit(np.full(1, 1), j1)
        bad = b.submit(np.full(1, -1), j2)
        good2 = b.submit(np.full(1, 5), j1)
        gate.set()
        assert int(good1.result(10)[0]) == 2 and int(good2.result(10)[0]) == 10
        with pytest.raises(ValueError, match="bad item"):
            bad.result(10)
        assert b.stats.failed == 1
    finally:
        b.close()


def test_full_queue_blocks_submit_until_cancelled() -> None:
    gate = threading.Event()
    b = MicroBatcher(Recorder(gate), max_batch=1, max_wait_s=0.0, max_queue=2)
    try:
        job = JobToken("full")
        b.submit(np.ones(1), job)
        time.sleep(0.1)  # the worker took it and blocks
        b.submit(np.ones(1), job)
        b.submit(np.ones(1), job)
        with pytest.raises(TimeoutError):
            b.submit(np.ones(1), job, timeout=0.2)
        t = threading.Timer(0.2, job.cancel)
        t.start()
        with pytest.raises(Cancelled):
            b.submit(np.ones(1), job)  # unblocks when the job is cancelled
        gate.set()
    finally:
        b.close()


def test_round_robin_between_jobs() -> None:
    """A job that queued all its items first does not starve a later one: after the batch in
    progress, items are taken alternately per job (max_batch 1), and with batching each batch
    mixes the jobs evenly."""
    gate = threading.Event()
    order: list[str] = []

    def fn(items):
        assert gate.wait(10)
        order.extend(str(x[0]) for x in items)
        return list(items)

    for max_batch, want in ((1, ["a", "b", "c"] * 4), (3, ["a", "b", "c"] * 4)):
        gate.clear()
        order.clear()
        b = MicroBatcher(fn, max_batch=max_batch, max_wait_s=0.05, max_queue=64)
        try:
            ja, jb, jc = JobToken("a"), JobToken("b"), JobToken("c")
            first = b.submit(np.array(["x"]), JobToken("x"))  # occupies the worker
            time.sleep(0.1)
            futs = [b.submit(np.array(["a"]), ja) for _ in range(4)]
            futs += [b.submit(np.array(["b"]), jb) for _ in range(4)]
            futs += [b.submit(np.array(["c"]), jc) for _ in range(4)]
            gate.set()
            first.result(10)
            for f in futs:
                f.result(10)
            assert order[0] == "x"
            got = order[1:]
            if max_batch == 1:
                assert got == want
            else:  # each batch of 3 holds one item of each job
                assert all(sorted(got[i:i + 3]) == ["a", "b", "c"] for i in range(0, 12, 3)), got
        finally:
            b.close()
