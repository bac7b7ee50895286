"""TME features and tokens for the 13-class PAGET taxonomy, built on the shared
``segtme.tme.features`` (core features unchanged; this adds a registered feature group).

New features (names in docs/paget.md; px of the table's coordinates, µm twins when mpp known):

* immune subtypes among leukocytes: ``N_Lymphocyte``, ``N_Plasma_cell``, ``N_Myeloid_cell``,
  ``N_Eosinophil``, ``N_Neutrophil``, ``N_Granulocyte`` (eosinophils + neutrophils) and the
  fractions ``frac_Lymphocyte_of_Leukocyte``, ``frac_Plasma_cell_of_Leukocyte``,
  ``frac_Myeloid_cell_of_Leukocyte``, ``frac_Granulocyte_of_Leukocyte``;
* other nucleus classes: ``N_Fibroblast``, ``N_Endothelial_cell``, ``N_Mitotic_cell``,
  ``r_Mitotic_of_Epithelial`` (mitotic / (epithelial + mitotic) nuclei), ``N_Mitotic_atypical``
  (mitotic cells the mitosis teacher calls atypical, ``mitosis_atypical_prob >= 0.5``) and
  ``mitotic_count_per_mm2`` (mitotic cells per mm² of tissue area, a grading feature);
* tissue area fractions of the non-background area: ``area_frac_Epithelium``,
  ``area_frac_Stroma``, ``area_frac_Smooth_muscle``, ``area_frac_Red_blood_cell``, plus
  ``tissue_area_px`` (and ``tissue_area_um2``). Nucleus pixels count for the tissue around them;
* immune location: ``N_Leukocyte_in_Epithelium`` / ``_in_Stroma`` / ``_in_Smooth_muscle``,
  ``frac_Leukocyte_in_Epithelium`` (intraepithelial share of leukocytes in epithelium or stroma)
  and the same for lymphocytes (``frac_Lymphocyte_in_Epithelium``: intraepithelial lymphocytes).

The tissue-level features need the semantic map in the table's px (``cls_mask`` of
``analyze_tme_from_nuclei``) or per-nucleus tissue labels and tissue areas in ``table.meta``
(``paget_tissue_context`` (N,) PAGET ids, ``paget_tissue_area_px`` {class name: px²}); without
either they are undefined with a reason.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..inference.nuclei import NucleiTable
from ..tme.features import FeatureSet, TMEContext, analyze_tme_from_nuclei, register_feature_group
from ..tme.tokens import register_token_axes
from . import taxonomy as pt

SUBTYPES: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("Lymphocyte", (pt.LYMPHOCYTE,)),
    ("Plasma_cell", (pt.PLASMA_CELL,)),
    ("Myeloid_cell", (pt.MYELOID_CELL,)),
    ("Granulocyte", (pt.EOSINOPHIL, pt.NEUTROPHIL)),
)
LEUKOCYTES = (pt.LYMPHOCYTE, pt.PLASMA_CELL, pt.MYELOID_CELL, pt.EOSINOPHIL, pt.NEUTROPHIL)
TISSUE_FEATURE_NAMES = {pt.EPITHELIUM: "Epithelium", pt.STROMA: "Stroma", pt.SMOOTH_MUSCLE: "Smooth_muscle",
                        pt.RED_BLOOD_CELL: "Red_blood_cell"}


def _ratio(a: int, b: int) -> float | None:
    return None if b == 0 else a / b


def _tissue_info(ctx: TMEContext) -> tuple[np.ndarray | None, dict[int, float] | None, str]:
    """(tissue context per counted nucleus, tissue area px² per class, reason if unavailable)."""
    meta = ctx.table.meta
    if ctx.cls_mask is not None:
        from .geometry import fill_tissue_under_nuclei

        sem = np.asarray(ctx.cls_mask)
        filled = fill_tissue_under_nuclei(sem.astype(np.uint8))
        areas = {c: float((filled == c).sum()) for c in TISSUE_FEATURE_NAMES}
        xy = ctx.xy
        if len(xy):
            c = np.clip(np.floor(xy[:, 0]).astype(int), 0, sem.shape[1] - 1)
            r = np.clip(np.floor(xy[:, 1]).astype(int), 0, sem.shape[0] - 1)
            tctx = filled[r, c].astype(np.int64)
        else:
            tctx = np.zeros(0, np.int64)
        return tctx, areas, ""
    if "paget_tissue_context" in meta and "paget_tissue_area_px" in meta:
        full = np.asarray(meta["paget_tissue_context"], np.int64)
        areas = {pt.ID[k]: float(v) for k, v in dict(meta["paget_tissue_area_px"]).items() if k in pt.ID}
        return full[ctx.counted], areas, ""
    return None, None, "no PAGET semantic map (cls_mask) or tissue context in the table"


@register_feature_group("paget13", taxonomies=[pt.TAXONOMY.name])
def paget_feature_group(ctx: TMEContext, out: FeatureSet) -> None:
    """The 13-class extension (see module docstring)."""
    cid = ctx.class_id
    count = {c: int((cid == c).sum()) for c in range(pt.TAXONOMY.num_classes)}
    n_leu = sum(count[c] for c in LEUKOCYTES)
    for c, name in ((pt.LYMPHOCYTE, "Lymphocyte"), (pt.PLASMA_CELL, "Plasma_cell"), (pt.MYELOID_CELL, "Myeloid_cell"),
                    (pt.EOSINOPHIL, "Eosinophil"), (pt.NEUTROPHIL, "Neutrophil")):
        out.put(f"N_{name}", count[c])
    out.put("N_Granulocyte", count[pt.EOSINOPHIL] + count[pt.NEUTROPHIL])
    out.put("N_Leukocyte", n_leu)
    for name, ids in SUBTYPES:
        out.put(f"frac_{name}_of_Leukocyte", _ratio(sum(count[c] for c in ids), n_leu), "no leukocyte nuclei")
    out.put("N_Fibroblast", count[pt.FIBROBLAST])
    out.put("N_Endothelial_cell", count[pt.ENDOTHELIAL_CELL])
    out.put("N_Mitotic_cell", count[pt.MITOTIC_CELL])
    out.put("r_Mitotic_of_Epithelial", _ratio(count[pt.MITOTIC_CELL], count[pt.MITOTIC_CELL] + count[pt.EPITHELIAL_CELL]),
            "no epithelial or mitotic nuclei")

    aty = ctx.table.extra.get("mitosis_atypical_prob")
    if aty is not None:
        a = np.asarray(aty, np.float64)[ctx.counted]
        out.put("N_Mitotic_atypical", int(((cid == pt.MITOTIC_CELL) & (a >= 0.5)).sum()))
    else:
        out.put("N_Mitotic_atypical", None, "no mitosis teacher output (mitosis_atypical_prob) in the table")

    tctx, areas, why = _tissue_info(ctx)
    if areas is None or tctx is None:
        for nm in TISSUE_FEATURE_NAMES.values():
            out.put(f"area_frac_{nm}", None, why)
        out.put("tissue_area_px", None, why)
        out.put("mitotic_count_per_mm2", None, why)
        for who in ("Leukocyte", "Lymphocyte"):
            out.put(f"frac_{who}_in_Epithelium", None, why)
        return
    total = float(sum(areas.values()))
    out.put("tissue_area_px", total)
    if ctx.mpp is not None:
        out.put("tissue_area_um2", ctx.um2(total))
    # mitotic count per mm² of tissue (a grading feature); mm² = µm² / 1e6
    if ctx.mpp is None:
        out.put("mitotic_count_per_mm2", None, "no MPP: tissue area in mm² unknown")
    else:
        mm2 = total * ctx.mpp * ctx.mpp / 1e6
        out.put("mitotic_count_per_mm2", None if mm2 <= 0 else count[pt.MITOTIC_CELL] / mm2, "no tissue pixels")
    for c, nm in TISSUE_FEATURE_NAMES.items():
        out.put(f"area_frac_{nm}", None if total == 0 else areas.get(c, 0.0) / total, "no tissue pixels")
    leu = np.isin(cid, LEUKOCYTES)
    for c, nm in ((pt.EPITHELIUM, "Epithelium"), (pt.STROMA, "Stroma"), (pt.SMOOTH_MUSCLE, "Smooth_muscle")):
        out.put(f"N_Leukocyte_in_{nm}", int((leu & (tctx == c)).sum()))
    for who, sel in (("Leukocyte", leu), ("Lymphocyte", cid == pt.LYMPHOCYTE)):
        in_epi = int((sel & (tctx == pt.EPITHELIUM)).sum())
        in_str = int((sel & (tctx == pt.STROMA)).sum())
        out.put(f"frac_{who}_in_Epithelium", _ratio(in_epi, in_epi + in_str),
                f"no {who.lower()} nuclei in epithelium or stroma")


def analyze_paget_features(table: NucleiTable, sem: np.ndarray | None = None, **kwargs: Any) -> dict:
    """Core TME features + the PAGET group for a paget13 table; ``sem`` = the PAGET semantic map
    in the table's px (for tissue fractions and immune location)."""
    return analyze_tme_from_nuclei(table, cls_mask=sem, **kwargs)


