"""Numeric claims of free text, bound to the quantity they state.

:func:`parse_numbers` finds every number of a narrative (``276``, ``0.43``, ``89.3%``,
``7.5 µm``, ``156 px²``, ``0.31 bits``, ``4.5 per mm²``) and binds it to one ``raw_data`` key
from its own clause - the keys the template cites (:mod:`segtme.narrative.template`):

* **subject**: class words ("neoplastic", "tumour", "inflammatory", "immune", "connective",
  "stromal", "dead", "non-neoplastic epithelial", "other", PAGET's "lymphocytes", "plasma
  cells", "leukocytes", "mitotic figures", ...), tissue words ("epithelium", "stroma", "smooth
  muscle", "red blood cells"), quantity words ("tumour-stroma" -> ``f_TS``, "infiltration
  fraction" -> ``f_II``, "purity" -> ``r_Neoplastic``, "entropy", "tissue area", "engaged" /
  "within", "mitotic density") and raw_data identifiers written out (``f_TS``, ``N_total = 5``).
  The binder nearest the number wins: the last one between the previous number and this one,
  else the first one after it (before the next number).
* **quantity by unit**: a count (integer, no unit) -> ``N_<class>`` (``N_total`` for "309
  nuclei"; "X of Y inflammatory nuclei ... within" -> ``count_engaged_immune`` of
  ``N_Inflammatory``); ``%`` or a bare fraction -> ``r_<class>`` / ``f_TS`` / ``f_II`` /
  ``fraction_engaged_immune`` / PAGET shares (``frac_<subtype>_of_Leukocyte``, ``area_frac_<tissue>``,
  ``frac_Leukocyte_in_Epithelium``, ``r_Mitotic_of_Epithelial``); ``µm`` / ``px`` ->
  ``engagement_radius`` ("within", "radius") or ``{mean|min}_dist_<A>_to_<B>`` where the
  statistic comes from "average"/"mean" vs "closest"/"minimum" and the ordered class pair from
  the clause (A = the class whose nuclei are measured, B = the class "nearest"/"from"/"to");
  ``µm²`` / ``px²`` -> ``mean_area_<class>`` or ``tissue_area``; ``bits`` -> entropy; ``per mm²``
  -> ``mitotic_count_per_mm2``. µm values bind to the ``*_um`` / ``*_um2`` twin.
* **twins**: a number in parentheses right after another ("276 neoplastic (89.3%)", "7.5 µm
  (15.1 px)") states the same subject: the share of that count, or the same length/area in
  the other unit. A number after a bare separator ("42.9%, 43%") repeats the previous subject.

A number that none of this binds is *unbound* (``quantity is None`` with a reason): the verifier
never accepts it. Numbers inside a verbatim copy of a raw_data reason string (``undefined`` /
``indeterminate``) are bound to that reason. Numbers glued to letters (``f_TS``, ``log2``,
``CD8``, ``13-class``) are not claims.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["NumberMention", "parse_numbers", "clause_spans", "unit_of", "CLASS_LEXICON"]

# ------------------------------------------------------------------------------------------------
# lexicon

#: phrase -> subject stem (nucleus classes; "T:" = tissue classes). Longest phrases win.
CLASS_LEXICON: dict[str, str] = {
    "non-neoplastic epithelial": "Epithelial", "non neoplastic epithelial": "Epithelial",
    "normal epithelial": "Epithelial", "benign epithelial": "Epithelial",
    "neoplastic": "Neoplastic", "tumour": "Neoplastic", "tumor": "Neoplastic", "cancer": "Neoplastic",
    "malignant": "Neoplastic", "carcinoma": "Neoplastic",
    "inflammatory": "Inflammatory", "immune": "Inflammatory",
    "connective": "Connective", "stromal": "Connective", "spindle-shaped": "Connective", "spindle": "Connective",
    "dead": "Dead", "necrotic": "Dead", "apoptotic": "Dead",
    "epithelial": "Epithelial",
    "leukocytes": "Leukocyte", "leukocyte": "Leukocyte", "leucocytes": "Leukocyte",
    "lymphocytes": "Lymphocyte", "lymphocyte": "Lymphocyte", "lymphocytic": "Lymphocyte",
    "plasma cells": "Plasma_cell", "plasma cell": "Plasma_cell",
    "myeloid cells": "Myeloid_cell", "myeloid cell": "Myeloid_cell", "myeloid": "Myeloid_cell",
    "eosinophils": "Eosinophil", "eosinophil": "Eosinophil", "neutrophils": "Neutrophil", "neutrophil": "Neutrophil",
    "granulocytes": "Granulocyte", "granulocyte": "Granulocyte",
    "fibroblasts": "Fibroblast", "fibroblast": "Fibroblast",
    "endothelial cells": "Endothelial_cell", "endothelial cell": "Endothelial_cell", "endothelial": "Endothelial_cell",
    "mitotic figures": "Mitotic_cell", "mitotic figure": "Mitotic_cell", "mitotic cells": "Mitotic_cell",
    "mitoses": "Mitotic_cell", "mitosis": "Mitotic_cell", "mitotic": "Mitotic_cell",
    "epithelium": "T:Epithelium", "stroma": "T:Stroma", "smooth muscle": "T:Smooth_muscle",
    "red blood cells": "T:Red_blood_cell", "red blood cell": "T:Red_blood_cell", "erythrocytes": "T:Red_blood_cell",
}
def _class_re(phrase: str) -> re.Pattern:
    body = r"[\s\-]+".join(re.escape(w) for w in re.split(r"[\s\-]+", phrase))
    return re.compile(rf"(?<![\w\-]){body}(?![\w\-])", re.I)


_WORD_START = re.compile(r"(?<![\w\-])\w+")
#: first word of a class phrase -> [(regex, stem)] longest phrase first
_CLASS_BY_FIRST: dict[str, list[tuple[re.Pattern, str]]] = {}
for _p, _stem in sorted(CLASS_LEXICON.items(), key=lambda kv: -len(kv[0])):
    _CLASS_BY_FIRST.setdefault(re.split(r"[\s\-]+", _p)[0], []).append((_class_re(_p), _stem))
#: "other" is a class only next to a number or before nuclei/cells
_OTHER_RE = r"(?<![\w\-])other(?=\s+(?:nuclei|cells|nucleus)\b)"
_SUBTYPES = ("Lymphocyte", "Plasma_cell", "Myeloid_cell", "Eosinophil", "Neutrophil", "Granulocyte")
#: cue name -> regex (quantity words that are not class names)
_CUES: dict[str, str] = {
    "f_TS": r"tumou?r[\s\-]+(?:to[\s\-]+)?stroma(?:l)?(?:\s+(?:fraction|ratio|proportion|index))?",
    "f_II": r"(?:immune\s+)?infiltration\s+(?:fraction|ratio|index)|immune[\s\-]+infiltration",
    "purity": r"\b(?:purity|cellularity)\b",
    "entropy": r"\bentropy\b",
    "engaged": r"\bengaged\b|\bengagement\b",
    "within": r"\bwithin\b",
    "radius": r"\bradius\b",
    "mean": r"\bmean\b|\baverage\b|\baveraging\b|\baveraged\b",
    "min": r"\bmin(?:imum|imal)?\b|\bclosest\b|\bshortest\b|\bsmallest\b",
    "tissue": r"\btissue\b",
    "density": r"\bdensity\b",
    "all": r"\b(?:nuclei|nucleus|cells)\b",
    "between": r"\bbetween\b",
}
_CUE_RES = {k: re.compile(v, re.I) for k, v in _CUES.items()}
_LOCATION_RE = re.compile(r"intra-?epithelial|\b(?:in|within|inside|into)\s+(?:the\s+)?epithelium\b", re.I)
_TO_RE = re.compile(r"\b(?:from|to|towards?)\s+(?:\w+\s+){0,3}$", re.I)
_NEAREST_RE = re.compile(r"\b(?:nearest|closest|neighbouring|neighboring)\s+(?:\w+\s+)?$", re.I)

_UNIT_RE = re.compile(
    r"\s*(%|per\s*cent\b|percent\b"
    r"|(?:µm|μm|um|microns?|micrometres?|micrometers?)(?:²|\^2|2(?!\d)|\s+squared\b)?"
    r"|(?:px|pixels?)(?:²|\^2|2(?!\d)|\s+squared\b)?"
    r"|bits?\b"
    r"|(?:per|/)\s*(?:mm(?:²|\^2|2)|square\s+millimet(?:re|er)s?))(?![A-Za-z])",
    re.I,
)
_NUM_RE = re.compile(r"(?<![\w.,])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?")
_ID_RE = re.compile(r"(?<![\w])[A-Za-z][A-Za-z0-9]*_[A-Za-z0-9_]*[A-Za-z0-9](?![\w])")


def unit_of(u: str | None) -> str | None:
    """Canonical unit: "%", "µm", "µm²", "px", "px²", "bits", "per mm²" (None for no unit)."""
    if not u:
        return None
    s = re.sub(r"\s+", " ", u.strip().lower().replace("μ", "µ"))
    if s in ("%", "percent", "per cent"):
        return "%"
    sq = s.endswith(("²", "^2", "2", "squared"))
    if s.startswith(("µm", "um", "micron", "micromet")):
        return "µm²" if sq else "µm"
    if s.startswith(("px", "pixel")):
        return "px²" if sq else "px"
    if s.startswith("bit"):
        return "bits"
    if "mm" in s or "millimet" in s:
        return "per mm²"
    return None


@dataclass
class NumberMention:
    """One number of the text and the quantity it is bound to.

    ``value`` as written (89.3 for "89.3%"); ``scale`` = 100 for percentages (the raw value is
    a fraction); ``quantity`` the raw_data key (None: unbound, see ``reason``); ``subject`` a
    short description of what the number is about."""

    start: int
    end: int
    text: str
    value: float
    decimals: int
    unit: str | None
    quantity: str | None = None
    subject: str | None = None
    reason: str | None = None
    quoted: str | None = None  # raw_data reason string this number is quoted from
    numerator: str | None = None  # set on Y of "X of Y": the quantity of X (its share is X / Y)

    @property
    def scale(self) -> float:
        return 100.0 if self.unit == "%" else 1.0

    @property
    def family(self) -> str:
        u = self.unit
        if u == "%":
            return "share"
        if u in ("µm", "px"):
            return "length"
        if u in ("µm²", "px²"):
            return "area"
        if u == "bits":
            return "entropy"
        if u == "per mm²":
            return "density"
        return "count" if self.decimals == 0 else "fraction"


@dataclass(frozen=True)
class _Binder:
    start: int
    end: int
    kind: str  # "id" | "cue" | "class"
    name: str  # key / cue name / stem


# ------------------------------------------------------------------------------------------------
# text structure

_HARD = re.compile(r"(?<!\d)[.!?](?!\d)|[;\n]|(?<=\d)\.(?=\s|$)")


_SENT = re.compile(r"(?<!\d)[.!?](?!\d)|\n|(?<=\d)\.(?=\s|$)")


def _sentence_of(text: str, pos: int) -> tuple[int, int]:
    s, e = 0, len(text)
    for m in _SENT.finditer(text):
        if m.end() <= pos:
            s = m.end()
        elif m.start() >= pos:
            e = m.start()
            break
    return s, e


def clause_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of the clauses: split at sentence ends (not decimal points), newlines and ';' outside
    parentheses ("(5; 1.6%)" stays one clause)."""
    out, s = [], 0
    depth = [0] * (len(text) + 1)
    d = 0
    for i, ch in enumerate(text):
        if ch == "(":
            d += 1
        elif ch == ")":
            d = max(0, d - 1)
        depth[i] = d
    for m in _HARD.finditer(text):
        if m.group(0) == ";" and depth[m.start()] > 0:
            continue
        if m.start() > s:
            out.append((s, m.start()))
        s = m.end()
    if s < len(text):
        out.append((s, len(text)))
    return out


