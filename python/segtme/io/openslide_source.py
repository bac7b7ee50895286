"""Slides read with OpenSlide (``openslide-python`` + the ``openslide-bin`` wheel): Hamamatsu
NDPI/VMS, MIRAX MRXS, Leica SCN, Philips TIFF, Ventana BIF, Sakura, and also Aperio SVS /
generic tiled TIFF when asked for (``open_source(reader="openslide")``).

Regions are read with ``OpenSlide.read_region`` from the level ``_Levels.best_level`` picks
(RGBA, composited on white: OpenSlide returns transparent pixels outside the scanned area).
MPP: ``openslide.mpp-x``; for TIFF-based files the Aperio / OME / resolution-tag rules of
``io.mpp`` are tried first so an invalid Aperio value is reported as invalid.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ..errors import InputError
from .mpp import MppInfo, openslide_mpp, tiff_mpp
from .image import TIFF_MAGIC
from .levels import _Levels, closed_on_failure, resolve_mpp


def _tiff_metadata_mpp(path: Path) -> MppInfo:
    with path.open("rb") as f:
        if f.read(4) not in TIFF_MAGIC:
            return MppInfo()
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return tiff_mpp(tif.pages[0], str(path), tif.ome_metadata if tif.is_ome else None)
    except Exception:
        return MppInfo()


class OpenSlideSource(_Levels):
    """A slide opened with OpenSlide (see the module docstring). mpp: level-0 µm/px override."""

    def __init__(self, path: str | Path, mpp: float | None = None) -> None:
        try:
            import openslide
        except ImportError as e:
            raise InputError(f"{path}: reading this format needs OpenSlide: pip install openslide-python openslide-bin ({e})") from None
        p = Path(path)
        self.path = str(p)
        self._lock = threading.Lock()
        try:
            self._slide = openslide.OpenSlide(str(p))
        except Exception as e:  # OpenSlideUnsupportedFormatError, OpenSlideError
            raise InputError(f"{p}: OpenSlide cannot open this file (corrupt or unsupported format): {e}") from None
        with closed_on_failure(self._slide, f"{p}: OpenSlide cannot read this slide"):
            self.vendor = self._slide.properties.get("openslide.vendor", "")
            self.size = tuple(int(v) for v in self._slide.dimensions)  # type: ignore[assignment]
            self.level_sizes = [tuple(int(v) for v in d) for d in self._slide.level_dimensions]  # type: ignore[misc]
            found = _tiff_metadata_mpp(p)
            if not (found.found or found.problem):
                found = openslide_mpp(self._slide.properties)
            self.mpp, self.mpp_source = resolve_mpp(found, mpp, self.path)
            self._read_level(0, 0, 0, min(8, self.size[0]), min(8, self.size[1]))

    def _read_level(self, k: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        dx, dy = self.level_downsample(k)
        loc = (int(round(x0 * dx)), int(round(y0 * dy)))  # OpenSlide wants the level-0 position
        try:
            with self._lock:
                im = self._slide.read_region(loc, k, (int(x1 - x0), int(y1 - y0)))
        except Exception as e:
            raise InputError(f"{self.path}: OpenSlide cannot read level {k} at {loc}: {e}") from None
        a = np.asarray(im)
        rgb = a[:, :, :3].astype(np.float32)
        alpha = a[:, :, 3:4].astype(np.float32) / 255.0
        return np.round(rgb * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)

    def close(self) -> None:
        self._slide.close()
