"""SegTME: nucleus segmentation + classification, tumour-microenvironment features, biological
tokens and grounded narratives for H&E, served to QuPath over gRPC.

Small public API for users (heavy modules load lazily). Modules of the package never import
this file; they import what they need from its home (``segtme.runtime``, ``segtme.version``,
``segtme.models.registry``, ``segtme.pipeline``):

* ``load_model(spec="default", device="auto")`` -> LoadedModel
* ``analyze(image, mpp, model="default", ...)`` -> AnalysisResult (nuclei table + TME report)
* ``analyze_slide(source, out_dir, model="default", ...)`` -> SlideResult (a whole slide into a
  folder: tissue only, outputs streamed)
"""

from __future__ import annotations

from . import runtime as _runtime  # noqa: F401  (OpenMP / malloc defaults before torch loads)
from .version import __version__

__all__ = ["__version__", "load_model", "analyze", "analyze_slide"]


def load_model(spec="default", device="auto", **kw):
    """``segtme.models.registry.load_model``."""
    from .models.registry import load_model as _lm

    return _lm(spec, device, **kw)


def analyze(image, mpp=None, model="default", **kw):
    """``segtme.pipeline.analyze``."""
    from .pipeline import analyze as _an

    return _an(image, mpp, model=model, **kw)


def analyze_slide(source, out_dir, model="default", **kw):
    """A whole slide (path or ``ImageSource``) into the folder ``out_dir`` (created if missing,
    replaced atomically): MPP from the file (``mpp=`` only when it has none), ``roi=(x, y, w, h)``
    level-0 px, ``annotations=`` a QuPath GeoJSON of polygons (one TME report each),
    ``detect_tissue=True`` (background skipped). Returns ``batch.slide.SlideResult``; see
    ``segtme.batch.runner.analyze_slide_to``."""
    from .batch.runner import analyze_slide_to

    return analyze_slide_to(source, out_dir, model, **kw)
