"""Tumour-microenvironment features and biological tokens (paper sections 7-8).

Public API (paper names): ``analyze_tme_from_maps``, ``analyze_tme_from_nuclei``,
``translate_tme_to_bio_tokens``, ``report_measurements``, ``TMEThresholds``. The TME report
(features → tokens → narrative → verifier) is ``segtme.report.build_tme_report``: it composes
``tme`` and ``narrative``, so it sits above both.
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


def __getattr__(name: str):  # report_measurements: imported on first use
    if name == "report_measurements":
        from .report import report_measurements

        return report_measurements
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
    "nuclei_table_from_maps",
    "register_feature_group",
    "report_measurements",
    "translate_tme_to_bio_tokens",
]
