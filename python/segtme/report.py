"""The TME report: features -> tokens -> narrative -> grounding verifier, in one dict.

It sits above both ``tme`` (features, tokens) and ``narrative`` (backends, verifier), which it
composes. ``build_tme_report(table)`` is what ``segtme analyze`` (``tme.json``), ``segtme tme``,
the gRPC server and the QuPath import use; ``tme.report.report_measurements`` flattens a report
into QuPath measurements.

Fallback rule: an LLM narrative (``transformers`` / ``openai``) with any unsupported claim is
replaced by the template narrative (``fallback_to_template=True``, the default); the report keeps
the rejected text and its verifier result under ``narrative_fallback`` and
``narrative_backend_used`` says ``"template"``. Backend ``"none"``: the report without a
narrative (``narrative`` empty, ``verifier`` None).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from .inference.nuclei import NucleiTable
from .taxonomy import Taxonomy, get_taxonomy
from .tme.features import FeatureGroup, analyze_tme_from_nuclei
from .tme.thresholds import DEFAULT_THRESHOLDS, TMEThresholds
from .tme.tokens import translate_tme_to_bio_tokens

__all__ = ["build_tme_report", "report_from_features", "REPORT_SCHEMA"]

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
    from .narrative.backends import TemplateBackend, get_backend
    from .narrative.verify import verify_narrative

    tax = get_taxonomy(taxonomy)
    subs = tax.substitutions()
    bio = translate_tme_to_bio_tokens(features, thresholds, taxonomy=tax.name)
    if narrative_backend == "none":
        return _report_dict(tax, bio, subs, thresholds, "", "none", "none", None, None)
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
    return _report_dict(tax, bio, subs, thresholds, text, backend.name, used, fallback, result.to_dict())


def _report_dict(tax: Taxonomy, bio: Mapping[str, Any], subs: Any, thresholds: TMEThresholds, text: str,
                 backend: str, used: str, fallback: Any, verifier: Any) -> dict:
    return {
        "schema": REPORT_SCHEMA,
        "taxonomy": tax.name,
        "raw_data": bio["raw_data"],
        "interpretation": bio["interpretation"],
        "generated_tokens": bio["generated_tokens"],
        "narrative": text,
        "narrative_backend": backend,
        "narrative_backend_used": used,
        "narrative_fallback": fallback,
        "verifier": verifier,
        "substitutions": subs,
        "thresholds": thresholds.to_dict(bio["raw_data"].get("mpp")),
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
