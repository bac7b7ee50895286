"""Resolution changes, done one way for training and inference: the working size, the resampler
and the padding.

Units: *input px* are pixels of the stored image (µm/px = ``mpp_in``); *output (working) px* are
pixels at ``mpp_out`` (the model's ``cfg.mpp``). ``s = mpp_in / mpp_out`` is output px per
input px (``s < 1``: downsampling, e.g. 0.25 -> 0.5 µm/px is ``s = 0.5``).

**Pixel-centre convention** (docs/INTERFACES.md, "MPP rescaling"). Coordinates are continuous
with pixel ``i`` covering ``[i, i + 1)`` (QuPath's convention). Output pixel ``o`` covers the
input span ``[o / s, (o + 1) / s)``, centre ``(o + 0.5) / s``, *with the exact s* (not the ratio
of rounded image sizes), so a point found in output px goes back by ``x_in = x_out / s``.

* ``working_size``: ``floor(n * s + 0.5)`` per axis (round half up, at least 1) — the only
  rounding rule (a 1001 px edge at 0.25 -> 0.5 µm/px is 501 px in training and at inference).
* ``resample``: anti-aliased and separable, computed by Pillow's convolution resampler on uint8:
  downsampling averages each output pixel's footprint (box / area filter, ``DOWN_FILTER``),
  upsampling is bilinear. Image edges are replicated. Any output window can be computed from its input
  window alone (``input_window``) with the same pixels the whole image gives, so tiles and
  chunks resample only what they read (``resample_region``); nothing is ever done to the whole
  image first.
* ``resample_labels``: nearest neighbour (the input label under each output pixel's centre).
* ``pad_to``: bottom/right padding to a size: images reflect (edge where the image is shorter
  than the pad), labels take a constant.

The filter was chosen by measurement (docs/benchmarks.md, "Resampling"): on the held-out images
(``segtme eval --split val``, shipped model) exact area averaging keeps PQ and AJI within 0.005
of the former scipy Gaussian + affine resampler (MoNuSeg PQ 0.5135 vs 0.5131, AJI 0.5375 vs
0.5347; CoNSeP PQ 0.3652 vs 0.3674, AJI 0.3513 vs 0.3501), maps a blob's centroid back within
0.05 input px, and gives windows bit-identical to the whole image. Pillow's box filter (mean of
the pixels whose centres fall in the footprint) shifted centroids by up to 0.34 px at s = 0.505;
its triangle filter changed MoNuSeg's detection F1 by -0.014. Both Pillow filters stay
selectable (``down_filter``) for such measurements.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .errors import InputError

#: Pillow filter used when downsampling (s < 1): "box" = mean of the input pixels whose centres
#: fall in the output pixel's footprint (area averaging); "triangle" = antialiased bilinear
#: (support 1 / s input px each side). Chosen by the held-out measurement in the module doc.
DOWN_FILTER = "area"
#: |s - 1| below this counts as no resampling (s becomes exactly 1.0)
UNIT_TOL = 1e-6


def scale(mpp_in: float, mpp_out: float) -> float:
    """``s = mpp_in / mpp_out`` (output px per input px), exactly 1.0 within ``UNIT_TOL``.
    Both must be finite and positive (InputError otherwise)."""
    for what, v in (("input MPP", mpp_in), ("output MPP", mpp_out)):
        if not (isinstance(v, (int, float, np.floating)) and math.isfinite(v) and v > 0):
            raise InputError(f"{what} must be a finite positive number of µm/px, got {v!r}")
    s = float(mpp_in) / float(mpp_out)
    return 1.0 if abs(s - 1.0) < UNIT_TOL else s


def scaled_length(n: int, s: float) -> int:
    """``floor(n * s + 0.5)``, at least 1: the length in output px of ``n`` input px."""
    return max(1, int(math.floor(int(n) * float(s) + 0.5)))


def working_size(size_wh: Sequence[int], mpp_in: float, mpp_out: float) -> tuple[int, int]:
    """(width, height) in output px of an image of ``size_wh`` = (width, height) input px at
    ``mpp_in`` µm/px resampled to ``mpp_out`` µm/px: ``scaled_length`` of each edge."""
    s = scale(mpp_in, mpp_out)
    return scaled_length(size_wh[0], s), scaled_length(size_wh[1], s)


def support(s: float) -> float:
    """Half-width (input px) of the resampling filter around an output pixel's centre."""
    return max(1.0, 1.0 / s) if s < 1.0 else 1.0


