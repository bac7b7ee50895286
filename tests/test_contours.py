"""Vectorised outer contours (inference/contours.py) against the per-nucleus skimage path."""

from __future__ import annotations

import numpy as np
from shapely.geometry import Polygon

from conftest import load_monuseg
from segtme.inference.contours import outer_contours
from segtme.inference.nuclei import _outlines_one_by_one
from segtme.inference.postprocess import relabel_sequential


def _same(lab: np.ndarray) -> int:
    lab = relabel_sequential(lab)
    n = int(lab.max())
    new = outer_contours(lab, n)
    old = _outlines_one_by_one(lab)
    assert new is not None and len(new) == len(old) == n
    for k, (a, b) in enumerate(zip(old, new)):
        assert len(a) == len(b), (k, len(a), len(b))
        assert Polygon(a).equals(Polygon(b)), k
    return n


def test_matches_find_contours_on_real_monuseg_labels() -> None:
    """Every nucleus of two real MoNuSeg label maps (touching nuclei, irregular shapes, nuclei cut
    by the image border): identical polygons (vertex set and count) to the skimage path."""
    total = 0
    for _, inst, _ in load_monuseg(2):
        total += _same(inst)
    assert total > 500


def test_matches_find_contours_on_tricky_shapes() -> None:
    lab = np.zeros((40, 60), np.int32)
    lab[2:12, 2:12] = 1
    lab[5:8, 5:8] = 0  # a hole: the outer ring is kept
    lab[2:6, 12:16] = 2  # touching 1 along an edge
    lab[12:15, 12:15] = 3  # touching 1 only at a corner (diagonal)
    lab[20, 20] = 4  # one pixel
    lab[20:24, 30:34] = 5
    lab[24:28, 34:38] = 5  # same label, two blocks meeting at a corner (saddle inside one label)
    lab[24:26, 30:32] = 5
    lab[0:5, 55:60] = 6  # at the image corner
    lab[30:40, 0:3] = 7  # along the border
    lab[30:34, 40:44] = 8
    lab[31:33, 44:50] = 8  # thin arm
    assert _same(lab) == 8
    rng = np.random.default_rng(0)
    blobs = (rng.random((80, 80)) > 0.55).astype(np.int32)  # many saddles and diagonal contacts
    from scipy import ndimage as ndi

    labelled, _ = ndi.label(blobs)
    assert _same(labelled) > 50
