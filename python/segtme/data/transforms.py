"""MPP rescaling, crops and the paper's augmentations (section 6.1), applied identically to the
image and its labels.

Units: ``mpp_in`` is the stored image's µm/px; ``mpp_work`` the model's working µm/px;
``s = mpp_in / mpp_work`` = working px per input px (docs/INTERFACES.md). Crops are taken in
working px: a crop box ``(x0, y0, x0 + T, y0 + T)`` in working px is resampled from its input
window only, by the product's one resampler (``segtme.resample``: area filter when
shrinking, bilinear when enlarging; labels nearest), so a 1000 px image at 0.25 µm/px is never
rescaled in full to train on a 256 px crop, and training sees the pixels inference sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance

from .sample import IGNORE


def working_size(size_wh: tuple[int, int], mpp_in: float, mpp_work: float) -> tuple[int, int]:
    """(width, height) in working px of an input of ``size_wh`` input px: the product's one
    rounding rule (``segtme.resample.working_size``: ``floor(n * s + 0.5)``, at least 1)."""
    from ..resample import working_size as _ws

    return _ws(size_wh, mpp_in, mpp_work)


def crop_working(
    rgb: np.ndarray,
    inst: np.ndarray | None,
    sem: np.ndarray | None,
    mpp_in: float,
    mpp_work: float,
    tile: int,
    origin: tuple[int, int] | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """A ``tile`` x ``tile`` crop at working resolution, resampled exactly as inference does
    (``segtme.resample``: the same pixels as resampling the whole image, computed from the
    crop's input window only; labels nearest).

    origin: (x0, y0) in working px; None: random (``rng``) uniformly over valid positions.
    Returns (rgb uint8 (T,T,3), inst int32 or None, sem uint8 or None, valid bool (T,T)). Where the
    working image is smaller than the tile the crop is padded on the right/bottom with the
    product's padding (``resample.pad_to``: the image reflects, inst 0, sem IGNORE, valid False).
    """
    from ..resample import pad_to, resample_labels, resample_region, scale

    h, w = rgb.shape[:2]
    s = scale(mpp_in, mpp_work)
    ww, wh = working_size((w, h), mpp_in, mpp_work)
    if origin is None:
        rng = rng or np.random.default_rng()
        x0 = int(rng.integers(0, max(ww - tile, 0) + 1))
        y0 = int(rng.integers(0, max(wh - tile, 0) + 1))
    else:
        x0, y0 = int(origin[0]), int(origin[1])
    tw, th = max(0, min(tile, ww - x0)), max(0, min(tile, wh - y0))
    out_inst = np.zeros((tile, tile), np.int32) if inst is not None else None
    out_sem = np.full((tile, tile), IGNORE, np.uint8) if sem is not None else None
    valid = np.zeros((tile, tile), bool)
    if tw > 0 and th > 0:
        region = (x0, y0, x0 + tw, y0 + th)
        out_rgb = pad_to(np.ascontiguousarray(resample_region(rgb, s, region)), (tile, tile))
        if inst is not None:
            out_inst[:th, :tw] = resample_labels(inst, s, (th, tw), origin_out=(y0, x0))
        if sem is not None:
            out_sem[:th, :tw] = resample_labels(sem, s, (th, tw), origin_out=(y0, x0))
        valid[:th, :tw] = True
    else:
        out_rgb = np.zeros((tile, tile, 3), np.uint8)
    return np.ascontiguousarray(out_rgb), out_inst, out_sem, valid


# --------------------------------------------------------------------------- colour
def rgb_to_hls(rgb: np.ndarray) -> np.ndarray:
    """Vectorised ``colorsys.rgb_to_hls`` on float RGB in [0, 1] (..., 3) -> HLS in [0, 1]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    maxc = np.max(rgb, axis=-1)
    minc = np.min(rgb, axis=-1)
    l = (minc + maxc) / 2.0
    d = maxc - minc
    nz = d > 1e-12
    s = np.zeros_like(l)
    denom = np.where(l <= 0.5, maxc + minc, 2.0 - maxc - minc)
    s[nz] = d[nz] / np.maximum(denom[nz], 1e-12)
    dd = np.where(nz, d, 1.0)
    rc, gc, bc = (maxc - r) / dd, (maxc - g) / dd, (maxc - b) / dd
    h = np.where(r == maxc, bc - gc, np.where(g == maxc, 2.0 + rc - bc, 4.0 + gc - rc))
    h = np.where(nz, (h / 6.0) % 1.0, 0.0)
    return np.stack([h, l, s], axis=-1)


def hls_to_rgb(hls: np.ndarray) -> np.ndarray:
    """Vectorised ``colorsys.hls_to_rgb`` (..., 3) in [0, 1]."""
    h, l, s = hls[..., 0], hls[..., 1], hls[..., 2]
    m2 = np.where(l <= 0.5, l * (1.0 + s), l + s - l * s)
    m1 = 2.0 * l - m2

    def v(hue: np.ndarray) -> np.ndarray:
        hue = hue % 1.0
        return np.where(hue < 1 / 6, m1 + (m2 - m1) * hue * 6.0,
                        np.where(hue < 0.5, m2, np.where(hue < 2 / 3, m1 + (m2 - m1) * (2 / 3 - hue) * 6.0, m1)))

    rgb = np.stack([v(h + 1 / 3), v(h), v(h - 1 / 3)], axis=-1)
    grey = s <= 0
    rgb[grey] = l[grey][:, None]
    return rgb


def colour_jitter(rgb: np.ndarray, rng: np.random.Generator, brightness: float = 0.2, contrast: float = 0.2,
                  saturation: float = 0.2, hue: float = 0.05) -> np.ndarray:
    """torchvision-style ColorJitter: brightness/contrast/saturation factors in [1-b, 1+b]
    (paper: [0.8, 1.2]) and a hue shift in [-hue, hue] turns (paper: 0.05), in random order."""
    im = Image.fromarray(rgb)
    ops = rng.permutation(4)
    for op in ops:
        if op == 0 and brightness > 0:
            im = ImageEnhance.Brightness(im).enhance(float(rng.uniform(1 - brightness, 1 + brightness)))
        elif op == 1 and contrast > 0:
            im = ImageEnhance.Contrast(im).enhance(float(rng.uniform(1 - contrast, 1 + contrast)))
        elif op == 2 and saturation > 0:
            im = ImageEnhance.Color(im).enhance(float(rng.uniform(1 - saturation, 1 + saturation)))
        elif op == 3 and hue > 0:
            hsv = np.asarray(im.convert("HSV")).copy()
            shift = int(round(float(rng.uniform(-hue, hue)) * 255))
            hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + shift) % 256).astype(np.uint8)
            im = Image.fromarray(hsv, mode="HSV").convert("RGB")
    return np.asarray(im)


