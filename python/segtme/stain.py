"""H&E colour deconvolution: the one haematoxylin / eosin optical density of the package.

Optical density per RGB channel is ``OD = -log10(max(I, 1) / 255)`` (base-10, the unit QuPath's
"Hematoxylin OD" and its cell-detection thresholds use; I in 0..255, so OD in [0, 2.41]). The
stain densities are OD projected with Ruifrok & Johnston's H&E-DAB matrix as scikit-image ships
it (``skimage.color.hed_from_rgb``; rows of ``rgb_from_hed`` are the H, E, DAB vectors):
``hed = OD @ HED_FROM_RGB``. Not clipped: a pixel with more eosin than haematoxylin can have a
slightly negative H density.

Relation to ``skimage.color.rgb2hed``: ``rgb2hed(rgb) == np.maximum(hed_od(rgb), 0) / 6`` wherever
no channel is 0 (scikit-image divides natural-log OD by ln(1e-6) and clips at 0; its floor for
I = 0 is 1e-6 instead of 1/255). Pure numpy, no scikit-image import at call time.
"""

from __future__ import annotations

import numpy as np

#: Ruifrok & Johnston H&E-DAB stain vectors (rows: haematoxylin, eosin, DAB), = skimage's
#: ``rgb_from_hed`` (kept here so the stain maths imports nothing; a test checks they agree)
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float64)
#: its inverse (= skimage's ``hed_from_rgb``): OD (…, 3) @ HED_FROM_RGB -> (H, E, DAB) densities
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
#: scikit-image's ``rgb2hed`` values are these densities divided by this (ln(1e6) / ln(10))
SKIMAGE_HED_UNIT = 6.0

_OD_LUT = (-np.log10(np.maximum(np.arange(256, dtype=np.float64), 1.0) / 255.0)).astype(np.float32)
_HED32 = HED_FROM_RGB.astype(np.float32)


def _check(rgb: np.ndarray, what: str) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.shape[-1:] != (3,):
        raise ValueError(f"{what}: expected (..., 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    return rgb


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Per-channel base-10 optical density, (…, 3) uint8 RGB -> (…, 3) float32 (a lookup table)."""
    return _OD_LUT[_check(rgb, "optical_density")]


def hed_od(rgb: np.ndarray) -> np.ndarray:
    """(…, 3) uint8 RGB -> (…, 3) float32 haematoxylin, eosin, DAB optical densities."""
    return optical_density(rgb) @ _HED32


#: per stain, per channel: OD lookup tables already weighted by the stain's column of
#: HED_FROM_RGB, so one stain costs three table look-ups and two additions per pixel
_STAIN_LUT = np.stack([[(_OD_LUT.astype(np.float64) * HED_FROM_RGB[c, k]).astype(np.float32) for c in range(3)]
                       for k in range(3)])


def _one_stain(rgb: np.ndarray, k: int, what: str) -> np.ndarray:
    rgb = _check(rgb, what)
    lut = _STAIN_LUT[k]
    out = lut[0][rgb[..., 0]]
    out += lut[1][rgb[..., 1]]
    out += lut[2][rgb[..., 2]]
    return out


def haematoxylin_od(rgb: np.ndarray) -> np.ndarray:
    """(…, 3) uint8 RGB -> (…) float32 haematoxylin optical density (e.g. (H, W, 3) -> (H, W),
    (P, 3) -> (P,)); equal to ``hed_od(rgb)[..., 0]`` up to float32 rounding."""
    return _one_stain(rgb, 0, "haematoxylin_od")


def eosin_od(rgb: np.ndarray) -> np.ndarray:
    """(…, 3) uint8 RGB -> (…) float32 eosin optical density."""
    return _one_stain(rgb, 1, "eosin_od")