def _find_numbers(text: str) -> list[NumberMention]:
    out = []
    for m in _NUM_RE.finditer(text):
        s, e = m.span()
        nxt = text[e:e + 1]
        um = _UNIT_RE.match(text, e)
        if um is None and (nxt.isalpha() or nxt == "_" or re.match(r"-[A-Za-z]", text[e:e + 2])):
            continue  # glued to an identifier: 13-class, 3D, 2nd
        if um is None and s > 0 and text[s - 1] in "_-" and s > 1 and text[s - 2].isalnum():
            continue
        intpart = m.group(1).replace(",", "")
        dec = m.group(2)
        value = float(f"{intpart}.{dec}" if dec else intpart)
        unit = unit_of(um.group(1)) if um else None
        end = um.end() if um else e
        out.append(NumberMention(s, end, text[s:end], value, len(dec) if dec else 0, unit))
    return out


def _find_binders(text: str, masked: list[tuple[int, int]]) -> list[_Binder]:
    found: list[_Binder] = []
    for m in _ID_RE.finditer(text):
        found.append(_Binder(m.start(), m.end(), "id", m.group(0)))
    for name, rx in _CUE_RES.items():
        for m in rx.finditer(text):
            found.append(_Binder(m.start(), m.end(), "cue", name))
    for w in _WORD_START.finditer(text):
        for rx, stem in _CLASS_BY_FIRST.get(w.group(0).lower(), ()):
            m = rx.match(text, w.start())
            if m:
                found.append(_Binder(m.start(), m.end(), "class", stem))
                break
    for m in re.finditer(_OTHER_RE + r"|(?<=\d\s)other(?![\w\-])", text, re.I):
        found.append(_Binder(m.start(), m.end(), "class", "Other"))
    prio = {"id": 0, "cue": 1, "class": 2}
    found.sort(key=lambda b: (prio[b.kind] if b.name != "all" else 3, -(b.end - b.start), b.start))
    taken = [False] * len(text)
    for s, e in masked:
        taken[s:e] = [True] * (e - s)
    keep: list[_Binder] = []
    for b in found:
        if True in taken[b.start:b.end]:
            continue
        taken[b.start:b.end] = [True] * (b.end - b.start)
        keep.append(b)
    keep.sort(key=lambda b: b.start)
    return keep


