"""Giving memory back after a job.

A job's tile pixels, model maps and nuclei tables are freed when the job ends, but glibc keeps
the freed heap pages in its arenas (one per thread that allocated: the gRPC worker, the reader
thread, the batcher thread), so the server's RSS would ratchet up with every round of load and
stay there idle — all the more as ``runtime``'s malloc tuning (on by default) keeps up to 512 MiB
of free heap untrimmed while models run. ``release_after_job`` calls
``runtime.release_free_memory`` (glibc ``malloc_trim(0)`` + the usual large-block thresholds,
which the next forward pass tunes again) or, with the tuning off, ``malloc_trim(0)`` alone; on
other C libraries it does nothing. It is cheap (milliseconds), and skipped while another job of
this process is still trimming. The arena cap is ``runtime.limit_malloc_arenas``.
"""

from __future__ import annotations

import threading

from .. import runtime

_lock = threading.Lock()


def release_after_job() -> bool:
    """Return free heap memory to the system (glibc ``malloc_trim``); True if it ran."""
    if not _lock.acquire(blocking=False):
        return False
    try:
        if runtime.MALLOC_TUNED:
            runtime.release_free_memory()
            return True
        return runtime.trim_free_memory()
    finally:
        _lock.release()
