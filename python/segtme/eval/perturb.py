"""Robustness perturbations for ``segtme eval --perturb`` (issue #17): the same labelled images,
degraded the way other scanners and pipelines degrade them; labels untouched.

* ``resample20x``: the image is resampled to 0.5 µm/px (20x; PIL bilinear, antialiased when
  shrinking) and back to its own grid, losing the detail a 20x scan does not have. Images
  already at >= 0.5 µm/px are returned unchanged (nothing to lose).
* ``jpeg70``: one JPEG round trip at quality 70 (PIL, 4:2:0).
* ``stain``: HED stain jitter (``data.robustness.hed_jitter``): haematoxylin and eosin densities
  each scaled by a factor in [0.8, 1.2] and shifted by up to ±0.005, DAB by [0.95, 1.05]; the
  draw is a fixed function of the image name (CRC-32 seed), so every model and every run sees
  the same perturbed pixels.

Each perturbed image is an ``EvalItem`` whose ``perturb`` names the perturbation; the
evaluator reports it as dataset ``"<dataset>@<perturbation>"`` next to the clean one.
"""

from __future__ import annotations

import zlib
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from ..errors import InputError

#: µm/px of a 20x scan
MPP_20X = 0.5


def resample_through(rgb: np.ndarray, mpp: float, mpp_via: float = MPP_20X) -> np.ndarray:
    """Resample ``rgb`` (at ``mpp`` µm/px) to ``mpp_via`` and back to its own size."""
    if mpp >= mpp_via:
        return rgb
    h, w = rgb.shape[:2]
    s = mpp / mpp_via
    small = Image.fromarray(rgb).resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
    return np.asarray(small.resize((w, h), Image.BILINEAR))


def jpeg70(rgb: np.ndarray, mpp: float, name: str) -> np.ndarray:
    from ..data.robustness import jpeg_fixed

    return jpeg_fixed(rgb, 70)


def stain(rgb: np.ndarray, mpp: float, name: str) -> np.ndarray:
    from ..data.robustness import hed_jitter

    rng = np.random.default_rng(zlib.crc32(name.encode("utf-8")))
    return hed_jitter(rgb, rng, alpha=0.2, beta=0.005, alpha_dab=0.05)


PERTURBATIONS: dict[str, Callable[[np.ndarray, float, str], np.ndarray]] = {
    "resample20x": lambda rgb, mpp, name: resample_through(rgb, mpp),
    "jpeg70": jpeg70,
    "stain": stain,
}


def parse_perturbations(spec: str | Sequence[str] | None) -> list[str]:
    """``"all"`` / ``"jpeg70,stain"`` / a list -> validated names (clear error for unknown ones)."""
    if spec is None:
        return []
    names = list(PERTURBATIONS) if spec == "all" else ([s.strip() for s in spec.split(",") if s.strip()]
                                                         if isinstance(spec, str) else list(spec))
    bad = [n for n in names if n not in PERTURBATIONS]
    if bad:
        raise InputError(f"--perturb: unknown perturbation(s) {bad}; known: {', '.join(PERTURBATIONS)} or all")
    return names


def perturbed_items(items: Sequence, names: Sequence[str]) -> list:
    """For every item and perturbation name, a copy of the item whose image is perturbed."""
    return [replace(it, perturb=n) for n in names for it in items]


def apply(name: str, rgb: np.ndarray, mpp: float, image_name: str) -> np.ndarray:
    return PERTURBATIONS[name](rgb, mpp, image_name)
