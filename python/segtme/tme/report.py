"""QuPath measurements of a TME report: ``report_measurements(report)`` flattens a report
(``segtme.report.build_tme_report``, which sits above ``tme`` and ``narrative``) into annotation
measurements whose names carry their units.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..taxonomy import ROLE_NAMES

__all__ = ["report_measurements"]

def report_measurements(report: Mapping[str, Any]) -> dict[str, float]:
    """QuPath annotation measurements (name -> float) from a report; units are in the names
    (px = pixels of the analysed coordinates, i.e. full-resolution slide px for the server).
    Undefined values are omitted."""
    raw = report["raw_data"]
    out: dict[str, float] = {}

    def put(name: str, key: str) -> None:
        v = raw.get(key)
        if v is not None and not isinstance(v, bool):
            out[name] = float(v)

    put("SegTME: Nuclei count", "N_total")
    names = [*ROLE_NAMES.values()] + (["Other"] if "N_Other" in raw else [])
    for nm in names:
        put(f"SegTME: {nm} count", f"N_{nm}")
    for nm in names:
        put(f"SegTME: {nm} fraction", f"r_{nm}")
    for nm in names:
        put(f"SegTME: Mean area {nm} px^2", f"mean_area_{nm}")
        put(f"SegTME: Mean area {nm} µm^2", f"mean_area_{nm}_um2")
    put("SegTME: Tumour-stroma fraction", "f_TS")
    put("SegTME: Immune infiltration fraction", "f_II")
    inf, neo = ROLE_NAMES["immune"], ROLE_NAMES["tumour"]
    for stat in ("min", "mean"):
        key = f"{stat}_dist_{inf}_to_{neo}"
        put(f"SegTME: {stat.capitalize()} dist {inf}→{neo} px", key)
        put(f"SegTME: {stat.capitalize()} dist {inf}→{neo} µm", f"{key}_um")
    put("SegTME: Engaged immune count", "count_engaged_immune")
    put("SegTME: Engaged immune fraction", "fraction_engaged_immune")
    put("SegTME: Engagement radius px", "engagement_radius")
    put("SegTME: Engagement radius µm", "engagement_radius_um")
    put("SegTME: Mean spatial entropy bits", "mean_spatial_entropy")
    # any extra (registered) numeric feature, e.g. PAGET subtype fractions, under its own name
    known = _core_keys()
    for k, v in raw.items():
        if k not in known and k not in ("undefined", "indeterminate", "mpp", "N_uncounted") and isinstance(v, (int, float)) \
                and not isinstance(v, bool):
            out[f"SegTME: {k}"] = float(v)
    return out


def _core_keys() -> set[str]:
    """raw_data keys report_measurements names explicitly."""
    names = [*ROLE_NAMES.values(), "Other"]
    inf, neo = ROLE_NAMES["immune"], ROLE_NAMES["tumour"]
    keys = {"N_total", "f_TS", "f_II", "count_engaged_immune", "fraction_engaged_immune", "engagement_radius",
            "engagement_radius_um", "mean_spatial_entropy"}
    for nm in names:
        keys |= {f"N_{nm}", f"r_{nm}", f"mean_area_{nm}", f"mean_area_{nm}_um2"}
    for stat in ("min", "mean"):
        keys |= {f"{stat}_dist_{inf}_to_{neo}", f"{stat}_dist_{inf}_to_{neo}_um"}
    return keys

