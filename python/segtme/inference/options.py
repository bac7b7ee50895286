"""How to run a model (not what the model is): one typed object from the CLI / server / batch
down to the engine, instead of loose keyword arguments.

The model's own settings (architecture, IO: mpp / tile / overlap / normalisation, and
post-processing) are in its ``ModelConfig``; ``InferenceOptions`` only overrides the run-time
choices. All lengths are working px (pixels at the model's ``cfg.mpp``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Mapping

from ..errors import InputError
from ..runtime import PRECISIONS

#: progress callback: called with the number of model tiles just finished
Progress = Callable[[int], None]

@dataclass(frozen=True)
class InferenceOptions:
    """Run-time choices for one inference job.

    device: "auto" | "cpu" | "cuda" | "cuda:N" | "mps" (used when a model is loaded by name).
    precision: "auto" (bf16 on CUDA and on CPUs with native bf16, else fp32) | "fp32" | "bf16".
    batch_size: tiles per forward pass; None = as many as fit ``BATCH_PIXELS`` working px.
    tile / overlap: model tile edge and overlap (working px); None = the model config's.
    chunk_size / halo: post-processing chunks and their halo (working px); None = defaults.
    pipelined: post-process chunk k while the model runs chunk k + 1 (same result).
    threads: torch CPU threads (None: torch's default).
    tta: test-time augmentation "none" | "flip" (mean of the 4 flips, 4x the forward time); None =
        the model config's ``extra["tta"]`` (default "none").
    progress: called with the number of tiles finished (not part of equality / repr; a callback
        of this process: whoever ships options to another process, e.g. ``batch.SlideOptions``
        to Ray workers, leaves it None).
    """

    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None
    tile: int | None = None
    overlap: int | None = None
    chunk_size: int | None = None
    halo: int | None = None
    pipelined: bool = True
    threads: int | None = None
    tta: str | None = None
    progress: Progress | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("batch_size", "tile", "chunk_size", "threads"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        for name in ("overlap", "halo"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 0):
                raise InputError(f"{name} must be a non-negative integer, got {v!r}")
        if self.tta is not None and self.tta not in ("none", "flip"):
            raise InputError(f"tta must be 'none' or 'flip', got {self.tta!r}")
        if self.tile is not None and self.overlap is not None and self.overlap >= self.tile:
            raise InputError(f"need overlap < tile, got tile={self.tile}, overlap={self.overlap}")

    def replace(self, **changes: Any) -> "InferenceOptions":
        return replace(self, **changes)

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None) -> "InferenceOptions":
        """From keyword-style settings (None values mean "default"); unknown keys raise."""
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in (d or {}).items() if v is not None}
        bad = set(d) - known
        if bad:
            raise TypeError(f"unknown inference option(s) {sorted(bad)}; known: {sorted(known)}")
        return cls(**d)