def input_window(region_out: Sequence[int], s: float, in_hw: Sequence[int]) -> tuple[int, int, int, int]:
    """Input-px window ``(iy0, ix0, iy1, ix1)``, clipped to the image of ``in_hw`` = (H, W), that
    ``resample`` needs to produce the output-px region ``(x0, y0, x1, y1)`` (global output
    coordinates) exactly as from the whole image: the region's input span plus the filter's
    support and one pixel."""
    x0, y0, x1, y1 = (int(v) for v in region_out)
    H, W = int(in_hw[0]), int(in_hw[1])
    r = support(s) + 1.0

    def span(a: int, b: int, n: int) -> tuple[int, int]:
        return max(0, math.floor(a / s - r)), min(n, math.ceil(b / s + r))

    iy0, iy1 = span(y0, y1, H)
    ix0, ix1 = span(x0, x1, W)
    return iy0, ix0, iy1, ix1


def resample(
    rgb: np.ndarray,
    s: float,
    out_hw: Sequence[int] | None = None,
    *,
    origin_out: Sequence[int] = (0, 0),
    origin_in: Sequence[int] = (0, 0),
    down_filter: str | None = None,
) -> np.ndarray:
    """Resample an (h, w, 3) uint8 image (or (h, w) uint8) by the exact factor ``s``.

    out_hw: output (height, width); default ``scaled_length`` of the input's edges.
    origin_out: global output-px (y, x) of the result's pixel (0, 0); origin_in: global input-px
    (y, x) of ``rgb[0, 0]``. Output pixel ``o`` (global ``origin_out + o``) is centred on global input position
    ``(origin_out + o + 0.5) / s``. A crop taken with ``input_window`` therefore gives the same
    pixels as the whole image (Pillow's fixed-point weights may round 1 grey level differently
    in rare pixels). Outside the whole input, edge pixels are replicated.
    down_filter: override ``DOWN_FILTER`` (for measurements only).
    """
    if rgb.dtype != np.uint8 or rgb.ndim not in (2, 3) or (rgb.ndim == 3 and rgb.shape[2] != 3):
        raise InputError(f"resample: expected (h, w, 3) or (h, w) uint8, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    if h == 0 or w == 0:
        raise InputError(f"resample: empty image {rgb.shape}")
    oh, ow = (int(v) for v in out_hw) if out_hw is not None else (scaled_length(h, s), scaled_length(w, s))
    flt = down_filter or DOWN_FILTER
    if float(s) < 1.0 and flt == "area":
        return _area(rgb, float(s), (oh, ow), origin_out, origin_in)
    return _pillow(rgb, float(s), (oh, ow), origin_out, origin_in, flt)


def _area_weights(o0: int, n_out: int, i0: int, n_in: int, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Per output pixel (global ``o0 + j``): the local input indices it overlaps and the overlap
    fractions (sum 1). Computed in global coordinates, so a crop gets bit-identical weights;
    indices beyond the input are clamped to its edge (edge replication)."""
    inv = 1.0 / s
    o = np.arange(o0, o0 + n_out, dtype=np.float64)
    a, b = o * inv, (o + 1.0) * inv
    k = int(math.ceil(inv)) + 1
    first = np.floor(a)
    i = first[:, None] + np.arange(k, dtype=np.float64)[None, :]
    wts = np.clip(np.minimum(b[:, None], i + 1.0) - np.maximum(a[:, None], i), 0.0, None) * s
    idx = np.clip(i.astype(np.int64) - int(i0), 0, n_in - 1)
    return idx, wts.astype(np.float32)


def _area(rgb: np.ndarray, s: float, out_hw: tuple[int, int], origin_out: Sequence[int],
          origin_in: Sequence[int]) -> np.ndarray:
    """Exact area averaging (each output pixel = the mean of the input over its footprint,
    fractional pixels weighted by their overlap), separable in float32: rows, then columns (on
    the transposed intermediate, so both passes gather whole rows). Transient memory: a few
    float32 copies of the row-pass result (output rows x input columns x 3)."""
    oh, ow = out_hw
    iy, wy = _area_weights(int(origin_out[0]), oh, int(origin_in[0]), rgb.shape[0], s)
    ix, wx = _area_weights(int(origin_out[1]), ow, int(origin_in[1]), rgb.shape[1], s)
    tail = (None,) * (rgb.ndim - 1)
    acc = rgb[iy[:, 0]] * wy[(slice(None), 0, *tail)]
    for k in range(1, iy.shape[1]):
        acc += rgb[iy[:, k]] * wy[(slice(None), k, *tail)]  # (oh, w[, 3]) float32
    acc = np.ascontiguousarray(np.swapaxes(acc, 0, 1))  # (w, oh[, 3])
    out = acc[ix[:, 0]] * wx[(slice(None), 0, *tail)]
    for k in range(1, ix.shape[1]):
        out += acc[ix[:, k]] * wx[(slice(None), k, *tail)]  # (ow, oh[, 3])
    del acc
    np.rint(out, out=out)
    np.clip(out, 0, 255, out=out)
    return np.ascontiguousarray(np.swapaxes(out.astype(np.uint8), 0, 1))


def _pillow(rgb: np.ndarray, s: float, out_hw: tuple[int, int], origin_out: Sequence[int], origin_in: Sequence[int],
            flt_name: str) -> np.ndarray:
    """Pillow's convolution resampler (bilinear; "triangle" / "box" when downsampling)."""
    from PIL import Image

    h, w = rgb.shape[:2]
    oh, ow = out_hw
    inv = 1.0 / s
    # the input span (local coordinates of ``rgb``) the output covers
    ay = int(origin_out[0]) * inv - int(origin_in[0])
    ax = int(origin_out[1]) * inv - int(origin_in[1])
    by, bx = ay + oh * inv, ax + ow * inv
    # replicate edges so the filter never meets Pillow's own border rule; a crop from
    # ``input_window`` holds the whole support except where it reaches the image's edge, so it
    # is padded exactly where (and as) the whole image is
    r = support(s) + 1.0
    py0 = max(0, math.ceil(r - ay))
    px0 = max(0, math.ceil(r - ax))
    py1 = max(0, math.ceil(by + r - h))
    px1 = max(0, math.ceil(bx + r - w))
    if py0 or px0 or py1 or px1:
        pads = ((py0, py1), (px0, px1)) + (((0, 0),) if rgb.ndim == 3 else ())
        rgb = np.pad(rgb, pads, mode="edge")
    # two explicit passes, horizontal then vertical: Pillow may otherwise pick the pass order by
    # cost, and its uint8 intermediate then rounds a crop differently from the whole image
    flt = Image.BILINEAR if s >= 1.0 else {"triangle": Image.BILINEAR, "box": Image.BOX}[flt_name]
    hp = rgb.shape[0]
    im = Image.fromarray(np.ascontiguousarray(rgb))
    im = im.resize((ow, hp), flt, box=(ax + px0, 0, bx + px0, hp), reducing_gap=None)
    im = im.resize((ow, oh), flt, box=(0, ay + py0, ow, by + py0), reducing_gap=None)
    return np.asarray(im)


def resample_region(rgb: np.ndarray, s: float, region_out: Sequence[int]) -> np.ndarray:
    """The output-px region ``(x0, y0, x1, y1)`` of the whole image's resampled version, computed
    from the input window it needs only (= ``resample(rgb, s)[y0:y1, x0:x1]``). ``s == 1``
    returns a view."""
    x0, y0, x1, y1 = (int(v) for v in region_out)
    if s == 1.0:
        return rgb[y0:y1, x0:x1]
    iy0, ix0, iy1, ix1 = input_window(region_out, s, rgb.shape)
    return resample(rgb[iy0:iy1, ix0:ix1], s, (y1 - y0, x1 - x0), origin_out=(y0, x0), origin_in=(iy0, ix0))


def to_working(rgb: np.ndarray, mpp_in: float, mpp_out: float) -> tuple[np.ndarray, float]:
    """A whole (H, W, 3) uint8 image at ``mpp_in`` resampled to ``mpp_out`` µm/px: ``(rgb_out, s)``
    with size ``working_size``; unchanged (and ``s == 1.0``) when the MPPs agree within
    ``UNIT_TOL``."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    s = scale(mpp_in, mpp_out)
    if s == 1.0:
        return rgb, 1.0
    return resample(rgb, s), s


def resample_labels(
    lab: np.ndarray,
    s: float,
    out_hw: Sequence[int] | None = None,
    *,
    origin_out: Sequence[int] = (0, 0),
    origin_in: Sequence[int] = (0, 0),
) -> np.ndarray:
    """Nearest-neighbour resampling of a 2-D label map (any integer dtype, returned in it):
    output pixel ``o`` takes the input label under its centre ``(origin_out + o + 0.5) / s``
    (global input px, ``origin_in`` = global position of ``lab[0, 0]``), clamped to the map."""
    lab = np.asarray(lab)
    if lab.ndim != 2:
        raise ValueError(f"label map must be 2-D, got {lab.shape}")
    h, w = lab.shape
    oh, ow = (int(v) for v in out_hw) if out_hw is not None else (scaled_length(h, s), scaled_length(w, s))
    if s == 1.0 and tuple(origin_out) == tuple(origin_in) and (oh, ow) == (h, w):
        return lab.copy()

    def idx(o0: int, n_out: int, i0: int, n_in: int) -> np.ndarray:
        c = (np.arange(n_out, dtype=np.float64) + int(o0) + 0.5) / float(s) - int(i0)
        return np.clip(np.floor(c).astype(np.int64), 0, n_in - 1)

    return lab[np.ix_(idx(origin_out[0], oh, origin_in[0], h), idx(origin_out[1], ow, origin_in[1], w))]


def pad_to(a: np.ndarray, out_hw: Sequence[int], fill: float | int | None = None, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Pad ``a`` at the bottom/right of its two spatial ``axes`` (default (0, 1): (h, w, ...);
    (1, 2) for a (B, h, w, C) batch) to ``out_hw`` = (H, W) >= (h, w).

    fill None (images): reflect, and replicate the edge for what an axis shorter than its pad
    cannot reflect; fill given (labels, masks): that constant. Returns ``a`` itself when no
    padding is needed."""
    ay, ax = axes
    h, w = a.shape[ay], a.shape[ax]
    ph, pw = int(out_hw[0]) - h, int(out_hw[1]) - w
    if ph < 0 or pw < 0:
        raise ValueError(f"pad_to: target {tuple(out_hw)} is smaller than the array's {(h, w)}")
    if ph == 0 and pw == 0:
        return a

    def widths(py: int, px: int) -> list[tuple[int, int]]:
        wd = [(0, 0)] * a.ndim
        wd[ay], wd[ax] = (0, py), (0, px)
        return wd

    if fill is not None:
        return np.pad(a, widths(ph, pw), mode="constant", constant_values=fill)
    ry, rx = min(ph, h - 1), min(pw, w - 1)
    out = np.pad(a, widths(ry, rx), mode="reflect") if (ry or rx) else a
    if ry < ph or rx < pw:
        out = np.pad(out, widths(ph - ry, pw - rx), mode="edge")
    return out


def pad_to_multiple(a: np.ndarray, multiple: int, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """``pad_to`` the next multiples of ``multiple`` along the spatial ``axes`` (images)."""
    h, w = a.shape[axes[0]], a.shape[axes[1]]
    return pad_to(a, (h + (-h) % multiple, w + (-w) % multiple), axes=axes)
