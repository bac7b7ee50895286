"""Tiled / pyramidal TIFF read lazily with ``tifffile`` (+ ``imagecodecs`` for JPEG, JPEG 2000,
LZW, zlib/deflate, WebP, ... tiles): Aperio SVS, OME-TIFF (SubIFD pyramids), generic tiled TIFF.

Only the tiles (or strips) a request overlaps are read and decoded, one at a time, through a
small LRU cache (``CACHE_BYTES``), so memory does not depend on the slide size. Levels are the
main series' pyramid levels (``series.levels``: SVS reduced pages, OME SubIFDs) ordered from
full resolution down; label / macro / thumbnail images are ignored.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import InputError
from .image import _check_size, as_rgb_uint8, max_pixels_default
from .mpp import MppInfo, tiff_mpp
from .levels import _Levels, closed_on_failure, resolve_mpp

log = logging.getLogger(__name__)

#: decoded tiles kept (bytes); a 1024-px chunk at 0.5 µm/px from a 0.25 µm/px slide needs ~60
#: 256-px tiles = 12 MiB, so neighbouring chunks reuse most of theirs
CACHE_BYTES = 96 * 2**20


class _Level:
    """One pyramid level: its keyframe page and segment (tile or strip) geometry."""

    def __init__(self, page, path: Path, max_pixels: int) -> None:
        self.page = page
        axes = page.axes
        dims = dict(zip(axes, page.shape))
        extra = {a: n for a, n in dims.items() if a not in "YXS" and n > 1}
        if extra:
            raise InputError(f"{path}: TIFF level has axes {axes} {page.shape}; only 2-D RGB or greyscale "
                             "images (Y, X[, samples]) are supported")
        self.width, self.height = int(dims["X"]), int(dims["Y"])
        self.samples = int(dims.get("S", 1))
        if page.dtype is None or page.dtype.kind == "f":
            raise InputError(f"{path}: floating-point or unknown pixel type {page.dtype}; convert to 8-bit RGB")
        if page.planarconfig == 2 and self.samples > 1:
            self.mode = "whole"  # separate colour planes: decode the level at once (small images only)
        elif page.is_tiled:
            self.mode = "tiles"
            self.tw, self.th = int(page.tilewidth), int(page.tilelength)
        else:
            self.mode = "strips"
            self.tw, self.th = self.width, min(self.height, int(page.rowsperstrip or self.height))
        if self.mode == "whole" or (self.mode == "strips" and self.th * self.width > max_pixels):
            _check_size(self.width, self.height, max_pixels, str(path))
            self.mode = "whole"
        if self.mode != "whole":
            self.ntx = -(-self.width // self.tw)
            self.nty = -(-self.height // self.th)
            if len(page.dataoffsets) < self.ntx * self.nty:
                raise InputError(f"{path}: TIFF level {self.width}x{self.height} lists {len(page.dataoffsets)} "
                                 f"segments, expected {self.ntx * self.nty} (corrupt?)")


class TiffSource(_Levels):
    """A TIFF slide (see the module docstring). mpp: level-0 µm/px override."""

    def __init__(self, path: str | Path, mpp: float | None = None, *, max_pixels: int | None = None) -> None:
        import tifffile

        p = Path(path)
        self.path = str(p)
        self._lock = threading.Lock()
        self._cache: OrderedDict = OrderedDict()
        self._cache_bytes = 0
        self._notes_done = False
        limit = int(max_pixels) if max_pixels is not None else max_pixels_default()
        try:
            self._tif = tifffile.TiffFile(p)
        except Exception as e:
            raise InputError(f"{p}: cannot read TIFF (corrupt or truncated?): {e}") from None
        with closed_on_failure(self._tif, f"{p}: cannot read TIFF (corrupt, truncated or unsupported compression?)"):
            if not self._tif.series:
                raise InputError(f"{p}: TIFF has no images")
            series = self._tif.series[0]
            levels = list(getattr(series, "levels", None) or [series])
            pages = [lv.keyframe if hasattr(lv, "keyframe") else lv.pages[0] for lv in levels]
            if len(pages) == 1 and len(self._tif.pages) > 1:
                # a pyramid tifffile did not group (generic TIFF with reduced pages): tiled pages
                # of the same aspect and layout, each smaller than the last
                base = pages[0]
                for pg in self._tif.pages[1:]:
                    pg = pg.keyframe if hasattr(pg, "keyframe") else pg
                    if pg.is_tiled and pg.samplesperpixel == base.samplesperpixel and pg.dtype == base.dtype:
                        pages.append(pg)
            self._levels = [_Level(pg, p, limit) for pg in pages]
            self._levels.sort(key=lambda lv: -lv.width)
            # keep only levels that really are reductions of level 0 (same aspect, smaller)
            lv0 = self._levels[0]
            keep = [lv0]
            for lv in self._levels[1:]:
                if lv.width < keep[-1].width and abs(lv.width / lv.height - lv0.width / lv0.height) < 0.05 * lv0.width / lv0.height:
                    keep.append(lv)
            self._levels = keep
            self.size = (lv0.width, lv0.height)
            self.level_sizes = [(lv.width, lv.height) for lv in self._levels]
            ome = self._tif.ome_metadata if self._tif.is_ome else None
            found = tiff_mpp(lv0.page, self.path, ome)
            self.mpp, self.mpp_source = resolve_mpp(found, mpp, self.path)
            self.compression = str(getattr(lv0.page.compression, "name", lv0.page.compression))
            # decode one segment now so a missing codec or corrupt data fails before any work
            self._read_level(0, 0, 0, min(lv0.width, 8), min(lv0.height, 8))

    # ------------------------------------------------------------------ segments

    def _segment(self, k: int, idx: int) -> np.ndarray:
        """Decoded segment ``idx`` of level k as (th, tw, S) (cached)."""
        key = (k, idx)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        lv = self._levels[k]
        page = lv.page
        off, cnt = int(page.dataoffsets[idx]), int(page.databytecounts[idx])
        fh = self._tif.filehandle
        if cnt == 0:  # sparse / missing tile: background
            seg = np.full((lv.th, lv.tw, lv.samples), 255 if page.dtype == np.uint8 else 0, page.dtype)
        else:
            with fh.lock:
                fh.seek(off)
                data = fh.read(cnt)
            if len(data) < cnt:
                raise InputError(f"{self.path}: TIFF is truncated (tile {idx} of level {k} ends past the file)")
            try:
                arr, _, shape = page.decode(data, idx, jpegtables=page.jpegtables)
            except Exception as e:
                raise InputError(f"{self.path}: cannot decode tile {idx} of level {k} "
                                 f"({page.compression!s}; corrupt, or codec missing: pip install imagecodecs): {e}") from None
            if arr is None:
                seg = np.full((lv.th, lv.tw, lv.samples), 255, page.dtype)
            else:
                seg = np.asarray(arr).reshape(shape[-3], shape[-2], shape[-1]) if arr.ndim >= 3 else np.asarray(arr)
                seg = seg.reshape(seg.shape[0], seg.shape[1], -1)
        with self._lock:
            self._cache[key] = seg
            self._cache_bytes += seg.nbytes
            while self._cache_bytes > CACHE_BYTES and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= old.nbytes
        return seg

    def _read_level(self, k: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        lv = self._levels[k]
        if lv.mode == "whole":
            key = (k, -1)
            with self._lock:
                whole = self._cache.get(key)
            if whole is None:
                try:
                    whole = as_rgb_uint8(lv.page.asarray(), self.path)
                except InputError:
                    raise
                except Exception as e:
                    raise InputError(f"{self.path}: cannot read TIFF level {k}: {e}") from None
                with self._lock:
                    self._cache[key] = whole
            return whole[y0:y1, x0:x1]
        out = None
        tx0, tx1 = x0 // lv.tw, (x1 - 1) // lv.tw
        ty0, ty1 = y0 // lv.th, (y1 - 1) // lv.th
        for ty in range(ty0, ty1 + 1):
            for tx in range(tx0, tx1 + 1):
                seg = self._segment(k, ty * lv.ntx + tx)
                if out is None:
                    out = np.empty((y1 - y0, x1 - x0, seg.shape[2]), seg.dtype)
                sx0, sy0 = tx * lv.tw, ty * lv.th
                cx0, cy0 = max(x0, sx0), max(y0, sy0)
                cx1, cy1 = min(x1, sx0 + lv.tw, lv.width), min(y1, sy0 + lv.th, lv.height)
                part = seg[cy0 - sy0:cy1 - sy0, cx0 - sx0:cx1 - sx0]
                out[cy0 - y0:cy0 - y0 + part.shape[0], cx0 - x0:cx0 - x0 + part.shape[1]] = part
        assert out is not None
        if out.dtype == np.uint8 and out.shape[2] == 3:
            return out
        notes: list[str] = []
        rgb = as_rgb_uint8(out, self.path, notes)
        if notes and not self._notes_done:
            self._notes_done = True
            log.info("%s: %s", self.path, "; ".join(notes))
        return rgb

    def close(self) -> None:
        with self._lock:
            self._cache.clear()
            self._cache_bytes = 0
        self._tif.close()

    @property
    def mpp_info(self) -> MppInfo:
        return MppInfo(self.mpp, self.mpp_source)
