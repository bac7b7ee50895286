"""The TME report of a job (``build_report``) and of a Narrate call (``narrate_report``)."""

from __future__ import annotations

import math
from typing import Any

import grpc
import numpy as np

from ..inference.nuclei import NucleiTable
from .requests import RequestError


def build_report(table: NucleiTable, backend: str, tissue: list[dict] | None = None) -> dict:
    """TME report over all nuclei of the job: ``pipeline.build_report`` (the CLI's; backend
    "none" = no narrative), made strict JSON.

    tissue: PAGET tissue annotations sent with the job (their number goes into the report).
    A backend the server cannot run -> FAILED_PRECONDITION (normally refused on the first
    message already, ``requests.check_narrative_backend``)."""
    from ..narrative.backends import NarrativeBackendError
    from ..pipeline import build_report as pipeline_report

    try:
        report = pipeline_report(table, backend)
    except NarrativeBackendError as e:
        raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"narrative_backend {backend!r}: {e}") from None
    if tissue is not None:
        # PAGET: how many tissue annotations were sent (lets a client check it received them all)
        report["tissue_annotations_total"] = len(tissue)
    return sanitise(report)


def sanitise(o: Any) -> Any:
    """Replace non-finite floats by None so the report is strict JSON."""
    if isinstance(o, dict):
        return {str(k): sanitise(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [sanitise(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(float(o)) else None
    if isinstance(o, np.generic):
        return o.item()
    return o



def narrate_report(features_json: str, backend: str, taxonomy: str = "") -> dict:
    """Narrate: the report of an already computed ``raw_data`` dict (JSON text, depth-limited at
    decode). Bad JSON / features / taxonomy -> INVALID_ARGUMENT; a backend the server cannot
    run -> FAILED_PRECONDITION; ``backend`` "none" as in ``build_report``."""
    from ..errors import InputError
    from ..narrative.backends import NarrativeBackendError
    from ..report import report_from_features
    from .requests import check_narrative_backend, decode_json, invalid

    check_narrative_backend(backend, "narrative_backend")
    features = decode_json(features_json or "", "features_json")
    if not isinstance(features, dict):
        raise invalid("features_json must be a JSON object (the raw_data dict)")
    kw: dict[str, Any] = {"narrative_backend": backend}
    if taxonomy:
        from ..taxonomy import get_taxonomy

        try:
            kw["taxonomy"] = get_taxonomy(taxonomy)
        except (KeyError, ValueError) as e:
            raise invalid(f"taxonomy: {e}") from None
    try:
        report = sanitise(report_from_features(features, **kw))
    except NarrativeBackendError as e:
        raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"narrative_backend {backend!r}: {e}") from None
    except (InputError, ValueError, KeyError, TypeError, AttributeError, IndexError, OverflowError,
            ZeroDivisionError) as e:
        raise invalid(f"features_json: {type(e).__name__}: {e}") from None
    return report
