"""Deterministic template narrative: every sentence is derived from a label or a value.

``render_template(bio)`` turns the token translator's output (``raw_data``, ``interpretation``,
``generated_tokens``) into a short pathologist-readable paragraph. Numbers are cited with their
units and the rounding stated in :data:`ROUNDING` (the verifier accepts exactly that rounding):
percentages 1 decimal, fractions 2 decimals, distances 1 decimal (µm and px), areas 1 decimal
(µm^2) / 0 decimals (px^2), entropy 2 decimals (bits), densities 1 decimal (per mm²). When the
MPP is unknown only pixel values are cited. Nothing is said that is not in ``raw_data`` /
``interpretation`` / ``generated_tokens`` (or, for the substitution note, the taxonomy's own
substitution sentence).

Structured claims: :func:`template_narrative` returns the same text together with a
:class:`Citation` for every number (its ``raw_data`` key - the ``*_um`` / ``*_um2`` twin for a
µm value - the cited text, unit and decimals) and every phenotype phrase (axis, label or token).
The verifier (:mod:`segtme.narrative.claims`) parses free text back into the same keys; the
tests check that it recovers every template citation, and the adversarial evaluation
(:mod:`segtme.narrative.adversarial`) perturbs exactly these cited spans.

Every subject is named in the clause of its number ("276 neoplastic (89.3%)", "inflammatory
nuclei lie on average 7.5 µm ... from the nearest neoplastic nucleus, the closest at 5.7 µm"),
so a reader - and the verifier - can tell which quantity each number is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..taxonomy import ROLE_NAMES
from ..tme.tokens import AXES, INDETERMINATE, RULES

__all__ = ["render_template", "template_narrative", "Citation", "TemplateNarrative", "ROUNDING", "fmt_pct", "fmt",
           "extra_axis_rules"]

#: decimals used when citing values (documented; the verifier's tolerance is half a unit of these).
ROUNDING: dict[str, int] = {"percent": 1, "fraction": 2, "length": 1, "area_um2": 1, "area_px2": 0, "entropy": 2,
                            "density": 1}

_PROSE = {  # how a role reads in prose
    "Neoplastic": "neoplastic",
    "Inflammatory": "inflammatory",
    "Connective": "connective",
    "Dead": "dead",
    "Epithelial": "non-neoplastic epithelial",
    "Other": "other",
}

#: PAGET leukocyte subtypes (feature stem, prose) with their share of leukocytes.
_PAGET_SUBTYPES = (("Lymphocyte", "lymphocytes"), ("Plasma_cell", "plasma cells"), ("Myeloid_cell", "myeloid cells"),
                   ("Granulocyte", "granulocytes"))
#: PAGET tissue classes (feature stem, prose) with their share of the tissue area.
_PAGET_TISSUES = (("Epithelium", "epithelium"), ("Stroma", "stroma"), ("Smooth_muscle", "smooth muscle"),
                  ("Red_blood_cell", "red blood cells"))


def fmt(v: float, decimals: int) -> str:
    return f"{float(v):.{decimals}f}"


def fmt_pct(fraction: float) -> str:
    return f"{100.0 * float(fraction):.{ROUNDING['percent']}f}%"


def extra_axis_rules() -> dict[tuple[str, str], tuple[str, ...]]:
    """(axis, label) -> tokens of the taxonomy-specific axes (PAGET's four), {} if unavailable."""
    try:
        from ..paget.features import PAGET_RULES
    except ImportError:  # pragma: no cover - the PAGET package is part of segtme
        return {}
    return dict(PAGET_RULES)


def _axis_tokens(axis: str, label: str) -> tuple[str, ...]:
    if (axis, label) in RULES:
        return RULES[(axis, label)].tokens
    return extra_axis_rules().get((axis, label), ())


@dataclass(frozen=True)
class Citation:
    """One claim of the template text: ``text[start:end]``.

    kind "number": ``key`` is the raw_data key whose value the number cites (µm values cite the
    ``*_um`` / ``*_um2`` twin), ``value`` the raw value, ``unit`` one of "", "%", "µm", "px", "µm²",
    "px²", "bits", "per mm²", ``decimals`` the stated rounding (percent: of 100 x value).
    kind "label" / "token": ``key`` is "Axis: Label" / the token, ``axis`` its axis.
    """

    kind: str
    start: int
    end: int
    key: str
    text: str
    axis: str | None = None
    value: float | None = None
    unit: str = ""
    decimals: int = 0


@dataclass
class TemplateNarrative:
    text: str
    citations: list[Citation] = field(default_factory=list)

    def numbers(self) -> list[Citation]:
        return [c for c in self.citations if c.kind == "number"]

    def phenotypes(self) -> list[Citation]:
        return [c for c in self.citations if c.kind != "number"]


class _Doc:
    """Text under construction with the citations of its spans."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.n = 0
        self.cites: list[Citation] = []

    def t(self, s: str) -> "_Doc":
        self.parts.append(s)
        self.n += len(s)
        return self

    def _cite(self, s: str, **kw: Any) -> "_Doc":
        self.cites.append(Citation(start=self.n, end=self.n + len(s), text=s, **kw))
        return self.t(s)

    def num(self, key: str, value: Any, decimals: int, unit: str = "") -> "_Doc":
        v = float(value)
        shown = 100.0 * v if unit == "%" else v
        s = fmt(shown, decimals) + ("%" if unit == "%" else f" {unit}" if unit else "")
        return self._cite(s, kind="number", key=key, value=v, unit=unit, decimals=decimals)

    def count(self, key: str, value: Any) -> "_Doc":
        return self.num(key, int(value), 0)

    def pct(self, key: str, value: Any) -> "_Doc":
        return self.num(key, value, ROUNDING["percent"], "%")

    def label(self, axis: str, label: str) -> "_Doc":
        return self._cite(label, kind="label", key=f"{axis}: {label}", axis=axis)

    def token(self, axis: str, tok: str) -> "_Doc":
        return self._cite(tok, kind="token", key=tok, axis=axis)

    def length(self, raw: Mapping[str, Any], key: str) -> "_Doc":
        """'12.3 µm (39.2 px)' or '39.2 px' (no MPP)."""
        d = ROUNDING["length"]
        um = raw.get(f"{key}_um")
        if um is not None:
            self.num(f"{key}_um", um, d, "µm").t(" (").num(key, raw[key], d, "px").t(")")
        else:
            self.num(key, raw[key], d, "px")
        return self

    def area(self, raw: Mapping[str, Any], key: str, key_um2: str | None = None) -> "_Doc":
        """'39.0 µm² (156 px²)' or '156 px²' (no MPP)."""
        key_um2 = key_um2 or f"{key}_um2"
        um2 = raw.get(key_um2)
        if um2 is not None:
            self.num(key_um2, um2, ROUNDING["area_um2"], "µm²").t(" (")
            self.num(key, raw[key], ROUNDING["area_px2"], "px²").t(")")
        else:
            self.num(key, raw[key], ROUNDING["area_px2"], "px²")
        return self

    def listing(self, items: Sequence[Any]) -> "_Doc":
        """Write callables ``f(doc)`` as 'a, b and c'."""
        for i, f in enumerate(items):
            if i:
                self.t(" and " if i == len(items) - 1 else ", ")
            f(self)
        return self


def _evidence(doc: _Doc, axis: str, raw: Mapping[str, Any]) -> None:
    """The measurement behind an axis label, as a clause."""
    neo, inf, conn = ROLE_NAMES["tumour"], ROLE_NAMES["immune"], ROLE_NAMES["stroma"]
    if axis == "Composition":
        doc.t("neoplastic nuclei are ").pct("r_" + neo, raw["r_" + neo]).t(" of all nuclei")
    elif axis == "Immune status":
        doc.t("inflammatory nuclei are ").pct("r_" + inf, raw["r_" + inf]).t(" of all nuclei")
        if raw.get("f_II") is not None:
            doc.t(" and the immune infiltration fraction f_II is ").num("f_II", raw["f_II"], ROUNDING["fraction"])
    elif axis == "Stromal status":
        doc.t("connective nuclei are ").pct("r_" + conn, raw["r_" + conn]).t(" of all nuclei")
        if raw.get("f_TS") is not None:
            doc.t(" and the tumour-stroma fraction f_TS is ").num("f_TS", raw["f_TS"], ROUNDING["fraction"])
    elif axis == "Spatial interaction":
        doc.t("inflammatory nuclei lie on average ").length(raw, f"mean_dist_{inf}_to_{neo}")
        doc.t(" from the nearest neoplastic nucleus, the closest at ").length(raw, f"min_dist_{inf}_to_{neo}")
    elif axis == "Architecture":
        doc.t("the mean spatial entropy of cell-type mixing is ")
        doc.num("mean_spatial_entropy", raw["mean_spatial_entropy"], ROUNDING["entropy"], "bits")
    elif axis == "Morphology":
        doc.t("the mean neoplastic nuclear area is ").area(raw, "mean_area_" + neo)
    elif axis == "Immune engagement":
        doc.count("count_engaged_immune", raw["count_engaged_immune"]).t(" of ").count("N_" + inf, raw["N_" + inf])
        doc.t(" inflammatory nuclei (").pct("fraction_engaged_immune", raw["fraction_engaged_immune"]).t(") lie within ")
        doc.length(raw, "engagement_radius").t(" of a neoplastic nucleus")
    elif axis == "Immune composition":
        subs = [(k, p) for k, p in _PAGET_SUBTYPES if raw.get(f"frac_{k}_of_Leukocyte") is not None]
        if raw.get("N_Leukocyte") is not None:
            doc.t("of ").count("N_Leukocyte", raw["N_Leukocyte"]).t(" leukocytes, ")
        items = [lambda d, k=k, p=p, i=i: d.t(p + (" are " if i == 0 else " ")).pct(f"frac_{k}_of_Leukocyte",
                                                                                    raw[f"frac_{k}_of_Leukocyte"])
                 for i, (k, p) in enumerate(subs)]
        doc.listing(items)
    elif axis == "Tissue architecture":
        tis = [(k, p) for k, p in _PAGET_TISSUES if raw.get(f"area_frac_{k}") is not None]
        items = [lambda d, k=k, p=p, i=i: d.t(p + (" covers " if i == 0 else " ")).pct(f"area_frac_{k}", raw[f"area_frac_{k}"])
                 for i, (k, p) in enumerate(tis)]
        doc.listing(items).t(" of the tissue area")
        if raw.get("tissue_area_px") is not None:
            doc.t(" of ").area(raw, "tissue_area_px", "tissue_area_um2")
    elif axis == "Smooth muscle":
        doc.t("smooth muscle covers ").pct("area_frac_Smooth_muscle", raw["area_frac_Smooth_muscle"]).t(" of the tissue area")
    elif axis == "Immune location":
        doc.pct("frac_Leukocyte_in_Epithelium", raw["frac_Leukocyte_in_Epithelium"])
        doc.t(" of the leukocytes in epithelium or stroma lie in the epithelium")
        if raw.get("frac_Lymphocyte_in_Epithelium") is not None:
            doc.t(" (lymphocytes: ").pct("frac_Lymphocyte_in_Epithelium", raw["frac_Lymphocyte_in_Epithelium"]).t(")")
    else:
        raise KeyError(axis)


def _mitoses(doc: _Doc, raw: Mapping[str, Any]) -> bool:
    """'Mitotic activity: 3 mitotic figures (1.2% of epithelial and mitotic nuclei), a mitotic density
    of 4.5 per mm² of tissue.' (the density only when raw_data has ``mitotic_count_per_mm2``)"""
    n, r, dens = raw.get("N_Mitotic_cell"), raw.get("r_Mitotic_of_Epithelial"), raw.get("mitotic_count_per_mm2")
    if n is None and dens is None:
        return False
    doc.t("Mitotic activity: ")
    if n is not None:
        doc.count("N_Mitotic_cell", n).t(" mitotic figures")
        if r is not None:
            doc.t(" (").pct("r_Mitotic_of_Epithelial", r).t(" of epithelial and mitotic nuclei)")
        if dens is not None:
            doc.t(", ")
    if dens is not None:
        doc.t("a mitotic density of ").num("mitotic_count_per_mm2", dens, ROUNDING["density"], "per mm²").t(" of tissue")
    doc.t(".")
    return True


def template_narrative(bio: Mapping[str, Any], substitutions: Sequence[str] = ()) -> TemplateNarrative:
    """The template narrative of a ``translate_tme_to_bio_tokens`` result with its citations
    (see module docstring). substitutions: sentences from ``Taxonomy.substitutions()``,
    repeated as a note."""
    raw = bio["raw_data"]
    interp = bio["interpretation"]
    n_total = int(raw.get("N_total") or 0)
    doc = _Doc()
    sep = False

    def sentence() -> None:
        nonlocal sep
        if sep:
            doc.t(" ")
        sep = True

    if n_total == 0:
        sentence()
        doc.t("No nuclei were counted in the analysed region, so every phenotype axis is indeterminate.")
    else:
        sentence()
        items = []
        for nm, prose in _PROSE.items():
            if raw.get(f"N_{nm}") is not None and raw.get(f"r_{nm}") is not None:
                items.append(lambda d, nm=nm, prose=prose: d.count(f"N_{nm}", raw[f"N_{nm}"]).t(f" {prose} (")
                             .pct(f"r_{nm}", raw[f"r_{nm}"]).t(")"))
        doc.t("The analysed region contains ").count("N_total", n_total).t(" nuclei: ").listing(items).t(".")
        indet = raw.get("indeterminate") or {}
        extra = [a for a in interp if a not in AXES]
        for axis in (*AXES, *extra):
            label = interp.get(axis)
            if label is None:
                continue
            sentence()
            doc.t(f"{axis}: ")
            if label == INDETERMINATE:
                doc.label(axis, INDETERMINATE).t(f", because {indet.get(axis, 'its input is undefined')}.")
                continue
            doc.label(axis, label)
            tokens = _axis_tokens(axis, label)
            if tokens:
                doc.t(" (")
                for i, tok in enumerate(tokens):
                    if i:
                        doc.t(", ")
                    doc.token(axis, tok)
                doc.t(")")
            doc.t("; ")
            _evidence(doc, axis, raw)
            doc.t(".")
        mark = doc.n
        sentence()
        if not _mitoses(doc, raw):  # undo the separator
            doc.parts, doc.n = ["".join(doc.parts)[:mark]], mark
    if raw.get("mpp") is None and n_total:
        sentence()
        doc.t("The pixel size is unknown, so distances and areas are given in pixels of the analysed image.")
    for s in substitutions:
        sentence()
        doc.t(f"Note: {s}")
    return TemplateNarrative("".join(doc.parts), doc.cites)


def render_template(bio: Mapping[str, Any], substitutions: Sequence[str] = ()) -> str:
    """The template narrative text (see :func:`template_narrative`)."""
    return template_narrative(bio, substitutions).text
