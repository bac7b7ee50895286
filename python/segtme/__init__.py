"""SegTME: nucleus segmentation + classification, tumour-microenvironment features, biological
tokens and grounded narratives for H&E, served to QuPath over gRPC.

Small public API for users (heavy modules load lazily). Modules of the package never import
this file; they import what they need from its home (``segtme.runtime``, ``segtme.version``,
``segtme.models.registry``, ``segtme.pipeline``):

* ``load_model(spec="default", device="auto")`` -> LoadedModel
* ``analyze(image, mpp, model="default", ...)`` -> AnalysisResult (nuclei table + TME report)
"""

from __future__ import annotations

from . import runtime as _runtime  # noqa: F401  (OpenMP / malloc defaults before torch loads)
from .version import __version__

__all__ = ["__version__", "load_model", "analyze"]


def load_model(spec="default", device="auto", **kw):
    """``segtme.models.registry.load_model``."""
    from .models.registry import load_model as _lm

    return _lm(spec, device, **kw)


def analyze(image, mpp=None, model="default", **kw):
    """``segtme.pipeline.analyze``."""
    from .pipeline import analyze as _an

    return _an(image, mpp, model=model, **kw)
