"""Bundled sample image for the README's one-command demo (see SOURCE.md for source and licence).

``sample_path()`` is real H&E redistributed from the ``stardist`` wheel (BSD-3-Clause); its
resolution is not stated by the source: ``sample_mpp()`` is the estimate from nucleus size
(~0.5 µm/px, 20x), so µm figures derived from it are approximate.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
SAMPLE_FILE = "he_tcia_stardist.jpg"
#: estimated micrometres per pixel of the sample (see SOURCE.md)
SAMPLE_MPP = 0.5


def sample_path() -> Path:
    """Path of the bundled H&E sample image (RGB JPEG, 500 x 300 px)."""
    p = _HERE / SAMPLE_FILE
    if not p.is_file():
        raise FileNotFoundError(f"bundled sample image missing: {p} (broken installation)")
    return p


def sample_mpp() -> float:
    """Estimated µm/px of the sample image."""
    return SAMPLE_MPP
