"""Adversarial evaluation of the grounding verifier: perturbed template narratives.

:func:`perturbations` takes a template narrative with its citations
(:func:`segtme.narrative.template.template_narrative`) and the ``bio`` it describes, and returns
narratives that each contain one kind of error an LLM narrator makes - every one of them false
for this ``bio`` (perturbations that would happen to be true, e.g. swapping two equal counts, are
not generated):

=================  ====================================================================
``swap_classes``   two classes' numbers exchanged: "276 neoplastic (89.3%), 5 inflammatory
                   (1.6%)" -> "5 neoplastic (1.6%), 276 inflammatory (89.3%)", or the shares
                   in two axis clauses exchanged
``swap_subject``   the class named for a number replaced by another class, the number kept
                   ("connective nuclei are 8.7%" -> "inflammatory nuclei are 8.7%"; the mean
                   neoplastic -> connective nuclear area; the distance's direction reversed)
``swap_min_mean``  the minimum distance cited as the mean ("on average 5.7 µm"), or both swapped
``shift_rounding`` one number moved one unit of its last decimal away from the value
                   (89.3% -> 89.4% for 89.32%), i.e. across its rounding boundary
``unit_swap``      µm <-> px on a distance or area ("7.5 px (15.1 µm)")
``move_axis``      a label or token put under another axis ("Stromal status: Immune Cold",
                   "Stromal status: Desmoplastic (Immune desert)")
``negate``         a true phenotype negated ("Immune status: not Immune Cold", "(no Immune
                   desert, ...)", "There is no solid tumour nest.")
``invent_class``   a class the region does not have added to the census ("12 dead (3.9%)",
                   "12 macrophages (3.9%)")
=================  ====================================================================

:func:`evaluate` runs the verifier on the originals (false alarms) and on every perturbation
(detected = the verifier rejects the narrative) and tabulates the detection rate per kind.
Pure functions; the data loading is in :mod:`segtme.narrative.sources`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..tme.tokens import INDETERMINATE
from .template import Citation, TemplateNarrative, template_narrative
from .verify import verify_narrative
from .vocabulary import GENERIC_LABELS, axis_rules

__all__ = ["KINDS", "Perturbed", "perturbations", "AdversarialResult", "evaluate", "format_table"]

KINDS: tuple[str, ...] = ("swap_classes", "swap_subject", "swap_min_mean", "shift_rounding", "unit_swap", "move_axis",
                          "negate", "invent_class")

_CENSUS = ("Neoplastic", "Inflammatory", "Connective", "Dead", "Epithelial", "Other")
_CENSUS_PROSE = {"Dead": "dead", "Epithelial": "non-neoplastic epithelial", "Other": "other"}
_UNKNOWN_CLASSES = ("macrophages", "mast cells", "giant cells", "plasma cells", "mitotic figures", "lymphocytes")


@dataclass(frozen=True)
class Perturbed:
    kind: str
    text: str
    description: str


def _edit(text: str, edits: Sequence[tuple[int, int, str]]) -> str:
    out, pos = [], 0
    for s, e, new in sorted(edits):
        if s < pos:
            raise ValueError("overlapping edits")
        out.append(text[pos:s])
        out.append(new)
        pos = e
    out.append(text[pos:])
    return "".join(out)


def _shown(c: Citation) -> str:
    """The number part of a cited text ('89.3' of '89.3%', '7.5' of '7.5 µm')."""
    return c.text[:-1] if c.unit == "%" else c.text.split(" ")[0]


def _fmt_like(c: Citation, x: float) -> str:
    s = f"{x:.{c.decimals}f}"
    return s + ("%" if c.unit == "%" else f" {c.unit}" if c.unit else "")


def _close(c: Citation, cited: float, value: float | None) -> bool:
    """Whether ``cited`` (as written with c's decimals) is a correct rounding of ``value``."""
    if value is None:
        return False
    shown = 100.0 * value if c.unit == "%" else value
    return abs(shown - cited) <= 0.5 * 10.0 ** (-c.decimals) + 1e-9 * max(1.0, abs(cited))


def _by_key(tn: TemplateNarrative) -> dict[str, list[Citation]]:
    d: dict[str, list[Citation]] = {}
    for c in tn.numbers():
        d.setdefault(c.key, []).append(c)
    return d


def _swap_classes(tn: TemplateNarrative, raw: Mapping[str, Any], rng: random.Random) -> list[Perturbed]:
    first_end = tn.text.find(". ") if ". " in tn.text else len(tn.text)
    census = {c.key: c for c in tn.numbers() if c.start < first_end and c.key[2:] in _CENSUS and c.key[:2] in ("N_", "r_")}
    stems = [s for s in _CENSUS if f"N_{s}" in census and f"r_{s}" in census]
    pairs = [(a, b) for i, a in enumerate(stems) for b in stems[i + 1:] if census[f"N_{a}"].text != census[f"N_{b}"].text]
    out = []
    for a, b in rng.sample(pairs, min(2, len(pairs))):
        edits = []
        for k in ("N_", "r_"):
            ca, cb = census[k + a], census[k + b]
            edits += [(ca.start, ca.end, cb.text), (cb.start, cb.end, ca.text)]
        out.append(Perturbed("swap_classes", _edit(tn.text, edits), f"census numbers of {a} and {b} swapped"))
    # shares stated in two axis clauses swapped
    ev = [c for c in tn.numbers() if c.start >= first_end and c.key in ("r_Neoplastic", "r_Inflammatory", "r_Connective")]
    evp = [(x, y) for i, x in enumerate(ev) for y in ev[i + 1:] if x.text != y.text]
    for x, y in rng.sample(evp, min(1, len(evp))):
        out.append(Perturbed("swap_classes", _edit(tn.text, [(x.start, x.end, y.text), (y.start, y.end, x.text)]),
                             f"{x.key} and {y.key} swapped in the axis clauses"))
    return out


_EVIDENCE_PROSE = {"Neoplastic": "neoplastic", "Inflammatory": "inflammatory", "Connective": "connective"}


def _swap_subject(tn: TemplateNarrative, raw: Mapping[str, Any], rng: random.Random) -> list[Perturbed]:
    text, out = tn.text, []
    first_end = text.find(". ") if ". " in text else len(text)
    for c in tn.numbers():
        if c.start < first_end:
            continue
        for prefix_fmt, key_fmt in (("{} nuclei are ", "r_{}"), ("the mean {} nuclear area is ", None)):
            for stem, prose in _EVIDENCE_PROSE.items():
                pre = prefix_fmt.format(prose)
                if text[c.start - len(pre):c.start] != pre or (key_fmt and c.key != key_fmt.format(stem)):
                    continue
                others = [o for o in _EVIDENCE_PROSE if o != stem]
                other = rng.choice(others)
                okey = key_fmt.format(other) if key_fmt else c.key.replace(f"mean_area_{stem}", f"mean_area_{other}")
                if _close(c, float(_shown(c)), raw.get(okey)):
                    continue  # the other class happens to have the same value
                s0 = c.start - len(pre) + pre.index(prose)
                out.append(Perturbed("swap_subject", _edit(text, [(s0, s0 + len(prose), _EVIDENCE_PROSE[other])]),
                                     f"{c.key}: subject {prose} -> {_EVIDENCE_PROSE[other]}"))
    a, b = "inflammatory nuclei lie on average ", "from the nearest neoplastic nucleus"
    if a in text and b in text:
        i, j = text.index(a), text.index(b)
        out.append(Perturbed("swap_subject", _edit(text, [(i, i + len("inflammatory"), "neoplastic"),
                                                           (j + len("from the nearest "), j + len(b) - len(" nucleus"),
                                                            "inflammatory")]),
                             "distance direction reversed (neoplastic -> nearest inflammatory)"))
    return rng.sample(out, min(3, len(out)))


def _swap_min_mean(tn: TemplateNarrative, raw: Mapping[str, Any], rng: random.Random) -> list[Perturbed]:
    bk = _by_key(tn)
    out = []
    for suffix in ("_um", ""):
        mean = bk.get(f"mean_dist_Inflammatory_to_Neoplastic{suffix}")
        mn = bk.get(f"min_dist_Inflammatory_to_Neoplastic{suffix}")
        if not mean or not mn or mean[0].text == mn[0].text:
            continue
        a, b = mean[0], mn[0]
        out.append(Perturbed("swap_min_mean", _edit(tn.text, [(a.start, a.end, b.text)]),
                             f"minimum distance cited as the mean ({b.text})"))
        out.append(Perturbed("swap_min_mean", _edit(tn.text, [(a.start, a.end, b.text), (b.start, b.end, a.text)]),
                             "mean and minimum distances swapped"))
        break
    return out


def _shift(tn: TemplateNarrative, raw: Mapping[str, Any], rng: random.Random, n: int = 4) -> list[Perturbed]:
    cands = tn.numbers()
    out = []
    for c in rng.sample(cands, min(n, len(cands))):
        cited = float(_shown(c))
        shown = 100.0 * c.value if c.unit == "%" else c.value
        step = 10.0 ** (-c.decimals)
        new = cited + step if cited >= shown else cited - step
        if new < 0:
            continue
        if _close(c, new, c.value):
            continue
        out.append(Perturbed("shift_rounding", _edit(tn.text, [(c.start, c.end, _fmt_like(c, new))]),
                             f"{c.key}: {c.text} -> {_fmt_like(c, new)}"))
    return out


_OTHER_UNIT = {"µm": "px", "px": "µm", "µm²": "px²", "px²": "µm²"}


def _unit_swap(tn: TemplateNarrative, raw: Mapping[str, Any], rng: random.Random) -> list[Perturbed]:
    cands = [c for c in tn.numbers() if c.unit in _OTHER_UNIT]
    out = []
    for c in rng.sample(cands, min(2, len(cands))):
        u = _OTHER_UNIT[c.unit]
        if c.unit in ("µm", "µm²"):
            other_key = c.key[:-3] if c.key.endswith("_um") else c.key[:-4] if c.key.endswith("_um2") else c.key
            other_key = "tissue_area_px" if other_key == "tissue_area" else other_key
        else:
            other_key = (c.key.replace("_px", "") + ("_um2" if c.unit == "px²" else "_um")) if c.key != "tissue_area_px" \
                else "tissue_area_um2"
        cited = float(_shown(c))
        if _close(Citation("number", 0, 0, other_key, "", unit=u, decimals=c.decimals), cited, raw.get(other_key)):
            continue  # the same number happens to be right in the other unit
        new = c.text[: len(c.text) - len(c.unit)] + u
        out.append(Perturbed("unit_swap", _edit(tn.text, [(c.start, c.end, new)]), f"{c.key}: {c.text} -> {new}"))
    return out


def _labels(tn: TemplateNarrative) -> list[Citation]:
    return [c for c in tn.citations if c.kind == "label" and not c.key.endswith(INDETERMINATE)]


def _move_axis(tn: TemplateNarrative, bio: Mapping[str, Any], rng: random.Random) -> list[Perturbed]:
    labels = _labels(tn)
    rules = axis_rules()
    out = []
    pairs = [(a, b) for a in labels for b in labels if a.axis != b.axis]
    for a, b in rng.sample(pairs, min(2, len(pairs))):
        # a's label and tokens written in place of b's label and tokens
        toks_b = [c for c in tn.citations if c.kind == "token" and c.axis == b.axis]
        end = toks_b[-1].end + 1 if toks_b else b.end
        toks_a = rules.get((a.axis, a.text), ())
        new = a.text + (f" ({', '.join(toks_a)})" if toks_a else "")
        out.append(Perturbed("move_axis", _edit(tn.text, [(b.start, end, new)]), f"{a.key} stated under {b.axis}"))
    toks = [c for c in tn.citations if c.kind == "token"]
    tpairs = [(t, b) for t in toks for b in labels if b.axis != t.axis]
    for t, b in rng.sample(tpairs, min(1, len(tpairs))):
        out.append(Perturbed("move_axis", _edit(tn.text, [(b.end, b.end, f" [{t.text}]")]),
                             f"token {t.text} ({t.axis}) stated under {b.axis}"))
    return out


def _negate(tn: TemplateNarrative, bio: Mapping[str, Any], rng: random.Random) -> list[Perturbed]:
    labels = _labels(tn)
    toks = [c for c in tn.citations if c.kind == "token"]
    out = []
    for c in rng.sample(labels, min(1, len(labels))):
        out.append(Perturbed("negate", _edit(tn.text, [(c.start, c.start, "not ")]), f"{c.key} negated in its header"))
    for c in rng.sample(toks, min(1, len(toks))):
        out.append(Perturbed("negate", _edit(tn.text, [(c.start, c.start, "no ")]), f"token {c.text} negated"))
    cands = [c for c in labels if c.text.lower() not in GENERIC_LABELS] + toks
    for c in rng.sample(cands, min(1, len(cands))):
        s = f" There is no {c.text[0].lower() + c.text[1:]}." if c.text[:1].isupper() else f" There is no {c.text}."
        out.append(Perturbed("negate", tn.text + s, f"sentence negating {c.key}"))
    return out


def _invent_class(tn: TemplateNarrative, raw: Mapping[str, Any], rng: random.Random) -> list[Perturbed]:
    n_total = int(raw.get("N_total") or 0)
    first_end = tn.text.find(". ") if ". " in tn.text else len(tn.text)
    census = [c for c in tn.numbers() if c.start < first_end and c.key.startswith("r_") and c.key[2:] in _CENSUS]
    if not n_total or not census:
        return []
    at = census[-1].end + 1  # after "(x%)" of the last census item
    out = []
    k = rng.randint(1, max(1, n_total // 4))
    share = f"{100.0 * k / n_total:.1f}%"
    absent = [s for s in _CENSUS if raw.get(f"N_{s}") is None]
    choices = [_CENSUS_PROSE.get(s, s.lower()) for s in absent] + [rng.choice(_UNKNOWN_CLASSES)]
    for name in choices[:2] if len(choices) > 1 else choices:
        out.append(Perturbed("invent_class", _edit(tn.text, [(at, at, f", {k} {name} ({share})")]),
                             f"invented class '{name}' in the census"))
    return out


def perturbations(tn: TemplateNarrative, bio: Mapping[str, Any], seed: int = 0) -> list[Perturbed]:
    """All perturbations of one template narrative (deterministic for a seed); see module docstring."""
    rng = random.Random(seed)
    raw = bio["raw_data"]
    out: list[Perturbed] = []
    out += _swap_classes(tn, raw, rng)
    out += _swap_subject(tn, raw, rng)
    out += _swap_min_mean(tn, raw, rng)
    out += _shift(tn, raw, rng)
    out += _unit_swap(tn, raw, rng)
    out += _move_axis(tn, bio, rng)
    out += _negate(tn, bio, rng)
    out += _invent_class(tn, raw, rng)
    return [p for p in out if p.text != tn.text]


@dataclass
class AdversarialResult:
    n_narratives: int = 0
    n_claims: int = 0
    false_alarms: list[tuple[str, list[str]]] = field(default_factory=list)  # (name, failed claims)
    total: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})
    detected: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})
    missed: list[tuple[str, str, str]] = field(default_factory=list)  # (name, kind, description)

    @property
    def n_perturbed(self) -> int:
        return sum(self.total.values())

    @property
    def n_detected(self) -> int:
        return sum(self.detected.values())

    def rate(self, kind: str | None = None) -> float:
        if kind is None:
            return self.n_detected / self.n_perturbed if self.n_perturbed else 0.0
        return self.detected[kind] / self.total[kind] if self.total[kind] else 0.0

    def to_dict(self) -> dict:
        return {"n_narratives": self.n_narratives, "n_claims": self.n_claims, "false_alarms": len(self.false_alarms),
                "n_perturbed": self.n_perturbed, "n_detected": self.n_detected, "detection_rate": self.rate(),
                "per_kind": {k: {"n": self.total[k], "detected": self.detected[k], "rate": self.rate(k)} for k in KINDS},
                "missed": [list(m) for m in self.missed]}


