"""Shared machinery of the pyramid sources (``io.source``, ``io.tiff``, ``io.openslide_source``):
level choice, the global working grid (``read_working``) through the project's one resampler,
thumbnails, and the MPP decision (``resolve_mpp``). See ``io.source`` for the sampling rule."""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Iterator, Sequence

import numpy as np

from ..errors import InputError
from .image import validate_mpp
from .mpp import MppInfo

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]


@contextlib.contextmanager
def closed_on_failure(handle, what: str) -> Iterator[None]:
    """The open-time checks of a pyramid reader: on any failure inside, ``handle`` (the open
    file / slide) is closed; an InputError passes as it is, any other exception becomes the
    one-line ``InputError(f"{what}: {e}")``."""
    try:
        yield
    except InputError:
        handle.close()
        raise
    except Exception as e:
        handle.close()
        raise InputError(f"{what}: {e}") from None


# --------------------------------------------------------------------------- sampling


def _resampler():
    """The project's one resampler (``segtme.resample``, a leaf module below ``io``), imported
    on first use."""
    from .. import resample as r

    return r.resample, r.input_window


def out_size(box: Box, src_mpp: float, mpp: float) -> tuple[int, int]:
    """(height, width) of ``read_region(box, mpp)``: round half up of ``h*s``, ``w*s``, >= 1."""
    s = src_mpp / mpp
    return max(1, int(math.floor(box[3] * s + 0.5))), max(1, int(math.floor(box[2] * s + 0.5)))


def _check_box(box: Sequence[int], mpp: float) -> tuple[Box, float]:
    try:
        x, y, w, h = (int(v) for v in box)
    except (TypeError, ValueError):
        raise InputError(f"region box must be 4 integers (x, y, w, h level-0 px), got {box!r}") from None
    if w <= 0 or h <= 0:
        raise InputError(f"region box {box!r} has zero size")
    return (x, y, w, h), validate_mpp(mpp, "requested MPP")


