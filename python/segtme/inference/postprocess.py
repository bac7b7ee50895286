"""HV-watershed instance separation (HoVer-Net, Graham et al. 2019) and per-instance classes.

All inputs and outputs are at the model's **working resolution** (pixels at ``cfg.mpp``).
The method, as HoVer-Net's ``process_np_hv``:

1. foreground = fg probability > ``fg_threshold``; small components removed;
2. the horizontal / vertical maps are min-max normalised inside the image, their Sobel
   gradients taken (after a light Gaussian smoothing instead of HoVer-Net's 21 px Sobel kernel,
   which is tuned for 40x), and an edge map ``max(1 - |d/dx h|, 1 - |d/dy v|)`` built;
3. markers = foreground minus edges above ``edge_threshold``, hole-filled, opened, small ones
   removed;
4. energy = smoothed ``-(1 - edge) * foreground``; marker-controlled watershed
   (``skimage.segmentation.watershed``) inside the foreground; tiny objects removed.

Instances then take the majority class of their pixels (background excluded where possible)
and a class probability (mean softmax of that class over the instance).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import disk
from skimage.segmentation import watershed

from ..models.config import PostprocessParams  # the typed parameters live with the model config

__all__ = ["PostprocessParams", "hv_watershed", "hv_edge_map", "fill_holes", "relabel_sequential",
           "foreground_components", "classify_instances"]


def _remove_small(lab: np.ndarray, min_px: int) -> np.ndarray:
    """Zero labelled components smaller than ``min_px`` (labels kept, not renumbered)."""
    if min_px <= 1 or lab.max() == 0:
        return lab
    sizes = np.bincount(lab.ravel())
    small = sizes < min_px
    small[0] = False
    if small.any():
        lab = lab.copy()
        lab[small[lab]] = 0
    return lab


def _normalise(a: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Min-max normalise to [0, 1] using the values inside ``mask`` (whole array if empty)."""
    vals = a[mask] if mask.any() else a
    lo, hi = float(vals.min()), float(vals.max())
    if hi - lo < 1e-6:
        return np.zeros_like(a, dtype=np.float32)
    return ((a - lo) / (hi - lo)).astype(np.float32, copy=False)


def hv_edge_map(hv: np.ndarray, fg: np.ndarray, smooth_sigma: float = 1.0, edge_scale: float = 0.0) -> np.ndarray:
    """Edge strength in [0, 1] from the HV maps (1 = strong boundary between instances).
    edge_scale: 0 = normalised over ``fg`` of this region (HoVer-Net); > 0 = the raw Sobel
    response / ``edge_scale`` (the same value for a pixel whatever region it is processed in,
    up to the smoothing and Sobel kernels' 3-4 px reach at the region's border)."""
    h = hv[0].astype(np.float32)
    v = hv[1].astype(np.float32)
    if smooth_sigma > 0:
        h = ndi.gaussian_filter(h, smooth_sigma)
        v = ndi.gaussian_filter(v, smooth_sigma)
    if edge_scale > 0:
        sh = np.maximum(-ndi.sobel(h, axis=1), 0.0)
        sv = np.maximum(-ndi.sobel(v, axis=0), 0.0)
        edge = np.minimum(np.maximum(sh, sv) / np.float32(edge_scale), 1.0).astype(np.float32, copy=False)
        edge[~fg] = 0.0
        return edge
    h = _normalise(h, fg)
    v = _normalise(v, fg)
    # Inside a nucleus h rises left->right (v top->bottom); between two touching nuclei it drops
    # from +1 to -1. Only the drops are boundaries (HoVer-Net keeps the gradient's sign too).
    sh = np.maximum(-ndi.sobel(h, axis=1), 0.0)
    sv = np.maximum(-ndi.sobel(v, axis=0), 0.0)
    sh = _normalise(sh, fg)
    sv = _normalise(sv, fg)
    edge = np.maximum(sh, sv)
    edge[~fg] = 0.0
    return edge


def hv_watershed(fg_prob: np.ndarray, hv: np.ndarray, params: PostprocessParams | Mapping | None = None) -> np.ndarray:
    """Instance map (int32, 0 = background, 1..N) from a foreground probability map (H, W)
    and HV maps (2, H, W), all at working resolution."""
    p = params if isinstance(params, PostprocessParams) else PostprocessParams.from_mapping(params)
    if fg_prob.ndim != 2 or hv.ndim != 3 or hv.shape[0] != 2 or hv.shape[1:] != fg_prob.shape:
        raise ValueError(f"hv_watershed: need fg (H,W) and hv (2,H,W); got {fg_prob.shape} and {hv.shape}")
    fg = _foreground_mask(fg_prob, p)
    if not fg.any():
        return np.zeros(fg.shape, np.int32)

    edge = hv_edge_map(hv, fg, p.smooth_sigma, p.edge_scale)
    marker = fg & (edge < p.edge_threshold)
    marker = fill_holes(marker)
    if p.marker_open_radius == 1:
        marker = _open_cross(marker)  # = ndi.binary_opening(marker, structure=disk(1)), ~10x faster
    elif p.marker_open_radius > 0:
        marker = ndi.binary_opening(marker, structure=disk(p.marker_open_radius))
    markers, _ = ndi.label(marker)
    markers = _remove_small(markers, p.min_marker_px)

    energy = ndi.gaussian_filter(-(1.0 - edge) * fg, 1.0)
    inst = watershed(energy, markers=markers, mask=fg)
    # foreground components that received no marker keep their connected component
    orphan = fg & (inst == 0)
    if orphan.any():
        olab, n = ndi.label(orphan)
        olab[olab > 0] += int(inst.max())
        inst = np.where(orphan, olab, inst)
    return _drop_small_and_relabel(inst, p.min_object_px)


