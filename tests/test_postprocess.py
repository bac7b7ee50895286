"""HV targets -> HV-watershed post-processing -> nuclei table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from segtme.inference.nuclei import build_nuclei_table, hematoxylin_od
from segtme.inference.postprocess import PostprocessParams, classify_instances, hv_watershed, relabel_sequential
from segtme.taxonomy import PANNUKE6
from segtme.train.targets import hv_targets_dynamic, hv_targets_from_instances


def _pq(gt: np.ndarray, pr: np.ndarray) -> float:
    """Minimal PQ (IoU > 0.5 matching) so this test does not depend on segtme.eval."""
    g = np.unique(gt)[1:]
    p = np.unique(pr)[1:]
    m = (gt > 0) & (pr > 0)
    pairs, inter = np.unique(np.stack([gt[m], pr[m]]), axis=1, return_counts=True)
    ga, pa = np.bincount(gt.ravel()), np.bincount(pr.ravel())
    iou = inter / (ga[pairs[0]] + pa[pairs[1]] - inter)
    ok = iou > 0.5
    tp = int(ok.sum())
    if tp == 0:
        return 0.0
    return tp / (tp + 0.5 * (len(p) - tp) + 0.5 * (len(g) - tp)) * float(iou[ok].mean())


def test_hv_targets_from_instances_hand_made():
    inst = np.zeros((7, 9), np.int32)
    inst[1:4, 1:6] = 1  # 3 x 5 box, centroid (y=2, x=3)
    inst[5, 7] = 2      # single pixel
    hv = hv_targets_from_instances(inst)
    # x offsets -2..2 normalised by 2 on each side; y offsets -1..1 by 1
    np.testing.assert_allclose(hv[0, 2, 1:6], [-1, -0.5, 0, 0.5, 1])
    np.testing.assert_allclose(hv[1, 1:4, 3], [-1, 0, 1])
    assert hv[:, 5, 7].tolist() == [0, 0]  # single pixel: zero offset
    assert np.all(hv[:, inst == 0] == 0)


def test_hv_targets_dynamic_paper_formula():
    sem = np.zeros((5, 31), np.uint8)
    sem[2, :] = 3  # one 31-px long component, centroid x = 15
    hv = hv_targets_dynamic(sem)
    xs = np.arange(31)
    np.testing.assert_allclose(hv[0, 2], np.clip((xs - 15) / 10, -1, 1))
    assert np.all(hv[1, 2] == 0)
    assert np.all(hv[:, sem == 0] == 0)
    sem[2, 3] = 255  # ignore value is not foreground
    assert hv_targets_dynamic(sem)[0, 2, 3] == 0


def _monuseg_xml_labelled(shared_data, k):
    root = shared_data / "monuseg-train"
    items = [it for it in json.loads((root / "index.json").read_text()) if it["label_source"].startswith("rasterised")]
    return [np.asarray(Image.open(root / it["label"])).astype(np.int32) for it in items[:k]]


@pytest.mark.data
def test_round_trip_instances_hv_watershed(shared_data):
    """Instance labels -> HoVer-Net HV targets -> HV watershed recovers the instances (PQ >= 0.95).

    Uses the MoNuSeg images whose labels were rasterised from the original XML polygons; the
    colour-mask-recovered ones contain anti-aliasing slivers (1-2 px 'nuclei' along colour
    boundaries, see ../shared/data/README.md) that no instance method can reproduce."""
    for inst in _monuseg_xml_labelled(shared_data, 5):
        hv = hv_targets_from_instances(inst)
        pred = hv_watershed((inst > 0).astype(np.float32), hv)
        assert _pq(inst, pred) >= 0.95


def test_hv_watershed_splits_touching_and_handles_empty():
    inst = np.zeros((40, 60), np.int32)
    yy, xx = np.mgrid[:40, :60]
    inst[(yy - 20) ** 2 + (xx - 20) ** 2 < 100] = 1
    inst[((yy - 20) ** 2 + (xx - 37) ** 2 < 100) & (inst == 0)] = 2  # touches nucleus 1
    pred = hv_watershed((inst > 0).astype(np.float32), hv_targets_from_instances(inst))
    assert pred.max() == 2 and _pq(inst, pred) > 0.9
    assert hv_watershed(np.zeros((10, 10)), np.zeros((2, 10, 10))).max() == 0
    with pytest.raises(ValueError):
        hv_watershed(np.zeros((10, 10)), np.zeros((2, 9, 10)))
    with pytest.raises(ValueError, match="unknown post-processing"):
        PostprocessParams.from_mapping({"bogus": 1})


def test_classify_instances_majority_and_prob():
    inst = np.zeros((4, 6), np.int32)
    inst[:, :3] = 1
    inst[:, 3:] = 2
    prob = np.zeros((3, 4, 6), np.float32)
    prob[0] = 0.2
    prob[1, :, :3] = 0.7
    prob[2, :, :3] = 0.1
    prob[1, 0, :3] = 0.1
    prob[2, 0, :3] = 0.7  # 3 of 12 pixels vote class 2 in nucleus 1
    prob[2, :, 3:] = 0.8
    cls, cp = classify_instances(inst, prob)
    assert cls.tolist() == [1, 2]
    np.testing.assert_allclose(cp, [(9 * 0.7 + 3 * 0.1) / 12, 0.8], rtol=1e-6)


def test_build_nuclei_table_geometry_matches_regionprops():
    from skimage.measure import regionprops

    inst = np.zeros((30, 40), np.int32)
    yy, xx = np.mgrid[:30, :40]
    inst[((yy - 10) / 5) ** 2 + ((xx - 12) / 8) ** 2 < 1] = 7  # ellipse, non-sequential label
    inst[20:26, 28:34] = 3
    rgb = np.full((30, 40, 3), 230, np.uint8)
    rgb[inst > 0] = (90, 60, 140)  # haematoxylin-ish
    t = build_nuclei_table(inst, PANNUKE6, cls_map=np.where(inst == 7, 2, np.where(inst > 0, 1, 0)), rgb=rgb, mpp=0.5)
    assert len(t) == 2
    rp = regionprops(relabel_sequential(inst))
    order = np.argsort([r.label for r in rp])
    for i, r in zip(range(2), [rp[j] for j in order]):
        assert t.area_px[i] == r.area
        np.testing.assert_allclose(t.centroid[i], (r.centroid[1] + 0.5, r.centroid[0] + 0.5))
        np.testing.assert_allclose(t.major_axis_px[i], r.axis_major_length, rtol=1e-9)
        np.testing.assert_allclose(t.eccentricity[i], r.eccentricity, rtol=1e-9)
    # label 3 (square) sorts first -> class 1; label 7 (ellipse) -> class 2
    assert t.class_names == ["Neoplastic", "Inflammatory"]
    # the square's outline: 6x6 pixels in corner coordinates [28, 34) x [20, 26)
    sq = t.polygons[0]
    assert sq[:, 0].min() >= 28 and sq[:, 0].max() <= 34 and sq[:, 1].min() >= 20 and sq[:, 1].max() <= 26
    assert t.solidity[0] == pytest.approx(1.0)
    assert np.all(t.hematoxylin_od > 0.2)
    np.testing.assert_allclose(t.hematoxylin_od[0], hematoxylin_od(rgb)[inst == 3].mean(), rtol=1e-5)
    # records carry micrometre versions
    rec = t.to_records()[0]
    assert rec["area_um2"] == pytest.approx(36 * 0.25)
    # translated to input pixels (working 0.5 um/px -> input 0.25 um/px: scale 2, offset)
    u = t.translated(100, 200, scale=2.0)
    assert u.mpp == pytest.approx(0.25)
    np.testing.assert_allclose(u.centroid[0], t.centroid[0] * 2 + [100, 200])
    assert u.area_px[0] == 4 * t.area_px[0]


def test_build_nuclei_table_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        build_nuclei_table(np.zeros((4, 4, 3), np.int32), PANNUKE6)
    inst = np.zeros((4, 4), np.int32)
    inst[1, 1] = 1
    with pytest.raises(ValueError, match="outside taxonomy"):
        build_nuclei_table(inst, PANNUKE6, class_id=np.array([9]))
    assert len(build_nuclei_table(np.zeros((5, 5), np.int32), PANNUKE6)) == 0


def test_fill_holes_equals_scipy() -> None:
    from scipy import ndimage as ndi

    from segtme.inference.postprocess import fill_holes

    rng = np.random.default_rng(0)
    for shape, p in (((200, 300), 0.4), ((64, 64), 0.7), ((50, 1), 0.5), ((1, 1), 0.0)):
        m = ndi.binary_opening(rng.random(shape) > p) if min(shape) > 2 else rng.random(shape) > p
        assert np.array_equal(fill_holes(m), ndi.binary_fill_holes(m))
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False
    assert fill_holes(ring)[4, 4] and fill_holes(ring).sum() == ring.sum() + 1
    assert not fill_holes(np.zeros((5, 5), bool)).any() and fill_holes(np.ones((5, 5), bool)).all()


def test_relabel_sequential_equals_scikit_image():
    """The own relabel_sequential (kept for speed) gives exactly scikit-image's result."""
    from skimage.segmentation import relabel_sequential as sk_relabel

    rng = np.random.default_rng(0)
    lab = np.zeros((300, 280), np.int64)
    for i in rng.permutation(5000)[:400] + 7:
        y, x = rng.integers(0, 290, 2)
        lab[y : y + 5, x : x + 5] = i
    lab[0, :3] = -2  # negative ids are background
    ours = relabel_sequential(lab)
    ref = sk_relabel(np.where(lab > 0, lab, 0))[0]
    assert ours.dtype == np.int32 and np.array_equal(ours, ref) and ours.max() == len(np.unique(lab[lab > 0]))