class _Levels:
    """Shared sampling logic over a pyramid; subclasses provide ``_read_level``."""

    path: str | None
    size: tuple[int, int]
    mpp: float
    mpp_source: str
    #: (width, height) per level, level 0 first
    level_sizes: list[tuple[int, int]]

    def level_downsample(self, k: int) -> tuple[float, float]:
        """(x, y) downsample of level k relative to level 0."""
        W0, H0 = self.size
        w, h = self.level_sizes[k]
        return W0 / w, H0 / h

    def best_level(self, mpp: float) -> int:
        """The coarsest level whose resolution is at least as fine as ``mpp`` (within 1 %)."""
        best = 0
        for k in range(len(self.level_sizes)):
            d = min(self.level_downsample(k))
            if self.mpp * d <= mpp * 1.01:
                if d > min(self.level_downsample(best)):
                    best = k
        return best

    def _read_level(self, k: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """(y1-y0, x1-x0, 3) uint8 of level k, coordinates within the level (caller clips)."""
        raise NotImplementedError

    def read_level(self, k: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Level-k pixels [y0:y1, x0:x1]; outside the level: white."""
        w, h = self.level_sizes[k]
        out_h, out_w = max(0, y1 - y0), max(0, x1 - x0)
        cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        if cx0 == x0 and cy0 == y0 and cx1 == x1 and cy1 == y1:
            return self._read_level(k, x0, y0, x1, y1)
        out = np.full((out_h, out_w, 3), 255, np.uint8)
        if cx1 > cx0 and cy1 > cy0:
            out[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = self._read_level(k, cx0, cy0, cx1, cy1)
        return out

    def working_grid(self, mpp: float) -> tuple[float, tuple[int, int]]:
        """(s, (width, height)): working px per level-0 px and the slide's size in working px
        at ``mpp`` (``floor(n * s + 0.5)``, the resampler's rounding)."""
        s = self.mpp / validate_mpp(mpp, "requested MPP")
        if abs(s - 1.0) < 1e-6:
            s = 1.0
        W, H = self.size
        return s, (max(1, int(math.floor(W * s + 0.5))), max(1, int(math.floor(H * s + 0.5))))

    def read_working(self, region: Sequence[int], mpp: float) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` of the whole slide resampled to ``mpp`` µm/px, where
        ``region = (x0, y0, x1, y1)`` is in *global working px* (working pixel ``X`` covers
        level-0 ``[X / s, (X + 1) / s)``, ``s = self.mpp / mpp``), computed from the pyramid
        level nearest ``mpp`` and only the level pixels the resampler's support needs. Inside
        the slide this is exactly ``resample(whole level, s_k)[y0:y1, x0:x1]`` (edges
        replicated at the slide's border); samples outside the slide are white."""
        x0, y0, x1, y1 = (int(v) for v in region)
        if x1 <= x0 or y1 <= y0:
            raise InputError(f"empty working region {tuple(region)!r}")
        mpp = validate_mpp(mpp, "requested MPP")
        k = self.best_level(mpp)
        d = sum(self.level_downsample(k)) / 2.0
        s = self.mpp * d / mpp  # working px per level-k px
        if abs(s - 1.0) < 1e-6:
            s = 1.0
        lw, lh = self.level_sizes[k]
        shape = (y1 - y0, x1 - x0)
        if s == 1.0:
            return self.read_level(k, x0, y0, x1, y1)
        resample, input_window = _resampler()
        iy0, ix0, iy1, ix1 = input_window((x0, y0, x1, y1), s, (lh, lw))
        if ix1 <= ix0 or iy1 <= iy0:
            return np.full(shape + (3,), 255, np.uint8)
        crop = np.ascontiguousarray(self._read_level(k, ix0, iy0, ix1, iy1))
        out = resample(crop, s, shape, origin_out=(y0, x0), origin_in=(iy0, ix0))
        if not out.flags.writeable:
            out = out.copy()
        # output pixels centred outside the level (the region reaches past the slide): white
        cx = (np.arange(x0, x1) + 0.5) / s
        cy = (np.arange(y0, y1) + 0.5) / s
        outx, outy = (cx < 0) | (cx > lw), (cy < 0) | (cy > lh)
        if outx.any():
            out[:, outx] = 255
        if outy.any():
            out[outy, :] = 255
        return out

    def working_box(self, box: Box, mpp: float) -> tuple[int, int, int, int]:
        """The global working-px region ``(x0, y0, x1, y1)`` of a level-0 ``box``: origin
        ``floor(x * s + 0.5)``, size ``out_size`` (so regions share one grid)."""
        box, mpp = _check_box(box, mpp)
        s = self.mpp / mpp
        if abs(s - 1.0) < 1e-6:
            s = 1.0
        gx, gy = int(math.floor(box[0] * s + 0.5)), int(math.floor(box[1] * s + 0.5))
        oh, ow = out_size(box, self.mpp, mpp)
        return gx, gy, gx + ow, gy + oh

    def read_region(self, box: Box, mpp: float) -> np.ndarray:
        """Level-0 ``box = (x, y, w, h)`` resampled to ``mpp`` µm/px: (round(h*s), round(w*s), 3)
        uint8 with ``s = self.mpp / mpp``; = ``read_working(working_box(box, mpp), mpp)``."""
        return self.read_working(self.working_box(box, mpp), mpp)

    def thumbnail(self, mpp: float, block: int = 2048) -> np.ndarray:
        """The whole slide at ``mpp`` µm/px (coarse: for tissue detection), read block by block
        from the nearest level so memory stays ~ the thumbnail plus one block (each block reads
        at most ~4096² level px, also when the slide has no coarse level)."""
        _, (ow, oh) = self.working_grid(mpp)
        k = self.best_level(mpp)
        s_k = self.mpp * min(self.level_downsample(k)) / mpp  # thumbnail px per level-k px
        if s_k < 1 / 8:
            log.warning("%s: no pyramid level near %.3g µm/px (nearest %.3g); the thumbnail is read from "
                        "%.0fx finer pixels (slow)", self.path, mpp, mpp * s_k, 1 / s_k)
        block = max(16, min(int(block), int(4096 * s_k)))
        out = np.empty((oh, ow, 3), np.uint8)
        for wy in range(0, oh, block):
            for wx in range(0, ow, block):
                x1, y1 = min(ow, wx + block), min(oh, wy + block)
                out[wy:y1, wx:x1] = self.read_working((wx, wy, x1, y1), mpp)
        return out

    def close(self) -> None:  # pragma: no cover - overridden
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path or '<array>'}, {self.size[0]}x{self.size[1]} px, {self.mpp:.4g} µm/px from {self.mpp_source})"


def resolve_mpp(found: MppInfo, mpp: float | None, where: str) -> tuple[float, str]:
    """(mpp, source): the user's ``mpp`` when given (validated), else the file's, else an
    InputError saying whether the file's MPP is invalid or absent."""
    if mpp is not None:
        use = validate_mpp(mpp, "--mpp")
        if found.mpp is not None and abs(found.mpp - use) > 0.02 * use:
            log.warning("%s: using --mpp %.4g although the file says %.4g µm/px (%s)", where, use, found.mpp, found.source)
        return use, "user"
    if found.mpp is not None:
        return found.mpp, found.source
    if found.problem:
        raise InputError(f"{where}: {found.problem}; pass --mpp")
    raise InputError(f"{where}: the file has no resolution information (no Aperio MPP, OME PhysicalSizeX, "
                     "TIFF resolution tags or OpenSlide mpp); pass its microns per pixel (--mpp)")
