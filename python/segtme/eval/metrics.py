"""Nucleus segmentation and classification metrics, computed per image as the literature does.

Pure numpy/scipy functions; no I/O. All maps are 2-D integer arrays in the *same* pixel grid
(evaluate at the ground truth's resolution: predictions are mapped back to input pixels first).

* Instance maps: 0 = background, 1..N = one id per nucleus (ids need not be contiguous).
* ``dice``: binary foreground Dice (HoVer-Net ``get_dice_1``).
* ``aji`` / ``aji_plus``: Aggregated Jaccard Index (Kumar et al. 2017; HoVer-Net ``get_fast_aji``)
  and AJI+ with unique (Hungarian) pairing (HoVer-Net ``get_fast_aji_plus``).
* ``panoptic_quality``: PQ = DQ x SQ with IoU > 0.5 matching (Kirillov et al.; HoVer-Net
  ``get_fast_pq``): DQ = TP / (TP + FP/2 + FN/2), SQ = mean IoU of matched pairs.
* ``multiclass_pq``: PanNuke-style per-image per-class PQ, bPQ and mPQ (Gamper et al. 2020):
  a class whose ground truth is empty in an image is skipped (NaN) for that image.
* ``pair_centroids`` / ``detection_type_stats``: HoVer-Net's CoNSeP classification evaluation
  (``compute_stats.run_nuclei_type_stat``): centroids paired by the Hungarian algorithm within a
  radius, then F_d (detection) and per-class F_t with weights (2, 2, 1, 1).
  **Radius choice:** 12 px at 40x (HoVer-Net's value for CoNSeP/MoNuSeg at ~0.25 µm/px), i.e.
  ``DETECTION_RADIUS_UM = 3.0`` µm; at 20x (0.5 µm/px) that is 6 px. Use
  ``radius_px_for_mpp(mpp)`` to convert.
* ``per_class_mcc``: PAGET's measure, Matthews correlation per class computed per nucleus
  instance, one-vs-rest (see the function for how unmatched nuclei count).
* ``semantic_confusion`` / ``miou``: per-class IoU on class maps (dataset-level aggregation by
  summing the confusion matrices, as semantic-segmentation benchmarks do).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

#: HoVer-Net pairs centroids within 12 px at 40x (~0.25 µm/px) = 3 µm.
DETECTION_RADIUS_UM = 3.0
#: HoVer-Net's F_t weights for (fp_dt, fn_dt, fp_d, fn_d).
TYPE_F1_WEIGHTS = (2.0, 2.0, 1.0, 1.0)


def radius_px_for_mpp(mpp: float | None, radius_um: float = DETECTION_RADIUS_UM) -> float:
    """Centroid-matching radius in pixels of an image at ``mpp`` µm/px (12 px at 0.25 µm/px).
    ``mpp=None`` assumes 40x (0.25 µm/px)."""
    return float(radius_um / (mpp if mpp else 0.25))


# ----------------------------------------------------------------------------- overlaps
@dataclass
class Overlaps:
    """Pairwise overlaps between the instances of two maps (sparse: only touching pairs).

    true_ids / pred_ids: (N,), (M,) instance ids present (sorted).
    true_area / pred_area: (N,), (M,) pixel counts.
    inter: (N, M) pixel intersections (dense; N, M are nucleus counts, ~10^3 per image).
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    true_area: np.ndarray
    pred_area: np.ndarray
    inter: np.ndarray

    @property
    def union(self) -> np.ndarray:
        return self.true_area[:, None] + self.pred_area[None, :] - self.inter

    @property
    def iou(self) -> np.ndarray:
        u = self.union
        return np.divide(self.inter, u, out=np.zeros(self.inter.shape, np.float64), where=u > 0)