def hls_perturb(rgb: np.ndarray, rng: np.random.Generator, low: float = 0.9, high: float = 1.1) -> np.ndarray:
    """The paper's HLS-space multiplicative perturbation: H, L and S each multiplied by an
    independent factor in [low, high] (hue wraps around, L and S clip to [0, 1])."""
    hls = rgb_to_hls(rgb.astype(np.float64) / 255.0)
    f = rng.uniform(low, high, size=3)
    hls = hls * f
    hls[..., 0] %= 1.0
    hls[..., 1:] = np.clip(hls[..., 1:], 0.0, 1.0)
    return np.clip(np.round(hls_to_rgb(hls) * 255.0), 0, 255).astype(np.uint8)


@dataclass
class AugmentConfig:
    """Training augmentations (paper section 6.1: each applied with probability 0.5)."""

    p_colour_jitter: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.05
    p_hls: float = 0.5
    hls_low: float = 0.9
    hls_high: float = 1.1
    p_hflip: float = 0.5
    p_vflip: float = 0.5
    p_rot90: float = 0.0  # not in the paper; off by default
    # robustness augmentations (issue #17; data/robustness.py), all off by default so the
    # paper's recipe (and its random stream) is unchanged unless a config switches them on
    p_scale: float = 0.0          # scale jitter: crop read at mpp_work * U_log[scale_lo, scale_hi]
    scale_lo: float = 0.7
    scale_hi: float = 1.4
    p_elastic: float = 0.0        # smooth displacement field (image + labels)
    elastic_alpha: float = 4.0    # RMS displacement, working px
    elastic_sigma: float = 10.0   # smoothness, working px
    p_pale: float = 0.0           # vesicular nuclei: pale interior, dark rim (label-aware)
    pale_fraction: float = 0.6
    pale_lo: float = 0.3
    pale_hi: float = 0.75
    p_hed: float = 0.0            # HED stain jitter
    hed_alpha: float = 0.25
    hed_beta: float = 0.01
    p_gamma: float = 0.0          # global gamma (pale / dark scans)
    gamma_lo: float = 0.6
    gamma_hi: float = 1.6
    p_blur: float = 0.0           # Gaussian blur (focus)
    blur_sigma_max: float = 1.2   # working px
    p_jpeg: float = 0.0           # JPEG artefacts
    jpeg_q_lo: int = 40
    jpeg_q_hi: int = 90

    def __post_init__(self) -> None:
        from ..errors import InputError

        for k, v in vars(self).items():
            if k.startswith("p_") and not 0.0 <= float(v) <= 1.0:
                raise InputError(f"[augment] {k} = {v}: a probability must be in [0, 1]")
        if not 0 < self.scale_lo <= self.scale_hi:
            raise InputError("[augment] need 0 < scale_lo <= scale_hi")
        if not 0 < self.gamma_lo <= self.gamma_hi:
            raise InputError("[augment] need 0 < gamma_lo <= gamma_hi")
        if not 1 <= self.jpeg_q_lo <= self.jpeg_q_hi <= 100:
            raise InputError("[augment] need 1 <= jpeg_q_lo <= jpeg_q_hi <= 100")


