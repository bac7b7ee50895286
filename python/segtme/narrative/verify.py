"""Grounding verifier: every numeric and phenotype claim of a narrative must be true of the input.

``verify_narrative(text, bio)`` works on the text alone (no annotations: LLM backends produce
free text) and finds

* **numeric claims**, each bound to the quantity it states by :mod:`segtme.narrative.claims`
  (quantity = one ``raw_data`` key, from the subject named in the number's clause and its unit):
  "276 neoplastic" -> ``N_Neoplastic``, "(89.3%)" after it -> ``r_Neoplastic``, "on average 7.5
  µm ... from the nearest neoplastic nucleus" -> ``mean_dist_Inflammatory_to_Neoplastic_um``,
  "the closest at 5.7 µm" -> ``min_dist_...``, "f_II is 0.02" -> ``f_II``, ... A claim is
  *supported* only when **that** quantity's value, at the rounding the text uses, equals the
  number: written with ``d`` decimals (of 100 x value for ``%``), ``|value - claim| <= 0.5 *
  10**-d`` (``value`` rounded half up or half even). A quantity that is absent or undefined in
  ``raw_data`` (a class the taxonomy lacks, µm without a pixel size) makes the claim
  *unsupported*; a number whose subject cannot be determined is *unbound* - never supported.
  Numbers quoted inside a verbatim raw_data reason string are supported by that string.
* **phenotype claims**: every phrase of the phenotype vocabulary
  (:func:`segtme.narrative.vocabulary.phenotype_vocabulary`: each label and token of the
  rulebook, PAGET's axes, ``Axis: Label`` / ``Axis is Label`` forms and synonyms such as
  "immune desert", "immune-excluded", "pleomorphic"), matched case-insensitively, longest first,
  without overlaps. A phrase is checked against **its own axis**: stated under another axis's
  header ("Stromal status: Immune Cold", "Stromal status: ... (Immune desert)") it is
  unsupported. A positive claim is supported when its label is the axis's interpretation / its
  token is in ``generated_tokens``. **Negations** ("not", "no", "without", "absence of", "lack
  of", ... in the same clause before the phrase, or "Axis: not Label") invert the claim: "no
  immune exclusion" is supported when the spatial axis is determinate and not Excluded.
  "Indeterminate" is supported when its axis (or, without an axis, some axis) is indeterminate.

The result lists every claim with its quantity and status; ``unsupported`` holds the failed ones
(unsupported or unbound) and the hallucination rate is ``n_unsupported / n_claims`` (0.0 when
there are no claims).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from ..tme.tokens import INDETERMINATE
from .claims import NumberMention, key_family, parse_numbers
from .vocabulary import GENERIC_LABELS, HEADER_SEP, all_axes, axis_rules, phenotype_vocabulary, phrase_regex

__all__ = ["Claim", "VerificationResult", "verify_narrative", "PHENOTYPE_VOCABULARY"]

SUPPORTED, UNSUPPORTED, UNBOUND = "supported", "unsupported", "unbound"


@dataclass
class Claim:
    kind: str  # "number" | "phenotype"
    text: str
    start: int
    end: int
    supported: bool
    matched: str | None = None  # raw_data key / "Axis: Label" / token / reason that supports it
    reason: str | None = None  # why it is not supported
    quantity: str | None = None  # number: the raw_data key it is bound to; phenotype: "Axis: Label"/token claimed
    status: str = SUPPORTED  # "supported" | "unsupported" | "unbound"
    negated: bool = False  # phenotype: stated as absent
    axis: str | None = None  # phenotype: the axis of the claim


@dataclass
class VerificationResult:
    claims: list[Claim] = field(default_factory=list)

    @property
    def unsupported(self) -> list[Claim]:
        """Claims that failed: unsupported or unbound."""
        return [c for c in self.claims if not c.supported]

    @property
    def unbound(self) -> list[Claim]:
        return [c for c in self.claims if c.status == UNBOUND]

    @property
    def n_claims(self) -> int:
        return len(self.claims)

    @property
    def hallucination_rate(self) -> float:
        return len(self.unsupported) / self.n_claims if self.claims else 0.0

    @property
    def ok(self) -> bool:
        return not self.unsupported

    def failed_summary(self) -> list[str]:
        """One line per failed claim: 'text' [status: quantity]: reason."""
        return [f"{c.text!r} [{c.status}{': ' + c.quantity if c.quantity else ''}]: {c.reason}" for c in self.unsupported]

    def to_dict(self, include_claims: bool = False) -> dict:
        d = {
            "unsupported": [asdict(c) for c in self.unsupported],
            "failed_claims": self.failed_summary(),
            "n_claims": self.n_claims,
            "n_unsupported": len(self.unsupported),
            "n_unbound": len(self.unbound),
            "n_numeric_claims": sum(c.kind == "number" for c in self.claims),
            "n_phenotype_claims": sum(c.kind == "phenotype" for c in self.claims),
            "hallucination_rate": self.hallucination_rate,
        }
        if include_claims:
            d["claims"] = [asdict(c) for c in self.claims]
        return d


# ------------------------------------------------------------------------------------------------
# phenotypes

#: (phrase, targets) longest first (see vocabulary.py).
PHENOTYPE_VOCABULARY = list(phenotype_vocabulary())


def _norm(phrase: str) -> str:
    return re.sub(r"[\s\-]+", " ", phrase.strip().lower())


#: normalised phrase -> targets ("stroma free" and "stroma-free" are one phrase)
_TARGETS: dict[str, tuple[tuple, ...]] = {}
for _p, _t in PHENOTYPE_VOCABULARY:
    _TARGETS[_norm(_p)] = tuple(sorted(set(_TARGETS.get(_norm(_p), ())) | set(_t)))
_WORD_START = re.compile(r"(?<![\w\-/])[\w/]+")


def _first_word(phrase: str) -> str:
    return re.match(r"[\w/]*", re.split(r"[\s\-]+", phrase.strip().lower())[0]).group(0)


#: first word -> phrase regexes, longest phrase first: a phrase is tried only where its first word starts
_BY_FIRST: dict[str, list[re.Pattern]] = {}
for _p, _t in PHENOTYPE_VOCABULARY:
    _BY_FIRST.setdefault(_first_word(_p), []).append(re.compile(phrase_regex(_p), re.I))


def _phrase_matches(text: str):
    """Leftmost-longest phrase matches, left to right, without overlaps."""
    pos = 0
    for w in _WORD_START.finditer(text):
        if w.start() < pos:
            continue
        for rx in _BY_FIRST.get(w.group(0).lower(), ()):
            m = rx.match(text, w.start())
            if m:
                yield m
                pos = m.end()
                break


_AXES_SORTED = sorted(all_axes(), key=len, reverse=True)
_AXIS_RE = re.compile("|".join(phrase_regex(a) for a in _AXES_SORTED), re.I)
_AXIS_BY_LOWER = {_norm(a): a for a in all_axes()}


def _label_matchers() -> dict[str, list[tuple[re.Pattern, str, str]]]:
    """axis -> [(regex matching '[not ]Label' right after the header separator, label's axis, label)]: the
    axis's own labels and Indeterminate, then generic labels of other axes ("Stromal status: Moderate"),
    longest first."""
    rules = list(axis_rules())
    out: dict[str, list[tuple[re.Pattern, str, str]]] = {}
    for axis in all_axes():
        cands = [(ax, lab) for ax, lab in rules if ax == axis] + [(axis, INDETERMINATE)]
        cands += [(ax, lab) for ax, lab in rules if ax != axis and lab.lower() in GENERIC_LABELS]
        cands.sort(key=lambda p: -len(p[1]))
        out[axis] = [(re.compile(r"(not\s+|no\s+)?" + phrase_regex(lab)[len(r"(?<![\w\-/])"):], re.I), ax, lab)
                     for ax, lab in cands]
    return out


_LABEL_MATCHERS = _label_matchers()
_HEADER_SEP_RE = re.compile(HEADER_SEP, re.I)


def _headers(text: str) -> list[tuple[int, int, int, str]]:
    """(axis start, axis end, separator end, axis) of every 'Axis:' / 'Axis is' in the text."""
    out = []
    for m in _AXIS_RE.finditer(text):
        sep = _HEADER_SEP_RE.match(text, m.end())
        if sep:
            out.append((m.start(), m.end(), sep.end(), _AXIS_BY_LOWER[_norm(m.group(0))]))
    return out


_NEG = re.compile(r"\b(?:no|not|without|absence\s+of|absent|lack\s+of|lacks|lacking|neither|nor|never|isn't|aren't"
                  r"|rather\s+than|instead\s+of|free\s+of|devoid\s+of|non)\b", re.I)
_CTX_END_RE = re.compile(r"[();,\n!?]|\.(?!\d)|\s(?:but|while|whereas)\b", re.I)


def _axis_contexts(text: str, headers: list[tuple[int, int, int, str]],
                   header_claims: dict[int, int]) -> list[tuple[int, int, str]]:
    """Spans governed by an axis header: from 'Axis' (followed by ':'/'is') - past the label claimed in
    the header form - to the next ';', sentence end, or a comma / 'but' / 'while' outside parentheses."""
    out = []
    for hs, _he, sep_end, axis in headers:
        depth, i = 0, len(text)
        for b in _CTX_END_RE.finditer(text, header_claims.get(hs, sep_end)):
            ch = b.group(0)
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth = max(0, depth - 1)
            elif ch in ";\n.!?" or depth == 0:
                i = b.start()
                break
        out.append((hs, i, axis))
    return out


def _negated(text: str, start: int, prev_end: int) -> bool:
    """A negator in the same clause, between the previous claim and the phrase."""
    seg = text[prev_end:start]
    cut = max(seg.rfind(c) for c in ",;.()") if seg else -1
    seg = seg[cut + 1:]
    return bool(_NEG.search(seg))


def _target_axis(t: tuple) -> str | None:
    return t[1] if t[0] in ("label", "label_prefix", "token", "indeterminate_axis") else None


def _truth(t: tuple, interp: Mapping[str, str], tokens: set[str]) -> bool | None:
    """Whether the target holds (None: cannot be decided, its axis is missing or indeterminate)."""
    kind = t[0]
    if kind == "indeterminate":
        return INDETERMINATE in interp.values()
    axis = t[1]
    if kind == "indeterminate_axis":
        return None if axis not in interp else interp[axis] == INDETERMINATE
    lab = interp.get(axis)
    if lab is None or lab == INDETERMINATE:
        return None
    if kind == "label":
        return lab == t[2]
    if kind == "label_prefix":
        return str(lab).startswith(t[2])
    if kind == "token":
        return t[2].lower() in tokens
    return None


def _describe(t: tuple) -> str:
    if t[0] in ("label", "label_prefix"):
        return f"{t[1]}: {t[2]}"
    if t[0] == "token":
        return t[2]
    if t[0] == "indeterminate_axis":
        return f"{t[1]}: {INDETERMINATE}"
    return INDETERMINATE


def _phenotype_claims(text: str, interp: Mapping[str, str], tokens: set[str]) -> list[Claim]:
    taken = [False] * len(text)
    found: list[tuple[int, int, tuple[tuple, ...], bool]] = []  # start, end, targets, negated-in-header
    headers = _headers(text)
    header_claims: dict[int, int] = {}  # header start -> end of the label claimed in header form
    for hs, _he, sep_end, axis in headers:
        for rx, ax, label in _LABEL_MATCHERS[axis]:
            m = rx.match(text, sep_end)
            if m and not re.match(r"[\w\-/]", text[m.end():m.end() + 1]):
                t = ("indeterminate_axis", ax) if label == INDETERMINATE else ("label", ax, label)
                taken[hs:m.end()] = [True] * (m.end() - hs)
                found.append((hs, m.end(), (t,), bool(m.group(1))))
                header_claims[hs] = m.end()
                break
    for m in _phrase_matches(text):
        s, e = m.span()
        if True in taken[s:e]:
            continue
        targets = _TARGETS.get(_norm(m.group(0)))
        if targets is None:  # pragma: no cover - every alternative is in _TARGETS
            continue
        taken[s:e] = [True] * (e - s)
        found.append((s, e, targets, False))
    found.sort()
    contexts = _axis_contexts(text, headers, header_claims)
    claims: list[Claim] = []
    prev_end = 0
    for s, e, targets, neg_header in found:
        ctx = next((a for cs, ce, a in contexts if cs <= s < ce), None)
        neg = neg_header or _negated(text, s, prev_end)
        prev_end = e
        phrase = text[s:e]
        if ctx is not None and len(targets) == 1 and targets[0] == ("indeterminate",):
            targets = (("indeterminate_axis", ctx),)
        if ctx is not None:
            own = [t for t in targets if _target_axis(t) in (ctx, None)]
            if not own:
                t0 = targets[0]
                claims.append(Claim("phenotype", phrase, s, e, False, None,
                                    f"{_describe(t0)} is a {_target_axis(t0)} phenotype, stated under {ctx}",
                                    _describe(t0), UNSUPPORTED, neg, ctx))
                continue
            targets = tuple(own)
        hit, undecided = None, False
        for t in targets:
            tr = _truth(t, interp, tokens)
            if tr is None:
                undecided = True
                continue
            if tr != neg:
                hit = t
                break
        desc = _describe(targets[0])
        axis = _target_axis(targets[0])
        if hit is not None:
            claims.append(Claim("phenotype", phrase, s, e, True, _describe(hit), None, _describe(hit), SUPPORTED, neg,
                                _target_axis(hit)))
        else:
            why = ("its axis is indeterminate or absent, so its absence cannot be checked" if neg and undecided
                   else "stated as absent, but it is in the interpretation/generated_tokens" if neg
                   else "phenotype not in interpretation or generated_tokens")
            claims.append(Claim("phenotype", phrase, s, e, False, None, why, desc, UNSUPPORTED, neg, axis))
    return claims


# ------------------------------------------------------------------------------------------------
# numbers

_FAMILIES_OF_KEY = {"count": {"count", "fraction"}, "share": {"share", "fraction", "count"},
                    "length": {"length"}, "area": {"area"}, "entropy": {"entropy", "fraction", "count"},
                    "density": {"density"}}


def _check_number(n: NumberMention, raw: Mapping[str, Any]) -> Claim:
    c = Claim("number", n.text.strip(), n.start, n.end, False, None, None, n.quantity, UNSUPPORTED)
    if n.quoted is not None:
        c.supported, c.matched, c.status = True, n.quoted, SUPPORTED
        return c
    if n.quantity is None:
        c.status, c.reason = UNBOUND, f"unbound: {n.reason or 'subject not determined'}"
        return c
    key = n.quantity
    if key not in raw:
        base = key[:-3] if key.endswith("_um") else key[:-4] if key.endswith("_um2") else None
        if base is not None and base in raw and raw.get("mpp") is None:
            c.reason = f"{key} is not measured: the pixel size is unknown (cite px)"
        else:
            c.reason = f"raw_data has no {key} (quantity not measured for this taxonomy)"
        return c
    v = raw.get(key)
    if v is None:
        c.reason = f"{key} is undefined: {(raw.get('undefined') or {}).get(key, 'no value')}"
        return c
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        c.reason = f"{key} is not a number"
        return c
    fam = key_family(key)
    if n.family not in _FAMILIES_OF_KEY.get(fam, {fam}):
        c.reason = f"{key} is a {fam}, but the text states a {n.family}"
        return c
    tol = 0.5 * 10.0 ** (-n.decimals) + 1e-9 * max(1.0, abs(n.value))
    shown = float(v) * n.scale
    if abs(shown - n.value) <= tol:
        c.supported, c.matched, c.status = True, key, SUPPORTED
    else:
        shown_s = f"{shown:g}" if fam == "count" else f"{shown:.{n.decimals + 2}f}{'%' if n.unit == '%' else ''}"
        c.reason = f"{key} = {shown_s}, not {n.text.strip()}"
    return c


# ------------------------------------------------------------------------------------------------


def verify_narrative(text: str, bio: Mapping[str, Any]) -> VerificationResult:
    """Check every numeric and phenotype claim of ``text`` against ``bio`` (the translator's
    ``raw_data`` / ``interpretation`` / ``generated_tokens``). See the module docstring."""
    raw = bio.get("raw_data") or {}
    interp = bio.get("interpretation") or {}
    tokens = {str(t).lower() for t in bio.get("generated_tokens") or []}
    claims = _phenotype_claims(text, interp, tokens)
    masked = [(c.start, c.end) for c in claims]
    for n in parse_numbers(text, raw, masked):
        claims.append(_check_number(n, raw))
    claims.sort(key=lambda c: c.start)
    return VerificationResult(claims)


def bound_quantities(text: str, bio: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """(number text, bound raw_data key or None) for every number of ``text`` (diagnostics)."""
    res = verify_narrative(text, bio)
    return [(c.text, c.quantity if c.status != UNBOUND else None) for c in res.claims if c.kind == "number"]

