"""Simple rule-based teachers, for tests, demos and for exercising the distillation pipeline
without IHC-trained models. They are **not** the paper's teachers (SegPath / MPO / ECP /
MIDOG++ models trained on IHC restaining) and make no claim of accuracy: they follow crude
colour / density / morphology rules so that the aggregation receives plausible, reproducible
maps on real H&E. Users replace them with their own models through ``segtme.paget.teachers``.

Lengths are in µm and converted with the image's MPP (``TeacherInput.mpp``; 0.25 µm/px assumed
when unknown). All outputs are logit maps (> 0 = fires) at the image's resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .teachers import TeacherInput

DEFAULT_MPP = 0.25


def _px(um: float, mpp: float | None) -> float:
    return um / (mpp or DEFAULT_MPP)


def stain_od(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(haematoxylin, eosin) per pixel from the one stain OD (``segtme.stain.hed_od``, Ruifrok &
    Johnston), in scikit-image ``rgb2hed`` units (``max(OD, 0) / SKIMAGE_HED_UNIT``) so the rule
    thresholds keep their meaning."""
    from ..stain import SKIMAGE_HED_UNIT, hed_od

    hed = np.maximum(hed_od(rgb)[..., :2], 0.0) / SKIMAGE_HED_UNIT
    return hed[..., 0].astype(np.float32), hed[..., 1].astype(np.float32)


@dataclass
class TissueDensityTeacher:
    """Level-1 tissue teacher. Epithelium: locally dense nuclei (the fraction of nucleus pixels in
    a Gaussian window of ``window_um``, from the instance map if given, else from a haematoxylin
    threshold) above ``epi_density``. Smooth muscle: strongly eosinophilic (smoothed eosin OD
    above ``sm_eosin_quantile`` of the image) and nucleus-poor (density below ``sm_max_density``).
    Logit = (value - threshold) / scale."""

    name: str = "rule-tissue"
    classes: tuple[str, ...] = ("Epithelium", "Smooth muscle")
    window_um: float = 12.0
    epi_density: float = 0.30
    sm_eosin_quantile: float = 0.9
    sm_max_density: float = 0.08
    #: False: no smooth-muscle output (``classes`` = epithelium only). The eosin rule is not a
    #: smooth-muscle teacher worth distilling (stroma is eosinophilic too).
    smooth_muscle: bool = True

    def __post_init__(self) -> None:
        if not self.smooth_muscle:
            self.classes = tuple(c for c in self.classes if c != "Smooth muscle")

    def predict(self, image: TeacherInput) -> dict[str, np.ndarray]:
        from scipy import ndimage as ndi

        h_od, e_od = stain_od(image.rgb)
        if image.inst is not None:
            nuc = (np.asarray(image.inst) > 0).astype(np.float32)
        else:
            from skimage.filters import threshold_otsu

            nuc = (h_od > threshold_otsu(h_od)).astype(np.float32)
        sigma = _px(self.window_um, image.mpp)
        dens = ndi.gaussian_filter(nuc, sigma)
        eos = ndi.gaussian_filter(e_od, sigma)
        epi = (dens - self.epi_density) / 0.05
        thr = float(np.quantile(eos, self.sm_eosin_quantile))
        sm = np.minimum((eos - thr) / (abs(thr) * 0.1 + 1e-3), (self.sm_max_density - dens) / 0.02)
        out = {"Epithelium": epi.astype(np.float32), "Smooth muscle": sm.astype(np.float32)}
        return {k: v for k, v in out.items() if k in self.classes}


@dataclass
class RoundDarkNucleusTeacher:
    """Level-2 leukocyte teacher (and a level-3 lymphocyte teacher) on given nuclei: small, round,
    dark nuclei are leukocytes; the smallest of them lymphocytes. Needs ``TeacherInput.inst``.
    Leukocyte: area < ``max_area_um2``, eccentricity < ``max_ecc``, mean haematoxylin OD above
    the image's ``dark_quantile`` of nuclei. Lymphocyte: additionally area < ``lym_area_um2``.
    Fires (+4) on the whole nucleus, else -4."""

    name: str = "rule-leukocyte"
    classes: tuple[str, ...] = ("Leukocyte", "Lymphocyte")
    max_area_um2: float = 40.0
    lym_area_um2: float = 30.0
    max_ecc: float = 0.8
    dark_quantile: float = 0.5

    def predict(self, image: TeacherInput) -> dict[str, np.ndarray]:
        from skimage.measure import regionprops

        shape = image.rgb.shape[:2]
        leu = np.full(shape, -4.0, np.float32)
        lym = np.full(shape, -4.0, np.float32)
        if image.inst is None or not np.any(image.inst):
            return {"Leukocyte": leu, "Lymphocyte": lym}
        inst = np.asarray(image.inst).astype(np.int32)
        h_od, _ = stain_od(image.rgb)
        props = regionprops(inst, intensity_image=h_od)
        od = np.array([p.intensity_mean for p in props])
        dark = float(np.quantile(od, self.dark_quantile)) if len(od) else 0.0
        px2 = (image.mpp or DEFAULT_MPP) ** 2
        ids_leu, ids_lym = [], []
        for p, o in zip(props, od):
            area = p.area * px2
            if area < self.max_area_um2 and p.eccentricity < self.max_ecc and o > dark:
                ids_leu.append(p.label)
                if area < self.lym_area_um2:
                    ids_lym.append(p.label)
        leu[np.isin(inst, ids_leu)] = 4.0
        lym[np.isin(inst, ids_lym)] = 4.0
        return {"Leukocyte": leu, "Lymphocyte": lym}


@dataclass
class RedCellColourTeacher:
    """Level-2 red-blood-cell teacher: bright, saturated red pixels (hue within ``hue_tol`` of
    red, saturation > ``min_sat``, value > ``min_val``), smoothed by ``sigma_um``."""

    name: str = "rule-rbc"
    classes: tuple[str, ...] = ("Red blood cell",)
    min_sat: float = 0.25
    min_val: float = 0.8
    hue_tol: float = 0.13
    sigma_um: float = 0.5

    def predict(self, image: TeacherInput) -> dict[str, np.ndarray]:
        from scipy import ndimage as ndi
        from skimage.color import rgb2hsv

        hsv = rgb2hsv(image.rgb)
        hd = np.minimum(hsv[..., 0], 1.0 - hsv[..., 0])  # distance to red hue (0 / 1)
        score = np.minimum.reduce([
            (self.hue_tol - hd) / self.hue_tol,
            (hsv[..., 1] - self.min_sat) / 0.05,
            (hsv[..., 2] - self.min_val) / 0.05,
        ]).astype(np.float32)
        return {"Red blood cell": ndi.gaussian_filter(score, _px(self.sigma_um, image.mpp))}


RULE_TEACHERS = {
    "tissue_density": TissueDensityTeacher,
    "leukocyte_round_dark": RoundDarkNucleusTeacher,
    "rbc_colour": RedCellColourTeacher,
}