def _maybe(rng: np.random.Generator, p: float) -> bool:
    """One draw only when the augmentation is on (keeps the random stream of configs without it)."""
    return p > 0 and rng.random() < p


def augment(rgb: np.ndarray, labels: list[np.ndarray | None], rng: np.random.Generator,
            cfg: AugmentConfig | None = None) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Colour augmentations on the image; flips (and optional rot90) identically on image and
    every label map. HV targets must be computed *after* this (their sign follows the flips).

    ``labels[0]``, when given, must be the instance map (the pale-nuclei augmentation reads it).
    Order: elastic, pale nuclei, HED, colour jitter, HLS, flips/rot90, gamma, blur, JPEG (scale
    jitter happens earlier, when the crop is read: ``CropDataset``)."""
    from . import robustness as R

    cfg = cfg or AugmentConfig()
    if _maybe(rng, cfg.p_elastic):
        rgb, labels = R.elastic(rgb, labels, rng, cfg.elastic_alpha, cfg.elastic_sigma)
    if _maybe(rng, cfg.p_pale):
        rgb = R.pale_nuclei(rgb, labels[0] if labels else None, rng, cfg.pale_fraction, (cfg.pale_lo, cfg.pale_hi))
    if _maybe(rng, cfg.p_hed):
        rgb = R.hed_jitter(rgb, rng, cfg.hed_alpha, cfg.hed_beta)
    if rng.random() < cfg.p_colour_jitter:
        rgb = colour_jitter(rgb, rng, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
    if rng.random() < cfg.p_hls:
        rgb = hls_perturb(rgb, rng, cfg.hls_low, cfg.hls_high)

    def apply(fn):
        nonlocal rgb, labels
        rgb = fn(rgb)
        labels = [None if a is None else fn(a) for a in labels]

    if rng.random() < cfg.p_hflip:
        apply(lambda a: a[:, ::-1])
    if rng.random() < cfg.p_vflip:
        apply(lambda a: a[::-1])
    if cfg.p_rot90 > 0 and rng.random() < cfg.p_rot90:
        k = int(rng.integers(1, 4))
        apply(lambda a: np.rot90(a, k))
    if _maybe(rng, cfg.p_gamma):
        rgb = R.gamma(np.ascontiguousarray(rgb), rng, cfg.gamma_lo, cfg.gamma_hi)
    if _maybe(rng, cfg.p_blur):
        rgb = R.gaussian_blur(np.ascontiguousarray(rgb), rng, cfg.blur_sigma_max)
    if _maybe(rng, cfg.p_jpeg):
        rgb = R.jpeg(np.ascontiguousarray(rgb), rng, cfg.jpeg_q_lo, cfg.jpeg_q_hi)
    return np.ascontiguousarray(rgb), [None if a is None else np.ascontiguousarray(a) for a in labels]
