"""SegTME: nucleus segmentation + classification, tumour-microenvironment features, biological
tokens and grounded narratives for H&E, served to QuPath over gRPC.

Small public API (heavy modules load lazily):

* ``load_model(spec="default", device="auto")`` -> LoadedModel
* ``analyze(image, mpp, model="default", ...)`` -> AnalysisResult (nuclei table + TME report)
"""

from __future__ import annotations

import os as _os
import sys as _sys

__version__ = "0.1.0"

# CPU threads: with OpenMP's default *active* waiting, torch's 2 worker threads spin at every
# barrier, and when another process holds one of the cores (a shared or busy machine) each
# parallel region waits for a time slice: forward passes measured 10-30x slower than with one
# thread. Passive waiting (threads sleep at barriers) costs little on an idle machine and removes
# that cliff. It only takes effect if set before torch (libgomp) is loaded; an explicit
# OMP_WAIT_POLICY in the environment wins. See docs/benchmarks.md.
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


_LIBC = None


def _libc():
    """The C library (loaded once), or None when it is not glibc (e.g. musl) or not Linux."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            lib = ctypes.CDLL("libc.so.6")
            _LIBC = lib if hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") else False
        except OSError:
            _LIBC = False
    return _LIBC or None


def _mallopt(mmap_threshold: int, trim_threshold: int) -> bool:
    libc = _libc()
    if libc is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    ok = libc.mallopt(m_mmap_threshold, int(mmap_threshold)) == 1
    return libc.mallopt(m_trim_threshold, int(trim_threshold)) == 1 and ok


def _tune_glibc_malloc() -> bool:
    """Keep large tensor buffers in the heap instead of fresh ``mmap``s (Linux glibc only).

    glibc serves every allocation above its mmap threshold (dynamic, at most 32 MiB) with a new
    ``mmap`` and returns it with ``munmap`` when freed, so each forward pass page-faults its
    large activations in again: a 67 MB ``torch.cat`` in the UperNet fusion measured 25 ms instead
    of ~2 ms, and the default model's forward pass 1.65-1.7x slower (docs/benchmarks.md). A fixed
    threshold of 256 MiB and a trim threshold of 512 MiB keep such buffers for reuse while the
    model runs; ``release_free_memory`` (after a job's model stage) hands them back and returns
    to glibc's usual large-block thresholds for the rest of the job, whose peak (the export) must
    stay low. Set ``SEGTME_MALLOC_TUNING=0`` to leave malloc alone. Returns True when applied."""
    if _os.environ.get("SEGTME_MALLOC_TUNING", "1") == "0" or not _sys.platform.startswith("linux"):
        return False
    return _mallopt(256 << 20, 512 << 20)


MALLOC_TUNED = _tune_glibc_malloc()


def keep_large_buffers() -> None:
    """Before forward passes (``engine.forward_tiles`` calls it): keep large buffers in the heap
    (see ``_tune_glibc_malloc``); two ``mallopt`` calls, microseconds."""
    if MALLOC_TUNED:
        _mallopt(256 << 20, 512 << 20)


def release_free_memory() -> None:
    """After a large job's model stage: return the heap's free memory to the OS (glibc
    ``malloc_trim``) and go back to glibc's usual thresholds for large blocks (32 MiB mmap, the
    top of its dynamic range, and 64 MiB trim). No-op when the tuning is off or not glibc."""
    if not MALLOC_TUNED:
        return
    _mallopt(32 << 20, 64 << 20)
    _libc().malloc_trim(0)


__all__ = ["__version__", "load_model", "analyze"]


def load_model(spec="default", device="auto", **kw):
    from .models.registry import load_model as _lm

    return _lm(spec, device, **kw)


def analyze(image, mpp, model="default", **kw):
    from .pipeline import analyze as _an

    return _an(image, mpp, model=model, **kw)
