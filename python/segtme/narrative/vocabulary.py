"""Phenotype vocabulary of the verifier: which phrase claims which axis label or token.

Built from the token rulebook (:data:`segtme.tme.tokens.RULES`, Table 4 + immune engagement),
the taxonomy-specific axes (PAGET's four, :func:`segtme.narrative.template.extra_axis_rules`)
and common synonyms. A target is one of

* ``("label", axis, label)`` - the axis has this label;
* ``("label_prefix", axis, prefix)`` - the axis label starts with ``prefix`` ("low purity");
* ``("token", axis, token)`` - the token is among ``generated_tokens`` (it belongs to ``axis``);
* ``("indeterminate_axis", axis)`` / ``("indeterminate",)`` - the axis / some axis is indeterminate.

Labels too generic to be a claim on their own ("Moderate", "Mixed", "Present", "Absent") are
claims only in the header form ``Axis: Label`` / ``Axis is Label`` (:data:`HEADER_PAIRS`).
"""

from __future__ import annotations

import re
from functools import lru_cache

from ..tme.tokens import AXES, INDETERMINATE, RULES
from .template import extra_axis_rules

__all__ = ["phenotype_vocabulary", "axis_rules", "all_axes", "HEADER_SEP", "GENERIC_LABELS", "phrase_regex"]

_SYNONYMS: dict[tuple[str, str], tuple[str, ...]] = {
    ("Composition", "High tumour purity"): ("high tumor purity", "high purity", "high tumour cellularity"),
    ("Composition", "Intermediate purity"): ("intermediate tumour purity", "intermediate tumor purity", "moderate purity"),
    ("Immune status", "Immune Hot"): ("immunologically hot", "hot tumour", "hot tumor", "heavily infiltrated",
                                      "heavy lymphocytic infiltrate", "heavy immune infiltrate"),
    ("Immune status", "Immune Cold"): ("immunologically cold", "cold tumour", "cold tumor"),
    ("Immune status", "Moderate"): ("moderate infiltrate", "moderate infiltration", "moderate immune infiltrate",
                                    "moderate immune infiltration", "moderately infiltrated", "patchy"),
    ("Stromal status", "Desmoplastic"): ("desmoplasia", "fibrotic", "fibrosis"),
    ("Stromal status", "Stroma-free"): ("stroma free", "no stroma", "lacks stroma", "stroma-poor"),
    ("Spatial interaction", "Direct contact"): ("juxtaposed", "direct immune-tumour contact", "in contact with tumour"),
    ("Spatial interaction", "Excluded"): ("immune-excluded", "immune excluded", "exclusion", "excluded"),
    ("Spatial interaction", "Proximal"): ("peritumoural", "peri-tumoral", "peri-tumoural", "proximal"),
    ("Architecture", "High mixing"): ("highly mixed", "well mixed", "intermixed", "diffusely integrated"),
    ("Architecture", "Segregated"): ("compartmentalised", "compartmentalisation", "compartmentalization", "segregation"),
    ("Morphology", "Large/Pleomorphic"): ("pleomorphic", "pleomorphism", "enlarged nuclei", "nuclear enlargement",
                                          "large nuclei", "anisonucleosis"),
    ("Morphology", "Small/Monotonous"): ("monotonous", "small nuclei", "small cell"),
    ("Immune engagement", "Tumour-engaged"): ("tumor-engaged", "tumour engaged", "tumor engaged", "engaged with the tumour"),
    ("Immune engagement", "Bystander"): ("bystander", "bystanders"),
    ("Immune engagement", "Partially engaged"): ("partial engagement", "partly engaged"),
    ("Immune composition", "Lymphocyte-predominant"): ("lymphocyte predominant", "lymphocyte-dominant"),
    ("Immune composition", "Plasma-cell rich"): ("plasma cell rich", "plasma-cell-rich"),
    ("Tissue architecture", "Epithelium-dominant"): ("epithelium dominant",),
    ("Immune location", "Intraepithelial"): ("intra-epithelial",),
    ("Immune location", "Stroma-confined"): ("stroma confined", "confined to the stroma", "confined to stroma"),
}
#: labels that are claims only in the "Axis: Label" header form
GENERIC_LABELS = {"moderate", "mixed", "present", "absent", "mixed tissue", "mixed location"}
#: "Axis: Label", "Axis is Label", "Axis was Label", "Axis = Label"
HEADER_SEP = r"\s*(?::|=|\bis\b|\bwas\b|\bshows\b)\s*"


def axis_rules() -> dict[tuple[str, str], tuple[str, ...]]:
    """(axis, label) -> tokens for the core axes and the registered extra (PAGET) axes."""
    out = {k: r.tokens for k, r in RULES.items()}
    out.update(extra_axis_rules())
    return out


def all_axes() -> tuple[str, ...]:
    extra = []
    for axis, _ in extra_axis_rules():
        if axis not in extra:
            extra.append(axis)
    return (*AXES, *extra)


def phrase_regex(phrase: str) -> str:
    """Regex body of a phrase: words separated by spaces or hyphens, whole words only."""
    parts = [re.escape(w) for w in re.split(r"[\s\-]+", phrase.strip()) if w]
    return r"(?<![\w\-/])" + r"[\s\-]+".join(parts) + r"(?![\w\-/])"


@lru_cache(maxsize=1)
def phenotype_vocabulary() -> tuple[tuple[str, tuple[tuple, ...]], ...]:
    """(phrase, targets) longest first; a phrase is a claim of any one of its targets."""
    vocab: dict[str, set[tuple]] = {}

    def add(phrase: str, target: tuple) -> None:
        vocab.setdefault(phrase.lower(), set()).add(target)

    for (axis, label), tokens in axis_rules().items():
        target = ("label", axis, label)
        if label.lower() not in GENERIC_LABELS:
            add(label, target)
        for syn in _SYNONYMS.get((axis, label), ()):
            add(syn, target)
        for tok in tokens:
            add(tok, ("token", axis, tok))
        if label.startswith("Low purity"):
            for p in ("low purity", "low tumour purity", "low tumor purity"):
                add(p, ("label_prefix", axis, "Low purity"))
    add(INDETERMINATE, ("indeterminate",))
    return tuple(sorted(((p, tuple(sorted(t))) for p, t in vocab.items()), key=lambda x: (-len(x[0]), x[0])))
