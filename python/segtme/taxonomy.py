"""Class sets (taxonomies) and their mapping onto tumour-microenvironment (TME) roles.

The engine never knows class names: a model's config names its taxonomy (or carries one inline),
and everything downstream (nuclei table, GeoJSON, TME features, report) reads names, colours and
roles from here.

TME roles are the PanNuke-6 compartments the SegTME-UNI2 paper computes features over
(Neoplastic, Inflammatory, Connective, Dead, Epithelial). A taxonomy maps each of its classes to
one role (or to ``other``/``tissue``/``background``). When a class only *stands in* for a role (a
CoNSeP "epithelial" nucleus used as the tumour compartment), the class carries a ``substitution``
note that the TME report repeats verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

#: TME roles in feature order. The feature names of the paper use the PanNuke names in ROLE_NAMES.
ROLES: tuple[str, ...] = ("tumour", "immune", "stroma", "dead", "epithelium")
#: PanNuke class name used in feature names for each role (e.g. ``N_Neoplastic``).
ROLE_NAMES: dict[str, str] = {
    "tumour": "Neoplastic",
    "immune": "Inflammatory",
    "stroma": "Connective",
    "dead": "Dead",
    "epithelium": "Epithelial",
}
#: Roles that are not a TME compartment: counted in totals (``other``) or not a nucleus at all.
NON_ROLES: tuple[str, ...] = ("background", "other", "tissue", "excluded")


@dataclass(frozen=True)
class ClassInfo:
    """One output class of a model.

    id: index in the model's output channels (0 is always background).
    name: QuPath PathClass name (shown in QuPath, written to GeoJSON ``classification.name``).
    color: RGB 0-255, as QuPath's ``classification.color``.
    role: one of ROLES or NON_ROLES.
    level: "background", "nucleus" or "tissue" (PAGET's tissue-level classes).
    substitution: a sentence the report repeats when this class stands in for a role.
    parent: name of the parent class in a hierarchical taxonomy (PAGET), else None.
    """

    id: int
    name: str
    color: tuple[int, int, int]
    role: str
    level: str = "nucleus"
    substitution: str | None = None
    parent: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES + NON_ROLES:
            raise ValueError(f"class {self.name!r}: unknown TME role {self.role!r}")
        if self.level not in ("background", "nucleus", "tissue"):
            raise ValueError(f"class {self.name!r}: unknown level {self.level!r}")


@dataclass(frozen=True)
class Taxonomy:
    """An ordered class set; ``classes[i].id == i``."""

    name: str
    classes: tuple[ClassInfo, ...]
    description: str = ""
    #: evaluation mapping to coarser label sets, e.g. {"pannuke6": {"Lymphocyte": "Inflammatory"}}
    eval_mappings: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for i, c in enumerate(self.classes):
            if c.id != i:
                raise ValueError(f"taxonomy {self.name}: class {c.name!r} has id {c.id}, expected {i}")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"taxonomy {self.name}: duplicate class names")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def by_name(self, name: str) -> ClassInfo:
        for c in self.classes:
            if c.name == name:
                return c
        raise KeyError(f"taxonomy {self.name} has no class {name!r}; classes: {self.names}")

    def role_of(self, class_id: int) -> str:
        return self.classes[int(class_id)].role

    def nucleus_classes(self) -> list[ClassInfo]:
        return [c for c in self.classes if c.level == "nucleus"]

    def substitutions(self) -> list[str]:
        """Sentences stating which classes stand in for a TME role (repeated in reports)."""
        return [c.substitution for c in self.classes if c.substitution]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "classes": [
                {
                    "id": c.id,
                    "name": c.name,
                    "color": list(c.color),
                    "role": c.role,
                    "level": c.level,
                    "substitution": c.substitution,
                    "parent": c.parent,
                }
                for c in self.classes
            ],
            "eval_mappings": {k: dict(v) for k, v in self.eval_mappings.items()},
        }

    @staticmethod
    def from_dict(d: Mapping) -> "Taxonomy":
        classes = tuple(
            ClassInfo(
                id=int(c["id"]),
                name=str(c["name"]),
                color=tuple(int(v) for v in c["color"]),  # type: ignore[arg-type]
                role=str(c["role"]),
                level=str(c.get("level", "nucleus")),
                substitution=c.get("substitution"),
                parent=c.get("parent"),
            )
            for c in d["classes"]
        )
        return Taxonomy(
            name=str(d["name"]),
            classes=classes,
            description=str(d.get("description", "")),
            eval_mappings={k: dict(v) for k, v in d.get("eval_mappings", {}).items()},
        )


_BG = ClassInfo(0, "Background", (0, 0, 0), "background", level="background")

#: PanNuke's six classes, the SegTME-UNI2 paper's ontology; maps 1:1 onto the TME roles.
PANNUKE6 = Taxonomy(
    name="pannuke6",
    description="PanNuke ontology (Gamper et al. 2020): the SegTME-UNI2 paper's six classes.",
    classes=(
        _BG,
        ClassInfo(1, "Neoplastic", (220, 20, 20), "tumour"),
        ClassInfo(2, "Inflammatory", (30, 80, 230), "immune"),
        ClassInfo(3, "Connective", (30, 170, 60), "stroma"),
        ClassInfo(4, "Dead", (255, 215, 0), "dead"),
        ClassInfo(5, "Epithelial", (255, 130, 0), "epithelium"),
    ),
)

#: CoNSeP as merged by HoVer-Net (4 nucleus classes). Epithelial here = healthy + malignant.
CONSEP_EPI_NOTE = (
    "CoNSeP-trained model: its 'Epithelial' class merges normal and malignant epithelium and is "
    "used as the tumour (Neoplastic) compartment in TME features; no separate normal-epithelium "
    "or dead-cell class exists."
)
CONSEP4 = Taxonomy(
    name="consep4",
    description="CoNSeP classes as merged by HoVer-Net (Graham et al. 2019).",
    classes=(
        _BG,
        ClassInfo(1, "Other", (255, 200, 0), "other"),
        ClassInfo(2, "Inflammatory", (30, 80, 230), "immune"),
        ClassInfo(3, "Epithelial (incl. tumour)", (220, 20, 20), "tumour", substitution=CONSEP_EPI_NOTE),
        ClassInfo(4, "Spindle-shaped", (30, 170, 60), "stroma"),
    ),
    eval_mappings={
        "pannuke6": {
            "Other": "Dead",
            "Inflammatory": "Inflammatory",
            "Epithelial (incl. tumour)": "Neoplastic",
            "Spindle-shaped": "Connective",
        }
    },
)

#: Class-agnostic nucleus segmentation (e.g. the classical baseline): one "Nucleus" class.
NUCLEUS1 = Taxonomy(
    name="nucleus1",
    description="Class-agnostic nuclei.",
    classes=(_BG, ClassInfo(1, "Nucleus", (0, 180, 200), "other")),
)

_PAGET_EPI_NOTE = (
    "PAGET model: 'Epithelial cell' nuclei (benign and malignant are not separated) are used as "
    "the tumour (Neoplastic) compartment in TME features."
)
_PAGET_MIT_NOTE = (
    "PAGET model: 'Mitotic cell' nuclei (MIDOG++ mitotic figures, any lineage) are counted in the "
    "tumour (Neoplastic) compartment in TME features."
)
_LEU = ("Lymphocyte", "Plasma cell", "Myeloid cell", "Eosinophil", "Neutrophil")
_BG_NAMES = ("Epithelium", "Stroma", "Smooth muscle", "Red blood cell")
#: PAGET's 13 TME components + background (paget-paper.txt, section 3; ids in the paper's order of
#: section 3.2). Tissue-level classes are regions (QuPath annotations), nucleus-level classes are
#: nuclei (QuPath detections). Red blood cells are anucleate: the paper lists them with the cell
#: categories (section 3.2, hierarchy level 2) but counts, trains and scores them as *pixels*
#: (Table 2 "Tissue Type ... Red blood cell 130M" pixels; Table 4 tissue column; Table 6 tissue Dice
#: "Bld"), so here they are ``level="tissue"`` (a region), with hierarchy level 2 recorded in
#: ``segtme.paget.taxonomy``. ``parent`` is the hierarchy parent (level-3 leukocyte subtypes ->
#: "Leukocyte", an aggregation-only node that is not an output class).
PAGET13 = Taxonomy(
    name="paget13",
    description=(
        "PAGET 13 TME components (Komura et al., MIDL 2026): tissue epithelium, stroma, smooth muscle, "
        "red blood cells; nuclei: epithelial cell, fibroblast, endothelial cell, lymphocyte, plasma cell, "
        "myeloid cell, eosinophil, neutrophil, mitotic cell."
    ),
    classes=(
        _BG,
        ClassInfo(1, "Epithelium", (255, 170, 170), "tissue", level="tissue"),
        ClassInfo(2, "Stroma", (150, 200, 150), "tissue", level="tissue"),
        ClassInfo(3, "Smooth muscle", (200, 120, 200), "tissue", level="tissue"),
        ClassInfo(4, "Epithelial cell", (220, 20, 20), "tumour", substitution=_PAGET_EPI_NOTE),
        ClassInfo(5, "Fibroblast", (30, 170, 60), "stroma"),
        ClassInfo(6, "Endothelial cell", (0, 200, 200), "stroma"),
        ClassInfo(7, "Red blood cell", (160, 0, 0), "tissue", level="tissue"),
        ClassInfo(8, "Lymphocyte", (30, 80, 230), "immune", parent="Leukocyte"),
        ClassInfo(9, "Plasma cell", (120, 60, 220), "immune", parent="Leukocyte"),
        ClassInfo(10, "Myeloid cell", (230, 120, 0), "immune", parent="Leukocyte"),
        ClassInfo(11, "Eosinophil", (255, 0, 200), "immune", parent="Leukocyte"),
        ClassInfo(12, "Neutrophil", (140, 140, 255), "immune", parent="Leukocyte"),
        ClassInfo(13, "Mitotic cell", (255, 255, 0), "tumour", substitution=_PAGET_MIT_NOTE),
    ),
    # Single-valued projections of the 13 classes onto coarser label sets (paper Table 5,
    # Appendix E). The multi-valued evaluation groups of Table 5 (e.g. "Epithelial tissue" =
    # epithelium + epithelial-cell pixels) and the ground-truth side merges (PanNuke neoplastic +
    # non-neoplastic epithelial -> one "epithelial cell" class) are in segtme.paget.taxonomy.
    eval_mappings={
        "pannuke6": {
            **{n: "Background" for n in _BG_NAMES},
            "Epithelial cell": "Neoplastic",
            "Mitotic cell": "Neoplastic",
            "Fibroblast": "Connective",
            "Endothelial cell": "Connective",
            **{n: "Inflammatory" for n in _LEU},
        },
        "consep4": {
            **{n: "Background" for n in _BG_NAMES},
            "Epithelial cell": "Epithelial (incl. tumour)",
            "Mitotic cell": "Other",
            "Fibroblast": "Spindle-shaped",
            "Endothelial cell": "Spindle-shaped",
            **{n: "Inflammatory" for n in _LEU},
        },
        "paget_coarse": {
            "Epithelium": "Epithelial tissue",
            "Stroma": "Stroma",
            "Smooth muscle": "Smooth muscle",
            "Red blood cell": "Blood",
            "Epithelial cell": "Epithelial cell",
            "Fibroblast": "Connective tissue cell",
            "Endothelial cell": "Connective tissue cell",
            **{n: "Leukocyte" for n in _LEU},
            "Mitotic cell": "Mitotic cell",
        },
        "nucleus1": {
            **{n: "Background" for n in _BG_NAMES},
            **{n: "Nucleus" for n in ("Epithelial cell", "Fibroblast", "Endothelial cell", *_LEU, "Mitotic cell")},
        },
    },
)

#: PAGET's coarse evaluation label set (paper Table 5 "Eval Class" at the leukocyte level):
#: the target of ``PAGET13.eval_mappings["paget_coarse"]``.
PAGET_COARSE = Taxonomy(
    name="paget_coarse",
    description="PAGET evaluation classes at the major-category level (paper Table 5): leukocyte subtypes merged.",
    classes=(
        _BG,
        ClassInfo(1, "Epithelial tissue", (255, 170, 170), "tissue", level="tissue"),
        ClassInfo(2, "Stroma", (150, 200, 150), "tissue", level="tissue"),
        ClassInfo(3, "Smooth muscle", (200, 120, 200), "tissue", level="tissue"),
        ClassInfo(4, "Blood", (160, 0, 0), "tissue", level="tissue"),
        ClassInfo(5, "Epithelial cell", (220, 20, 20), "tumour", substitution=_PAGET_EPI_NOTE),
        ClassInfo(6, "Connective tissue cell", (30, 170, 60), "stroma"),
        ClassInfo(7, "Leukocyte", (30, 80, 230), "immune"),
        ClassInfo(8, "Mitotic cell", (255, 255, 0), "tumour", substitution=_PAGET_MIT_NOTE),
    ),
)

TAXONOMIES: dict[str, Taxonomy] = {t.name: t for t in (PANNUKE6, CONSEP4, NUCLEUS1, PAGET13, PAGET_COARSE)}


def register_taxonomy(t: Taxonomy) -> Taxonomy:
    TAXONOMIES[t.name] = t
    return t


def get_taxonomy(name_or_dict: str | Mapping | Taxonomy) -> Taxonomy:
    """Look a taxonomy up by name, or build it from an inline dict (as stored in model configs)."""
    if isinstance(name_or_dict, Taxonomy):
        return name_or_dict
    if isinstance(name_or_dict, Mapping):
        return Taxonomy.from_dict(name_or_dict)
    try:
        return TAXONOMIES[name_or_dict]
    except KeyError:
        raise KeyError(f"unknown taxonomy {name_or_dict!r}; known: {sorted(TAXONOMIES)}") from None
