"""Measured, not assumed: the PAGET student against its teachers and against human labels.

* ``class_agreement(pred, label)``: per PAGET class, Dice between the student's map and the
  aggregated teacher labels (the student's training target) on held-out images; pixels the
  labels leave unresolved (255) are not scored.
* ``nucleus_type_match`` + ``eval.metrics.detection_type_stats``: HoVer-Net's type F1 (F_d,
  F_t; centroid pairing within ``radius_px_for_mpp``) of nuclei classified in CoNSeP-4 — the
  PAGET ids through ``PAGET13.eval_mappings["consep4"]`` — against CoNSeP's human labels.

Pure functions; ``scripts/eval_paget.py`` runs the models and writes the figures.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from . import taxonomy as pt


def class_agreement(pred: np.ndarray, label: np.ndarray, num_classes: int = 14, ignore: int = pt.IGNORE_INDEX
                    ) -> dict[int, dict[str, float]]:
    """{class id: {"dice", "label_px", "pred_px"}} over the pixels with a resolved label
    (``label != ignore``); dice is NaN when the class is in neither map. Same shape maps."""
    p = np.asarray(pred).ravel()
    t = np.asarray(label).ravel()
    if p.shape != t.shape:
        raise ValueError(f"class_agreement: shapes {np.shape(pred)} and {np.shape(label)} differ")
    keep = t != ignore
    p, t = p[keep].astype(np.int64), t[keep].astype(np.int64)
    conf = np.bincount(t * num_classes + np.clip(p, 0, num_classes - 1), minlength=num_classes**2)
    conf = conf.reshape(num_classes, num_classes)
    out = {}
    for c in range(num_classes):
        tp = float(conf[c, c])
        lab = float(conf[c].sum())
        prd = float(conf[:, c].sum())
        out[c] = {"dice": (2 * tp / (lab + prd)) if lab + prd else float("nan"), "label_px": lab, "pred_px": prd}
    return out


def pooled_agreement(per_image: Sequence[Mapping[int, Mapping[str, float]]], tp_from: Sequence[np.ndarray] | None = None
                     ) -> dict[int, float]:
    """Pooled Dice per class from per-image ``class_agreement`` results (sum of 2·TP over the
    sum of label + prediction px; TP recovered as dice · (label + pred) / 2)."""
    out = {}
    keys = sorted({k for d in per_image for k in d})
    for c in keys:
        num = den = 0.0
        for d in per_image:
            e = d.get(c)
            if not e:
                continue
            s = e["label_px"] + e["pred_px"]
            if s:
                num += e["dice"] * s
                den += s
        out[c] = num / den if den else float("nan")
    return out


def to_consep4(paget_ids: np.ndarray) -> np.ndarray:
    """PAGET ids -> CoNSeP-4 ids (0 background / none, 1 other, 2 inflammatory, 3 epithelial,
    4 spindle-shaped) through the taxonomy's ``consep4`` evaluation mapping; unresolved (255) and
    tissue classes -> 0."""
    from ..taxonomy import CONSEP4, PAGET13

    m = PAGET13.eval_mappings["consep4"]
    lut = np.zeros(256, np.int64)
    for src, dst in m.items():
        s = PAGET13.names.index(src) if isinstance(src, str) else int(src)
        d = CONSEP4.names.index(dst) if isinstance(dst, str) else int(dst)
        lut[s] = d
    return lut[np.asarray(paget_ids, np.int64)]


def instance_classes(inst: np.ndarray, label: np.ndarray, ignore: int = pt.IGNORE_INDEX) -> np.ndarray:
    """(N,) most frequent label among each instance's pixels (instances 1..N; ``ignore`` counts as
    a label, so an unresolved nucleus stays ``ignore``)."""
    n = int(inst.max(initial=0))
    if n == 0:
        return np.zeros(0, np.int64)
    m = inst > 0
    k = 256
    cnt = np.bincount(inst[m].astype(np.int64) * k + np.asarray(label)[m].astype(np.int64),
                      minlength=(n + 1) * k).reshape(n + 1, k)[1:]
    return cnt.argmax(axis=1)