def evaluate(items: Sequence[tuple[str, Mapping[str, Any], Sequence[str]]], seed: int = 0) -> AdversarialResult:
    """items: (name, bio, substitutions). Verifies each template narrative and its perturbations."""
    res = AdversarialResult()
    for i, (name, bio, subs) in enumerate(items):
        tn = template_narrative(bio, subs)
        v = verify_narrative(tn.text, bio)
        res.n_narratives += 1
        res.n_claims += v.n_claims
        if not v.ok:
            res.false_alarms.append((name, v.failed_summary()))
        for p in perturbations(tn, bio, seed=seed * 100003 + i):
            res.total[p.kind] += 1
            if not verify_narrative(p.text, bio).ok:
                res.detected[p.kind] += 1
            else:
                res.missed.append((name, p.kind, p.description))
    return res


def format_table(res: AdversarialResult) -> str:
    """Markdown table of the detection rate per perturbation kind."""
    lines = ["| perturbation | narratives perturbed | detected | detection rate |", "|---|---:|---:|---:|"]
    for k in KINDS:
        lines.append(f"| `{k}` | {res.total[k]} | {res.detected[k]} | {100.0 * res.rate(k):.1f}% |")
    lines.append(f"| **all** | {res.n_perturbed} | {res.n_detected} | **{100.0 * res.rate():.1f}%** |")
    lines.append(f"| unperturbed (false alarms) | {res.n_narratives} | {len(res.false_alarms)} | "
                 f"{100.0 * len(res.false_alarms) / max(1, res.n_narratives):.1f}% |")
    return "\n".join(lines)
