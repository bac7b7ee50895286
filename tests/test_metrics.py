"""Metrics against hand-computed examples (every expected value is worked out in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from segtme.eval import metrics as M


def _example():
    """10x10 grid. T1: rows 0-3 x cols 0-3 (16 px); T2: rows 6-7 x cols 6-7 (4 px).
    P1: rows 0-3 x cols 0-2 (12 px, inside T1: IoU 12/16 = 0.75);
    P2: rows 6-7 x cols 7-8 (4 px, overlaps T2 in 2 px: IoU 2/6);
    P3: row 9 x cols 0-1 (2 px, false positive). Ids deliberately non-contiguous."""
    t = np.zeros((10, 10), np.int32)
    t[0:4, 0:4] = 5
    t[6:8, 6:8] = 9
    p = np.zeros((10, 10), np.int32)
    p[0:4, 0:3] = 2
    p[6:8, 7:9] = 7
    p[9, 0:2] = 11
    return t, p


def test_pq_dq_sq_hand_computed():
    t, p = _example()
    r = M.panoptic_quality(t, p)
    # only (T1, P1) has IoU > 0.5: TP 1, FP 2 (P2, P3), FN 1 (T2)
    assert (r.tp, r.fp, r.fn) == (1, 2, 1)
    assert r.dq == pytest.approx(1 / (1 + 1 + 0.5))  # 0.4
    assert r.sq == pytest.approx(0.75)
    assert r.pq == pytest.approx(0.3)
    assert list(r.paired_true) == [5] and list(r.paired_pred) == [2]


def test_pq_low_threshold_uses_hungarian():
    t, p = _example()
    r = M.panoptic_quality(t, p, match_iou=0.3)
    # (T2, P2) IoU 1/3 > 0.3 now matches: TP 2, FP 1, FN 0; SQ = (0.75 + 1/3) / 2
    assert (r.tp, r.fp, r.fn) == (2, 1, 0)
    assert r.dq == pytest.approx(2 / 2.5)
    assert r.sq == pytest.approx((0.75 + 1 / 3) / 2)


def test_dice_aji_hand_computed():
    t, p = _example()
    # foreground: |T| = 20, |P| = 18, |T∩P| = 12 + 2 = 14
    assert M.dice(t, p) == pytest.approx(28 / 38)
    # AJI: T1->P1 (12 / 16), T2->P2 (2 / 6), P3 unused adds its 2 px: 14 / 24
    assert M.aji(t, p) == pytest.approx(14 / 24)
    assert M.aji_plus(t, p) == pytest.approx(14 / 24)


def test_aji_vs_aji_plus_on_a_merge():
    # one prediction covering two true nuclei of 4 px each
    t = np.zeros((2, 4), np.int32)
    t[:, 0:2] = 1
    t[:, 2:4] = 2
    p = np.zeros((2, 4), np.int32)
    p[:, :] = 1
    # AJI reuses the prediction: (4 + 4) / (8 + 8) = 0.5
    assert M.aji(t, p) == pytest.approx(0.5)
    # AJI+ pairs uniquely: 4 / (8 + 4 unpaired true) = 1/3
    assert M.aji_plus(t, p) == pytest.approx(1 / 3)
    r = M.panoptic_quality(t, p)  # IoU 0.5 is not > 0.5
    assert (r.tp, r.fp, r.fn, r.pq) == (0, 1, 2, 0.0)


def test_perfect_and_empty():
    t, _ = _example()
    m = M.instance_metrics(t, t)
    assert (m.dice, m.aji, m.pq, m.dq, m.sq) == (1.0, 1.0, 1.0, 1.0, 1.0)
    z = np.zeros_like(t)
    e = M.instance_metrics(z, z)
    assert all(math.isnan(v) for v in (e.dice, e.aji, e.pq))
    miss = M.instance_metrics(t, z)
    assert (miss.dice, miss.aji, miss.pq, miss.fn) == (0.0, 0.0, 0.0, 2)
    with pytest.raises(ValueError):
        M.instance_metrics(t, t[:5])


def test_multiclass_pq_pannuke_convention():
    t, p = _example()
    tc = {5: 1, 9: 2}
    pc = {2: 1, 7: 2, 11: 1}
    r = M.multiclass_pq(t, tc, p, pc, class_ids=[1, 2, 3])
    # class 1: true {T1}, pred {P1, P3}: TP 1, FP 1 -> DQ 2/3, SQ 0.75 -> 0.5
    assert r["PQ_1"] == pytest.approx(0.5)
    # class 2: IoU 1/3 -> TP 0, FP 1, FN 1 -> 0
    assert r["PQ_2"] == pytest.approx(0.0)
    # class 3 has no ground truth in this image -> skipped (NaN)
    assert math.isnan(r["PQ_3"])
    assert r["mPQ"] == pytest.approx(0.25)
    assert r["bPQ"] == pytest.approx(0.3)


def test_detection_type_stats_and_mcc_hand_computed():
    true_xy = np.array([[0, 0], [10, 0], [20, 0], [100, 100]], float)
    true_c = np.array([1, 2, 3, 1])
    pred_xy = np.array([[1, 0], [10, 1], [20, 2], [50, 50]], float)
    pred_c = np.array([1, 1, 3, 2])
    m = M.match_types(true_xy, true_c, pred_xy, pred_c, radius=3.0)
    # pairs: (1,1), (2,1), (3,3); missed true class 1; spurious pred class 2
    assert list(m.paired_true) == [1, 2, 3] and list(m.paired_pred) == [1, 1, 3]
    s = M.detection_type_stats(m, [1, 2, 3])
    assert s["F_d"] == pytest.approx(6 / 8)
    assert s["acc"] == pytest.approx(2 / 3)
    # class 1: TP 1, FP_t 1 (true 2 -> pred 1), FN_d 1: 2 / (2 + 2*1 + 1) = 0.4
    assert s["F_1"] == pytest.approx(0.4)
    # class 2: FN_t 1 (weight 2), FP_d 1: 0 / 3 = 0
    assert s["F_2"] == pytest.approx(0.0)
    assert s["F_3"] == pytest.approx(1.0)
    mcc = M.per_class_mcc(m, [1, 2, 3])
    # instances (true, pred): (1,1) (2,1) (3,3) (1,0) (0,2)
    # class 1: TP 1, FP 1, FN 1, TN 2 -> (2 - 1) / sqrt(2*2*3*3) = 1/6
    assert mcc["MCC_1"] == pytest.approx(1 / 6)
    # class 2: TP 0, FP 1, FN 1, TN 3 -> -1 / sqrt(1*1*4*4) = -1/4
    assert mcc["MCC_2"] == pytest.approx(-0.25)
    assert mcc["MCC_3"] == pytest.approx(1.0)


def test_pair_centroids_radius_and_pooling():
    # the nearest pair is 4 px apart: outside 3 px, inside 12 px
    r, c, ut, up = M.pair_centroids([[0, 0]], [[4, 0]], radius=3.0)
    assert len(r) == 0 and list(ut) == [0] and list(up) == [0]
    r, c, ut, up = M.pair_centroids([[0, 0]], [[4, 0]], radius=12.0)
    assert list(r) == [0] and list(c) == [0]
    assert M.radius_px_for_mpp(0.25) == pytest.approx(12.0)
    assert M.radius_px_for_mpp(0.5) == pytest.approx(6.0)
    a = M.match_types([[0, 0]], [1], [[0, 0]], [1], 3.0)
    b = M.match_types([[0, 0]], [2], [], [], 3.0)
    pooled = M.detection_type_stats(M.TypeMatch.concat([a, b]), [1, 2])
    assert pooled["F_d"] == pytest.approx(2 / 3)


def test_semantic_miou_hand_computed():
    t = np.array([[1, 1], [2, 0]])
    p = np.array([[1, 2], [2, 2]])
    conf = M.semantic_confusion(t, p, 3)
    r = M.miou(conf)
    assert r["IoU_1"] == pytest.approx(1 / 2)  # TP 1, FN 1
    assert r["IoU_2"] == pytest.approx(1 / 3)  # TP 1, FP 2
    assert r["mIoU"] == pytest.approx((1 / 2 + 1 / 3) / 2)


def test_class_of_instances_and_centroids():
    inst = np.array([[1, 1, 0], [2, 2, 2]])
    tmap = np.array([[3, 0, 0], [4, 4, 2]])
    assert M.class_of_instances(inst, tmap) == {1: 3, 2: 4}
    ids, xy = M.instance_centroids(inst)
    assert list(ids) == [1, 2]
    np.testing.assert_allclose(xy, [[0.5, 0.0], [1.0, 1.0]])
    sem = M.inst_to_semantic(inst, {1: 3, 2: 4})
    np.testing.assert_array_equal(sem, [[3, 3, 0], [4, 4, 4]])


def test_matches_reference_on_real_labels(shared_data):
    """A real MoNuSeg label map against a shifted copy of itself: PQ is symmetric, AJI <= 1, and
    the match counts add up."""
    from conftest import load_monuseg

    (_, inst, _), = load_monuseg(1, crop=300)
    shifted = np.zeros_like(inst)
    shifted[:, 2:] = inst[:, :-2]
    a = M.instance_metrics(inst, shifted)
    b = M.instance_metrics(shifted, inst)
    assert a.pq == pytest.approx(b.pq) and a.dice == pytest.approx(b.dice)
    assert 0 < a.aji < 1 and 0 < a.pq < 1
    assert a.tp + a.fn == a.n_true and a.tp + a.fp == a.n_pred


# ----------------------------------------------------------------------------- independent cross-checks
def _real_pairs(shared_data):
    """(name, ground truth, prediction) on real label maps: MoNuSeg and CoNSeP crops against the
    classical baseline's real prediction and against edited copies of the ground truth (nuclei
    dropped, shifted, merged with a neighbour, split in two)."""
    from PIL import Image

    from segtme.eval.evaluate import predict_instances
    from segtme.models import load_model

    classical = load_model("classical", "cpu")
    out = []
    for ds, stem, mpp in (("monuseg-train", "TCGA-21-5786-01Z-00-DX1", 0.25), ("consep-train", "train_1", 0.25)):
        rgb = np.asarray(Image.open(shared_data / ds / "images" / f"{stem}.png").convert("RGB"))[:320, :320]
        gt = np.asarray(Image.open(shared_data / ds / "labels" / f"{stem}_inst.png")).astype(np.int32)[:320, :320]
        out.append((f"{ds}/classical", gt, predict_instances(classical, np.ascontiguousarray(rgb), mpp).inst))
        rng = np.random.default_rng(1)
        ids = np.unique(gt[gt > 0])
        edit = gt.copy()
        edit[np.isin(edit, rng.choice(ids, len(ids) // 8, replace=False))] = 0  # dropped
        shifted = np.zeros_like(edit)
        shifted[2:, 3:] = edit[:-2, :-3]
        merged = shifted.copy()
        for a in rng.choice(ids, len(ids) // 10, replace=False):  # merge with the next id
            merged[merged == a + 1] = a
        split = merged.copy()
        for a in rng.choice(ids, len(ids) // 10, replace=False):  # split: right half gets a new id
            ys, xs = np.nonzero(split == a)
            if xs.size:
                right = xs > np.median(xs)
                split[ys[right], xs[right]] = split.max() + 1
        out.append((f"{ds}/edited", gt, split))
    return out


def test_pq_matches_torchmetrics_on_real_labels(shared_data):
    """eval/metrics.py's PQ against torchmetrics' PanopticQuality (an independent implementation,
    Kirillov et al. 2019) on real label maps: one 'thing' class (nucleus), background as stuff."""
    import torch
    from torchmetrics.detection import PanopticQuality

    for name, gt, pred in _real_pairs(shared_data):
        tm = PanopticQuality(things={1}, stuffs={0}, return_per_class=True)

        def enc(a):
            return torch.from_numpy(np.stack([(a > 0).astype(np.int64), a.astype(np.int64)], -1)[None])

        want = float(tm(enc(pred), enc(gt))[0, 0])  # per-class result, the thing class first
        got = M.panoptic_quality(gt, pred).pq
        assert 0.1 < got < 0.99, name  # a real, imperfect prediction
        assert got == pytest.approx(want, abs=1e-6), name  # torchmetrics sums IoUs in float32


def _aji_from_definition(gt, pred):
    """AJI as Kumar et al. 2017 define it (Algorithm 1), with plain loops over nuclei: each ground
    truth nucleus takes the prediction of largest IoU (predictions may repeat); unused
    predictions join the union."""
    C = U = 0
    used = set()
    p_ids = [int(i) for i in np.unique(pred) if i]
    for g in [int(i) for i in np.unique(gt) if i]:
        gm = gt == g
        best, best_iou, bi, bu = None, 0.0, 0, int(gm.sum())
        for p in np.unique(pred[gm]):
            if p == 0:
                continue
            pm = pred == p
            i, u = int((gm & pm).sum()), int((gm | pm).sum())
            if i / u > best_iou:
                best, best_iou, bi, bu = int(p), i / u, i, u
        C += bi
        U += bu
        if best is not None:
            used.add(best)
    U += sum(int((pred == p).sum()) for p in p_ids if p not in used)
    return C / U


def test_aji_and_dice_match_the_definition_on_real_labels(shared_data):
    for name, gt, pred in _real_pairs(shared_data):
        assert M.aji(gt, pred) == pytest.approx(_aji_from_definition(gt, pred), abs=1e-12), name
        t, p = gt > 0, pred > 0
        assert M.dice(gt, pred) == pytest.approx(2 * (t & p).sum() / (t.sum() + p.sum())), name
