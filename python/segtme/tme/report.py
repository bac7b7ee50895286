"""The TME report: features -> tokens -> narrative -> grounding verifier, in one dict.

``build_tme_report(table)`` is what ``segtme analyze`` (``tme.json``), ``segtme tme``, the gRPC
server and the QuPath import use. ``report_measurements(report)`` flattens it into QuPath
annotation measurements whose names carry their units.

Fallback rule: an LLM narrative (``transformers`` / ``openai``) with any unsupported claim is
replaced by the template narrative (``fallback_to_template=True``, the default); the report keeps
the rejected text and its verifier result under ``narrative_fallback`` and
``narrative_backend_used`` says ``"template"``.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from ..inference.nuclei import NucleiTable
from ..taxonomy import ROLE_NAMES, Taxonomy, get_taxonomy
from .features import FeatureGroup, analyze_tme_from_nuclei
from .thresholds import DEFAULT_THRESHOLDS, TMEThresholds
from .tokens import translate_tme_to_bio_tokens

__all__ = ["build_tme_report", "report_from_features", "report_measurements", "REPORT_SCHEMA"]

log = logging.getLogger(__name__)

REPORT_SCHEMA = "segtme.tme-report/1"


def report_from_features(
    features: Mapping[str, Any],
    taxonomy: Taxonomy | str = "pannuke6",
    narrative_backend: str = "template",
    *,
    thresholds: TMEThresholds = DEFAULT_THRESHOLDS,
    fallback_to_template: bool = True,
    **backend_opts: Any,
) -> dict:
    """Report of an already computed feature dict (see :func:`build_tme_report`)."""
    from ..narrative.backends import TemplateBackend, get_backend
    from ..narrative.verify import verify_narrative

    tax = get_taxonomy(taxonomy)
    subs = tax.substitutions()
    bio = translate_tme_to_bio_tokens(features, thresholds, taxonomy=tax.name)
    backend = get_backend(narrative_backend, **backend_opts)
    text = backend.generate(bio, subs)
    result = verify_narrative(text, bio)
    used = backend.name
    fallback = None
    if not result.ok:
        if backend.is_llm and fallback_to_template:
            fallback = {
                "backend": backend.name,
                "reason": f"{len(result.unsupported)} of {result.n_claims} claims unsupported by raw_data/interpretation",
                "rejected_narrative": text,
                "verifier": result.to_dict(),
            }
            log.warning("narrative from %s had unsupported claims; using the template narrative", backend.name)
            text = TemplateBackend().generate(bio, subs)
            result = verify_narrative(text, bio)
            used = "template"
        elif not backend.is_llm:
            log.error("template narrative has unsupported claims (a bug): %s", result.to_dict()["unsupported"])
    mpp = bio["raw_data"].get("mpp")
    return {
        "schema": REPORT_SCHEMA,
        "taxonomy": tax.name,
        "raw_data": bio["raw_data"],
        "interpretation": bio["interpretation"],
        "generated_tokens": bio["generated_tokens"],
        "narrative": text,
        "narrative_backend": backend.name,
        "narrative_backend_used": used,
        "narrative_fallback": fallback,
        "verifier": result.to_dict(),
        "substitutions": subs,
        "thresholds": thresholds.to_dict(mpp),
    }


def build_tme_report(
    table: NucleiTable,
    narrative_backend: str = "template",
    *,
    thresholds: TMEThresholds = DEFAULT_THRESHOLDS,
    fallback_to_template: bool = True,
    extra_groups: Sequence[FeatureGroup] = (),
    **backend_opts: Any,
) -> dict:
    """The full TME report of the nuclei in ``table`` (a patch or a whole annotation).

    Returns a JSON-native dict: ``raw_data``, ``interpretation``, ``generated_tokens``,
    ``narrative``, ``narrative_backend`` (asked), ``narrative_backend_used`` (after fallback),
    ``narrative_fallback`` (None or the rejected text + why), ``verifier`` (``unsupported``,
    ``n_claims``, ``n_unsupported``, ``hallucination_rate``), ``substitutions`` (taxonomy
    stand-ins, verbatim), ``thresholds`` (reference and effective at the table's MPP), ``taxonomy``.
    ``backend_opts`` go to the backend (``model_dir=`` for transformers; ``base_url=``, ``model=``,
    ``api_key=``, ``timeout=`` for openai).
    """
    features = analyze_tme_from_nuclei(table, thresholds, extra_groups=extra_groups)
    return report_from_features(features, table.taxonomy, narrative_backend, thresholds=thresholds,
                                fallback_to_template=fallback_to_template, **backend_opts)


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