# ------------------------------------------------------------------------------------------------
# subject -> key


def _share_key(stem: str, raw: Mapping[str, Any], location: bool) -> str:
    if location and stem in ("Leukocyte", "Inflammatory", "Lymphocyte"):
        return "frac_Lymphocyte_in_Epithelium" if stem == "Lymphocyte" else "frac_Leukocyte_in_Epithelium"
    if stem.startswith("T:"):
        return f"area_frac_{stem[2:]}"
    if stem in _SUBTYPES:
        return f"frac_{stem}_of_Leukocyte"
    if stem == "Mitotic_cell":
        return "r_Mitotic_of_Epithelial"
    if stem == "Leukocyte":
        return "r_Inflammatory"
    return f"r_{stem}"


def _count_key(stem: str, raw: Mapping[str, Any]) -> str | None:
    if stem.startswith("T:"):
        return None
    if stem == "Leukocyte":
        return "N_Leukocyte" if "N_Leukocyte" in raw else "N_Inflammatory"
    return f"N_{stem}"


def _twin_share(count_key: str) -> str | None:
    if count_key == "count_engaged_immune":
        return "fraction_engaged_immune"
    if count_key == "N_Leukocyte":
        return "r_Inflammatory"
    if count_key == "N_Mitotic_cell":
        return "r_Mitotic_of_Epithelial"
    if count_key.startswith("N_") and count_key != "N_total":
        stem = count_key[2:]
        return _share_key(stem, {}, False)
    return None