def _foreground_mask(fg_prob: np.ndarray, params: PostprocessParams) -> np.ndarray:
    """``foreground_components(fg_prob, params) > 0`` with one look-up instead of zeroing the
    small components in a copy."""
    lab, _ = ndi.label(fg_prob > params.fg_threshold)
    sizes = np.bincount(lab.ravel())
    keep = sizes >= params.min_object_px if params.min_object_px > 1 else sizes > 0
    keep[0] = False
    return keep[lab]


def _open_cross(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_opening(mask, structure=disk(1))`` (the 4-neighbour cross, pixels outside the
    image count as background) by shifted ANDs / ORs: the same result."""
    m = np.asarray(mask, bool)
    e = m.copy()
    e[1:] &= m[:-1]
    e[:-1] &= m[1:]
    e[:, 1:] &= m[:, :-1]
    e[:, :-1] &= m[:, 1:]
    e[0] = False
    e[-1] = False
    e[:, 0] = False
    e[:, -1] = False
    out = e.copy()
    out[1:] |= e[:-1]
    out[:-1] |= e[1:]
    out[:, 1:] |= e[:, :-1]
    out[:, :-1] |= e[:, 1:]
    return out


def _drop_small_and_relabel(inst: np.ndarray, min_px: int) -> np.ndarray:
    """``relabel_sequential(_remove_small(inst.astype(np.int32), min_px))`` for labels >= 0 in one
    look-up table: instances smaller than ``min_px`` px dropped, the rest 1..N in id order."""
    inst = np.asarray(inst)
    if inst.size == 0:
        return np.zeros(inst.shape, np.int32)
    sizes = np.bincount(inst.ravel())
    keep = sizes >= min_px if min_px > 1 else sizes > 0
    keep[0] = False
    lut = np.zeros(len(sizes), np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[inst]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes(mask)`` (4-connected background) computed with one
    labelling of the background instead of an iterated propagation: a background component is a
    hole unless it touches the image border. Same result, ~3-4x faster on 2000² px."""
    mask = np.asarray(mask, bool)
    lab, n = ndi.label(~mask)
    if n == 0:
        return mask.copy()
    hole = np.ones(n + 1, bool)
    hole[0] = False
    hole[np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])] = False
    return mask | hole[lab]


def relabel_sequential(inst: np.ndarray) -> np.ndarray:
    """Instance labels -> 1..N (int32) in sorted order of the original ids; ids <= 0 are background.

    Equal to ``skimage.segmentation.relabel_sequential(np.where(inst > 0, inst, 0))[0]``
    (tests/test_postprocess.py checks it) and kept because it measured ~3x faster on a 2048² map
    with 20 000 labels (0.20 s vs 0.68 s, one lookup table instead of skimage's ArrayMap)."""
    inst = np.asarray(inst)
    if inst.ndim != 2:
        raise ValueError(f"instance map must be 2-D, got shape {inst.shape}")
    ids = np.unique(inst[inst > 0])
    if ids.size == 0:
        return np.zeros(inst.shape, np.int32)
    lut = np.zeros(int(ids.max()) + 1, np.int32)
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
    return lut[np.where(inst > 0, inst, 0)]


def foreground_components(fg_prob: np.ndarray, params: PostprocessParams) -> np.ndarray:
    """Connected components of ``fg_prob > fg_threshold`` without those smaller than
    ``min_object_px`` (labels not renumbered): the instances of a model without HV maps, and the
    foreground ``hv_watershed`` separates."""
    lab, _ = ndi.label(fg_prob > params.fg_threshold)
    return _remove_small(lab, params.min_object_px)


def classify_instances(inst: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Majority class and class probability per instance.

    inst: (H, W) labels 1..N (sequential); prob: (C, H, W) softmax, class 0 = background.
    Returns ``class_id`` (N,) int32 in 1..C-1 and ``class_prob`` (N,) float32 = mean probability of
    the chosen class over the instance's pixels. Each pixel votes for its arg-max over the
    non-background classes (a nucleus is never classed "background").
    """
    n = int(inst.max())
    if n == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.float32)
    C = prob.shape[0]
    if C < 2:
        raise ValueError("classify_instances: need at least background + 1 class")
    m = inst > 0
    labels = inst[m].astype(np.int64)
    fg_prob = prob[1:, m]  # (C-1, P)
    votes = fg_prob.argmax(axis=0)  # 0..C-2
    counts = np.bincount(labels * (C - 1) + votes, minlength=(n + 1) * (C - 1)).reshape(n + 1, C - 1)[1:]
    cls = counts.argmax(axis=1).astype(np.int32) + 1
    area = np.bincount(labels, minlength=n + 1)[1:].astype(np.float64)
    # mean prob of the chosen class per instance
    chosen = fg_prob[cls[labels - 1] - 1, np.arange(labels.size)]
    psum = np.bincount(labels, weights=chosen, minlength=n + 1)[1:]
    class_prob = (psum / np.maximum(area, 1)).astype(np.float32)
    return cls, class_prob