def _check_pair(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    true = np.asarray(true)
    pred = np.asarray(pred)
    if true.shape != pred.shape:
        raise ValueError(f"ground truth {true.shape} and prediction {pred.shape} differ in shape")
    if true.ndim != 2:
        raise ValueError(f"instance maps must be 2-D, got shape {true.shape}")
    if (true.size and true.min() < 0) or (pred.size and pred.min() < 0):
        raise ValueError("instance maps must be non-negative (0 = background)")
    return true.astype(np.int64, copy=False), pred.astype(np.int64, copy=False)


def overlaps(true: np.ndarray, pred: np.ndarray) -> Overlaps:
    """Intersections and areas of every (true, pred) instance pair."""
    true, pred = _check_pair(true, pred)
    t_ids, t_inv = np.unique(true, return_inverse=True)
    p_ids, p_inv = np.unique(pred, return_inverse=True)
    t_inv = t_inv.reshape(-1)
    p_inv = p_inv.reshape(-1)
    t_area = np.bincount(t_inv, minlength=len(t_ids))
    p_area = np.bincount(p_inv, minlength=len(p_ids))
    # drop background (id 0) if present: it is always first after np.unique
    t0 = 1 if len(t_ids) and t_ids[0] == 0 else 0
    p0 = 1 if len(p_ids) and p_ids[0] == 0 else 0
    nt, npr = len(t_ids) - t0, len(p_ids) - p0
    inter = np.zeros((nt, npr), np.int64)
    both = (t_inv >= t0) & (p_inv >= p0)
    if both.any() and nt and npr:
        key = (t_inv[both] - t0) * npr + (p_inv[both] - p0)
        inter = np.bincount(key, minlength=nt * npr).reshape(nt, npr)
    return Overlaps(t_ids[t0:], p_ids[p0:], t_area[t0:], p_area[p0:], inter)


# ----------------------------------------------------------------------------- Dice, AJI
def dice(true: np.ndarray, pred: np.ndarray) -> float:
    """Binary Dice of the foregrounds (instance ids ignored): 2|T∩P| / (|T| + |P|).
    Both empty -> NaN."""
    true, pred = _check_pair(true, pred)
    t, p = true > 0, pred > 0
    denom = int(t.sum()) + int(p.sum())
    if denom == 0:
        return math.nan
    return 2.0 * int((t & p).sum()) / denom


def aji(true: np.ndarray, pred: np.ndarray, ov: Overlaps | None = None) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017), as HoVer-Net's ``get_fast_aji``.

    Each true nucleus is paired with the prediction of highest IoU (a prediction may be used by
    several true nuclei); AJI = Σ|T∩P| / (Σ|T∪P| + Σ area of true nuclei without overlap +
    Σ area of never-used predictions). Both maps empty -> NaN.
    """
    ov = ov or overlaps(true, pred)
    nt, npr = ov.inter.shape
    if nt == 0 and npr == 0:
        return math.nan
    inter_sum = 0
    union_sum = 0
    used = np.zeros(npr, bool)
    if nt and npr:
        iou = ov.iou
        best = iou.argmax(axis=1)
        best_iou = iou[np.arange(nt), best]
        hit = best_iou > 0
        rows, cols = np.nonzero(hit)[0], best[hit]
        inter_sum += int(ov.inter[rows, cols].sum())
        union_sum += int(ov.union[rows, cols].sum())
        used[cols] = True
        union_sum += int(ov.true_area[~hit].sum())
    else:
        union_sum += int(ov.true_area.sum())
    union_sum += int(ov.pred_area[~used].sum())
    return inter_sum / union_sum if union_sum else math.nan


def aji_plus(true: np.ndarray, pred: np.ndarray, ov: Overlaps | None = None) -> float:
    """AJI+ (Graham et al. 2019): like AJI but pairs are unique (Hungarian on IoU), so no
    prediction is counted twice. Both maps empty -> NaN."""
    ov = ov or overlaps(true, pred)
    nt, npr = ov.inter.shape
    if nt == 0 and npr == 0:
        return math.nan
    inter_sum = union_sum = 0
    t_used = np.zeros(nt, bool)
    p_used = np.zeros(npr, bool)
    if nt and npr:
        iou = ov.iou
        r, c = linear_sum_assignment(-iou)
        keep = iou[r, c] > 0
        r, c = r[keep], c[keep]
        inter_sum += int(ov.inter[r, c].sum())
        union_sum += int(ov.union[r, c].sum())
        t_used[r] = True
        p_used[c] = True
    union_sum += int(ov.true_area[~t_used].sum()) + int(ov.pred_area[~p_used].sum())
    return inter_sum / union_sum if union_sum else math.nan


# ----------------------------------------------------------------------------- PQ
@dataclass
class PQResult:
    """Panoptic quality of one image (or one class in one image).

    dq, sq, pq: detection quality, segmentation quality, PQ = DQ x SQ (NaN when both maps empty).
    tp, fp, fn: matched pairs, unmatched predictions, unmatched true nuclei.
    iou_sum: sum of IoUs of matched pairs (lets callers aggregate SQ over images).
    paired_true / paired_pred: instance ids of matched pairs.
    """

    dq: float
    sq: float
    pq: float
    tp: int
    fp: int
    fn: int
    iou_sum: float
    paired_true: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))
    paired_pred: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))


def match_instances(ov: Overlaps, match_iou: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rows into true, cols into pred) of matched pairs.

    ``match_iou >= 0.5``: pairs with IoU > match_iou (unique by construction).
    ``match_iou < 0.5``: Hungarian assignment maximising total IoU, then IoU > match_iou
    (HoVer-Net ``get_fast_pq``)."""
    nt, npr = ov.inter.shape
    if nt == 0 or npr == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    iou = ov.iou
    if match_iou >= 0.5:
        r, c = np.nonzero(iou > match_iou)
        return r, c
    r, c = linear_sum_assignment(-iou)
    keep = iou[r, c] > match_iou
    return r[keep], c[keep]