# --------------------------------------------------------------------------- tokens
#: thresholds of the PAGET axes (fractions 0-1); documented in docs/paget.md
PAGET_TOKEN_THRESHOLDS: dict[str, float] = {
    "lymphocyte_predominant": 0.6,  # frac_Lymphocyte_of_Leukocyte >
    "plasma_rich": 0.2,  # frac_Plasma_cell_of_Leukocyte >
    "myeloid_rich": 0.3,  # frac_Myeloid_cell_of_Leukocyte >
    "granulocyte_rich": 0.1,  # frac_Granulocyte_of_Leukocyte >
    "epithelium_dominant": 0.5,  # area_frac_Epithelium >
    "stroma_rich": 0.5,  # area_frac_Stroma >
    "smooth_muscle_present": 0.1,  # area_frac_Smooth_muscle >
    "intraepithelial": 0.3,  # frac_Leukocyte_in_Epithelium >
    "stromal_confined": 0.1,  # frac_Leukocyte_in_Epithelium <
}

#: PAGET axes: (axis, label) -> tokens; every label/token the PAGET rules can emit
PAGET_RULES: dict[tuple[str, str], tuple[str, ...]] = {
    ("Immune composition", "Lymphocyte-predominant"): ("Lymphocyte-predominant infiltrate",),
    ("Immune composition", "Plasma-cell rich"): ("Plasma-cell rich infiltrate",),
    ("Immune composition", "Myeloid-rich"): ("Myeloid-rich infiltrate",),
    ("Immune composition", "Granulocyte-rich"): ("Granulocytic infiltrate",),
    ("Immune composition", "Mixed"): (),
    ("Tissue architecture", "Epithelium-dominant"): ("Epithelium-dominant tissue",),
    ("Tissue architecture", "Stroma-rich"): ("Stroma-rich tissue",),
    ("Tissue architecture", "Mixed tissue"): (),
    ("Smooth muscle", "Present"): ("Smooth muscle involvement",),
    ("Smooth muscle", "Absent"): (),
    ("Immune location", "Intraepithelial"): ("Intraepithelial immune cells",),
    ("Immune location", "Stroma-confined"): ("Stroma-confined immune cells",),
    ("Immune location", "Mixed location"): (),
}
PAGET_AXES: tuple[str, ...] = ("Immune composition", "Tissue architecture", "Smooth muscle", "Immune location")


