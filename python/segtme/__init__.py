"""SegTME: nucleus segmentation + classification, tumour-microenvironment features, biological
tokens and grounded narratives for H&E, served to QuPath over gRPC.

Small public API (heavy modules load lazily):

* ``load_model(spec="default", device="auto")`` -> LoadedModel
* ``analyze(image, mpp, model="default", ...)`` -> AnalysisResult (nuclei table + TME report)
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_model", "analyze"]


def load_model(spec="default", device="auto", **kw):
    from .models.registry import load_model as _lm

    return _lm(spec, device, **kw)


def analyze(image, mpp, model="default", **kw):
    from .pipeline import analyze as _an

    return _an(image, mpp, model=model, **kw)