def panoptic_quality(true: np.ndarray, pred: np.ndarray, match_iou: float = 0.5, ov: Overlaps | None = None) -> PQResult:
    """PQ, DQ, SQ of one image (HoVer-Net ``get_fast_pq`` semantics).

    DQ = TP / (TP + FP/2 + FN/2); SQ = Σ IoU(matched) / TP (0 when TP = 0); PQ = DQ x SQ.
    Both maps empty -> NaN for dq, sq and pq (nothing to measure)."""
    ov = ov or overlaps(true, pred)
    r, c = match_instances(ov, match_iou)
    tp = len(r)
    fp = ov.inter.shape[1] - tp
    fn = ov.inter.shape[0] - tp
    iou_sum = float(ov.iou[r, c].sum()) if tp else 0.0
    denom = tp + 0.5 * fp + 0.5 * fn
    if denom == 0:
        return PQResult(math.nan, math.nan, math.nan, 0, 0, 0, 0.0)
    dq = tp / denom
    sq = iou_sum / tp if tp else 0.0
    return PQResult(dq, sq, dq * sq, tp, fp, fn, iou_sum, ov.true_ids[r], ov.pred_ids[c])


# ----------------------------------------------------------------------------- classes
def class_of_instances(inst: np.ndarray, type_map: np.ndarray) -> dict[int, int]:
    """Per-instance class by majority vote of a pixel type map (ties -> smallest class id;
    background pixels of the type map are ignored unless the whole nucleus is 0)."""
    inst = np.asarray(inst).astype(np.int64, copy=False)
    tm = np.asarray(type_map).astype(np.int64, copy=False)
    fg = inst > 0
    if not fg.any():
        return {}
    ids, inv = np.unique(inst[fg], return_inverse=True)
    nc = int(tm.max()) + 1
    counts = np.bincount(inv * nc + tm[fg], minlength=len(ids) * nc).reshape(len(ids), nc)
    counts_nb = counts.copy()
    counts_nb[:, 0] = 0
    cls = np.where(counts_nb.sum(1) > 0, counts_nb.argmax(1), 0)
    return {int(i): int(c) for i, c in zip(ids, cls)}


