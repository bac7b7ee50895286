"""Giving memory back after a job.

A job's tile pixels, model maps and nuclei tables are freed when the job ends, but glibc keeps
the freed heap pages in its arenas (one per thread that allocated: the gRPC worker, the reader
thread, the batcher thread), so the server's RSS would ratchet up with every round of load and
stay there idle — all the more as ``runtime``'s malloc tuning (on by default) keeps up to 512 MiB
of free heap untrimmed while models run. ``release_after_job`` calls
``runtime.release_free_memory`` (glibc ``malloc_trim(0)`` + the usual large-block thresholds,
which the next forward pass tunes again) or, with the tuning off, ``malloc_trim(0)`` alone; on
other C libraries it does nothing. It is cheap (milliseconds), and skipped while another job of
this process is still trimming.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

_lock = threading.Lock()
_libc: object = None  # None = not looked up yet, False = not glibc


def _glibc():
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc = lib if hasattr(lib, "malloc_trim") else False
        except OSError:
            _libc = False
    return _libc


def release_after_job() -> bool:
    """Return free heap memory to the system (glibc ``malloc_trim``); True if it ran."""
    from .. import runtime

    lib = _glibc()
    if not lib:
        return False
    if not _lock.acquire(blocking=False):
        return False
    try:
        if runtime.MALLOC_TUNED:
            runtime.release_free_memory()
        else:
            lib.malloc_trim(0)
        return True
    finally:
        _lock.release()


def limit_malloc_arenas(n: int | None = None) -> bool:
    """Cap glibc's number of malloc arenas (``mallopt(M_ARENA_MAX, n)``) before the server starts
    its threads: every thread that allocates may otherwise get an arena of its own (up to 8 per
    core), and memory freed in one arena is not reused by another, so RSS creeps up with load.
    ``n`` default: ``SEGTME_MALLOC_ARENAS`` or 2; 0 leaves glibc's default. True if applied."""
    import os

    if n is None:
        try:
            n = int(os.environ.get("SEGTME_MALLOC_ARENAS", "2"))
        except ValueError:
            n = 2
    lib = _glibc()
    if not lib or n <= 0 or not hasattr(lib, "mallopt"):
        return False
    m_arena_max = -8  # <malloc.h>
    return lib.mallopt(m_arena_max, int(n)) == 1