def _with_unit(base: str, unit: str | None) -> str:
    """px key -> the key of the same quantity in ``unit``."""
    if base in ("tissue_area", "tissue_area_px", "tissue_area_um2"):
        return "tissue_area_um2" if unit == "µm²" else "tissue_area_px"
    b = base[:-3] if base.endswith("_um") else base[:-4] if base.endswith("_um2") else base
    if unit == "µm":
        return b + "_um"
    if unit == "µm²":
        return b + "_um2"
    return b


def _base(key: str) -> str:
    if key.startswith("tissue_area"):
        return "tissue_area"
    return key[:-3] if key.endswith("_um") else key[:-4] if key.endswith("_um2") else key


_FAMILY_OF_KEY_PREFIX = (("mean_dist_", "length"), ("min_dist_", "length"), ("engagement_radius", "length"),
                         ("mean_area_", "area"), ("tissue_area", "area"))


def _key_family(key: str) -> str:
    for p, fam in _FAMILY_OF_KEY_PREFIX:
        if key.startswith(p):
            return fam
    if key == "mean_spatial_entropy":
        return "entropy"
    if key.endswith("_per_mm2"):
        return "density"
    if key.startswith(("N_", "count_")):
        return "count"
    return "share"


# ------------------------------------------------------------------------------------------------


