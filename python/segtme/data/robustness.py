"""Robustness augmentations (issue #17): what scanners, staining and tumours do to H&E.

Pure functions of (image, labels, ``numpy.random.Generator``); every random draw comes from the
generator, so a crop's augmentation is a function of (seed, epoch, index) like the rest of the
data pipeline. Images are RGB uint8 (H, W, 3) at the model's working resolution; sizes (blur
sigma, elastic displacement) are in **working px**.

* ``hed_jitter``: stain variation in HED optical-density space (Ruifrok & Johnston matrices from
  ``skimage.color``; exact inverse, no clipping of negative stain values, so zero jitter returns
  the image unchanged). Per stain ``s' = alpha * s + beta`` (Tellez et al. 2018).
* ``pale_nuclei``: large pale *vesicular* nuclei (high-grade tumour): for a random subset of
  nuclei, the haematoxylin density of the nucleus interior is reduced, keeping a darker rim
  (chromatin margination), a label-aware augmentation aimed at the model's worst failure.
* ``gamma``: global gamma (pale / dark scans).
* ``gaussian_blur``: out-of-focus scans.
* ``jpeg``: JPEG compression artefacts (PIL encoder).
* ``elastic``: smooth random displacement field applied identically to the image (bilinear) and
  labels (nearest): local shape and size variation of nuclei.
* ``sample_crop_mpp``: scale jitter, the µm/px at which a training crop is read (log-uniform in
  ``[lo, hi] * mpp_work``), so the model sees nuclei 0.7-1.4x their true size at the default
  factors (0.35-0.7 µm/px effective around 0.5 µm/px).
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageFilter

_LOG_ADJ = math.log(1e-6)


def _hed_matrices() -> tuple[np.ndarray, np.ndarray]:
    from skimage.color import hed_from_rgb, rgb_from_hed

    return np.asarray(hed_from_rgb, np.float64), np.asarray(rgb_from_hed, np.float64)


def rgb_to_hed(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 (..., 3) -> HED stain densities (..., 3) float64 (skimage's scaling, unclipped)."""
    hed_from_rgb, _ = _hed_matrices()
    x = np.maximum(rgb.astype(np.float64) / 255.0, 1e-6)
    return (np.log(x) / _LOG_ADJ) @ hed_from_rgb


def hed_to_rgb(hed: np.ndarray) -> np.ndarray:
    """Inverse of ``rgb_to_hed`` -> RGB uint8 (rounded, clipped to 0..255)."""
    _, rgb_from_hed = _hed_matrices()
    x = np.exp((hed @ rgb_from_hed) * _LOG_ADJ)
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def hed_jitter(rgb: np.ndarray, rng: np.random.Generator, alpha: float = 0.25, beta: float = 0.01,
               alpha_dab: float = 0.05) -> np.ndarray:
    """Per-stain ``s' = a * s + b``: a ~ U[1-alpha, 1+alpha] for H and E (U[1-alpha_dab, 1+alpha_dab]
    for the residual DAB channel), b ~ U[-beta, beta] (stain density units; typical nucleus H
    density 0.1-0.2)."""
    hed = rgb_to_hed(rgb)
    a = np.array([rng.uniform(1 - alpha, 1 + alpha), rng.uniform(1 - alpha, 1 + alpha),
                  rng.uniform(1 - alpha_dab, 1 + alpha_dab)])
    b = rng.uniform(-beta, beta, size=3)
    return hed_to_rgb(hed * a + b)