def test_fast_steps_equal_the_scipy_and_two_pass_versions():
    """The fused / shifted steps of ``hv_watershed`` give exactly what they replace: the 4-cross
    opening = ``ndi.binary_opening(disk(1))``; the foreground mask = ``foreground_components > 0``;
    small-object removal + relabelling in one look-up = ``relabel_sequential(_remove_small(...))``;
    ``build_nuclei_table`` skips its relabelling only for maps already 1..N."""
    from scipy import ndimage as ndi
    from skimage.morphology import disk

    from segtme.inference import postprocess as pp
    from segtme.inference.nuclei import _is_sequential, _moved

    rng = np.random.default_rng(3)
    for k in range(6):
        m = ndi.gaussian_filter(rng.random((97, 131)), 1.5) > 0.5 - 0.02 * k
        m[0, :7] = m[:5, -1] = True  # objects touching the border
        assert np.array_equal(pp._open_cross(m), ndi.binary_opening(m, structure=disk(1)))
        prob = ndi.gaussian_filter(rng.random((97, 131)), 2.0)
        p = PostprocessParams(fg_threshold=float(np.quantile(prob, 0.6)), min_object_px=5 + 10 * k)
        assert np.array_equal(pp._foreground_mask(prob, p), pp.foreground_components(prob, p) > 0)
        inst, _ = ndi.label(m)
        inst = inst.astype(np.int32) * 3  # gaps in the ids
        for min_px in (1, 8, 40):
            want = relabel_sequential(pp._remove_small(inst.astype(np.int32), min_px))
            got = pp._drop_small_and_relabel(inst, min_px)
            assert got.dtype == np.int32 and np.array_equal(got, want)
    assert _is_sequential(relabel_sequential(inst)) and not _is_sequential(inst)
    assert not _is_sequential(relabel_sequential(inst).astype(np.int64))
    polys = [rng.normal(size=(int(rng.integers(0, 9)), 2)) for _ in range(50)]
    assert all(np.array_equal(a, p * 0.5 + np.array([3.0, -2.0])) for a, p in zip(_moved(polys, 0.5, 3.0, -2.0), polys))
    assert _moved([], 2.0, 0.0, 0.0) == []


