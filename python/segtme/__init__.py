"""SegTME: nucleus segmentation + classification, tumour-microenvironment features, biological
tokens and grounded narratives for H&E, served to QuPath over gRPC.

Small public API (heavy modules load lazily):

* ``load_model(spec="default", device="auto")`` -> LoadedModel
* ``analyze(image, mpp, model="default", ...)`` -> AnalysisResult (nuclei table + TME report)
"""

from __future__ import annotations

import os as _os
import sys as _sys

__version__ = "0.1.0"

# CPU threads: with OpenMP's default *active* waiting, torch's 2 worker threads spin at every
# barrier, and when another process holds one of the cores (a shared or busy machine) each
# parallel region waits for a time slice: forward passes measured 10-30x slower than with one
# thread. Passive waiting (threads sleep at barriers) costs little on an idle machine and removes
# that cliff. It only takes effect if set before torch (libgomp) is loaded; an explicit
# OMP_WAIT_POLICY in the environment wins. See docs/benchmarks.md.
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["__version__", "load_model", "analyze"]


def load_model(spec="default", device="auto", **kw):
    from .models.registry import load_model as _lm

    return _lm(spec, device, **kw)


def analyze(image, mpp, model="default", **kw):
    from .pipeline import analyze as _an

    return _an(image, mpp, model=model, **kw)
