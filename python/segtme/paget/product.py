"""PAGET-S and PAGET-H products: what the CLI, the gRPC server and QuPath receive.

* PAGET-S (semantic): the student's 14-class map at its working resolution (0.5 µm/px) ->
  **tissue regions** as QuPath annotations (one (Multi)Polygon per tissue-level class:
  epithelium, stroma, smooth muscle, red blood cells; shapely polygonisation + simplification) and
  **nucleus-class pixels** (connected components of each nucleus-level class, as detections).
* PAGET-H (panoptic, paper section 3.5): the same map + nucleus instances from an instance source
  (default: the shipped UperHoVer ``default`` model, or any model / ``InstanceSource``); every
  nucleus takes the majority nucleus-level class among its pixels.

Units: the model works at ``cfg.mpp`` (working px); ``s = mpp_in / cfg.mpp``. Everything returned
(nuclei table, annotation polygons) is in **input px** plus ``offset_xy`` (the tile origin in
full-resolution slide px for the server): ``x_in = x_work / s + offset``.

Entry point for the server / CLI: :func:`analyze_paget` (one image or tile) -> :class:`PagetResult`
with ``.nuclei`` (NucleiTable), ``.tissue_features`` (GeoJSON annotation Features),
``.features`` (TME features incl. the 13-class extension) and ``.feature_collection()``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from ..inference.nuclei import NucleiTable, build_nuclei_table
from ..models.registry import LoadedModel
from ..taxonomy import Taxonomy
from . import taxonomy as pt


# --------------------------------------------------------------------------- resampling helpers
def resize_labels(lab: np.ndarray, out_shape: tuple[int, int], s: float) -> np.ndarray:
    """Nearest-neighbour resampling of a label map by factor ``s`` (output px per input px) with
    the engine's pixel-centre convention: output pixel o samples input index floor((o + 0.5) / s)."""
    h, w = out_shape
    ys = np.clip(np.floor((np.arange(h) + 0.5) / s).astype(np.int64), 0, lab.shape[0] - 1)
    xs = np.clip(np.floor((np.arange(w) + 0.5) / s).astype(np.int64), 0, lab.shape[1] - 1)
    return lab[ys[:, None], xs[None, :]]