def paget_tokens(features: Mapping[str, Any], thresholds: Mapping[str, float] = PAGET_TOKEN_THRESHOLDS) -> dict:
    """PAGET axes from the 13-class features: ``{"interpretation": {axis: label}, "generated_tokens":
    [...], "indeterminate": {axis: reason}}``. Strict inequalities; the first matching immune
    composition rule wins in the order lymphocyte, plasma, myeloid, granulocyte."""
    t = dict(PAGET_TOKEN_THRESHOLDS, **dict(thresholds))
    undefined = features.get("undefined") or {}
    interp: dict[str, str] = {}
    tokens: list[str] = []
    indet: dict[str, str] = {}

    def val(name: str) -> float | None:
        v = features.get(name)
        return None if v is None else float(v)

    def emit(axis: str, label: str) -> None:
        interp[axis] = label
        tokens.extend(PAGET_RULES[(axis, label)])

    def missing(axis: str, name: str) -> None:
        interp[axis] = "Indeterminate"
        indet[axis] = f"{name} undefined: {undefined.get(name, 'feature missing')}"

    fl, fp, fm, fg = (val(f"frac_{n}_of_Leukocyte") for n in ("Lymphocyte", "Plasma_cell", "Myeloid_cell", "Granulocyte"))
    if fl is None:
        missing("Immune composition", "frac_Lymphocyte_of_Leukocyte")
    elif fl > t["lymphocyte_predominant"]:
        emit("Immune composition", "Lymphocyte-predominant")
    elif fp is not None and fp > t["plasma_rich"]:
        emit("Immune composition", "Plasma-cell rich")
    elif fm is not None and fm > t["myeloid_rich"]:
        emit("Immune composition", "Myeloid-rich")
    elif fg is not None and fg > t["granulocyte_rich"]:
        emit("Immune composition", "Granulocyte-rich")
    else:
        emit("Immune composition", "Mixed")
    ae, ast = val("area_frac_Epithelium"), val("area_frac_Stroma")
    if ae is None or ast is None:
        missing("Tissue architecture", "area_frac_Epithelium")
    else:
        emit("Tissue architecture", "Epithelium-dominant" if ae > t["epithelium_dominant"]
             else "Stroma-rich" if ast > t["stroma_rich"] else "Mixed tissue")
    asm = val("area_frac_Smooth_muscle")
    if asm is None:
        missing("Smooth muscle", "area_frac_Smooth_muscle")
    else:
        emit("Smooth muscle", "Present" if asm > t["smooth_muscle_present"] else "Absent")
    fe = val("frac_Leukocyte_in_Epithelium")
    if fe is None:
        missing("Immune location", "frac_Leukocyte_in_Epithelium")
    else:
        emit("Immune location", "Intraepithelial" if fe > t["intraepithelial"]
             else "Stroma-confined" if fe < t["stromal_confined"] else "Mixed location")
    return {"interpretation": interp, "generated_tokens": tokens, "indeterminate": indet}


def translate_paget_tokens(features: Mapping[str, Any]) -> dict:
    """The shared Table-4 translation (``segtme.tme.tokens``) with the PAGET axes appended to
    ``interpretation`` / ``generated_tokens`` (and their reasons to ``raw_data["indeterminate"]``):
    the PAGET axes are registered for the paget13 taxonomy below, so every report of a paget13
    table (``tme.report``) carries them."""
    from ..tme.tokens import translate_tme_to_bio_tokens

    return translate_tme_to_bio_tokens(features, taxonomy=pt.TAXONOMY.name)


register_token_axes("paget13", paget_tokens, taxonomies=[pt.TAXONOMY.name])
