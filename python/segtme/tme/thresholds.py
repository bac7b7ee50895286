"""Every TME threshold, defined once (SegTME-UNI2 paper, section 7 and Table 4).

Units
-----
The paper states its distance and area cut-offs in *pixels* (20 / 60 px, 50 px engagement radius,
150 / 300 px^2). A pixel only means something at a resolution, so this module fixes the
**reference resolution** ``reference_mpp`` at which those pixel values are meant and converts them
to whatever resolution a nuclei table is measured at:

* ``reference_mpp = 0.314 µm/px`` (default). The paper's pipeline MPP-normalises every input to
  0.314 µm/px before segmentation (Fig. 2b: ``s = MPP_input / 0.314``; the ``uni2_uperhover``
  preset's working resolution), so the instance/class maps its TME features are computed on - and
  therefore the "px" of Table 4 - are pixels at 0.314 µm/px. In micrometres the cut-offs are:
  contact 20 px = 6.28 µm, exclusion 60 px = 18.84 µm, engagement 50 px = 15.7 µm,
  small nuclei 150 px^2 = 14.79 µm^2, large nuclei 300 px^2 = 29.58 µm^2.
* Why not 0.5 µm/px: measured on the 27 CoNSeP training images (human annotations, 40x,
  0.25 µm/px), the median epithelial nucleus is 347 px^2 (21.7 µm^2), the median inflammatory
  nucleus 184 px^2 (11.5 µm^2) and the median nearest-neighbour centroid spacing 17.6 px (4.4 µm).
  At 0.5 µm/px the 300 px^2 / 150 px^2 cut-offs would be 75 / 37.5 µm^2 and every annotated nucleus
  would be "Small/Monotonous", and "direct contact" (10 µm) would span two neighbour spacings. At
  0.314 µm/px the cut-offs fall between the lymphocyte-sized and the epithelial nuclei and contact
  is about one neighbour spacing, which is what Table 4 describes.

Applying the thresholds
-----------------------
* MPP known (the table's ``mpp``): a length threshold of ``L`` reference px becomes
  ``L * reference_mpp / mpp`` px of the analysed table (i.e. ``L * reference_mpp`` µm); an area
  threshold of ``A`` reference px^2 becomes ``A * (reference_mpp / mpp)**2`` px^2.
* MPP unknown: the maps are assumed to be at the reference resolution and the thresholds apply to
  the pixel values unchanged; the report states this assumption.

Fractions (r_c, f_TS, f_II, engaged share) and the spatial entropy (bits) are unitless and need no
conversion. Boundary semantics follow Table 4 exactly: ``>`` and ``<`` are strict, the equality
case falls into the "otherwise" branch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = ["TMEThresholds", "DEFAULT_THRESHOLDS"]


@dataclass(frozen=True)
class TMEThresholds:
    """The TME rulebook's numbers (Table 4 + section 7 + SegTME's seventh axis).

    Length / area fields are in pixels / px^2 **at ``reference_mpp``** (see module docstring).
    """

    #: µm per pixel at which the paper's pixel thresholds are meant (paper Fig. 2b: 0.314 µm/px).
    reference_mpp: float = 0.314

    # --- section 7: features -------------------------------------------------------------------
    #: inflammatory nucleus counts as engaged if its nearest neoplastic centroid is <= this (px).
    engagement_radius_px: float = 50.0
    #: neighbours per cell for the spatial entropy (k = 6 nearest incl. the cell itself).
    entropy_neighbours: int = 5

    # --- Table 4 -------------------------------------------------------------------------------
    #: Composition: r_Neoplastic > this -> High tumour purity.
    purity_high: float = 0.60
    #: Composition: r_Neoplastic < this -> Low purity (immune- or stroma-dominant).
    purity_low: float = 0.30
    #: Immune status: r_Inflammatory > this -> Immune Hot.
    immune_hot: float = 0.30
    #: Immune status: r_Inflammatory < this -> Immune Cold.
    immune_cold: float = 0.10
    #: Stromal status: r_Connective > this -> Desmoplastic.
    desmoplastic: float = 0.50
    #: Stromal status: r_Connective < this -> Stroma-free.
    stroma_free: float = 0.05
    #: Spatial interaction: mean_dist_Inflammatory_to_Neoplastic < this (px) -> Direct contact.
    contact_dist_px: float = 20.0
    #: Spatial interaction: mean_dist_Inflammatory_to_Neoplastic > this (px) -> Excluded.
    excluded_dist_px: float = 60.0
    #: Architecture: mean_spatial_entropy > this (bits) -> High mixing.
    mixing_high: float = 0.70
    #: Architecture: mean_spatial_entropy < this (bits) -> Segregated.
    mixing_low: float = 0.40
    #: Morphology: mean_area_Neoplastic > this (px^2) -> Large/Pleomorphic.
    large_area_px2: float = 300.0
    #: Morphology: mean_area_Neoplastic < this (px^2) -> Small/Monotonous.
    small_area_px2: float = 150.0

    # --- SegTME's seventh axis: immune engagement ----------------------------------------------
    #: fraction_engaged_immune > this -> Tumour-engaged (most immune cells touch the tumour).
    engaged_high: float = 0.50
    #: fraction_engaged_immune < this -> Bystander (immune cells mostly away from the tumour).
    engaged_low: float = 0.20

    def __post_init__(self) -> None:
        if not (math.isfinite(self.reference_mpp) and self.reference_mpp > 0):
            raise ValueError(f"reference_mpp must be a positive number, got {self.reference_mpp!r}")
        if self.entropy_neighbours < 1:
            raise ValueError("entropy_neighbours must be >= 1")
        for lo, hi in (
            ("purity_low", "purity_high"), ("immune_cold", "immune_hot"), ("stroma_free", "desmoplastic"),
            ("contact_dist_px", "excluded_dist_px"), ("mixing_low", "mixing_high"),
            ("small_area_px2", "large_area_px2"), ("engaged_low", "engaged_high"),
        ):
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"threshold {lo} must not exceed {hi}")

    # ---- unit conversion (the one place it happens) --------------------------------------------
    def scale(self, mpp: float | None) -> float:
        """Analysis px per reference px: ``reference_mpp / mpp`` (1.0 when mpp is unknown)."""
        return 1.0 if mpp is None else self.reference_mpp / float(mpp)

    def length_px(self, ref_px: float, mpp: float | None) -> float:
        """A length given in reference px, expressed in px of a table measured at ``mpp``."""
        return float(ref_px) * self.scale(mpp)

    def area_px2(self, ref_px2: float, mpp: float | None) -> float:
        """An area given in reference px^2, expressed in px^2 of a table measured at ``mpp``."""
        return float(ref_px2) * self.scale(mpp) ** 2

    def length_um(self, ref_px: float) -> float:
        """A length given in reference px, in µm."""
        return float(ref_px) * self.reference_mpp

    def area_um2(self, ref_px2: float) -> float:
        """An area given in reference px^2, in µm^2."""
        return float(ref_px2) * self.reference_mpp**2

    def effective(self, mpp: float | None) -> dict:
        """The length/area thresholds as applied to a table at ``mpp``: analysis px and µm."""
        out: dict = {"analysis_mpp": None if mpp is None else float(mpp), "reference_mpp": self.reference_mpp,
                     "mpp_assumed_reference": mpp is None}
        for name in ("engagement_radius_px", "contact_dist_px", "excluded_dist_px"):
            base = name[: -len("_px")]
            out[f"{base}_analysis_px"] = self.length_px(getattr(self, name), mpp)
            out[f"{base}_um"] = self.length_um(getattr(self, name))
        for name in ("large_area_px2", "small_area_px2"):
            base = name[: -len("_px2")]
            out[f"{base}_analysis_px2"] = self.area_px2(getattr(self, name), mpp)
            out[f"{base}_um2"] = self.area_um2(getattr(self, name))
        return out

    def to_dict(self, mpp: float | None = None) -> dict:
        """All thresholds (reference units) plus their effective values at ``mpp``."""
        d = asdict(self)
        d["effective"] = self.effective(mpp)
        return d


DEFAULT_THRESHOLDS = TMEThresholds()