def pale_nuclei(rgb: np.ndarray, inst: np.ndarray | None, rng: np.random.Generator, fraction: float = 0.6,
                strength: tuple[float, float] = (0.3, 0.75), rim_px: float = 1.5) -> np.ndarray:
    """Vesicular-nucleus staining: each nucleus is picked with probability ``fraction``; inside a
    picked nucleus the haematoxylin density is multiplied by ``1 - s * w`` with
    s ~ U[strength] (one draw per nucleus) and ``w = min(1, d / rim_px)``, d = distance (working
    px) to the nucleus boundary, so the outer ``rim_px`` keeps its chromatin. Labels unchanged."""
    if inst is None or not np.any(inst > 0):
        return rgb
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    ids = np.unique(inst[inst > 0])
    picked = ids[rng.random(ids.size) < fraction]
    s_draw = rng.uniform(strength[0], strength[1], size=ids.size)
    if picked.size == 0:
        return rgb
    lut = np.zeros(int(inst.max()) + 1, np.float64)
    s_of = dict(zip(ids.tolist(), s_draw.tolist()))
    for i in picked.tolist():
        lut[i] = s_of[i]
    s_map = lut[inst]
    inner = (inst > 0) & ~find_boundaries(inst, mode="inner")
    d = ndi.distance_transform_edt(inner)
    w = np.clip(d / max(rim_px, 1e-6), 0.0, 1.0)
    hed = rgb_to_hed(rgb)
    hed[..., 0] *= 1.0 - s_map * w
    out = hed_to_rgb(hed)
    keep = s_map == 0
    out[keep] = rgb[keep]  # bit-identical outside picked nuclei
    return out


def gamma(rgb: np.ndarray, rng: np.random.Generator, lo: float = 0.6, hi: float = 1.6) -> np.ndarray:
    """``255 * (x / 255) ** g``, g log-uniform in [lo, hi] (g < 1 brightens: paler staining)."""
    g = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    lut = np.clip(np.round(255.0 * (np.arange(256) / 255.0) ** g), 0, 255).astype(np.uint8)
    return lut[rgb]


def gaussian_blur(rgb: np.ndarray, rng: np.random.Generator, sigma_max: float = 1.2, sigma_min: float = 0.3) -> np.ndarray:
    """Gaussian blur, sigma ~ U[sigma_min, sigma_max] working px (PIL)."""
    s = float(rng.uniform(sigma_min, sigma_max))
    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(radius=s)))


def jpeg(rgb: np.ndarray, rng: np.random.Generator, q_lo: int = 40, q_hi: int = 90) -> np.ndarray:
    """Encode + decode as JPEG at quality ~ U{q_lo..q_hi} (PIL, 4:2:0 chroma subsampling)."""
    q = int(rng.integers(q_lo, q_hi + 1))
    return jpeg_fixed(rgb, q)


def jpeg_fixed(rgb: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip at a fixed quality (also used by ``segtme eval --perturb``)."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def elastic(rgb: np.ndarray, labels: list[np.ndarray | None], rng: np.random.Generator, alpha: float = 4.0,
            sigma: float = 10.0) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Smooth random displacement: white noise U[-1, 1] per axis, Gaussian-smoothed with
    ``sigma`` px and scaled so its RMS is ``alpha`` px; image bilinear, labels nearest, edges
    replicated."""
    from scipy import ndimage as ndi

    h, w = rgb.shape[:2]
    fields = []
    for _ in range(2):
        f = ndi.gaussian_filter(rng.uniform(-1.0, 1.0, size=(h, w)), sigma, mode="reflect")
        rms = float(np.sqrt(np.mean(f * f))) or 1.0
        fields.append(f * (alpha / rms))
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    coords = np.stack([yy + fields[0], xx + fields[1]])
    out = np.empty_like(rgb)
    for c in range(rgb.shape[2]):
        out[..., c] = np.clip(np.round(ndi.map_coordinates(rgb[..., c].astype(np.float32), coords, order=1,
                                                           mode="nearest")), 0, 255).astype(np.uint8)
    labs = [None if a is None else ndi.map_coordinates(a, coords, order=0, mode="nearest").astype(a.dtype)
            for a in labels]
    return out, labs


def sample_crop_mpp(rng: np.random.Generator, mpp_work: float, lo: float = 0.7, hi: float = 1.4) -> float:
    """µm/px at which to read a training crop: ``mpp_work * f``, f log-uniform in [lo, hi]."""
    return float(mpp_work * math.exp(rng.uniform(math.log(lo), math.log(hi))))
