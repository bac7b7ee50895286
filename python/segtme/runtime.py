"""Process-wide runtime knobs in one place: OpenMP waiting, glibc malloc tuning, compute threads,
whether an accelerator can exist, precision.

A leaf module (imports only the standard library); whoever needs a knob imports it from here,
never from the package root. Importing it applies two defaults that must be set before torch
loads, so modules that import torch import this first (``models.registry``, ``inference.engine``):

* ``OMP_WAIT_POLICY=PASSIVE`` unless set: with OpenMP's default *active* waiting, torch's worker
  threads spin at every barrier, and when another process holds one of the cores (a shared or
  busy machine) each parallel region waits for a time slice: forward passes measured 10-30x
  slower than with one thread. Passive waiting costs little on an idle machine and removes that
  cliff (docs/benchmarks.md). Only effective before libgomp is loaded.
* glibc malloc tuning (``SEGTME_MALLOC_TUNING=0`` turns it off), see ``_tune_glibc_malloc``.

Nothing here imports torch unless torch is already loaded or a torch-only question is asked
(``cpu_has_native_bf16`` on a CPU whose flags say bf16): the ONNX Runtime path of the shipped
model (``models/onnx_runtime.py``) runs without torch, and the thread count and the "is there
a GPU at all" question are answered for it here (``compute_threads``, ``accelerator_possible``).
"""

from __future__ import annotations

import os
import sys

if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
    if os.environ.get("SEGTME_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    return _mallopt(256 << 20, 512 << 20)


MALLOC_TUNED = _tune_glibc_malloc()


def keep_large_buffers() -> None:
    """Before forward passes (``engine.forward_tiles`` calls it): keep large buffers in the heap
    (see ``_tune_glibc_malloc``); two ``mallopt`` calls, microseconds."""
    if MALLOC_TUNED:
        _mallopt(256 << 20, 512 << 20)


def resident_bytes() -> int | None:
    """This process's resident set size now, bytes (``/proc/self/statm``), or None when unknown."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def trim_free_memory(above_bytes: int | None = None) -> bool:
    """Return the heap's free memory to the OS (glibc ``malloc_trim(0)``); True if it ran
    (Linux glibc only). ``above_bytes``: only when the resident set is larger than that (memory
    handed back is faulted in again by the next allocations: system time)."""
    libc = _libc()
    if libc is None:
        return False
    if above_bytes is not None and above_bytes > 0:
        rss = resident_bytes()
        if rss is not None and rss <= above_bytes:
            return False
    libc.malloc_trim(0)
    return True


def release_free_memory() -> None:
    """After a large job's model stage: return the heap's free memory to the OS (glibc
    ``malloc_trim``) and go back to glibc's usual thresholds for large blocks (32 MiB mmap, the
    top of its dynamic range, and 64 MiB trim). No-op when the tuning is off or not glibc."""
    if not MALLOC_TUNED:
        return
    _mallopt(32 << 20, 64 << 20)
    trim_free_memory()


def limit_malloc_arenas(n: int | None = None) -> bool:
    """Cap glibc's number of malloc arenas (``mallopt(M_ARENA_MAX, n)``); call it before a
    long-running process starts its threads (``segtme serve``, batch workers): every thread that
    allocates may otherwise get an arena of its own (up to 8 per core), and memory freed in one
    arena is not reused by another, so RSS creeps up with load (the server's soak: idle RSS 944 ->
    696 MB with 2 arenas). ``n`` default: ``$SEGTME_MALLOC_ARENAS`` or 2; 0 leaves glibc's default.
    True if applied (Linux glibc only)."""
    if n is None:
        try:
            n = int(os.environ.get("SEGTME_MALLOC_ARENAS", "2"))
        except ValueError:
            n = 2
    libc = _libc()
    if libc is None or n <= 0:
        return False
    m_arena_max = -8  # <malloc.h>
    return libc.mallopt(m_arena_max, int(n)) == 1


#: the compute thread count asked for (``set_torch_threads``), None: the default
_THREADS: int | None = None


def set_torch_threads(n: int | None) -> None:
    """The process's compute threads (>= 1): ``torch.set_num_threads(n)`` when torch is loaded,
    else remembered and applied when torch loads (``sync_torch_threads``, called by the torch
    paths) and used by ONNX Runtime sessions (``compute_threads``). None leaves the default.
    Does not import torch."""
    global _THREADS
    if n is None:
        return
    if int(n) < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    _THREADS = int(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(_THREADS)


def sync_torch_threads() -> None:
    """Apply a thread count asked for before torch was loaded (``set_torch_threads``) to torch;
    the torch paths call it after importing torch. No-op when none was asked for."""
    if _THREADS is not None and "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.get_num_threads() != _THREADS:
            torch.set_num_threads(_THREADS)


def physical_cores() -> int:
    """Physical CPU cores (distinct ``physical id``/``core id`` pairs of /proc/cpuinfo among the
    CPUs this process may run on), else ``os.cpu_count()`` — torch's default intra-op thread
    count, without importing torch."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        allowed = None
    try:
        cores, cpu, phys = set(), None, "0"
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                k, _, v = line.partition(":")
                k, v = k.strip(), v.strip()
                if k == "processor":
                    cpu, phys = int(v), "0"
                elif k == "physical id":
                    phys = v
                elif k == "core id" and (allowed is None or cpu in allowed):
                    cores.add((phys, v))
        if cores:
            return len(cores)
    except (OSError, ValueError):
        pass
    return len(allowed) if allowed else (os.cpu_count() or 1)