def _class_inst_map(inst: np.ndarray, classes: Mapping[int, int], c: int) -> np.ndarray:
    ids = np.array([i for i, k in classes.items() if k == c], np.int64)
    if len(ids) == 0:
        return np.zeros(inst.shape, np.int64)
    return np.where(np.isin(inst, ids), inst, 0)


def multiclass_pq(
    true_inst: np.ndarray,
    true_cls: Mapping[int, int],
    pred_inst: np.ndarray,
    pred_cls: Mapping[int, int],
    class_ids: Sequence[int],
    match_iou: float = 0.5,
) -> dict[str, float]:
    """PanNuke-style PQ of one image: ``bPQ`` (class-agnostic), ``PQ_<c>`` per class and ``mPQ``.

    true_cls / pred_cls: instance id -> class id (1..). A class whose ground truth is empty in
    this image gets NaN (skipped, as PanNuke's ``compute_stats``) even if it was predicted; ``mPQ``
    is the NaN-mean over classes; bPQ is NaN when the ground truth is empty.
    """
    true_inst, pred_inst = _check_pair(true_inst, pred_inst)
    out: dict[str, float] = {}
    out["bPQ"] = panoptic_quality(true_inst, pred_inst, match_iou).pq if true_inst.any() else math.nan
    vals = []
    for c in class_ids:
        t = _class_inst_map(true_inst, true_cls, c)
        if not t.any():
            v = math.nan
        else:
            v = panoptic_quality(t, _class_inst_map(pred_inst, pred_cls, c), match_iou).pq
        out[f"PQ_{c}"] = v
        vals.append(v)
    finite = [v for v in vals if not math.isnan(v)]
    out["mPQ"] = float(np.mean(finite)) if finite else math.nan
    return out


