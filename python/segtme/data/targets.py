"""Horizontal/vertical (HV) regression targets.

Two syntheses, both (2, H, W) float32 with channel 0 = horizontal (x), 1 = vertical (y), 0 on
background, in pixels of the label map's own resolution:

* ``hv_targets_from_instances(inst)`` — HoVer-Net's target (Graham et al. 2019): per instance,
  the offset from the instance centroid, normalised separately on each side so that the extreme
  pixel of the instance is exactly -1 / +1. Used whenever instance labels exist (human labels,
  PanNuke, ../shared/data): it is scale-free and separates touching nuclei of the same class.
* ``hv_targets_dynamic(sem)`` — the SegTME-UNI2 paper's dynamic synthesis (section 4.5): connected
  components of the binarised semantic map, ``clip((x - c_x) / 10, -1, 1)``. Used for
  semantic-only labels (entropy-filtered pseudo-labels ``*_sem_map.png``), where no instances
  exist; touching nuclei merge into one component there, a known limitation of the paper's method.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: the paper's saturation distance (pixels) for dynamic targets
DYNAMIC_SCALE_PX = 10.0


def _centroids(lab: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre centroids (cy, cx) per label 1..n (index 0 unused)."""
    ys, xs = np.indices(lab.shape)
    area = np.bincount(lab.ravel(), minlength=n + 1).astype(np.float64)
    cy = np.bincount(lab.ravel(), weights=ys.ravel(), minlength=n + 1) / np.maximum(area, 1)
    cx = np.bincount(lab.ravel(), weights=xs.ravel(), minlength=n + 1) / np.maximum(area, 1)
    return cy, cx


def hv_targets_from_instances(inst: np.ndarray) -> np.ndarray:
    """HoVer-Net HV target from an instance map (H, W) of ints (0 = background)."""
    inst = np.asarray(inst)
    if inst.ndim != 2:
        raise ValueError(f"instance map must be 2-D, got shape {inst.shape}")
    lab = inst.astype(np.int64)
    n = int(lab.max()) if lab.size else 0
    out = np.zeros((2,) + lab.shape, np.float32)
    if n == 0:
        return out
    cy, cx = _centroids(lab, n)
    m = lab > 0
    li = lab[m]
    ys, xs = np.nonzero(m)
    for ch, d in ((0, xs - cx[li]), (1, ys - cy[li])):
        d = d.astype(np.float64)
        neg = np.zeros(n + 1)
        pos = np.zeros(n + 1)
        np.minimum.at(neg, li, d)
        np.maximum.at(pos, li, d)
        scale = np.where(d < 0, -neg[li], pos[li])
        vals = np.divide(d, scale, out=np.zeros_like(d), where=scale > 0)
        out[ch][m] = vals.astype(np.float32)
    return out


def hv_targets_dynamic(sem: np.ndarray, scale_px: float = DYNAMIC_SCALE_PX) -> np.ndarray:
    """The paper's dynamic HV target from a semantic map (H, W) (foreground = value > 0, 255 = ignore
    is treated as background): connected components (``scipy.ndimage.label``), centroid by
    ``center_of_mass``, ``T = clip((p - c) / scale_px, -1, 1)``."""
    sem = np.asarray(sem)
    if sem.ndim != 2:
        raise ValueError(f"semantic map must be 2-D, got shape {sem.shape}")
    fg = (sem > 0) & (sem != 255)
    lab, n = ndi.label(fg)
    out = np.zeros((2,) + sem.shape, np.float32)
    if n == 0:
        return out
    cy, cx = _centroids(lab, n)
    ys, xs = np.nonzero(fg)
    li = lab[fg]
    out[0][fg] = np.clip((xs - cx[li]) / scale_px, -1, 1)
    out[1][fg] = np.clip((ys - cy[li]) / scale_px, -1, 1)
    return out
