"""Grounding verifier: every numeric and phenotype claim of a narrative must be in the input.

``verify_narrative(text, bio)`` finds

* **numeric claims**: every number in the text (``12``, ``0.43``, ``45.2%``, ``6.3 µm``,
  ``150 px²``, ``0.85 bits``). A number followed by a unit is matched only against values of that
  kind in ``raw_data`` (``%`` -> fractions x 100; ``µm`` -> ``*_um``; ``µm²`` -> ``*_um2``;
  ``px`` -> pixel distances/radii; ``px²`` -> pixel areas; ``bits`` -> entropy); a bare number
  against any numeric ``raw_data`` value or any number written inside ``raw_data``'s reason
  strings. **Stated rounding**: a claim written with ``d`` decimals matches a value ``v`` when
  ``|v - claim| <= 0.5 * 10**-d`` (i.e. ``v`` rounded to ``d`` decimals, half up or half even).
  Numbers glued to letters or underscores (``f_TS``, ``log2``, ``CD8``) are not claims.
* **phenotype claims**: every phrase of the phenotype vocabulary (each Table 4 label and token of
  :data:`segtme.tme.tokens.RULES`, ``Axis: Label`` forms, and common synonyms such as "immune
  desert", "immune-excluded", "pleomorphic"). A claim is supported when the label it names is the
  interpretation of its axis, or the token it names is in ``generated_tokens``. "Indeterminate" is
  supported when some axis is indeterminate. Phrases are matched case-insensitively, longest first,
  without overlaps, and regardless of negation (conservative: "no immune exclusion" is a claim of
  exclusion).

The result lists the unsupported claims and the hallucination rate
``n_unsupported / n_claims`` (0.0 when there are no claims).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

from ..tme.tokens import AXES, INDETERMINATE, RULES

__all__ = ["Claim", "VerificationResult", "verify_narrative", "PHENOTYPE_VOCABULARY"]


@dataclass
class Claim:
    kind: str  # "number" | "phenotype"
    text: str
    start: int
    end: int
    supported: bool
    matched: str | None = None  # feature name / "Axis: Label" / token that supports it
    reason: str | None = None


@dataclass
class VerificationResult:
    claims: list[Claim] = field(default_factory=list)

    @property
    def unsupported(self) -> list[Claim]:
        return [c for c in self.claims if not c.supported]

    @property
    def n_claims(self) -> int:
        return len(self.claims)

    @property
    def hallucination_rate(self) -> float:
        return len(self.unsupported) / self.n_claims if self.claims else 0.0

    @property
    def ok(self) -> bool:
        return not self.unsupported

    def to_dict(self, include_claims: bool = False) -> dict:
        d = {
            "unsupported": [asdict(c) for c in self.unsupported],
            "n_claims": self.n_claims,
            "n_unsupported": len(self.unsupported),
            "n_numeric_claims": sum(c.kind == "number" for c in self.claims),
            "n_phenotype_claims": sum(c.kind == "phenotype" for c in self.claims),
            "hallucination_rate": self.hallucination_rate,
        }
        if include_claims:
            d["claims"] = [asdict(c) for c in self.claims]
        return d


# ------------------------------------------------------------------------------------------------
# phenotype vocabulary: phrase -> what it claims

# A target is ("label", axis, label) or ("token", token) or ("indeterminate",).
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
}


def _vocabulary() -> list[tuple[str, tuple]]:
    vocab: dict[str, set[tuple]] = {}

    def add(phrase: str, target: tuple) -> None:
        vocab.setdefault(phrase.lower(), set()).add(target)

    for (axis, label), rule in RULES.items():
        target = ("label", axis, label)
        add(f"{axis}: {label}", target)
        if label != "Moderate":  # a bare "moderate" is not specific enough to be a claim
            add(label, target)
        for syn in _SYNONYMS.get((axis, label), ()):
            add(syn, target)
        for tok in rule.tokens:
            add(tok, ("token", tok))
        if label.startswith("Low purity"):
            add("low purity", ("label_prefix", axis, "Low purity"))
            add("low tumour purity", ("label_prefix", axis, "Low purity"))
            add("low tumor purity", ("label_prefix", axis, "Low purity"))
    for axis in AXES:
        add(f"{axis}: {INDETERMINATE}", ("indeterminate_axis", axis))
    add(INDETERMINATE, ("indeterminate",))
    return sorted(((p, tuple(sorted(t))) for p, t in vocab.items()), key=lambda x: -len(x[0]))


def _phrase_regex(phrase: str) -> re.Pattern:
    parts = [re.escape(w) for w in re.split(r"[\s\-]+", phrase)]
    body = r"[\s\-]+".join(parts)
    return re.compile(rf"(?<![\w\-/]){body}(?![\w\-/])", re.IGNORECASE)


#: (phrase, targets) longest first; a phrase is a claim of any one of its targets.
PHENOTYPE_VOCABULARY: list[tuple[str, tuple]] = _vocabulary()
_PHRASE_RES = [(p, _phrase_regex(p), t) for p, t in PHENOTYPE_VOCABULARY]


def _phenotype_supported(targets: Iterable[tuple], interp: Mapping[str, str], tokens: set[str]) -> str | None:
    for t in targets:
        kind = t[0]
        if kind == "label" and interp.get(t[1]) == t[2]:
            return f"{t[1]}: {t[2]}"
        if kind == "label_prefix" and str(interp.get(t[1], "")).startswith(t[2]):
            return f"{t[1]}: {interp[t[1]]}"
        if kind == "token" and t[1].lower() in tokens:
            return t[1]
        if kind == "indeterminate_axis" and interp.get(t[1]) == INDETERMINATE:
            return f"{t[1]}: {INDETERMINATE}"
        if kind == "indeterminate" and INDETERMINATE in interp.values():
            return INDETERMINATE
    return None


# ------------------------------------------------------------------------------------------------
# numbers

_UNIT = r"(?:%|µm²|μm²|µm\^2|μm\^2|um²|um\^2|um2|µm2|μm2|µm|μm|um|microns?|px²|px\^2|px2|pixels?\^?2?|px|bits?)"
_NUMBER_RE = re.compile(rf"(?<![\w.])(\d+(?:\.\d+)?)(?![\w.]*[A-Za-z_])(?:\s*({_UNIT})(?![A-Za-z]))?")
_NUM_IN_TEXT = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")


def _unit_kind(unit: str | None) -> str | None:
    if not unit:
        return None
    u = unit.lower().replace("μ", "µ")
    if u == "%":
        return "percent"
    if u in ("µm²", "µm^2", "um²", "um^2", "um2", "µm2"):
        return "area_um2"
    if u in ("µm", "um", "micron", "microns"):
        return "length_um"
    if u in ("px²", "px^2", "px2", "pixels2", "pixels^2", "pixel^2", "pixel2"):
        return "area_px2"
    if u in ("px", "pixel", "pixels"):
        return "length_px"
    if u in ("bit", "bits"):
        return "entropy"
    return None


def _kind_of_key(key: str) -> str:
    if key.endswith("_um2"):
        return "area_um2"
    if key.endswith("_um"):
        return "length_um"
    if key.startswith("mean_area_"):
        return "area_px2"
    if "dist" in key or "radius" in key:
        return "length_px"
    if key.startswith(("r_", "f_", "fraction_")):
        return "fraction"
    if key == "mean_spatial_entropy":
        return "entropy"
    if key.startswith(("N_", "count_")):
        return "count"
    return "other"


def _numeric_values(raw: Mapping[str, Any]) -> list[tuple[str, str, float]]:
    """(key, kind, value) for every numeric leaf of raw_data, plus numbers in its strings."""
    out: list[tuple[str, str, float]] = []

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, bool) or obj is None:
            return
        if isinstance(obj, (int, float)):
            out.append((prefix, _kind_of_key(prefix.rsplit(".", 1)[-1]), float(obj)))
        elif isinstance(obj, str):
            for m in _NUM_IN_TEXT.finditer(obj):
                out.append((f"{prefix} (text)", "text", float(m.group(0))))
        elif isinstance(obj, Mapping):
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(f"{prefix}[{i}]", v)

    walk("", raw)
    return out


def _match_number(x: float, decimals: int, unit_kind: str | None, values: list[tuple[str, str, float]]) -> str | None:
    tol = 0.5 * 10.0 ** (-decimals) + 1e-9 * max(1.0, abs(x))
    for key, kind, v in values:
        if unit_kind == "percent":
            if kind in ("fraction", "other", "text") and abs(100.0 * v - x) <= tol:
                return key
            continue
        if unit_kind is not None and kind != unit_kind and kind != "text":
            continue
        if abs(v - x) <= tol:
            return key
    return None


# ------------------------------------------------------------------------------------------------


def verify_narrative(text: str, bio: Mapping[str, Any]) -> VerificationResult:
    """Check every numeric and phenotype claim of ``text`` against ``bio`` (the translator's
    ``raw_data`` / ``interpretation`` / ``generated_tokens``). See the module docstring."""
    raw = bio.get("raw_data") or {}
    interp = bio.get("interpretation") or {}
    tokens = {str(t).lower() for t in bio.get("generated_tokens") or []}
    claims: list[Claim] = []

    taken = [False] * len(text)
    for phrase, rx, targets in _PHRASE_RES:
        for m in rx.finditer(text):
            s, e = m.span()
            if any(taken[s:e]):
                continue
            for i in range(s, e):
                taken[i] = True
            hit = _phenotype_supported(targets, interp, tokens)
            claims.append(Claim("phenotype", m.group(0), s, e, hit is not None, hit,
                                None if hit else "phenotype not in interpretation or generated_tokens"))

    values = _numeric_values(raw)
    for m in _NUMBER_RE.finditer(text):
        s, e = m.span()
        if any(taken[s:e]):
            continue
        num = m.group(1)
        decimals = len(num.split(".")[1]) if "." in num else 0
        kind = _unit_kind(m.group(2))
        key = _match_number(float(num), decimals, kind, values)
        claims.append(Claim("number", m.group(0).strip(), s, e, key is not None, key,
                            None if key else f"no raw_data value{' of kind ' + kind if kind else ''} rounds to {num}"))
    claims.sort(key=lambda c: c.start)
    return VerificationResult(claims)
