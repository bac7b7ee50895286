"""Server limits: what the server refuses, and with which gRPC status.

Every limit maps to one status code so clients can react without parsing messages:

* a message larger than ``max_message_bytes`` — refused by gRPC itself with RESOURCE_EXHAUSTED;
* a tile with more than ``max_tile_pixels`` pixels (width*height *as sent*) — INVALID_ARGUMENT
  naming ``tile.width``/``tile.height``;
* more than ``max_tiles_per_stream`` tiles in one DetectTME stream — RESOURCE_EXHAUSTED;
* more than ``max_concurrent_streams`` DetectTME/AnalyzeImage jobs at once — RESOURCE_EXHAUSTED;
* an AnalyzeImage image with more than ``max_image_pixels`` pixels — INVALID_ARGUMENT;
* a DetectTME stream idle for ``idle_timeout_s`` (the client sends nothing, the server has
  nothing to send) — DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerLimits:
    """Limits enforced by the server (pixels are pixels of the tile/image as sent)."""

    max_message_bytes: int = 64 * 1024 * 1024
    max_tile_pixels: int = 2048 * 2048
    max_tiles_per_stream: int = 100_000
    max_concurrent_streams: int = 16
    max_image_pixels: int = 4096 * 4096
    #: tiles one stream may have decoded and waiting for the model at once (bounded memory)
    max_inflight_tiles_per_stream: int = 16
    #: a DetectTME stream whose client sends nothing for this long (s) while the server has
    #: nothing left to send it is closed with DEADLINE_EXCEEDED (its job slot is freed)
    idle_timeout_s: float = 300.0
    #: DetectTME with a nucleus model over an annotation pastes the tiles into one canvas over
    #: the annotation's bounds (``server/canvas.py``, 3 bytes per working px): bounds larger than
    #: this many working px are segmented tile by tile instead (``job.TileJob``, no canvas)
    max_canvas_pixels: int = 400_000_000

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_tile_pixels", "max_tiles_per_stream", "max_concurrent_streams",
                     "max_image_pixels", "max_inflight_tiles_per_stream", "max_canvas_pixels"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"server limit {name} must be positive, got {getattr(self, name)}")
        t = float(self.idle_timeout_s)
        if not (t > 0 and t < float("inf")):
            raise ValueError(f"server limit idle_timeout_s must be a finite number > 0, got {self.idle_timeout_s}")


class StreamSlots:
    """Counting gate for concurrent jobs: ``acquire`` returns False when all slots are taken
    (the caller then answers RESOURCE_EXHAUSTED instead of queueing)."""

    def __init__(self, n: int):
        self._n = int(n)
        self._used = 0
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        with self._lock:
            if self._used >= self._n:
                return False
            self._used += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._used = max(0, self._used - 1)

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._used
