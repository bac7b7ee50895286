"""PAGET geometry (pure functions): label-map resampling, exact pixel-edge polygons of class
regions, tissue annotations (QuPath GeoJSON Features) and their merging across tiles.

Units: maps are in working px (the student's ``cfg.mpp``); output coordinates are
``x_work * scale + offset`` (input px, or full-resolution slide px for the server).
"""

from __future__ import annotations

import uuid
from typing import Any, Sequence

import numpy as np

from ..taxonomy import Taxonomy
from . import taxonomy as pt


def resize_labels(lab: np.ndarray, out_shape: tuple[int, int], s: float) -> np.ndarray:
    """Nearest-neighbour resampling of a label map by factor ``s`` (output px per input px) with
    the engine's pixel-centre convention: output pixel o samples input index floor((o + 0.5) / s)."""
    h, w = out_shape
    ys = np.clip(np.floor((np.arange(h) + 0.5) / s).astype(np.int64), 0, lab.shape[0] - 1)
    xs = np.clip(np.floor((np.arange(w) + 0.5) / s).astype(np.int64), 0, lab.shape[1] - 1)
    return lab[ys[:, None], xs[None, :]]



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
