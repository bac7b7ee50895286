"""Biological token translation (SegTME-UNI2 paper, section 7.2 "Phase 2" and Table 4).

``translate_tme_to_bio_tokens(features)`` -> ``{"raw_data", "interpretation", "generated_tokens"}``:

* ``raw_data``: the features with native Python types only (numpy scalars cast, NaN/inf -> None),
  including ``undefined`` (feature -> reason) and ``indeterminate`` (axis -> reason).
* ``interpretation``: one categorical label per phenotype axis (the six of Table 4 + SegTME's
  seventh axis "Immune engagement"), in :data:`AXES` order.
* ``generated_tokens``: the flat token list the rules emit, in axis order.

Boundary semantics are Table 4's: ``>`` and ``<`` are strict, equality falls into "otherwise".
Where Table 4 gives no rule for the middle band of an axis (composition, stroma, architecture,
morphology) the label says "Intermediate ..." and no token is emitted. If an axis's input is
undefined, its label is ``"Indeterminate"`` and ``raw_data["indeterminate"][axis]`` says why;
no guess is made. Distance and area rules compare against the thresholds converted to the
features' resolution (``TMEThresholds.length_px`` / ``area_px2`` with ``features["mpp"]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .thresholds import DEFAULT_THRESHOLDS, TMEThresholds

__all__ = ["translate_tme_to_bio_tokens", "AXES", "RULES", "INDETERMINATE", "to_native", "Rule"]

INDETERMINATE = "Indeterminate"

#: the phenotype axes, in output order (six from Table 4 + the seventh, immune engagement).
AXES: tuple[str, ...] = (
    "Composition",
    "Immune status",
    "Stromal status",
    "Spatial interaction",
    "Architecture",
    "Morphology",
    "Immune engagement",
)


@dataclass(frozen=True)
class Rule:
    """One row of the rulebook: an axis label and the tokens it emits."""

    axis: str
    label: str
    tokens: tuple[str, ...]
    condition: str  # human-readable, for docs and audits


#: Every label/token the translator can emit, keyed (axis, label). Used by the narrative
#: template and by the verifier's phenotype vocabulary.
RULES: dict[tuple[str, str], Rule] = {
    (r.axis, r.label): r
    for r in (
        Rule("Composition", "High tumour purity", ("Solid tumour nest", "Hypercellular"), "r_Neoplastic > purity_high"),
        Rule("Composition", "Low purity, immune-dominant", ("Immune-dominant", "Lymphocyte-rich"),
             "r_Neoplastic < purity_low and r_Inflammatory > r_Connective"),
        Rule("Composition", "Low purity, stroma-dominant", ("Stroma-dominant",), "r_Neoplastic < purity_low, otherwise"),
        Rule("Composition", "Intermediate purity", (), "purity_low <= r_Neoplastic <= purity_high (no Table 4 rule)"),
        Rule("Immune status", "Immune Hot", ("Heavy infiltrate",), "r_Inflammatory > immune_hot"),
        Rule("Immune status", "Immune Cold", ("Immune desert", "Pauci-immune"), "r_Inflammatory < immune_cold"),
        Rule("Immune status", "Moderate", ("Patchy infiltrate",), "otherwise"),
        Rule("Stromal status", "Desmoplastic", ("Fibrotic barrier",), "r_Connective > desmoplastic"),
        Rule("Stromal status", "Stroma-free", ("Non-desmoplastic", "Lack of fibrosis"), "r_Connective < stroma_free"),
        Rule("Stromal status", "Intermediate stroma", (), "otherwise (no Table 4 rule)"),
        Rule("Spatial interaction", "Direct contact", ("Juxtaposed cells",), "mean_dist < contact_dist"),
        Rule("Spatial interaction", "Excluded", ("Immune exclusion", "Restricted to stroma"), "mean_dist > excluded_dist"),
        Rule("Spatial interaction", "Proximal", ("Peritumoral",), "otherwise"),
        Rule("Architecture", "High mixing", ("Diffuse integration",), "mean_spatial_entropy > mixing_high"),
        Rule("Architecture", "Segregated", ("Homogeneous", "Compartmentalized"), "mean_spatial_entropy < mixing_low"),
        Rule("Architecture", "Intermediate mixing", (), "otherwise (no Table 4 rule)"),
        Rule("Morphology", "Large/Pleomorphic", ("Nuclear enlargement", "Anisocytosis"), "mean_area_Neoplastic > large_area"),
        Rule("Morphology", "Small/Monotonous", ("Small cell morphology",), "mean_area_Neoplastic < small_area"),
        Rule("Morphology", "Intermediate nuclear size", (), "otherwise (no Table 4 rule)"),
        Rule("Immune engagement", "Tumour-engaged", ("Tumour-engaged immune cells",),
             "fraction_engaged_immune > engaged_high"),
        Rule("Immune engagement", "Bystander", ("Bystander immune cells",), "fraction_engaged_immune < engaged_low"),
        Rule("Immune engagement", "Partially engaged", ("Partial immune engagement",), "otherwise"),
    )
}


def to_native(obj: Any) -> Any:
    """Recursively cast numpy scalars/arrays to native Python; non-finite floats -> None."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, Mapping):
        return {str(k): to_native(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [to_native(v) for v in (obj.tolist() if isinstance(obj, np.ndarray) else obj)]
    raise TypeError(f"cannot convert {type(obj).__name__} to a JSON-native value")


class _Axes:
    """Collects labels/tokens/indeterminate reasons while the rules run."""

    def __init__(self, raw: dict) -> None:
        self.raw = raw
        self.undefined: dict = raw.get("undefined") or {}
        self.interpretation: dict[str, str] = {}
        self.tokens: list[str] = []
        self.indeterminate: dict[str, str] = {}

    def value(self, name: str) -> tuple[float | None, str]:
        v = self.raw.get(name)
        if v is None:
            why = self.undefined.get(name) or ("feature missing from input" if name not in self.raw else "undefined")
            return None, f"{name} undefined: {why}"
        return float(v), ""

    def emit(self, axis: str, label: str) -> None:
        rule = RULES[(axis, label)]
        self.interpretation[axis] = label
        self.tokens.extend(rule.tokens)

    def indeterminate_(self, axis: str, reason: str) -> None:
        self.interpretation[axis] = INDETERMINATE
        self.indeterminate[axis] = reason


#: extra token axes, registered by taxonomy-specific feature groups (e.g. PAGET's 13 classes):
#: (name, fn(features) -> {"interpretation", "generated_tokens", "indeterminate"}, taxonomies or None)
_EXTRA_AXES: list[tuple[str, Callable[[Mapping[str, Any]], dict], frozenset[str] | None]] = []


def register_token_axes(name: str, fn: Callable[[Mapping[str, Any]], dict], taxonomies: Sequence[str] | None = None) -> None:
    """Register extra phenotype axes appended after the core seven for tables of ``taxonomies``
    (all when None). ``fn`` returns ``{"interpretation": {axis: label}, "generated_tokens": [...],
    "indeterminate": {axis: reason}}``. Re-registering a name replaces it."""
    _EXTRA_AXES[:] = [a for a in _EXTRA_AXES if a[0] != name]
    _EXTRA_AXES.append((name, fn, frozenset(taxonomies) if taxonomies is not None else None))


def translate_tme_to_bio_tokens(
    features: Mapping[str, Any], thresholds: TMEThresholds = DEFAULT_THRESHOLDS, taxonomy: str | None = None
) -> dict:
    """Apply Table 4 (+ the immune-engagement axis) to a feature dict (see module docstring).

    taxonomy: the table's taxonomy name; axes registered for it (:func:`register_token_axes`)
    are appended after the core axes."""
    raw = to_native(dict(features))
    raw.setdefault("undefined", {})
    t = thresholds
    mpp = raw.get("mpp")
    ax = _Axes(raw)

    # (i) Composition
    r_neo, why = ax.value("r_Neoplastic")
    if r_neo is None:
        ax.indeterminate_("Composition", why)
    elif r_neo > t.purity_high:
        ax.emit("Composition", "High tumour purity")
    elif r_neo < t.purity_low:
        r_inf, w1 = ax.value("r_Inflammatory")
        r_conn, w2 = ax.value("r_Connective")
        if r_inf is None or r_conn is None:
            ax.indeterminate_("Composition", w1 or w2)
        elif r_inf > r_conn:
            ax.emit("Composition", "Low purity, immune-dominant")
        else:
            ax.emit("Composition", "Low purity, stroma-dominant")
    else:
        ax.emit("Composition", "Intermediate purity")

    # (ii) Immune status
    r_inf, why = ax.value("r_Inflammatory")
    if r_inf is None:
        ax.indeterminate_("Immune status", why)
    else:
        ax.emit("Immune status", "Immune Hot" if r_inf > t.immune_hot else "Immune Cold" if r_inf < t.immune_cold else "Moderate")

    # (iii) Stromal status
    r_conn, why = ax.value("r_Connective")
    if r_conn is None:
        ax.indeterminate_("Stromal status", why)
    else:
        ax.emit("Stromal status", "Desmoplastic" if r_conn > t.desmoplastic
                else "Stroma-free" if r_conn < t.stroma_free else "Intermediate stroma")

    # (iv) Spatial interaction (px thresholds converted to the features' resolution)
    d, why = ax.value("mean_dist_Inflammatory_to_Neoplastic")
    if d is None:
        ax.indeterminate_("Spatial interaction", why)
    else:
        lo, hi = t.length_px(t.contact_dist_px, mpp), t.length_px(t.excluded_dist_px, mpp)
        ax.emit("Spatial interaction", "Direct contact" if d < lo else "Excluded" if d > hi else "Proximal")

    # (v) Architecture
    h, why = ax.value("mean_spatial_entropy")
    if h is None:
        ax.indeterminate_("Architecture", why)
    else:
        ax.emit("Architecture", "High mixing" if h > t.mixing_high else "Segregated" if h < t.mixing_low else "Intermediate mixing")

    # (vi) Morphology
    a, why = ax.value("mean_area_Neoplastic")
    if a is None:
        ax.indeterminate_("Morphology", why)
    else:
        big, small = t.area_px2(t.large_area_px2, mpp), t.area_px2(t.small_area_px2, mpp)
        ax.emit("Morphology", "Large/Pleomorphic" if a > big else "Small/Monotonous" if a < small else "Intermediate nuclear size")

    # (vii) Immune engagement (SegTME): share of inflammatory nuclei within the engagement radius
    f, why = ax.value("fraction_engaged_immune")
    if f is None:
        ax.indeterminate_("Immune engagement", why)
    else:
        ax.emit("Immune engagement", "Tumour-engaged" if f > t.engaged_high else "Bystander" if f < t.engaged_low else "Partially engaged")

    interpretation = {axis: ax.interpretation[axis] for axis in AXES}
    tokens = list(ax.tokens)
    for _name, fn, taxes in _EXTRA_AXES:
        if taxes is None or taxonomy in taxes:
            extra = fn(raw)
            interpretation.update(extra.get("interpretation", {}))
            tokens.extend(extra.get("generated_tokens", []))
            ax.indeterminate.update(extra.get("indeterminate", {}))
    raw["indeterminate"] = dict(ax.indeterminate)
    return {"raw_data": raw, "interpretation": interpretation, "generated_tokens": tokens}
