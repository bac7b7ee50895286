"""Chunk loops that overlap the model with the post-processing: the one place both
``pipeline.segment_image`` and PAGET's chunked run (``paget.runner``) keep two CPU stages busy.

For each chunk, in order: ``produce`` (the forward passes, in the calling thread: the model's
own thread pool), then ``post`` (numpy / scikit-image / shapely work on that chunk's maps, in a
worker thread while the calling thread already runs the next chunk's forward), then ``consume``
(the stitcher and anything else that must see chunks in order, in the calling thread). At most
``workers`` chunks wait for or are in ``post`` at once, so memory stays bounded by that many
chunks' maps. With ``workers == 0`` the loop is serial (same calls, same order, same result).
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, TypeVar

__all__ = ["POST_WORKERS", "run_overlapped"]

#: chunks post-processed concurrently with the model (``InferenceOptions.pipelined``); 2 gave
#: nothing more than 1 on 2 cores (docs/benchmarks.md)
POST_WORKERS = int(os.environ.get("SEGTME_POST_WORKERS", "1"))

T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")


def run_overlapped(items: Iterable[T], produce: Callable[[T], P], post: Callable[[T, P], R],
                   consume: Callable[[T, R], Any], workers: int = POST_WORKERS) -> None:
    """``consume(item, post(item, produce(item)))`` for every item, in item order, with ``post``
    of item k in a worker thread while ``produce`` of item k + 1 runs (``workers`` > 0).
    An exception in any stage is raised in the calling thread; chunks not yet consumed are
    dropped (the worker finishes its current chunk first)."""
    workers = max(0, int(workers))
    if workers == 0:
        for it in items:
            consume(it, post(it, produce(it)))
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="segtme-post") as ex:
        pending: deque = deque()
        try:
            for it in items:
                made = produce(it)
                while len(pending) >= workers:
                    done_it, fut = pending.popleft()
                    consume(done_it, fut.result())
                pending.append((it, ex.submit(post, it, made)))
                del made
            while pending:
                done_it, fut = pending.popleft()
                consume(done_it, fut.result())
        finally:
            for _, fut in pending:
                fut.cancel()