def _pick(binders_l: list[_Binder], binders_r: list[_Binder], ok) -> _Binder | None:
    for b in reversed(binders_l):
        if ok(b):
            return b
    for b in binders_r:
        if ok(b):
            return b
    return None


def _pair(clause: str, off: int, binders: list[_Binder]) -> tuple[list[tuple[str, str]], str | None]:
    """Candidate (source, target) class pairs of a distance clause."""
    stems: list[tuple[str, int]] = []
    for b in binders:
        if b.kind == "class" and not b.name.startswith("T:") and (not stems or stems[-1][0] != b.name):
            stems.append((b.name, b.start))
    distinct = []
    for s, p in stems:
        if s not in [d[0] for d in distinct]:
            distinct.append((s, p))
    if len(distinct) < 2:
        return [], "the two classes of the distance are not both named in its clause"
    if len(distinct) > 2:
        return [], f"more than two classes named in the distance clause ({', '.join(d[0] for d in distinct)})"
    (a, pa), (b, pb) = distinct
    between = any(x.kind == "cue" and x.name == "between" for x in binders)
    if between:
        return [(a, b), (b, a)], None
    # the target is the class after "from"/"to" ("... from the nearest neoplastic nucleus"), else the
    # class right after "nearest"/"closest" ("the nearest neoplastic nucleus to each inflammatory one")
    if _TO_RE.search(clause[: pb - off]):
        return [(a, b)], None
    if _TO_RE.search(clause[: pa - off]):
        return [(b, a)], None
    if _NEAREST_RE.search(clause[: pa - off]):
        return [(b, a)], None
    return [(a, b)], None


def parse_numbers(text: str, raw: Mapping[str, Any], masked: list[tuple[int, int]] = ()) -> list[NumberMention]:
    """Every number of ``text`` bound to its raw_data key (see module docstring).

    masked: spans already claimed as phenotype phrases (their words are not class words)."""
    masked = list(masked)
    nums = _find_numbers(text)
    nums = [n for n in nums if not any(s <= n.start < e for s, e in masked)]
    # verbatim raw_data reason strings: numbers inside are quotes of that reason
    reasons: list[tuple[str, str]] = []
    for grp in ("undefined", "indeterminate"):
        for k, v in (raw.get(grp) or {}).items():
            if isinstance(v, str) and re.search(r"\d", v):
                reasons.append((f"{grp}[{k}]", v))
    quoted: list[tuple[int, int, str]] = []
    for name, s in sorted(reasons, key=lambda r: -len(r[1])):
        for m in re.finditer(re.escape(s), text):
            quoted.append((m.start(), m.end(), name))
    binders = _find_binders(text, masked + [(s, e) for s, e, _ in quoted])
    clauses = clause_spans(text)

    def clause_of(pos: int) -> tuple[int, int]:
        for s, e in clauses:
            if s <= pos < e:
                return s, e
        return pos, pos

    prev_in_clause: dict[int, NumberMention] = {}
    for i, n in enumerate(nums):
        q = next((name for s, e, name in quoted if s <= n.start and n.end <= e), None)
        if q is not None:
            n.quoted, n.quantity, n.subject = q, q, "quoted reason"
            continue
        cs, ce = clause_of(n.start)
        prev = prev_in_clause.get(cs)
        nxt = nums[i + 1] if i + 1 < len(nums) and nums[i + 1].start < ce else None
        ls = prev.end if prev is not None else cs
        re_ = nxt.start if nxt is not None else ce
        bl = [b for b in binders if b.start >= ls and b.end <= n.start]
        br = [b for b in binders if b.start >= n.end and b.end <= re_]
        bc = [b for b in binders if b.start >= cs and b.end <= ce]
        left = text[ls:n.start]
        ss, se = _sentence_of(text, n.start)
        bs = [b for b in binders if b.start >= ss and b.end <= se]
        _bind(n, raw, text, (cs, ce), left, text[n.end:re_], bl, br, bc, prev, nxt, (ss, bs))
        prev_in_clause[cs] = n
    return nums


