"""PAGET's three-level biological hierarchy and its evaluation class mappings.

The 13 output classes (+ background) are ``segtme.taxonomy.PAGET13``. This module adds what the
aggregation and the scoring need on top of it (paget-paper.txt, sections 3.4.1 and Appendix E):

* the hierarchy levels: level 1 tissue context (epithelium, stroma, smooth muscle), level 2 major
  cell categories (leukocyte, endothelial cell, red blood cell, epithelial cell; plus fibroblast,
  filled in by label completion, and mitotic cell, set by mitosis integration), level 3 leukocyte
  subtypes (lymphocyte, plasma cell, myeloid cell, eosinophil, neutrophil);
* an *aggregation vocabulary*: the 14 output ids plus two intermediate labels that only exist
  during aggregation: ``LEUKOCYTE`` (level 2, CD45-like teachers and HoverNet "inflammatory") and
  ``CONNECTIVE`` (HoverNet's PanNuke "connective" baseline class, resolved by step 4b);
* Table 5's evaluation groups (multi-valued: a PAGET class can count for several evaluation
  classes, e.g. a lymphocyte is both "Leukocyte" and "Lymphocyte") and functions that turn 13-class
  label maps / class ids into the coarser label sets of ``PAGET13.eval_mappings``.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from ..taxonomy import PAGET13, Taxonomy, get_taxonomy

TAXONOMY: Taxonomy = PAGET13
NAMES: tuple[str, ...] = tuple(PAGET13.names)
ID: dict[str, int] = {n: i for i, n in enumerate(NAMES)}

BACKGROUND = 0
EPITHELIUM, STROMA, SMOOTH_MUSCLE = ID["Epithelium"], ID["Stroma"], ID["Smooth muscle"]
EPITHELIAL_CELL, FIBROBLAST, ENDOTHELIAL_CELL = ID["Epithelial cell"], ID["Fibroblast"], ID["Endothelial cell"]
RED_BLOOD_CELL = ID["Red blood cell"]
LYMPHOCYTE, PLASMA_CELL, MYELOID_CELL = ID["Lymphocyte"], ID["Plasma cell"], ID["Myeloid cell"]
EOSINOPHIL, NEUTROPHIL, MITOTIC_CELL = ID["Eosinophil"], ID["Neutrophil"], ID["Mitotic cell"]

#: intermediate aggregation labels (not model outputs)
LEUKOCYTE = len(NAMES)  # 14: "LEU" of the paper (level 2)
CONNECTIVE = len(NAMES) + 1  # 15: HoverNet (PanNuke) "connective" baseline, -> fibroblast (step 4b)
AGG_NAMES: tuple[str, ...] = NAMES + ("Leukocyte", "Connective")
AGG_ID: dict[str, int] = {n: i for i, n in enumerate(AGG_NAMES)}
#: label value ignored by the cross-entropy loss (unresolved nuclei; transformers' SegFormer default)
IGNORE_INDEX = 255

#: level-1 tissue classes a tissue teacher predicts (Eq. 1); stroma is the default, not predicted
TISSUE_TEACHER_CLASSES: tuple[str, ...] = ("Smooth muscle", "Epithelium")
#: leukocyte subtypes S_LEU (level 3)
LEUKOCYTE_SUBTYPES: tuple[str, ...] = ("Lymphocyte", "Plasma cell", "Myeloid cell", "Eosinophil", "Neutrophil")
#: level-2 major categories a teacher may predict (the paper: SegPath leukocyte/CD45, endothelium,
#: red blood cells; an epithelial-cell or fibroblast teacher is accepted as well)
LEVEL2_CLASSES: tuple[str, ...] = ("Leukocyte", "Endothelial cell", "Red blood cell", "Epithelial cell", "Fibroblast")
#: classes labelled on any non-background pixel (not only inside nuclei): anucleate red blood cells
PIXEL_SCOPE_CLASSES: tuple[str, ...] = ("Red blood cell",)
#: the 9 directly predicted cell types of the flat ablation (section 5.2): all classes except
#: stroma, epithelial-cell nuclei, fibroblasts and mitotic cells (the rule-assigned ones)
FLAT_CLASSES: tuple[str, ...] = (
    "Epithelium", "Smooth muscle", "Red blood cell", "Endothelial cell", *LEUKOCYTE_SUBTYPES,
)

#: hierarchy level of every aggregation label (section 3.4.1)
LEVEL: dict[str, int] = {
    "Epithelium": 1, "Stroma": 1, "Smooth muscle": 1,
    "Leukocyte": 2, "Endothelial cell": 2, "Red blood cell": 2, "Epithelial cell": 2,
    "Fibroblast": 2, "Mitotic cell": 2, "Connective": 2,
    **{n: 3 for n in LEUKOCYTE_SUBTYPES},
}
#: hierarchy parent of every aggregation label (None = the tissue context / root)
PARENT: dict[str, str | None] = {n: ("Leukocyte" if n in LEUKOCYTE_SUBTYPES else None) for n in LEVEL}

#: default mapping of an instance source's own classes to baseline aggregation labels (section 3.3:
#: HoverNet's PanNuke classes are "refined by more specific teachers"; Table 5 pairs PanNuke
#: neoplastic / non-neoplastic epithelial with epithelial cell, connective with endothelial +
#: fibroblast, inflammatory with the leukocytes). None = no baseline label.
BASELINE_FROM_PANNUKE: dict[str, str | None] = {
    "Neoplastic": "Epithelial cell",
    "Epithelial": "Epithelial cell",
    "Connective": "Connective",
    "Inflammatory": "Leukocyte",
    "Dead": None,
}
BASELINE_FROM_CONSEP: dict[str, str | None] = {
    "Epithelial (incl. tumour)": "Epithelial cell",
    "Spindle-shaped": "Connective",
    "Inflammatory": "Leukocyte",
    "Other": None,
}

#: Table 5 (Appendix E): evaluation class -> the PAGET classes combined for it. Multi-valued:
#: a PAGET class may belong to several evaluation classes (per-class one-vs-rest scoring).
EVAL_GROUPS: dict[str, tuple[str, ...]] = {
    "Epithelial tissue": ("Epithelium", "Epithelial cell"),
    "Stroma": ("Stroma",),
    "Blood": ("Red blood cell",),
    "Epithelial cell": ("Epithelial cell",),
    "Connective tissue cell": ("Endothelial cell", "Fibroblast"),
    "Leukocyte": LEUKOCYTE_SUBTYPES,
    "Lymphocyte": ("Lymphocyte",),
    "Plasma cell": ("Plasma cell",),
    "Myeloid cell": ("Myeloid cell",),
    "Eosinophil": ("Eosinophil",),
    "Neutrophil": ("Neutrophil",),
    "Endothelial cell": ("Endothelial cell",),
    "Mitotic cell": ("Mitotic cell",),
}
#: Table 5, baseline columns: the same evaluation classes for models with other label sets
EVAL_GROUPS_OTHER: dict[str, dict[str, tuple[str, ...]]] = {
    "pannuke6": {
        "Epithelial cell": ("Neoplastic", "Epithelial"),
        "Connective tissue cell": ("Connective",),
        "Leukocyte": ("Inflammatory",),
    },
    "consep4": {
        "Epithelial cell": ("Epithelial (incl. tumour)",),
        "Connective tissue cell": ("Spindle-shaped",),
        "Leukocyte": ("Inflammatory",),
    },
}
#: ground-truth side merges needed before scoring PAGET against a label set with a finer split
#: than PAGET (PanNuke separates neoplastic and non-neoplastic epithelium; PAGET does not)
GT_MERGES: dict[str, dict[str, str]] = {"pannuke6": {"Epithelial": "Neoplastic"}}


def level_of(name: str) -> int:
    """Hierarchy level (1 tissue, 2 major category, 3 leukocyte subtype) of an aggregation label."""
    try:
        return LEVEL[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a PAGET aggregation label; known: {sorted(LEVEL)}") from None


def parent_of(name: str) -> str | None:
    level_of(name)
    return PARENT[name]


def children_of(name: str) -> tuple[str, ...]:
    return tuple(n for n, p in PARENT.items() if p == name)


def tissue_classes(tax: Taxonomy = PAGET13) -> list[int]:
    """Ids of region (tissue-level) classes: epithelium, stroma, smooth muscle, red blood cell."""
    return [c.id for c in tax.classes if c.level == "tissue"]


def nucleus_classes(tax: Taxonomy = PAGET13) -> list[int]:
    """Ids of nucleus-level classes (1 nucleus = 1 QuPath detection)."""
    return [c.id for c in tax.classes if c.level == "nucleus"]


def _eval_mapping(tax: Taxonomy, target: str) -> Mapping[str, str]:
    """``tax.eval_mappings[target]``, or a KeyError naming the mappings ``tax`` has."""
    try:
        return tax.eval_mappings[target]
    except KeyError:
        raise KeyError(f"taxonomy {tax.name} has no evaluation mapping to {target!r}; "
                       f"known: {sorted(tax.eval_mappings)}") from None


#: PAGET-H's mitotic cells come from the mitosis teacher (aggregation step 5), never from a
#: nucleus model's class: a guided vote (``guided_leaves``) never offers "Mitotic cell"
GUIDE_EXCLUDED: tuple[str, ...] = ("Mitotic cell",)


def guided_leaves(source: Taxonomy | str, tax: Taxonomy = PAGET13,
                  exclude: Sequence[str] = GUIDE_EXCLUDED) -> np.ndarray:
    """(K_source, K) bool: for each class of a nucleus model's taxonomy (e.g. ``consep4``), the
    PAGET nucleus-level classes a PAGET-H vote may give a nucleus that model called that class:
    the PAGET classes that PAGET's own evaluation mapping ``tax.eval_mappings[source]`` sends to it
    (CoNSeP inflammatory -> the five leukocyte subtypes, spindle-shaped -> fibroblast + endothelial
    cell, epithelial -> epithelial cell), minus ``exclude``. A class with no such PAGET class left
    (background; CoNSeP "Other", whose only PAGET class is "Mitotic cell") allows every
    nucleus-level class: the vote is then unconstrained."""
    src = get_taxonomy(source) if not isinstance(source, Taxonomy) else source
    m = _eval_mapping(tax, src.name)
    nuc = nucleus_classes(tax)
    out = np.zeros((src.num_classes, tax.num_classes), bool)
    for sc in src.classes:
        ids = [c for c in nuc if m.get(tax.classes[c].name) == sc.name and tax.classes[c].name not in exclude]
        out[sc.id, ids if ids else nuc] = True
    return out


def mapping_lut(target: str, source: Taxonomy = PAGET13, *, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Look-up table (256,) uint8 mapping source class ids to ``target`` class ids via
    ``source.eval_mappings[target]`` (unlisted classes -> background; ``ignore_index`` kept)."""
    m = _eval_mapping(source, target)
    tgt = get_taxonomy(target)
    lut = np.zeros(256, np.uint8)
    for c in source.classes:
        lut[c.id] = tgt.by_name(m[c.name]).id if c.name in m else 0
    lut[ignore_index] = ignore_index
    return lut


