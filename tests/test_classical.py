"""The classical baseline (colour deconvolution + distance-transform watershed)."""

from __future__ import annotations

import numpy as np
import pytest

from segtme.eval.metrics import instance_metrics
from segtme.models import load_model, presets
from segtme.models.classical import ClassicalParams, classical_instances


def _synthetic(touching: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """White background with two dark-blue (haematoxylin-like) discs of radius 12 px at
    0.25 µm/px (3 µm radius, ~28 µm²); ``touching`` puts the centres 22 px apart."""
    h, w = 80, 100
    yy, xx = np.mgrid[:h, :w]
    gt = np.zeros((h, w), np.int32)
    c2 = 62 if touching else 75
    gt[(yy - 40) ** 2 + (xx - 40) ** 2 <= 144] = 1
    gt[((yy - 40) ** 2 + (xx - c2) ** 2 <= 144) & (gt == 0)] = 2
    rgb = np.full((h, w, 3), 235, np.uint8)
    rgb[gt > 0] = (70, 50, 140)
    return rgb, gt


def test_registered_as_family_and_preset():
    assert presets()["classical"].arch == "classical"
    m = load_model("classical", device="cpu")
    assert m.taxonomy.name == "nucleus1" and "rule-based" in m.source
    rgb, gt = _synthetic(touching=False)
    inst, cls, prob = m.module.predict_instances(rgb, 0.25)
    assert inst.shape == gt.shape and inst.max() == 2
    assert list(cls) == [1, 1] and np.all(prob == 1)


def test_splits_touching_nuclei():
    rgb, gt = _synthetic(touching=True)
    inst = classical_instances(rgb, 0.25)
    assert inst.max() == 2
    r = instance_metrics(gt, inst)
    assert r.tp == 2 and r.pq > 0.7


def test_size_filter_and_blank():
    rgb, gt = _synthetic(touching=False)
    # nuclei are ~28 µm²: a 40 µm² minimum removes both
    assert classical_instances(rgb, 0.25, params=ClassicalParams(min_area_um2=40.0)).max() == 0
    assert classical_instances(np.full((64, 64, 3), 240, np.uint8), 0.25).max() == 0
    with pytest.raises(ValueError):
        ClassicalParams.from_mapping({"no_such": 1})


def test_real_monuseg_crop(shared_data):
    from conftest import load_monuseg

    (rgb, gt, mpp), = load_monuseg(1, crop=400)
    inst = classical_instances(rgb, mpp)
    r = instance_metrics(gt, inst)
    # a working detector on real H&E: most of the foreground found, many nuclei matched
    assert r.dice > 0.6 and r.pq > 0.2 and r.tp > 0.3 * r.n_true


def test_black_padding_does_not_capture_the_threshold(shared_data):
    """Black borders (huge optical density) must not become the Otsu foreground."""
    from conftest import load_monuseg

    (rgb, gt, mpp), = load_monuseg(1, crop=400)
    padded = np.zeros((600, 600, 3), np.uint8)
    padded[:400, :400] = rgb
    a = classical_instances(rgb, mpp).max()
    b = classical_instances(padded, mpp).max()
    assert b >= 0.8 * a > 0
