"""Tissue detection on a low-resolution thumbnail, so background never reaches the model.

The rule (the one TIAToolbox's ``OtsuTissueMasker``/``MorphologicalMasker`` and HistoQC's
``getIntensityThresholdOtsu`` + ``removeSmallObjects`` use, with fixed floors so an all-tissue or
all-glass slide is not split in two by Otsu):

1. thumbnail at ``TissueParams.thumb_mpp`` µm/px (default 8 µm/px: 1/32 of a 40x scan), read
   block by block from the coarsest suitable pyramid level;
2. a pixel is tissue when its optical density ``OD = -log10((I + 1) / 256)`` averaged over RGB
   exceeds ``od_min`` (0.08: white glass is ~0.02, pale eosin ~0.15) **or** its HSV saturation
   exceeds ``saturation_min`` (0.10), and it is not near-black (all channels < ``dark_max`` = 30:
   slide edges, pen marks are grey/black, tissue is never this dark at thumbnail scale);
3. morphology: binary closing with a disk of ``closing_um`` (16 µm) to join fragmented stroma,
   holes smaller than ``min_hole_um2`` (0.01 mm²) filled, and pieces smaller than
   ``min_tissue_um2`` (**0.01 mm² = 10 000 µm²**, ~100x100 µm; dust and debris) removed.

The mask (``TissueMask``) knows its µm/px, gives the tissue area in mm², its outline as QuPath
annotation GeoJSON in level-0 px, and a PNG.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class TissueParams:
    """Tissue detection settings (units in the names: µm, µm², µm/px)."""

    thumb_mpp: float = 8.0
    od_min: float = 0.08
    saturation_min: float = 0.10
    dark_max: int = 30
    closing_um: float = 16.0
    min_tissue_um2: float = 10_000.0
    min_hole_um2: float = 10_000.0

    def __post_init__(self) -> None:
        for name in ("thumb_mpp", "od_min", "saturation_min", "min_tissue_um2", "min_hole_um2"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0) or (name == "thumb_mpp" and v <= 0):
                raise InputError(f"tissue detection: {name} must be a finite non-negative number, got {v!r}")


@dataclass
class TissueMask:
    """Boolean mask over the whole slide; pixel (r, c) covers level-0
    ``[c * f, (c + 1) * f) x [r * f, (r + 1) * f)`` with ``f = mpp / slide_mpp``."""

    mask: np.ndarray
    mpp: float
    slide_mpp: float
    slide_size: tuple[int, int]

    @property
    def factor(self) -> float:
        """Level-0 px per mask px."""
        return self.mpp / self.slide_mpp

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def area_mm2(self, mask: np.ndarray | None = None) -> float:
        """Tissue area in mm² (mask px count x (mpp µm)² / 1e6)."""
        m = self.mask if mask is None else mask
        return float(np.count_nonzero(m)) * self.mpp * self.mpp / 1e6

    def box_to_mask(self, box_l0: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
        """Mask-px window (c0, r0, c1, r1) covering a level-0 (x0, y0, x1, y1) box, clipped."""
        f = self.factor
        h, w = self.mask.shape
        c0, r0 = max(0, int(math.floor(box_l0[0] / f))), max(0, int(math.floor(box_l0[1] / f)))
        c1, r1 = min(w, int(math.ceil(box_l0[2] / f))), min(h, int(math.ceil(box_l0[3] / f)))
        return c0, r0, c1, r1

    def any_in(self, box_l0: tuple[float, float, float, float], mask: np.ndarray | None = None) -> bool:
        """True when any tissue mask px overlaps the level-0 (x0, y0, x1, y1) box."""
        m = self.mask if mask is None else mask
        c0, r0, c1, r1 = self.box_to_mask(box_l0)
        return c1 > c0 and r1 > r0 and bool(m[r0:r1, c0:c1].any())

    def polygons(self, mask: np.ndarray | None = None):
        """Shapely (Multi)Polygon of the mask in level-0 px (exact pixel outlines, holes kept)."""
        import shapely
        from shapely.geometry import box

        m = self.mask if mask is None else mask
        f = self.factor
        boxes = []
        for r in range(m.shape[0]):
            row = m[r]
            if not row.any():
                continue
            d = np.diff(np.concatenate([[0], row.view(np.uint8), [0]]).astype(np.int8))
            starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
            boxes.extend(box(a * f, r * f, b * f, (r + 1) * f) for a, b in zip(starts, ends))
        if not boxes:
            return shapely.geometry.MultiPolygon()
        return shapely.union_all(boxes).simplify(0.0)

    def to_features(self, name: str = "Tissue", mask: np.ndarray | None = None) -> list[dict[str, Any]]:
        """QuPath annotation Features (one per connected piece), level-0 px, with area in µm²."""
        from shapely.geometry import mapping

        g = self.polygons(mask)
        parts = list(getattr(g, "geoms", [g])) if not g.is_empty else []
        feats = []
        for p in parts:
            feats.append({
                "type": "Feature",
                "geometry": mapping(p),
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": name, "color": [80, 160, 80]},
                    "isLocked": True,
                    "measurements": {"Area µm^2": round(float(p.area) * self.slide_mpp ** 2, 1)},
                },
            })
        return feats

    def write_geojson(self, path: str | Path) -> Path:
        from ..atomic import atomic_write_text

        fc = {"type": "FeatureCollection", "features": self.to_features()}
        return atomic_write_text(path, json.dumps(fc))

    def write_png(self, path: str | Path) -> Path:
        """The mask as an 8-bit PNG (255 tissue, 0 background), one px per mask px."""
        import io

        from PIL import Image

        from ..atomic import atomic_write_bytes

        buf = io.BytesIO()
        Image.fromarray(self.mask.astype(np.uint8) * 255, "L").save(buf, format="PNG")
        return atomic_write_bytes(path, buf.getvalue())


def tissue_pixels(rgb: np.ndarray, params: TissueParams = TissueParams()) -> np.ndarray:
    """Per-pixel tissue rule (step 2 of the module docstring) on an (h, w, 3) uint8 thumbnail."""
    a = rgb.astype(np.float32)
    od = -np.log10((a + 1.0) / 256.0).mean(axis=2)
    mx, mn = a.max(axis=2), a.min(axis=2)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1.0), 0.0)
    dark = mx < params.dark_max
    return ((od > params.od_min) | (sat > params.saturation_min)) & ~dark


def clean_mask(mask: np.ndarray, mpp: float, params: TissueParams = TissueParams()) -> np.ndarray:
    """Morphology (step 3): closing, small holes filled, small pieces removed (sizes in µm)."""
    from scipy import ndimage as ndi
    from skimage import morphology

    m = mask.astype(bool)
    r = int(round(params.closing_um / mpp))
    if r >= 1:
        m = ndi.binary_closing(np.pad(m, r, mode="constant"), morphology.disk(r).astype(bool))[r:-r, r:-r]
    px_area = mpp * mpp
    holes = int(params.min_hole_um2 / px_area)
    if holes > 0:
        m = morphology.remove_small_holes(m, max_size=holes) if _has_max_size() else morphology.remove_small_holes(m, area_threshold=holes)
    small = int(params.min_tissue_um2 / px_area)
    if small > 0:
        m = morphology.remove_small_objects(m, max_size=small) if _has_max_size() else morphology.remove_small_objects(m, min_size=small)
    return m


def _has_max_size() -> bool:
    """scikit-image >= 0.26 names the size argument ``max_size`` (min_size deprecated)."""
    import inspect

    from skimage import morphology

    return "max_size" in inspect.signature(morphology.remove_small_objects).parameters


def detect_tissue(source, params: TissueParams = TissueParams()) -> TissueMask:
    """Tissue mask of an ``ImageSource`` (see the module docstring). The thumbnail is never
    finer than the slide (a small image is thresholded at its own resolution)."""
    mpp = max(float(params.thumb_mpp), float(source.mpp))
    thumb = source.thumbnail(mpp)
    mask = clean_mask(tissue_pixels(thumb, params), mpp, params)
    return TissueMask(mask, mpp, float(source.mpp), tuple(source.size))


def full_mask(source, mpp: float = 8.0) -> TissueMask:
    """An all-tissue mask (``--no-tissue-detection``)."""
    s, (w, h) = source.working_grid(max(mpp, source.mpp))
    return TissueMask(np.ones((h, w), bool), max(mpp, float(source.mpp)), float(source.mpp), tuple(source.size))