def _sequential_with_classes(inst: np.ndarray, cls_by_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relabel to 1..N (sorted original ids) and carry each instance's class along."""
    ids = np.unique(inst[inst > 0])
    lut = np.zeros(int(inst.max(initial=0)) + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[inst], np.asarray(cls_by_id)[ids - 1] if len(ids) else np.zeros(0, np.int32)


def instance_map_from_model(lm: LoadedModel, rgb: np.ndarray, mpp: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Nucleus instances of ``rgb`` from a SegTME model, on ``rgb``'s own pixel grid.

    Returns ``(inst (H, W) int32 1..N, class_id (N,) int32 in the model's taxonomy)``. Models with
    ``predict_instances(rgb, mpp)`` (the classical baseline) are called directly; HV models run
    tiled at their working MPP (``engine.predict_maps``), are post-processed with the HV
    watershed, and the instance map is brought back to the input grid (nearest neighbour)."""
    from ..inference.engine import predict_maps, to_working

    if mpp is None:
        raise InputError("the instance source needs the image MPP (µm/px)")
    if hasattr(lm.module, "predict_instances"):
        inst, cls, _ = lm.module.predict_instances(rgb, mpp)
        inst = np.asarray(inst, np.int32)
        n = int(inst.max(initial=0))
        cls = np.asarray(cls, np.int32) if len(cls) == n else np.ones(n, np.int32)
        return _sequential_with_classes(inst, cls) if n else (inst, np.zeros(0, np.int32))
    rgb_w, s = to_working(rgb, mpp, lm.config)
    maps = predict_maps(lm, rgb_w)
    inst_w, cls = instances_from_maps(maps.prob, maps.hv, lm.config)
    if s == 1.0:
        return inst_w, cls
    inst = resize_labels(inst_w, rgb.shape[:2], 1.0 / s)
    return _sequential_with_classes(inst, cls) if cls.size else (inst, cls)


# --------------------------------------------------------------------------- polygons
def mask_to_geometry(mask: np.ndarray, simplify_px: float = 1.0, min_area_px: float = 0.0):
    """Exact pixel-edge geometry of a binary mask (union of per-row pixel runs; pixel (r, c) is
    the square [c, c+1) x [r, r+1)), simplified with ``simplify_px`` (topology preserved) and
    without parts smaller than ``min_area_px``. Returns a shapely (Multi)Polygon or None."""
    import shapely
    from shapely.geometry import MultiPolygon, Polygon

    m = np.asarray(mask, bool)
    if not m.any():
        return None
    p = np.pad(m, ((0, 0), (1, 1))).astype(np.int8)
    d = np.diff(p, axis=1)
    rs, cs = np.nonzero(d == 1)
    re, ce = np.nonzero(d == -1)
    order_s, order_e = np.lexsort((cs, rs)), np.lexsort((ce, re))
    rs, cs, ce = rs[order_s], cs[order_s], ce[order_e]
    boxes = shapely.box(cs, rs, ce, rs + 1)
    geom = shapely.union_all(boxes)
    if simplify_px > 0:
        geom = geom.simplify(simplify_px, preserve_topology=True)
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    parts = [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, Polygon) and g.area >= max(min_area_px, 1e-9)]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def _geojson_geometry(geom, scale: float, offset_xy: Sequence[float], ndigits: int = 2) -> dict:
    from shapely import affinity
    from shapely.geometry import mapping

    g = affinity.affine_transform(geom, [scale, 0, 0, scale, float(offset_xy[0]), float(offset_xy[1])])
    d = mapping(g)

    def rnd(obj):
        if isinstance(obj, (list, tuple)):
            if obj and isinstance(obj[0], (int, float)):
                return [round(float(v), ndigits) for v in obj]
            return [rnd(o) for o in obj]
        return obj

    return {"type": d["type"], "coordinates": rnd(d["coordinates"])}


def fill_tissue_under_nuclei(sem: np.ndarray, tax: Taxonomy = pt.TAXONOMY) -> np.ndarray:
    """Tissue map: every nucleus-level pixel takes the label of the nearest tissue-level pixel
    (so a nucleus inside epithelium is part of the epithelium region); background stays 0.
    Without any tissue pixel, nucleus pixels become stroma (the paper's default tissue)."""
    from scipy import ndimage as ndi

    tissue_ids = np.asarray(pt.tissue_classes(tax))
    is_tissue = np.isin(sem, tissue_ids)
    nuc = (sem > 0) & ~is_tissue & (sem != pt.IGNORE_INDEX)
    out = np.where(is_tissue, sem, 0).astype(np.uint8)
    if not nuc.any():
        return out
    if not is_tissue.any():
        out[nuc] = pt.STROMA
        return out
    _, (iy, ix) = ndi.distance_transform_edt(~is_tissue, return_indices=True)
    out[nuc] = sem[iy[nuc], ix[nuc]]
    return out


def _tissue_coverage(filled: np.ndarray, class_ids: Sequence[int], simplify_px: float,
                     min_area_px: float) -> list[tuple[int, Any]]:
    """[(class id, shapely geometry)] of the classes present in ``filled``: exact pixel-edge
    regions (a polygon coverage: no overlaps, shared edges identical), simplified jointly with
    ``shapely.coverage_simplify`` (per-class simplification would let neighbouring regions
    overlap). Its Visvalingam-Whyatt tolerance is ``2 * simplify_px``, which removes about as
    many vertices and changes the area about as much as Douglas-Peucker at ``simplify_px`` (measured
    on PAGET maps of MoNuSeg tiles). Parts smaller than ``min_area_px`` are dropped."""
    import shapely
    from shapely.geometry import MultiPolygon, Polygon

    present = [(cid, mask_to_geometry(filled == cid, 0.0, 0.0)) for cid in class_ids]
    present = [(cid, g) for cid, g in present if g is not None]
    if not present:
        return []
    geoms = np.array([g for _, g in present], dtype=object)
    if simplify_px > 0 and hasattr(shapely, "coverage_simplify"):
        geoms = shapely.coverage_simplify(geoms, 2.0 * simplify_px, simplify_boundary=True)
    elif simplify_px > 0:  # shapely < 2.1: per class (neighbouring classes may overlap by ~1 px)
        geoms = shapely.simplify(geoms, simplify_px, preserve_topology=True)
    out = []
    for (cid, _), g in zip(present, geoms):
        if not g.is_valid:
            g = shapely.make_valid(g)
        parts = [p for p in getattr(g, "geoms", [g]) if isinstance(p, Polygon) and p.area >= max(min_area_px, 1e-9)]
        if parts:
            out.append((cid, parts[0] if len(parts) == 1 else MultiPolygon(parts)))
    return out


def tissue_annotations(
    sem: np.ndarray,
    *,
    scale: float = 1.0,
    offset_xy: Sequence[float] = (0.0, 0.0),
    mpp_out: float | None = None,
    simplify_px: float = 1.0,
    min_area_px: float = 16.0,
    tax: Taxonomy = pt.TAXONOMY,
) -> list[dict]:
    """QuPath annotations (GeoJSON Features) of the tissue-level classes of a PAGET map.

    sem: (H, W) PAGET ids in working px. Output coordinates: ``x * scale + offset`` (input px).
    One Feature per tissue class present: ``objectType "annotation"``, ``classification {name,
    color}``, measurements ``Area px^2`` (output px) and ``Area µm^2`` when ``mpp_out`` is known.
    Nucleus pixels count for the tissue around them (``fill_tissue_under_nuclei``).
    The classes' regions are simplified together as a coverage (``shapely.coverage_simplify``,
    shared boundaries simplified once), so neighbouring tissue annotations never overlap."""
    filled = fill_tissue_under_nuclei(sem, tax)
    feats = []
    for cid, geom in _tissue_coverage(filled, pt.tissue_classes(tax), simplify_px, min_area_px):
        c = tax.classes[cid]
        area_px = float(geom.area) * scale * scale
        meas: dict[str, float] = {"Area px^2": round(area_px, 2)}
        if mpp_out:
            meas["Area µm^2"] = round(area_px * mpp_out * mpp_out, 3)
        feats.append({
            "type": "Feature",
            "id": str(uuid.uuid4()),
            "geometry": _geojson_geometry(geom, scale, offset_xy),
            "properties": {
                "objectType": "annotation",
                "name": f"PAGET {c.name}",
                "classification": {"name": c.name, "color": list(c.color)},
                "isLocked": False,
                "measurements": meas,
            },
        })
    return feats


# --------------------------------------------------------------------------- nuclei
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
                           tax: Taxonomy = pt.TAXONOMY) -> tuple[np.ndarray, np.ndarray]:
    """PAGET-H vote: for instances 1..N, the most frequent **nucleus-level** class among their
    pixels in ``sem`` (background and tissue pixels do not vote: an instance mask slightly larger
    than the student's nucleus blob must not become "stroma"). Returns (class_id (N,), share (N,)):
    class 0 where no pixel of the instance has a nucleus-level class; share = fraction of the
    instance's pixels carrying the chosen class (or its mean probability if ``prob`` is given)."""
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
    cid = np.where(counts.max(axis=1) > 0, counts.argmax(axis=1), 0).astype(np.int32)
    area = np.bincount(lab, minlength=n + 1)[1:].astype(np.float64)
    if prob is not None:
        chosen = prob[:, m][cid[lab - 1], np.arange(lab.size)]
        share = np.bincount(lab, weights=chosen, minlength=n + 1)[1:] / np.maximum(area, 1)
    else:
        share = counts.max(axis=1) / np.maximum(area, 1)
    return cid, share.astype(np.float32)


# --------------------------------------------------------------------------- result
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

    def feature_collection(self, output_type: str = "detection") -> dict:
        """QuPath FeatureCollection: tissue annotations first, then the classified nuclei."""
        from ..export.geojson import nuclei_to_features

        return {"type": "FeatureCollection",
                "features": list(self.tissue_features) + nuclei_to_features(self.nuclei, output_type)}


def predict_semantic(lm: LoadedModel, rgb: np.ndarray, mpp: float, *, batch_size: int = 8,
                     tile: int | None = None, overlap: int | None = None,
                     progress: Any = None) -> tuple[np.ndarray, np.ndarray, float]:
    """PAGET-S: (prob (14, h, w) softmax, rgb_work, s) at the model's working MPP (tiled, blended;
    ``tile`` / ``overlap`` in working px, default the config's; ``progress`` called with the
    number of tiles finished)."""
    from ..inference.engine import predict_maps, to_working

    rgb_w, s = to_working(rgb, mpp, lm.config)
    maps = predict_maps(lm, rgb_w, tile, overlap, batch_size=batch_size, progress=progress)
    return maps.prob, rgb_w, s


def _resolve_instance_source(src: Any, device: str, allow_random: bool) -> Any:
    """None / model spec / LoadedModel / InstanceSource -> something with ``instances`` or a
    LoadedModel. Spec "default" falls back to the classical baseline when no shipped default
    exists (stated in the result's meta)."""
    from ..models.registry import load_model, shipped_models

    if src is None or isinstance(src, LoadedModel) or hasattr(src, "instances"):
        return src
    spec = str(src)
    if spec == "default" and "default" not in shipped_models():
        spec = "classical"
    return load_model(spec, device, allow_random=allow_random)


def instances_from_maps(prob: np.ndarray, hv: np.ndarray | None, cfg: Any) -> tuple[np.ndarray, np.ndarray]:
    """Nucleus instances from an instance-source model's maps on its own working grid.

    prob: (C, h, w) softmax; hv: (2, h, w) or None (then connected components of the
    foreground). Post-processing parameters come from ``cfg.postprocess`` (as ``pipeline``).
    Returns ``(inst (h, w) int32 1..N, class_id (N,) int32 in the model's taxonomy)``."""
    from ..inference.postprocess import PostprocessParams, classify_instances, hv_watershed, relabel_sequential

    params = PostprocessParams.from_mapping(cfg.postprocess)
    if hv is None:
        from scipy import ndimage as ndi

        inst_w, _ = ndi.label(prob[0] < 1.0 - params.fg_threshold)
        inst_w = inst_w.astype(np.int32)
    else:
        inst_w = hv_watershed(1.0 - prob[0], hv, params)
    inst_w = relabel_sequential(inst_w)
    cls, _ = classify_instances(inst_w, prob)
    return inst_w, cls


def instances_to_grid(inst: np.ndarray, out_shape: tuple[int, int], s: float) -> np.ndarray:
    """Bring an instance map to another pixel grid (nearest neighbour, ``s`` = output px per
    input px; the engine's pixel-centre convention) and renumber 1..N. Identity when the shapes
    already match and ``s`` is 1."""
    from .aggregate import relabel_sequential

    if inst.shape == tuple(out_shape) and abs(s - 1.0) < 1e-9:
        return relabel_sequential(np.asarray(inst, np.int32))
    return relabel_sequential(resize_labels(np.asarray(inst, np.int32), out_shape, s))


def nucleus_tissue_at(sem: np.ndarray, centroid_work: np.ndarray, tax: Taxonomy = pt.TAXONOMY) -> np.ndarray:
    """Tissue region (PAGET id: epithelium, stroma, smooth muscle, red blood cell; 0 = background)
    under each nucleus centroid, from the tissue map of ``fill_tissue_under_nuclei``.
    centroid_work: (N, 2) (x, y) in the working px of ``sem``. Returns (N,) int32."""
    xy = np.asarray(centroid_work, np.float64).reshape(-1, 2)
    if len(xy) == 0:
        return np.zeros(0, np.int32)
    filled = fill_tissue_under_nuclei(sem, tax)
    c = np.clip(np.floor(xy[:, 0]).astype(np.int64), 0, sem.shape[1] - 1)
    r = np.clip(np.floor(xy[:, 1]).astype(np.int64), 0, sem.shape[0] - 1)
    return filled[r, c].astype(np.int32)


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
) -> PagetResult:
    """PAGET-S / PAGET-H outputs from the student's softmax of one working-resolution image.

    This is the model-free half of :func:`analyze_paget`; the gRPC server calls it per streamed
    tile with the student's output from the shared batcher.
    prob: (14, h, w) softmax at ``cfg.mpp``; rgb_w: (h, w, 3) uint8 at the same resolution.
    scale: s = working px per output px (input px of the image, or full-resolution slide px for
    the server); input_mpp: µm per output px. mode: "semantic" | "panoptic"; inst: PAGET-H
    instance map (h, w) on the same working grid (required for "panoptic").
    Output coordinates: ``x_work / scale + offset_xy``."""
    if mode not in ("semantic", "panoptic"):
        raise InputError(f"PAGET mode must be 'semantic' or 'panoptic', got {mode!r}")
    tax = cfg.tax
    sem = prob.argmax(axis=0).astype(np.uint8)
    wm = float(cfg.mpp)
    s = float(scale)
    meta = dict(meta or {})
    meta.setdefault("mode", mode)
    if mode == "semantic":
        inst_s, cid = nucleus_components(sem, max(1, round(min_nucleus_area_um2 / wm**2)), tax)
        _, share = majority_nucleus_class(inst_s, sem, prob, tax) if len(cid) else (None, np.zeros(0, np.float32))
        meta.setdefault("instances", "connected components of nucleus-class pixels")
        inst = inst_s
    else:
        if inst is None:
            raise InputError("PAGET-H (panoptic) needs an instance map")
        if inst.shape != sem.shape:
            raise InputError(f"instance map has shape {inst.shape}, expected {sem.shape}")
        from .aggregate import relabel_sequential

        inst = relabel_sequential(np.asarray(inst, np.int32))
        cid, share = majority_nucleus_class(inst, sem, prob, tax)
        keep = cid > 0
        meta["nuclei_without_class"] = int((~keep).sum())
        if not keep.all():
            lut = np.zeros(len(cid) + 1, np.int32)
            lut[np.flatnonzero(keep) + 1] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
            inst = lut[inst]
            cid, share = cid[keep], share[keep]

    table_w = build_nuclei_table(inst, tax, class_id=cid, class_prob=share, rgb=rgb_w, mpp=wm)
    nucleus_tissue = nucleus_tissue_at(sem, table_w.centroid, tax)
    features = None
    if compute_features:
        from .features import analyze_paget_features

        features = analyze_paget_features(table_w, sem)
    ox, oy = float(offset_xy[0]), float(offset_xy[1])
    table = table_w.translated(ox, oy, scale=1.0 / s, mpp=input_mpp)
    table.mpp = input_mpp
    table.meta.update(meta, model=cfg.name, model_mpp=wm, input_mpp=input_mpp, scale=s)
    tissue = tissue_annotations(sem, scale=1.0 / s, offset_xy=(ox, oy), mpp_out=input_mpp, simplify_px=simplify_px,
                                min_area_px=min_tissue_area_um2 / wm**2, tax=tax)
    return PagetResult(mode, sem, s, wm, float(input_mpp), (ox, oy), table, tissue, features, meta, nucleus_tissue)


def source_instances(src: Any, rgb_w: np.ndarray, wm: float) -> tuple[np.ndarray, str]:
    """PAGET-H instances of a working-resolution image from an ``InstanceSource`` (``instances``)
    or a SegTME ``LoadedModel`` (run with its own tiling, see ``instance_map_from_model``), on the
    grid of ``rgb_w``. Returns (inst, description)."""
    if hasattr(src, "instances"):
        from .teachers import TeacherInput

        inst_w = np.asarray(src.instances(TeacherInput(rgb_w, wm)).inst, np.int32)
        if inst_w.shape != rgb_w.shape[:2]:
            raise InputError(f"instance source returned {inst_w.shape}, expected {rgb_w.shape[:2]}")
        return inst_w, getattr(src, "name", type(src).__name__)
    inst, _ = instance_map_from_model(src, rgb_w, wm)
    return inst, f"{src.config.name} ({src.source})"


def analyze_paget(
    rgb: np.ndarray,
    mpp: float,
    model: Any = "paget_s",
    *,
    mode: str | None = None,
    instance_source: Any = None,
    offset_xy: Sequence[float] = (0.0, 0.0),
    device: str = "auto",
    allow_random: bool = False,
    batch_size: int = 8,
    simplify_px: float = 1.0,
    min_tissue_area_um2: float = 25.0,
    min_nucleus_area_um2: float = 3.0,
    compute_features: bool = True,
    tile: int | None = None,
    overlap: int | None = None,
    progress: Any = None,
) -> PagetResult:
    """Run PAGET-S or PAGET-H on one RGB image / tile.

    rgb: (H, W, 3) uint8 at ``mpp`` µm/px. model: "paget_s" / "paget_h" / a variant / a config
    or weights path / a LoadedModel. mode: "semantic" | "panoptic" (default: the config's
    ``extra["mode"]``). instance_source (PAGET-H): a model spec (default: the config's
    ``extra["instance_source"]``, i.e. the shipped UperHoVer ``default``; the classical baseline
    if no default model is shipped), a LoadedModel, or an ``InstanceSource``.
    offset_xy: added to all output coordinates (server: tile origin in full-res px).
    tile / overlap: the student's tiling in working px (default the config's); progress: called
    with the number of student tiles finished. The whole image's 14-class map is held in memory
    (about 60 bytes per working px)."""
    from ..inference.imageio import validate_mpp
    from ..models.registry import load_model
    from .model import is_paget, paget_mode

    mpp = validate_mpp(mpp, "mpp")
    lm = model if isinstance(model, LoadedModel) else load_model(model, device, allow_random=allow_random)
    if not is_paget(lm.config):
        raise InputError(f"model {lm.config.name!r} is not a PAGET model (arch {lm.config.arch!r})")
    mode = mode or paget_mode(lm.config)
    if mode not in ("semantic", "panoptic"):
        raise InputError(f"PAGET mode must be 'semantic' or 'panoptic', got {mode!r}")
    prob, rgb_w, s = predict_semantic(lm, rgb, mpp, batch_size=batch_size, tile=tile, overlap=overlap,
                                      progress=progress)
    wm = float(lm.config.mpp)
    meta: dict[str, Any] = {"model": lm.config.name, "weights": lm.source, "mode": mode}
    inst = None
    if mode == "panoptic":
        src = _resolve_instance_source(instance_source or lm.config.extra.get("instance_source", "default"),
                                       device, allow_random)
        inst, meta["instances"] = source_instances(src, rgb_w, wm)
    res = paget_result_from_prob(prob, rgb_w, lm.config, scale=s, input_mpp=mpp, mode=mode, inst=inst,
                                 offset_xy=offset_xy, simplify_px=simplify_px,
                                 min_tissue_area_um2=min_tissue_area_um2, min_nucleus_area_um2=min_nucleus_area_um2,
                                 compute_features=compute_features, meta=meta)
    res.nuclei.meta["image_size"] = [int(rgb.shape[1]), int(rgb.shape[0])]
    return res


def tissue_area_by_class(features: Sequence[dict]) -> dict[str, float]:
    """{class name: area in the features' px²} summed over tissue annotation Features (from the
    ``Area px^2`` measurement, or the geometry's area when missing)."""
    from shapely.geometry import shape

    out: dict[str, float] = {}
    for f in features:
        p = f.get("properties", {})
        name = (p.get("classification") or {}).get("name")
        if not name:
            continue
        a = (p.get("measurements") or {}).get("Area px^2")
        out[name] = out.get(name, 0.0) + float(a if a is not None else shape(f["geometry"]).area)
    return out


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


def _areal(g):
    """The (Multi)Polygon part of a geometry (an intersection may add lines / points where the
    shapes only touch); None when nothing areal is left."""
    import shapely
    from shapely.geometry import MultiPolygon, Polygon

    if g.geom_type in ("Polygon", "MultiPolygon"):
        return g
    parts = []
    for q in shapely.get_parts(g):
        parts += [p for p in getattr(q, "geoms", [q]) if isinstance(p, Polygon) and p.area > 0]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def merge_tissue_features(features: Sequence[dict], clip: Any = None, mpp: float | None = None) -> list[dict]:
    """Merge per-tile tissue annotations (e.g. streamed tiles of one QuPath annotation) into one
    annotation per class: geometries of the same classification are unioned (shapely), optionally
    clipped to ``clip`` (a shapely geometry or GeoJSON geometry dict, same px; only the areal part
    of the intersection is kept), and the area measurements recomputed (``mpp``: µm per px of the
    coordinates)."""
    import shapely
    from shapely.geometry import mapping, shape

    clip_g = shape(clip) if isinstance(clip, dict) else clip
    groups: dict[str, list] = {}
    props: dict[str, dict] = {}
    for f in features:
        name = f["properties"]["classification"]["name"]
        groups.setdefault(name, []).append(shape(f["geometry"]))
        props.setdefault(name, f["properties"])
    out = []
    for name, geoms in groups.items():
        g = shapely.union_all(geoms)
        if clip_g is not None:
            g = _areal(g.intersection(clip_g))
        if g is None or g.is_empty:
            continue
        p = dict(props[name])
        meas = {"Area px^2": round(float(g.area), 2)}
        if mpp:
            meas["Area µm^2"] = round(float(g.area) * mpp * mpp, 3)
        p["measurements"] = meas
        out.append({"type": "Feature", "id": str(uuid.uuid4()), "geometry": mapping(g), "properties": p})
    return out
