"""PAGET-S / PAGET-H outputs from the student's softmax (pure: no model, no IO).

* PAGET-S (semantic): nucleus-class pixels -> connected components (``nucleus_components``).
* PAGET-H (panoptic, paper section 3.5): nucleus instances from an instance source, each taking
  the majority nucleus-level class of its pixels (``majority_nucleus_class``).
* ``paget_result_from_prob``: the whole product of one working-resolution image or tile
  (nuclei table, tissue annotations, TME features) -> :class:`PagetResult`.

Units: the model works at ``cfg.mpp`` (working px); ``s`` = working px per output px. Everything
returned is in output px + ``offset_xy``: ``x_out = x_work / s + offset``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from ..inference.maps import class_map
from ..inference.nuclei import NucleiTable, build_nuclei_table
from ..taxonomy import Taxonomy, get_taxonomy
from . import features as _features  # noqa: F401  (registers the paget13 TME feature group)
from . import taxonomy as pt
from .geometry import (fill_tissue_under_nuclei, nucleus_tissue_at, tissue_annotations, tissue_area_by_class,
                       tissue_pieces)


def nucleus_components(sem: np.ndarray, min_px: int = 4, tax: Taxonomy = pt.TAXONOMY) -> tuple[np.ndarray, np.ndarray]:
    """PAGET-S nuclei: connected components (8-connectivity) of each nucleus-level class.
    Returns (inst 1..N, class_id (N,)). Touching nuclei of the same class merge (PAGET-S has no
    instance head; PAGET-H separates them)."""
    from scipy import ndimage as ndi

    inst = np.zeros(sem.shape, np.int32)
    classes: list[int] = []
    n = 0
    for cid in pt.nucleus_classes(tax):
        m = sem == cid
        if not m.any():
            continue
        lab, k = ndi.label(m, structure=np.ones((3, 3), bool))
        if k == 0:
            continue
        sizes = np.bincount(lab.ravel(), minlength=k + 1)
        keep = np.flatnonzero(sizes >= min_px)
        keep = keep[keep > 0]
        lut = np.zeros(k + 1, np.int32)
        lut[keep] = np.arange(n + 1, n + 1 + len(keep), dtype=np.int32)
        sel = lut[lab]
        inst = np.where(sel > 0, sel, inst)
        classes += [cid] * len(keep)
        n += len(keep)
    return inst, np.asarray(classes, np.int32)


def majority_nucleus_class(inst: np.ndarray, sem: np.ndarray, prob: np.ndarray | None = None,
                           tax: Taxonomy = pt.TAXONOMY, prob_stride: int = 1,
                           allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """PAGET-H vote: for instances 1..N, the most frequent **nucleus-level** class among their
    pixels in ``sem`` (background and tissue pixels do not vote: an instance mask slightly larger
    than the student's nucleus blob must not become "stroma"). Returns (class_id (N,), share (N,)):
    class 0 where no pixel of the instance has a nucleus-level class; share = fraction of the
    instance's pixels carrying the chosen class (or its mean probability if ``prob`` is given;
    ``prob_stride`` k: ``prob`` is on a k px grid, ``io.sem_stride``, and each pixel reads the
    value of its own k x k block).
    allowed: optional (N, K) bool, the classes instance i may take (a guided vote,
    ``guided_classes``): votes for other classes do not count, and an instance none of whose
    pixels votes an allowed class takes the allowed class of highest mean probability (needs
    ``prob``; without it class 0)."""
    n = int(inst.max(initial=0))
    k = tax.num_classes
    if n == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.float32)
    m = inst > 0
    lab = inst[m].astype(np.int64)
    s = np.asarray(sem)[m].astype(np.int64)
    s = np.where(s < k, s, 0)
    counts = np.bincount(lab * k + s, minlength=(n + 1) * k).reshape(n + 1, k)[1:]
    voting = np.zeros(k, bool)
    voting[pt.nucleus_classes(tax)] = True
    counts[:, ~voting] = 0
    if allowed is not None:
        allowed = np.asarray(allowed, bool) & voting
        counts[~allowed] = 0
    cid = np.where(counts.max(axis=1) > 0, counts.argmax(axis=1), 0).astype(np.int32)
    if allowed is not None and prob is not None and (cid == 0).any():
        _fill_by_mean_prob(cid, allowed, inst, prob, prob_stride)
    area = np.bincount(lab, minlength=n + 1)[1:].astype(np.float64)
    if prob is not None:
        if prob_stride == 1:
            chosen = prob[:, m][cid[lab - 1], np.arange(lab.size)]
        else:
            yy, xx = np.nonzero(m)
            chosen = prob[cid[lab - 1], yy // prob_stride, xx // prob_stride]
        share = np.bincount(lab, weights=chosen, minlength=n + 1)[1:] / np.maximum(area, 1)
    else:
        share = counts.max(axis=1) / np.maximum(area, 1)
    return cid, share.astype(np.float32)


def _fill_by_mean_prob(cid: np.ndarray, allowed: np.ndarray, inst: np.ndarray, prob: np.ndarray,
                       prob_stride: int) -> None:
    """In place: instances with ``cid == 0`` take their allowed class of highest summed (= mean)
    probability over their pixels (``prob`` on a ``prob_stride`` px grid)."""
    todo = np.flatnonzero((cid == 0) & allowed.any(axis=1)) + 1
    if todo.size == 0:
        return
    sel = np.zeros(len(cid) + 1, bool)
    sel[todo] = True
    yy, xx = np.nonzero(sel[inst])
    lab = inst[yy, xx].astype(np.int64)
    py, px = (yy, xx) if prob_stride == 1 else (yy // prob_stride, xx // prob_stride)
    score = np.full((len(todo), allowed.shape[1]), -1.0)
    row = np.searchsorted(todo, lab)
    for c in np.flatnonzero(allowed[todo - 1].any(axis=0)):
        score[:, c] = np.bincount(row, weights=prob[c, py, px], minlength=len(todo))
    score[~allowed[todo - 1]] = -1.0
    cid[todo - 1] = score.argmax(axis=1)


def guided_classes(inst_class: np.ndarray, source: Taxonomy | str, tax: Taxonomy = pt.TAXONOMY) -> np.ndarray:
    """(N, K) bool for ``majority_nucleus_class(allowed=...)``: instance i (label i + 1), called
    ``inst_class[i]`` in the nucleus model's taxonomy ``source``, may take the PAGET classes
    ``paget.taxonomy.guided_leaves`` gives that class (its class decides the major category, the
    PAGET map the subtype within it)."""
    table = pt.guided_leaves(source, tax)
    c = np.asarray(inst_class, np.int64)
    if c.size and (c.min() < 0 or c.max() >= len(table)):
        raise InputError(f"instance classes must be ids of taxonomy {getattr(source, 'name', source)!r} "
                         f"(0..{len(table) - 1}), got {int(c.min())}..{int(c.max())}")
    return table[c]


def relabel_with_classes(inst: np.ndarray, inst_class: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """``relabel_sequential`` of an instance map, keeping ``inst_class`` (class of label l at
    index l - 1) aligned with the new labels 1..N."""
    from ..inference.postprocess import relabel_sequential

    inst = np.asarray(inst, np.int32)
    new = relabel_sequential(inst)
    if inst_class is None:
        return new, None
    ids = np.unique(inst[inst > 0])  # relabel_sequential keeps their sorted order
    cls = np.asarray(inst_class, np.int32)
    if ids.size and ids.max() > cls.size:
        raise InputError(f"instance classes cover labels 1..{cls.size}, the instance map has label {int(ids.max())}")
    return new, cls[ids - 1]


@dataclass
class PagetResult:
    """PAGET-S / PAGET-H output for one image or tile.

    sem: (h, w) uint8 PAGET ids at working resolution (``working_mpp``); scale: s = working px
    per input px; offset_xy: input-px origin added to all coordinates.
    nuclei: NucleiTable in input px (+ offset), taxonomy paget13, ``mpp`` = input MPP.
    tissue_features: GeoJSON annotation Features of the tissue regions (input px + offset).
    features: TME features (core + PAGET 13-class extension), computed in working px.
    nucleus_tissue: tissue region under each nucleus (see the field).
    """

    mode: str
    sem: np.ndarray
    scale: float
    working_mpp: float
    input_mpp: float
    offset_xy: tuple[float, float]
    nuclei: NucleiTable
    tissue_features: list[dict]
    features: dict | None = None
    meta: dict = field(default_factory=dict)
    #: (N,) int32 PAGET id of the tissue region under each nucleus centroid (0 = background),
    #: aligned with ``nuclei`` (for the immune-location features once tiles are merged)
    nucleus_tissue: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    #: a chunk's tissue regions clipped to its core, ``[(class name, properties, shapely
    #: geometry)]`` in output px (``geometry.tissue_pieces``), instead of ``tissue_features``
    #: when ``paget_result_from_prob(tissue_core=...)`` asked for them
    tissue_pieces: list = field(default_factory=list)

    def feature_collection(self, output_type: str = "detection") -> dict:
        """QuPath FeatureCollection: tissue annotations first, then the classified nuclei."""
        from ..export.geojson import nuclei_to_features

        return {"type": "FeatureCollection",
                "features": list(self.tissue_features) + nuclei_to_features(self.nuclei, output_type)}


def paget_result_from_prob(
    prob: np.ndarray,
    rgb_w: np.ndarray,
    cfg: Any,
    *,
    scale: float,
    input_mpp: float,
    mode: str,
    inst: np.ndarray | None = None,
    offset_xy: Sequence[float] = (0.0, 0.0),
    simplify_px: float = 1.0,
    min_tissue_area_um2: float = 25.0,
    min_nucleus_area_um2: float = 3.0,
    compute_features: bool = True,
    meta: dict | None = None,
    mitosis: Any = None,
    tissue_core: Sequence[int] | None = None,
    inst_class: np.ndarray | None = None,
    inst_taxonomy: Taxonomy | str | None = None,
) -> PagetResult:
    """PAGET-S / PAGET-H outputs from the student's softmax of one working-resolution image.

    This is the model-free half of :func:`analyze_paget`; the gRPC server calls it per streamed
    tile with the student's output from the shared batcher.
    prob: (14, h, w) softmax at ``cfg.mpp`` (``(14, ceil(h/k), ceil(w/k))`` for a model with
    ``io.sem_stride`` k, see ``class_map``); rgb_w: (h, w, 3) uint8 at the same resolution.
    scale: s = working px per output px (input px of the image, or full-resolution slide px for
    the server); input_mpp: µm per output px. mode: "semantic" | "panoptic"; inst: PAGET-H
    instance map (h, w) on the same working grid (required for "panoptic").
    Output coordinates: ``x_work / scale + offset_xy``.
    mitosis: optional ``callable(table_w, rgb_w, mpp_w)`` that marks mitotic figures in the
    working-px table in place (``segtme.mitosis.detect.mark_mitoses`` bound to a model, see
    ``runner.mitosis_marker``) — run before the TME features so they count them.
    tissue_core: (x0, y0, x1, y1) working px of this image (a chunk's core): the tissue regions
    come clipped to it as ``PagetResult.tissue_pieces`` (shapely, for the chunked runner's merge)
    and ``tissue_features`` stays empty.
    inst_class / inst_taxonomy (PAGET-H): the instance source's class of each label of ``inst``
    (index label - 1) and its taxonomy; used only when the config asks for a guided vote
    (``heads.guided_vote``: the source's class picks the major category, the PAGET map the
    subtype, see ``guided_classes``), ignored otherwise."""
    if mode not in ("semantic", "panoptic"):
        raise InputError(f"PAGET mode must be 'semantic' or 'panoptic', got {mode!r}")
    tax = cfg.tax
    st = int(cfg.io.sem_stride)
    sem = class_map(prob, rgb_w.shape[:2], st)  # inference.maps: arg-max on every working px
    wm = float(cfg.mpp)
    s = float(scale)
    meta = dict(meta or {})
    meta.setdefault("mode", mode)
    if mode == "semantic":
        inst_s, cid = nucleus_components(sem, max(1, round(min_nucleus_area_um2 / wm**2)), tax)
        _, share = majority_nucleus_class(inst_s, sem, prob, tax, st) if len(cid) else (None, np.zeros(0, np.float32))
        meta.setdefault("instances", "connected components of nucleus-class pixels")
        inst = inst_s
    else:
        if inst is None:
            raise InputError("PAGET-H (panoptic) needs an instance map")
        if inst.shape != sem.shape:
            raise InputError(f"instance map has shape {inst.shape}, expected {sem.shape}")
        from .heads import guided_vote

        guide = guided_vote(cfg) and inst_class is not None and inst_taxonomy is not None
        inst, src_cls = relabel_with_classes(inst, inst_class if guide else None)
        allowed = guided_classes(src_cls, inst_taxonomy, tax) if guide else None
        cid, share = majority_nucleus_class(inst, sem, prob, tax, st, allowed)
        if guide:
            meta["nucleus_class_vote"] = f"guided by the instance source's {get_taxonomy(inst_taxonomy).name} classes"
        keep = cid > 0
        meta["nuclei_without_class"] = int((~keep).sum())
        if not keep.all():
            lut = np.zeros(len(cid) + 1, np.int32)
            lut[np.flatnonzero(keep) + 1] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
            inst = lut[inst]
            cid, share = cid[keep], share[keep]

    table_w = build_nuclei_table(inst, tax, class_id=cid, class_prob=share, rgb=rgb_w, mpp=wm)
    if mitosis is not None:
        mitosis(table_w, rgb_w, wm)
        meta["mitosis"] = table_w.meta.get("mitosis")
    filled = fill_tissue_under_nuclei(sem, tax)  # once, for the nuclei's context and the annotations
    nucleus_tissue = nucleus_tissue_at(sem, table_w.centroid, tax, filled=filled)
    features = None
    if compute_features:
        from .features import analyze_paget_features

        features = analyze_paget_features(table_w, sem)
    ox, oy = float(offset_xy[0]), float(offset_xy[1])
    table = table_w.translated(ox, oy, scale=1.0 / s, mpp=input_mpp)
    table.mpp = input_mpp
    table.meta.update(meta, model=cfg.name, model_mpp=wm, input_mpp=input_mpp, scale=s)
    tissue, pieces = [], []
    if tissue_core is None:
        tissue = tissue_annotations(sem, scale=1.0 / s, offset_xy=(ox, oy), mpp_out=input_mpp, simplify_px=simplify_px,
                                    min_area_px=min_tissue_area_um2 / wm**2, tax=tax, filled=filled)
    else:
        pieces = tissue_pieces(filled, tissue_core, scale=1.0 / s, offset_xy=(ox, oy), simplify_px=simplify_px,
                               min_area_px=min_tissue_area_um2 / wm**2, tax=tax)
    return PagetResult(mode, sem, s, wm, float(input_mpp), (ox, oy), table, tissue, features, meta, nucleus_tissue,
                       pieces)


def attach_tissue_context(table: NucleiTable, nucleus_tissue: np.ndarray, tissue_features: Sequence[dict]) -> NucleiTable:
    """Store what the 13-class TME features need when no semantic map is at hand (a whole
    annotation assembled from tiles, or an image analysed in input px): ``table.meta
    ["paget_tissue_context"]`` = the tissue region under each nucleus (PAGET ids, aligned with
    the table's rows) and ``["paget_tissue_area_px"]`` = tissue area per class in the table's
    px² (from ``tissue_features``, e.g. merged and clipped to the annotation). In place; returns
    the table. Call it on the final table (``subset`` / ``concat`` do not realign meta)."""
    ctx = np.asarray(nucleus_tissue, np.int64).reshape(-1)
    if len(ctx) != len(table):
        raise ValueError(f"nucleus_tissue has {len(ctx)} entries for {len(table)} nuclei")
    table.meta["paget_tissue_context"] = ctx.tolist()
    table.meta["paget_tissue_area_px"] = tissue_area_by_class(tissue_features)
    return table