def _touching_pair_maps(h: int = 96, w: int = 160, strong_x: int | None = None):
    """Foreground probability and HV maps of rows of touching disc pairs (synthetic, HoVer-Net's
    HV convention: h rises left -> right inside each nucleus, v top -> bottom, in [-1, 1])."""
    yy, xx = np.mgrid[0:h, 0:w]
    fg = np.zeros((h, w), np.float32)
    hv = np.zeros((2, h, w), np.float32)
    centres = [(cy, cx) for cy in range(16, h - 8, 32) for cx in range(14, w - 8, 22)]
    for i, (cy, cx) in enumerate(centres):
        r = 11.0 if strong_x is not None and cx > strong_x else 8.0  # bigger nuclei: steeper HV drops
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        fg[m] = 1.0
        hv[0][m] = (xx[m] - cx) / r
        hv[1][m] = (yy[m] - cy) / r
    return fg, hv


def test_fixed_edge_scale_makes_nuclei_independent_of_the_region():
    """edge_scale > 0: a crop gives the same edge values and the same interior nuclei as the
    whole map; the per-region default (HoVer-Net's min-max) does not when the crop leaves out the
    region's strongest boundaries."""
    from segtme.inference.postprocess import PostprocessParams, hv_edge_map, hv_watershed

    fg_p, hv = _touching_pair_maps(strong_x=100)
    fg = fg_p > 0.5
    crop = (slice(0, 96), slice(0, 90))  # leaves out the big nuclei (x > 100) and their steep drops
    inner = (slice(6, 90), slice(6, 84))
    fixed = hv_edge_map(hv, fg, 1.0, edge_scale=2.7)
    fixed_c = hv_edge_map(hv[(slice(None),) + crop], fg[crop], 1.0, edge_scale=2.7)
    np.testing.assert_allclose(fixed_c[inner], fixed[crop][inner], atol=1e-6)
    legacy = hv_edge_map(hv, fg, 1.0)
    legacy_c = hv_edge_map(hv[(slice(None),) + crop], fg[crop], 1.0)
    assert np.abs(legacy_c[inner] - legacy[crop][inner]).max() > 0.05  # region-dependent
    p = PostprocessParams(edge_threshold=0.15, edge_scale=2.7)
    whole = hv_watershed(fg_p, hv, p)
    part = hv_watershed(fg_p[crop], hv[(slice(None),) + crop], p)
    # the same partition of the crop's interior into nuclei (labels may be numbered differently)
    a, b = whole[crop][inner].ravel(), part[inner].ravel()
    pairs = set(zip(a.tolist(), b.tolist()))
    assert len({x for x, _ in pairs}) == len(pairs) == len({y for _, y in pairs}) > 6
    with pytest.raises(ValueError, match="edge_scale must be >= 0"):
        PostprocessParams(edge_scale=-1.0)
    assert PostprocessParams.from_mapping({"edge_scale": 2.7}).edge_scale == 2.7