def compute_threads() -> int:
    """The intra-op thread count the process's compute runs with: torch's when torch is loaded
    (``torch.set_num_threads`` changes it), else ``set_torch_threads``'s value, else
    ``$OMP_NUM_THREADS``, else ``physical_cores()`` (torch's own default). Does not import torch."""
    if "torch" in sys.modules:
        return int(sys.modules["torch"].get_num_threads())
    if _THREADS is not None:
        return _THREADS
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", "0"))
    except ValueError:
        n = 0
    return n if n >= 1 else physical_cores()


def accelerator_possible() -> bool:
    """False only when this machine certainly has no device torch could pick over the CPU for
    ``device="auto"``: Linux without an NVIDIA driver (``/proc/driver/nvidia``, ``/dev/nvidia*``),
    a ROCm device (``/dev/kfd``) or WSL's GPU (``/dev/dxg``). True elsewhere (macOS: MPS; other
    systems: unknown), then torch is asked. Lets ``device="auto"`` resolve to the CPU without
    importing torch."""
    if not sys.platform.startswith("linux"):
        return True
    import glob

    return any(os.path.exists(p) for p in ("/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")) or bool(glob.glob("/dev/nvidia*"))


class DeviceName(str):
    """A device named without importing torch (``"cpu"``): ``.type`` / ``.index`` as on a
    ``torch.device``; being a ``str`` it is accepted wherever torch takes a device."""

    @property
    def type(self) -> str:
        return self.split(":", 1)[0]

    @property
    def index(self) -> int | None:
        _, _, i = self.partition(":")
        return int(i) if i else None


# --------------------------------------------------------------------------- precision
PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 natively (x86 ``avx512_bf16`` or ``amx_bf16`` flag in
    /proc/cpuinfo); False when unknown (non-Linux) — then ``auto`` keeps fp32 on the CPU."""
    global _NATIVE_BF16
    if _NATIVE_BF16 is None:
        _NATIVE_BF16 = cpu_bf16_flags()
        if _NATIVE_BF16:  # only then ask torch (imports it) whether oneDNN can use them
            import torch

            _NATIVE_BF16 = bool(torch.backends.mkldnn.is_available())
    return _NATIVE_BF16


def cpu_bf16_flags() -> bool:
    """True when /proc/cpuinfo lists ``avx512_bf16`` or ``amx_bf16`` (no torch import)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return bool({"avx512_bf16", "amx_bf16"} & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return False


_NATIVE_BF16: bool | None = None


def check_precision(precision: str) -> None:
    """ValueError unless ``precision`` is one of ``PRECISIONS`` (no torch needed)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def resolve_precision(precision: str, device) -> str:
    """``"fp32"`` or ``"bf16"`` for ``precision`` (one of ``PRECISIONS``) on ``device`` (a
    ``torch.device``): ``auto`` is bf16 on CUDA and on CPUs with native bf16, else fp32."""
    check_precision(precision)
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"
