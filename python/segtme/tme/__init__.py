"""Tumour-microenvironment features, biological tokens and the TME report (paper sections 7-8).

Public API (paper names): ``analyze_tme_from_maps``, ``analyze_tme_from_nuclei``,
``translate_tme_to_bio_tokens``, ``build_tme_report``, ``report_measurements``, ``TMEThresholds``.
"""

from .features import (
    FeatureSet,
    TMEContext,
    analyze_tme_from_maps,
    analyze_tme_from_nuclei,
    nuclei_table_from_maps,
    register_feature_group,
)
from .thresholds import DEFAULT_THRESHOLDS, TMEThresholds
from .tokens import AXES, INDETERMINATE, translate_tme_to_bio_tokens


def __getattr__(name: str):  # report pulls in the narrative package; import lazily
    if name in ("build_tme_report", "report_measurements", "report_from_features"):
        from . import report

        return getattr(report, name)
    raise AttributeError(name)


__all__ = [
    "AXES",
    "DEFAULT_THRESHOLDS",
    "FeatureSet",
    "INDETERMINATE",
    "TMEContext",
    "TMEThresholds",
    "analyze_tme_from_maps",
    "analyze_tme_from_nuclei",
    "build_tme_report",
    "nuclei_table_from_maps",
    "register_feature_group",
    "report_from_features",
    "report_measurements",
    "translate_tme_to_bio_tokens",
]
