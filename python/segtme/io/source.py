"""Image sources: one interface for in-memory arrays, PNG/JPEG, tiled pyramidal TIFF (SVS,
OME-TIFF, generic) and OpenSlide slides (NDPI, MRXS, SCN, Philips, ...).

The agreed interface (``ImageSource``)::

    path: str | None          # file path, None for in-memory
    size: (width, height)     # level-0 px
    mpp: float                # level-0 µm/px
    mpp_source: str           # "aperio", "ome", "tiff-tags", "openslide", "user", ...
    read_region(box, mpp) -> (round(h * self.mpp / mpp), round(w * self.mpp / mpp), 3) uint8
    close()

``box = (x, y, w, h)`` in level-0 px, ``s = self.mpp / mpp`` working px per level-0 px (pixel-centre
convention of ``segtme.resample``) on ONE global working grid: working pixel ``X`` covers
level-0 ``[X / s, (X + 1) / s)`` and a box starts at working pixel ``floor(x * s + 0.5)``. So for
an in-memory image ``read_region((0, 0, W, H), m)`` equals ``segtme.resample.resample`` of the
whole image, and nuclei found in working px map back by ``x0 = X / s`` for every region.
Pixels outside the slide are white (background). Pixels come from the pyramid level nearest
``mpp`` that is not coarser than it, read tile by tile (never the whole slide).

``read_working((x0, y0, x1, y1), mpp)`` reads any global working-px window directly (what
``GridPredictor`` asks for per chunk); ``working_box`` maps a level-0 box onto that grid.

``open_source(path_or_array, mpp=None)`` picks the reader from the file's content (magic bytes,
then OpenSlide's vendor detection), never from its name. The MPP comes from the file's metadata
(``io.mpp``); a given ``mpp`` overrides it; when the file has none or an invalid one and none is
given, a one-line ``InputError`` says which ("MPP -0.5 in the Aperio description is not valid;
pass --mpp").
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import InputError
from .image import TIFF_MAGIC, as_rgb_uint8, image_from_array, max_pixels_default, read_image, validate_mpp
from .levels import Box, _Levels, out_size, resolve_mpp  # noqa: F401  (re-exported)
from .mpp import MppInfo

log = logging.getLogger(__name__)

#: readers ``open_source(reader=...)`` accepts
READERS = ("auto", "tifffile", "openslide", "pil")
#: OpenSlide vendors that are read with OpenSlide even though the file is a TIFF (tifffile reads
#: Aperio SVS, OME-TIFF and generic tiled TIFF itself, including JPEG 2000 and OME sizes)
_OPENSLIDE_TIFF_VENDORS = {"hamamatsu", "leica", "philips", "ventana", "trestle"}


@runtime_checkable
class ImageSource(Protocol):
    """A readable image or slide (see the module docstring for the exact sampling rule)."""

    path: str | None
    size: tuple[int, int]
    mpp: float
    mpp_source: str

    def read_region(self, box: Box, mpp: float) -> np.ndarray: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- in memory


class ArraySource(_Levels):
    """An in-memory (H, W, 3) uint8 image at ``mpp`` µm/px (one level)."""

    def __init__(self, rgb: np.ndarray, mpp: float, mpp_source: str = "user", path: str | None = None,
                 notes: list[str] | None = None) -> None:
        a = np.asarray(rgb)
        if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
            a = as_rgb_uint8(a, path or "<array>", notes)
        self.rgb = np.ascontiguousarray(a)
        self.path = path
        self.size = (int(a.shape[1]), int(a.shape[0]))
        self.mpp = validate_mpp(mpp, "MPP")
        self.mpp_source = mpp_source
        self.level_sizes = [self.size]
        self.notes = list(notes or [])

    def _read_level(self, k: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        return self.rgb[y0:y1, x0:x1]

    def close(self) -> None:
        pass


class SubSource(_Levels):
    """A level-0 box ``(x0, y0, x1, y1)`` of another source, as a source of its own (size
    ``(x1 - x0, y1 - y0)``, same MPP) on the parent's *global working grid*: its working px
    ``X`` at ``mpp`` is the parent's ``X + floor(x0 * s + 0.5)``, so a region of a slide gives
    exactly the pixels (and tiles) the whole slide would. Coordinates found in the sub-source
    go back to the parent's level-0 px by adding ``offset_l0(mpp)`` (= the working origin / s,
    within half a working px of ``(x0, y0)``)."""

    def __init__(self, parent: "ImageSource", box: Sequence[int]) -> None:
        x0, y0, x1, y1 = (int(v) for v in box)
        W, H = parent.size
        if not (0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H):
            raise InputError(f"region {tuple(box)} is not inside the {W}x{H} px slide")
        self.parent = parent
        self.box = (x0, y0, x1, y1)
        self.path = parent.path
        self.size = (x1 - x0, y1 - y0)
        self.mpp = parent.mpp
        self.mpp_source = parent.mpp_source
        self.level_sizes = [self.size]

    def _origin(self, mpp: float) -> tuple[int, int]:
        gx0, gy0, _, _ = self.parent.working_box((self.box[0], self.box[1], 1, 1), mpp)
        return gx0, gy0

    def offset_l0(self, mpp: float) -> tuple[float, float]:
        """Parent level-0 px of this source's working-grid origin at ``mpp`` (add to results)."""
        s, _ = self.parent.working_grid(mpp)
        gx0, gy0 = self._origin(mpp)
        return gx0 / s, gy0 / s

    def working_grid(self, mpp: float) -> tuple[float, tuple[int, int]]:
        s, _ = self.parent.working_grid(mpp)
        x0, y0, x1, y1 = self.parent.working_box((self.box[0], self.box[1], self.size[0], self.size[1]), mpp)
        return s, (x1 - x0, y1 - y0)

    def read_working(self, region: Sequence[int], mpp: float) -> np.ndarray:
        gx0, gy0 = self._origin(mpp)
        x0, y0, x1, y1 = (int(v) for v in region)
        return self.parent.read_working((x0 + gx0, y0 + gy0, x1 + gx0, y1 + gy0), mpp)

    def working_box(self, box: Box, mpp: float) -> tuple[int, int, int, int]:
        gx0, gy0 = self._origin(mpp)
        x0, y0, x1, y1 = self.parent.working_box((box[0] + self.box[0], box[1] + self.box[1], box[2], box[3]), mpp)
        return x0 - gx0, y0 - gy0, x1 - gx0, y1 - gy0

    def _read_level(self, k: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        return self.parent.read_level(0, x0 + self.box[0], y0 + self.box[1], x1 + self.box[0], y1 + self.box[1])

    def close(self) -> None:  # the parent owns the file
        pass


# --------------------------------------------------------------------------- open


def sniff(path: Path) -> str:
    """The container by content: "tiff", "png", "jpeg", "other" (magic bytes only)."""
    with path.open("rb") as f:
        head = f.read(16)
    if head[:4] in TIFF_MAGIC:
        return "tiff"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    return "other"


def _openslide_vendor(path: Path) -> str | None:
    try:
        import openslide
    except ImportError:
        return None
    try:
        return openslide.OpenSlide.detect_format(str(path))
    except Exception:  # openslide raises OpenSlideError / OSError on unreadable files
        return None


def open_source(src: "str | os.PathLike[str] | np.ndarray | ImageSource", mpp: float | None = None, *,
                reader: str = "auto", max_pixels: int | None = None) -> "ImageSource":
    """Open a file or wrap an array as an ``ImageSource`` (see the module docstring).

    src: a path (PNG, JPEG, TIFF/SVS/OME-TIFF, or anything OpenSlide reads), an (H, W[, C])
    array (then ``mpp`` is required), or an ImageSource (returned as is; ``mpp`` must be None).
    mpp: level-0 µm/px; overrides the file's metadata; required when the file has none.
    reader: "auto" (by content) | "tifffile" | "openslide" | "pil".
    max_pixels: for non-tiled files that must be decoded whole (PNG/JPEG, single-strip TIFF):
    refuse more pixels than this (default $SEGTME_MAX_PIXELS / 400 Mpx). Tiled slides have no
    size limit: they are read lazily.
    Raises InputError (one line) for missing/corrupt/unsupported files and missing/invalid MPP.
    """
    if reader not in READERS:
        raise InputError(f"reader must be one of {', '.join(READERS)}, got {reader!r}")
    if isinstance(src, _Levels) or (not isinstance(src, (str, os.PathLike, np.ndarray)) and isinstance(src, ImageSource)):
        if mpp is not None:
            raise InputError("mpp cannot be given for an already opened source")
        return src  # type: ignore[return-value]
    if isinstance(src, np.ndarray) or not isinstance(src, (str, os.PathLike)):
        img = image_from_array(np.asarray(src), mpp, max_pixels=max_pixels)
        if img.mpp is None:
            raise InputError("an in-memory image needs its microns per pixel (mpp)")
        return ArraySource(img.rgb, img.mpp, "user", None, img.notes)
    p = Path(src)
    if not p.exists():
        raise InputError(f"image not found: {p}")
    if p.is_dir():
        if p.suffix.lower() == ".mrxs" or not any(p.iterdir()):
            raise InputError(f"{p}: is a folder, not an image file (for MRXS open the .mrxs file)")
        raise InputError(f"not a file: {p} (use `segtme batch` for folders)")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: file is empty (0 bytes)")
    kind = sniff(p)
    choice = reader
    if choice == "auto":
        if kind == "tiff":
            vendor = _openslide_vendor(p)
            choice = "openslide" if vendor in _OPENSLIDE_TIFF_VENDORS else "tifffile"
        elif kind in ("png", "jpeg"):
            choice = "pil"
        else:
            choice = "openslide" if _openslide_vendor(p) else "pil"
    if choice == "tifffile":
        if kind != "tiff":
            raise InputError(f"{p}: not a TIFF file (by content: {kind}); use reader='auto'")
        from .tiff import TiffSource

        return TiffSource(p, mpp, max_pixels=max_pixels)
    if choice == "openslide":
        from .openslide_source import OpenSlideSource

        return OpenSlideSource(p, mpp)
    img = read_image(p, max_pixels=max_pixels if max_pixels is not None else max_pixels_default())
    use, how = resolve_mpp(MppInfo(img.mpp, img.mpp_source, img.mpp_problem), mpp, str(p))
    return ArraySource(img.rgb, use, how, str(p), img.notes)
