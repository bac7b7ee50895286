"""Deterministic template narrative: every sentence is derived from a label or a value.

``render_template(bio)`` turns the token translator's output (``raw_data``, ``interpretation``,
``generated_tokens``) into a short pathologist-readable paragraph. Numbers are cited with their
units and the rounding stated in :data:`ROUNDING` (the verifier accepts exactly that rounding):
percentages 1 decimal, fractions 2 decimals, distances 1 decimal (µm and px), areas 1 decimal
(µm^2) / 0 decimals (px^2), entropy 2 decimals (bits). When the MPP is unknown only pixel values
are cited. Nothing is said that is not in ``raw_data`` / ``interpretation`` / ``generated_tokens``
(or, for the substitution note, the taxonomy's own substitution sentence).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..taxonomy import ROLE_NAMES
from ..tme.tokens import AXES, INDETERMINATE, RULES

__all__ = ["render_template", "ROUNDING", "fmt_pct", "fmt"]

#: decimals used when citing values (documented; the verifier's tolerance is half a unit of these).
ROUNDING: dict[str, int] = {"percent": 1, "fraction": 2, "length": 1, "area_um2": 1, "area_px2": 0, "entropy": 2}

_PROSE = {  # how a role reads in prose
    "Neoplastic": "neoplastic",
    "Inflammatory": "inflammatory",
    "Connective": "connective",
    "Dead": "dead",
    "Epithelial": "non-neoplastic epithelial",
    "Other": "other",
}


def fmt(v: float, decimals: int) -> str:
    return f"{float(v):.{decimals}f}"


def fmt_pct(fraction: float) -> str:
    return f"{100.0 * float(fraction):.{ROUNDING['percent']}f}%"


def _length(raw: Mapping[str, Any], key: str) -> str | None:
    """'12.3 µm (39.2 px)' or '39.2 px' (no MPP); None if undefined."""
    px = raw.get(key)
    if px is None:
        return None
    um = raw.get(f"{key}_um")
    d = ROUNDING["length"]
    return f"{fmt(um, d)} µm ({fmt(px, d)} px)" if um is not None else f"{fmt(px, d)} px"


def _area(raw: Mapping[str, Any], key: str) -> str | None:
    px2 = raw.get(key)
    if px2 is None:
        return None
    um2 = raw.get(f"{key}_um2")
    p = fmt(px2, ROUNDING["area_px2"])
    return f"{fmt(um2, ROUNDING['area_um2'])} µm² ({p} px²)" if um2 is not None else f"{p} px²"


def _why(raw: Mapping[str, Any], key: str) -> str:
    return str((raw.get("undefined") or {}).get(key, "undefined"))


def _evidence(axis: str, raw: Mapping[str, Any]) -> str:
    """The measurement behind an axis label, as a clause."""
    neo, inf, conn = ROLE_NAMES["tumour"], ROLE_NAMES["immune"], ROLE_NAMES["stroma"]
    if axis == "Composition":
        return f"neoplastic nuclei are {fmt_pct(raw['r_' + neo])} of all nuclei"
    if axis == "Immune status":
        s = f"inflammatory nuclei are {fmt_pct(raw['r_' + inf])} of all nuclei"
        f_ii = raw.get("f_II")
        return s + (f" and the immune infiltration fraction f_II is {fmt(f_ii, ROUNDING['fraction'])}" if f_ii is not None else "")
    if axis == "Stromal status":
        s = f"connective nuclei are {fmt_pct(raw['r_' + conn])} of all nuclei"
        f_ts = raw.get("f_TS")
        return s + (f" and the tumour-stroma fraction f_TS is {fmt(f_ts, ROUNDING['fraction'])}" if f_ts is not None else "")
    if axis == "Spatial interaction":
        mean = _length(raw, f"mean_dist_{inf}_to_{neo}")
        mn = _length(raw, f"min_dist_{inf}_to_{neo}")
        return f"inflammatory nuclei lie on average {mean} from the nearest neoplastic nucleus, the closest at {mn}"
    if axis == "Architecture":
        return f"the mean spatial entropy of cell-type mixing is {fmt(raw['mean_spatial_entropy'], ROUNDING['entropy'])} bits"
    if axis == "Morphology":
        return f"the mean neoplastic nuclear area is {_area(raw, 'mean_area_' + neo)}"
    if axis == "Immune engagement":
        radius = _length(raw, "engagement_radius")
        return (
            f"{raw['count_engaged_immune']} of {raw['N_' + inf]} inflammatory nuclei "
            f"({fmt_pct(raw['fraction_engaged_immune'])}) lie within {radius} of a neoplastic nucleus"
        )
    raise KeyError(axis)


def render_template(bio: Mapping[str, Any], substitutions: Sequence[str] = ()) -> str:
    """The template narrative of a ``translate_tme_to_bio_tokens`` result (see module docstring).

    substitutions: sentences from ``Taxonomy.substitutions()``, repeated as a note.
    """
    raw = bio["raw_data"]
    interp = bio["interpretation"]
    n_total = int(raw.get("N_total") or 0)
    out: list[str] = []
    if n_total == 0:
        out.append("No nuclei were counted in the analysed region, so every phenotype axis is indeterminate.")
    else:
        parts = []
        for nm, prose in _PROSE.items():
            if f"N_{nm}" in raw and raw.get(f"r_{nm}") is not None:
                parts.append(f"{raw[f'N_{nm}']} {prose} ({fmt_pct(raw[f'r_{nm}'])})")
        listing = ", ".join(parts[:-1]) + f" and {parts[-1]}" if len(parts) > 1 else "".join(parts)
        out.append(f"The analysed region contains {n_total} nuclei: {listing}.")
        indet = raw.get("indeterminate") or {}
        for axis in AXES:
            label = interp.get(axis)
            if label is None:
                continue
            if label == INDETERMINATE:
                out.append(f"{axis}: {INDETERMINATE}, because {indet.get(axis, 'its input is undefined')}.")
                continue
            tokens = RULES[(axis, label)].tokens
            tok = f" ({', '.join(tokens)})" if tokens else ""
            out.append(f"{axis}: {label}{tok}; {_evidence(axis, raw)}.")
    if raw.get("mpp") is None and n_total:
        out.append("The pixel size is unknown, so distances and areas are given in pixels of the analysed image.")
    for s in substitutions:
        out.append(f"Note: {s}")
    return " ".join(out)