def map_labels(labels: np.ndarray, target: str, source: Taxonomy = PAGET13) -> np.ndarray:
    """Map a label map or an array of class ids (values 0..13, or IGNORE_INDEX) to ``target``'s ids
    (e.g. ``"pannuke6"``, ``"consep4"``, ``"paget_coarse"``, ``"nucleus1"``)."""
    a = np.asarray(labels)
    if a.size and (a.min() < 0 or a.max() > 255):
        raise ValueError("labels must be class ids in 0..255")
    return mapping_lut(target, source)[a.astype(np.int64)]


def merge_ground_truth(labels: np.ndarray, target: str) -> np.ndarray:
    """Apply ``GT_MERGES[target]`` to ground-truth ids of ``target`` (e.g. PanNuke "Epithelial" ->
    "Neoplastic", because PAGET's epithelial cell covers both)."""
    tax = get_taxonomy(target)
    a = np.asarray(labels).astype(np.int64)
    lut = np.arange(max(256, tax.num_classes), dtype=np.int64)
    for src, dst in GT_MERGES.get(target, {}).items():
        lut[tax.by_name(src).id] = tax.by_name(dst).id
    return lut[a]


def eval_membership(labels: np.ndarray, eval_class: str, taxonomy: Taxonomy | str = PAGET13) -> np.ndarray:
    """Boolean array: which entries of ``labels`` (class ids of ``taxonomy``) count as ``eval_class``
    (Table 5). Use for one-vs-rest Dice (pixels) or MCC (per nucleus instance)."""
    tax = get_taxonomy(taxonomy)
    if tax.name == PAGET13.name:
        groups = EVAL_GROUPS
    else:
        groups = {**{n: (n,) for n in tax.names[1:]}, **EVAL_GROUPS_OTHER.get(tax.name, {})}
    if eval_class not in groups:
        raise KeyError(f"{tax.name}: no evaluation class {eval_class!r}; supported: {sorted(groups)}")
    ids = [tax.by_name(n).id for n in groups[eval_class]]
    return np.isin(np.asarray(labels), ids)


def supported_eval_classes(taxonomy: Taxonomy | str = PAGET13) -> list[str]:
    tax = get_taxonomy(taxonomy)
    if tax.name == PAGET13.name:
        return list(EVAL_GROUPS)
    return sorted(set(tax.names[1:]) | set(EVAL_GROUPS_OTHER.get(tax.name, {})))


def baseline_ids(class_names: Sequence[str | None], mapping: Mapping[str, str | None]) -> np.ndarray:
    """Instance-source class names -> aggregation ids of their baseline labels (0 = none)."""
    out = np.zeros(len(class_names), np.int64)
    for i, n in enumerate(class_names):
        if n is None:
            continue
        if n in AGG_ID:  # already an aggregation label
            out[i] = AGG_ID[n]
            continue
        b = mapping.get(n)
        out[i] = AGG_ID[b] if b else 0
    return out


def agg_ids(names: Iterable[str]) -> list[int]:
    out = []
    for n in names:
        if n not in AGG_ID:
            raise KeyError(f"{n!r} is not a PAGET aggregation label; known: {list(AGG_NAMES[1:])}")
        out.append(AGG_ID[n])
    return out