# ----------------------------------------------------------------------------- centroids
def instance_centroids(inst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids (N,), centroids (N, 2) as (x, y) in pixel-index coordinates) of an instance map."""
    inst = np.asarray(inst).astype(np.int64, copy=False)
    fg = inst > 0
    if not fg.any():
        return np.zeros(0, np.int64), np.zeros((0, 2))
    ys, xs = np.nonzero(fg)
    ids, inv = np.unique(inst[fg], return_inverse=True)
    n = np.bincount(inv)
    cx = np.bincount(inv, weights=xs) / n
    cy = np.bincount(inv, weights=ys) / n
    return ids, np.stack([cx, cy], 1)


def pair_centroids(true_xy: np.ndarray, pred_xy: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """HoVer-Net ``pair_coordinates``: Hungarian assignment on Euclidean distance, keeping pairs
    with distance <= radius (pixels). Returns (paired_true_idx, paired_pred_idx,
    unpaired_true_idx, unpaired_pred_idx)."""
    true_xy = np.asarray(true_xy, np.float64).reshape(-1, 2)
    pred_xy = np.asarray(pred_xy, np.float64).reshape(-1, 2)
    nt, npr = len(true_xy), len(pred_xy)
    if nt == 0 or npr == 0:
        z = np.zeros(0, np.int64)
        return z, z.copy(), np.arange(nt), np.arange(npr)
    from scipy.spatial.distance import cdist

    d = cdist(true_xy, pred_xy)
    r, c = linear_sum_assignment(d)
    keep = d[r, c] <= radius
    r, c = r[keep], c[keep]
    ut = np.setdiff1d(np.arange(nt), r)
    up = np.setdiff1d(np.arange(npr), c)
    return r, c, ut, up


@dataclass
class TypeMatch:
    """Centroid matching of one image with classes (the inputs of HoVer-Net's type statistics).

    paired_true / paired_pred: classes of matched pairs; unpaired_true / unpaired_pred: classes
    of unmatched true nuclei / predictions.
    """

    paired_true: np.ndarray
    paired_pred: np.ndarray
    unpaired_true: np.ndarray
    unpaired_pred: np.ndarray

    @staticmethod
    def concat(items: Iterable["TypeMatch"]) -> "TypeMatch":
        items = list(items)
        cat = lambda name: np.concatenate([getattr(i, name) for i in items]) if items else np.zeros(0, np.int64)  # noqa: E731
        return TypeMatch(cat("paired_true"), cat("paired_pred"), cat("unpaired_true"), cat("unpaired_pred"))


def match_types(
    true_xy: np.ndarray, true_cls: np.ndarray, pred_xy: np.ndarray, pred_cls: np.ndarray, radius: float
) -> TypeMatch:
    """Pair centroids within ``radius`` px and collect the classes on each side."""
    true_cls = np.asarray(true_cls, np.int64).reshape(-1)
    pred_cls = np.asarray(pred_cls, np.int64).reshape(-1)
    r, c, ut, up = pair_centroids(true_xy, pred_xy, radius)
    return TypeMatch(true_cls[r], pred_cls[c], true_cls[ut], pred_cls[up])


def detection_type_stats(m: TypeMatch, class_ids: Sequence[int], weights: Sequence[float] = TYPE_F1_WEIGHTS) -> dict[str, float]:
    """HoVer-Net's ``run_nuclei_type_stat`` on pooled matches (pool over images with
    ``TypeMatch.concat`` first, as HoVer-Net does).

    F_d = 2 TP_d / (2 TP_d + FP_d + FN_d) (detection); acc = fraction of matched pairs with the
    right class; per class t: F_t = 2 (TP_t + TN_t) / (2 (TP_t + TN_t) + w0 FP_t + w1 FN_t +
    w2 FP_d,t + w3 FN_d,t), where TP/TN/FP/FN_t count matched pairs involving class t and
    FP_d,t / FN_d,t unmatched predictions / true nuclei of class t (TN_t is 0 by construction).
    Returns keys ``F_d``, ``acc``, ``F_<c>``, plus counts ``tp_d``, ``fp_d``, ``fn_d``.
    """
    tp_d = len(m.paired_true)
    fp_d = len(m.unpaired_pred)
    fn_d = len(m.unpaired_true)
    out: dict[str, float] = {"tp_d": float(tp_d), "fp_d": float(fp_d), "fn_d": float(fn_d)}
    denom = 2 * tp_d + fp_d + fn_d
    out["F_d"] = 2 * tp_d / denom if denom else math.nan
    out["acc"] = float((m.paired_true == m.paired_pred).mean()) if tp_d else math.nan
    w = list(weights)
    for t in class_ids:
        sel = (m.paired_true == t) | (m.paired_pred == t)
        pt, pp = m.paired_true[sel], m.paired_pred[sel]
        tp_t = int(((pt == t) & (pp == t)).sum())
        tn_t = int(((pt != t) & (pp != t)).sum())
        fp_t = int(((pt != t) & (pp == t)).sum())
        fn_t = int(((pt == t) & (pp != t)).sum())
        fpd_t = int((m.unpaired_pred == t).sum())
        fnd_t = int((m.unpaired_true == t).sum())
        num = 2 * (tp_t + tn_t)
        den = num + w[0] * fp_t + w[1] * fn_t + w[2] * fpd_t + w[3] * fnd_t
        out[f"F_{t}"] = num / den if den else math.nan
    return out


def per_class_mcc(m: TypeMatch, class_ids: Sequence[int]) -> dict[str, float]:
    """PAGET's nucleus measure: Matthews correlation per class, one-vs-rest, per nucleus instance.

    The instances are the union of matched pairs (true class vs predicted class), true nuclei
    that were missed (predicted class 0 = none) and predictions without a true nucleus (true
    class 0). For class t: y_true = (true == t), y_pred = (pred == t), MCC = (TP·TN − FP·FN) /
    sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)); 0 when a marginal is empty (sklearn's convention), NaN
    when there are no instances. Returns ``MCC_<c>``.
    """
    yt = np.concatenate([m.paired_true, m.unpaired_true, np.zeros(len(m.unpaired_pred), np.int64)])
    yp = np.concatenate([m.paired_pred, np.zeros(len(m.unpaired_true), np.int64), m.unpaired_pred])
    out: dict[str, float] = {}
    for t in class_ids:
        if len(yt) == 0:
            out[f"MCC_{t}"] = math.nan
            continue
        a, b = yt == t, yp == t
        tp = float((a & b).sum())
        tn = float((~a & ~b).sum())
        fp = float((~a & b).sum())
        fn = float((a & ~b).sum())
        den = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        out[f"MCC_{t}"] = (tp * tn - fp * fn) / den if den > 0 else 0.0
    return out


# ----------------------------------------------------------------------------- semantic
def semantic_confusion(true_sem: np.ndarray, pred_sem: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) pixel confusion matrix, rows = truth, cols = prediction.
    Class maps hold 0 (background) .. num_classes-1. Sum matrices over images to aggregate."""
    t, p = _check_pair(true_sem, pred_sem)
    if t.max(initial=0) >= num_classes or p.max(initial=0) >= num_classes:
        raise ValueError(f"class map values must be < num_classes={num_classes}")
    return np.bincount((t * num_classes + p).ravel(), minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def miou(conf: np.ndarray, include_background: bool = False) -> dict[str, float]:
    """Per-class IoU = TP / (TP + FP + FN) from a confusion matrix, and ``mIoU`` (mean over
    classes present in truth or prediction; background excluded unless asked). Keys ``IoU_<c>``."""
    conf = np.asarray(conf, np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    out: dict[str, float] = {}
    vals = []
    for c in range(conf.shape[0]):
        if c == 0 and not include_background:
            continue
        v = tp[c] / union[c] if union[c] > 0 else math.nan
        out[f"IoU_{c}"] = v
        if not math.isnan(v):
            vals.append(v)
    out["mIoU"] = float(np.mean(vals)) if vals else math.nan
    return out


def inst_to_semantic(inst: np.ndarray, classes: Mapping[int, int]) -> np.ndarray:
    """Paint each instance with its class id (0 = background); instances without a class -> 0."""
    inst = np.asarray(inst).astype(np.int64, copy=False)
    if not classes:
        return np.zeros(inst.shape, np.int64)
    lut = np.zeros(int(max(max(classes), inst.max(initial=0))) + 1, np.int64)
    for i, c in classes.items():
        lut[int(i)] = int(c)
    return lut[inst]


# ----------------------------------------------------------------------------- one image
@dataclass
class InstanceMetrics:
    """Class-agnostic metrics of one image."""

    dice: float
    aji: float
    aji_plus: float
    pq: float
    dq: float
    sq: float
    tp: int
    fp: int
    fn: int
    n_true: int
    n_pred: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def instance_metrics(true: np.ndarray, pred: np.ndarray, match_iou: float = 0.5) -> InstanceMetrics:
    """Dice, AJI, AJI+, PQ/DQ/SQ of one image (one overlap computation shared by all)."""
    ov = overlaps(true, pred)
    pq = panoptic_quality(true, pred, match_iou, ov=ov)
    return InstanceMetrics(
        dice=dice(true, pred),
        aji=aji(true, pred, ov=ov),
        aji_plus=aji_plus(true, pred, ov=ov),
        pq=pq.pq,
        dq=pq.dq,
        sq=pq.sq,
        tp=pq.tp,
        fp=pq.fp,
        fn=pq.fn,
        n_true=len(ov.true_ids),
        n_pred=len(ov.pred_ids),
    )


def nanmean(values: Iterable[float]) -> float:
    """Mean ignoring NaN (NaN if nothing finite): how per-image metrics are averaged."""
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    return float(np.mean(v)) if v else math.nan
