"""Nucleus-centred crops (pure functions).

Coordinates: ``centres_xy`` (N, 2) (x, y) in the px of the image passed in, pixel-corner
convention (pixel (r, c) spans [c, c+1) x [r, r+1); a centroid of a pixel blob is at
``mean(c) + 0.5``, as ``NucleiTable.centroid``).
"""

from __future__ import annotations

import numpy as np


def centred_windows(rgb: np.ndarray, centres_xy: np.ndarray, size: int, *, pad_mode: str = "reflect") -> np.ndarray:
    """(N, size, size, 3) uint8 windows of ``rgb`` (H, W, 3) whose centre is nearest each centre
    (integer window origin ``round(c - size / 2)``); windows reaching over the border are padded
    (``pad_mode``, numpy's)."""
    xy = np.asarray(centres_xy, np.float64).reshape(-1, 2)
    if len(xy) == 0:
        return np.empty((0, size, size, rgb.shape[2]), np.uint8)
    return next(iter_centred_windows(rgb, xy, size, max(1, len(xy)), pad_mode=pad_mode, channels_first=False))


def iter_centred_windows(rgb: np.ndarray, centres_xy: np.ndarray, size: int, batch: int, *,
                         pad_mode: str = "reflect", channels_first: bool = True):
    """The windows of ``centred_windows`` in batches of ``batch`` (the image padded once): uint8
    arrays (B, 3, size, size) when ``channels_first`` (memory in window-row order, i.e. the
    transpose of (B, size, size, 3)), else (B, size, size, 3). Each window is one block copy out
    of a ``sliding_window_view`` of the padded image: measured 2026-12-07, 6000 windows of 32 px
    from a 1152² image, 0.006-0.06 s against 0.27 s for the former per-pixel fancy indexing
    (same pixels; tests/test_mitosis.py)."""
    from numpy.lib.stride_tricks import sliding_window_view

    xy = np.asarray(centres_xy, np.float64).reshape(-1, 2)
    pad = size
    img = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode=pad_mode)
    x0 = np.clip(np.rint(xy[:, 0] - size / 2.0).astype(np.int64) + pad, 0, img.shape[1] - size)
    y0 = np.clip(np.rint(xy[:, 1] - size / 2.0).astype(np.int64) + pad, 0, img.shape[0] - size)
    view = sliding_window_view(img, (size, size), axis=(0, 1))  # (H', W', 3, size, size), no copy
    for a in range(0, len(xy), int(batch)):
        w = view[y0[a:a + batch], x0[a:a + batch]]  # (B, 3, size, size); memory (B, size, size, 3)
        yield w if channels_first else w.transpose(0, 2, 3, 1)


def inside(shape: tuple[int, ...], centres_xy: np.ndarray, size: int) -> np.ndarray:
    """(N,) bool: the window of ``size`` px around each centre lies fully inside an image of
    ``shape`` (no padding needed)."""
    xy = np.asarray(centres_xy, np.float64).reshape(-1, 2)
    x0 = np.rint(xy[:, 0] - size / 2.0)
    y0 = np.rint(xy[:, 1] - size / 2.0)
    return (x0 >= 0) & (y0 >= 0) & (x0 + size <= shape[1]) & (y0 + size <= shape[0])


def crops_at_mpp(rgb: np.ndarray, mpp: float, centres_xy: np.ndarray, size: int, crop_mpp: float) -> np.ndarray:
    """(N, size, size, 3) uint8 crops at ``crop_mpp`` µm/px around centres given in the px of
    ``rgb`` (at ``mpp`` µm/px). The image is resampled once with the engine's resampler when the
    MPPs differ (anti-aliased bilinear)."""
    s = float(mpp) / float(crop_mpp)
    xy = np.asarray(centres_xy, np.float64).reshape(-1, 2)
    if abs(s - 1.0) < 1e-6:
        return centred_windows(rgb, xy, size)
    from ..resample import resample

    return centred_windows(resample(rgb, s), xy * s, size)