def _bind(n: NumberMention, raw: Mapping[str, Any], text: str, clause: tuple[int, int], left: str, right: str,
          bl: list[_Binder], br: list[_Binder], bc: list[_Binder], prev: NumberMention | None,
          nxt: NumberMention | None, sentence: tuple[int, list[_Binder]]) -> None:
    fam = n.family
    cs, ce = clause
    ctext = text[cs:ce]

    def done(key: str | None, subject: str | None = None, reason: str | None = None) -> None:
        n.quantity, n.subject, n.reason = key, subject or key, reason

    # 1. twin: "276 neoplastic (89.3%)", "7.5 µm (15.1 px)"
    if prev is not None and prev.quantity and (re.fullmatch(r"\s*(?:[A-Za-z][\w\-]*\s+){0,3}\(\s*", left) or (
            fam == "share" and prev.family == "count" and re.fullmatch(r"\s*[,;/]\s*(?:i\.e\.\s*|or\s+)?", left))):
        pq = prev.quantity
        if fam == "share" and prev.family == "count":
            share = _twin_share(prev.numerator or pq)
            if share:
                return done(share, f"share of {prev.subject}")
        if fam in ("length", "area") and prev.family == fam:
            return done(_with_unit(_base(pq), n.unit), prev.subject)
        if fam == prev.family and fam not in ("count",):
            return done(pq, prev.subject)

    # 2. an identifier written right before: "f_TS is 0.91", "N_total = 5"
    idb = bl[-1] if bl and bl[-1].kind == "id" else None
    if idb is not None and re.fullmatch(r"\s*(?:=|:|is|was|of|equals|at|reaches)?\s*(?:about|approximately|~|≈)?\s*",
                                        text[idb.end:n.start]):
        key = idb.name
        if fam in ("length", "area"):
            key = _with_unit(key, n.unit)
        return done(key)

    location = bool(_LOCATION_RE.search(ctext))
    has = lambda kind, *names: (lambda b: b.kind == kind and (not names or b.name in names))  # noqa: E731

    if fam == "entropy":
        return done("mean_spatial_entropy")

    if fam == "density":
        if any(b.kind == "class" and b.name == "Mitotic_cell" for b in bc) or "mitotic" in ctext.lower():
            return done("mitotic_count_per_mm2", "mitotic figures per mm²")
        return done(None, reason="a density (per mm²) whose subject is not mitotic figures")

    if fam in ("share", "fraction"):
        b = _pick(bl, br, lambda b: (b.kind == "class") or (b.kind == "cue" and b.name in (
            "f_TS", "f_II", "purity", "engaged", "within", "entropy")))
        if b is not None:
            if b.kind == "cue" and b.name == "entropy":
                return done("mean_spatial_entropy") if fam == "fraction" else done(
                    None, reason="a percentage stated for the spatial entropy (bits)")
            if b.kind == "cue":
                key = {"f_TS": "f_TS", "f_II": "f_II", "purity": "r_Neoplastic"}.get(b.name, "fraction_engaged_immune")
                return done(key)
            if b.name in ("Inflammatory", "Leukocyte") and not location and (
                    any(x.kind == "cue" and x.name in ("engaged", "within") for x in br)):
                return done("fraction_engaged_immune")
            return done(_share_key(b.name, raw, location), b.name)
        return _inherit(n, prev, left, "no class or quantity named for this share")

    if fam == "count":
        # "X of Y ...": X is a numerator
        if nxt is not None and nxt.family == "count" and re.fullmatch(r"\s+of\s+(?:the\s+)?", right):
            if any(b.kind == "cue" and b.name in ("engaged", "within") for b in bc):
                return done("count_engaged_immune", "engaged inflammatory nuclei")
            return done(None, reason="a count 'X of Y' whose numerator quantity is not named")
        if prev is not None and prev.quantity == "count_engaged_immune" and re.fullmatch(r"\s+of\s+(?:the\s+)?", left):
            n.numerator = "count_engaged_immune"
        # class right after the number (within a few words): "276 neoplastic", "60 of them neoplastic"
        b = None
        for x in br:
            if x.start - n.end > 24:
                break
            if x.kind == "class" or (x.kind == "cue" and x.name == "all"):
                b = x
                break
        if b is None:
            b = _pick(bl, [], has("class"))
        if b is None:
            return _inherit(n, prev, left, "no class named for this count")
        if b.kind == "cue":
            return done("N_total", "all nuclei")
        if b.name in ("Inflammatory", "Leukocyte") and n.numerator is None and \
                any(x.kind == "cue" and x.name in ("engaged", "within") for x in br):
            return done("count_engaged_immune", "engaged inflammatory nuclei")
        key = _count_key(b.name, raw)
        if key is None:
            return done(None, reason=f"a count of a tissue class ({b.name[2:]})")
        return done(key, b.name)

    if fam == "area":
        b = _pick(bl, br, lambda b: b.kind == "class" or (b.kind == "cue" and b.name == "tissue"))
        if b is None:
            return _inherit(n, prev, left, "no class named for this area")
        if b.kind == "cue" or b.name.startswith("T:"):
            return done(_with_unit("tissue_area", n.unit), "tissue area")
        stem = "Inflammatory" if b.name == "Leukocyte" else b.name
        return done(_with_unit(f"mean_area_{stem}", n.unit), f"mean nuclear area of {stem}")

    if fam == "length":
        b = _pick(bl, br, lambda b: b.kind == "cue" and b.name in ("mean", "min", "within", "radius"))
        if b is None:
            return _inherit(n, prev, left, "distance statistic (mean or minimum) or radius not stated")
        if b.name in ("within", "radius"):
            return done(_with_unit("engagement_radius", n.unit), "engagement radius")
        pairs, why = _pair(ctext, cs, bc)
        if not pairs and why.startswith("the two classes"):  # "...: 7.5 µm; minimum: 5.7 µm": the sentence's pair
            ss, bs = sentence
            pairs, why = _pair(text[ss:cs] + ctext, ss, [x for x in bs if x.end <= ce])
        if not pairs:
            return done(None, reason=why)
        keys = [f"{b.name}_dist_{a}_to_{t}" for a, t in pairs]
        key = next((k for k in keys if k in raw), keys[0])
        return done(_with_unit(key, n.unit), f"{b.name} distance {key.split('_dist_')[1].replace('_to_', '→')}")

    done(None, reason="no unit and no quantity named")


def _inherit(n: NumberMention, prev: NumberMention | None, left: str, reason: str) -> None:
    """'42.9%, 43%': a number after a bare separator repeats the previous number's subject."""
    if prev is not None and prev.quantity and prev.unit == n.unit and prev.quoted is None and \
            re.fullmatch(r"\s*(?:,|or|/|,\s*or)\s*", left):
        n.quantity, n.subject, n.reason = prev.quantity, prev.subject, None
        return
    n.quantity, n.subject, n.reason = None, None, reason


def key_family(key: str) -> str:
    """"count" / "share" / "length" / "area" / "entropy" / "density" of a raw_data key."""
    return _key_family(key)
