"""Cells from nuclei by label expansion, with QuPath's cell and cytoplasm measurements.

QuPath's cell detection grows each nucleus by ``cellExpansionMicrons`` (default 5 µm) with a
watershed on the distance map, so that a pixel goes to the nearest nucleus within that distance
and neighbouring cells meet without overlapping. ``build_cells`` does the same with
``skimage.segmentation.expand_labels`` on a label raster of the nuclei at the *measurement
resolution* (default: the model's working MPP, like QuPath's "requested pixel size"; never finer
than the input), measures cells and cytoplasm there (``inference.measurements``) and traces the
cell outlines (``inference.contours.outer_contours``). Because the raster is the image, cells are
clipped to it; because every pixel has one label, cells never overlap.

Large images are processed in windows of ``window`` measurement px with a halo (expansion + the
largest nucleus): a nucleus's cell is made by the window whose core holds its centroid, from all
nuclei near it; cells of different windows that still overlap by a tie of the distance map at a
window seam are made disjoint afterwards. Memory: one window's raster, distance map and RGB.

Coordinates: input px (the table's), pixel-corner convention. Areas of cells are pixel counts at
the measurement resolution converted to input px^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .measurements import circularity, label_stats, moments, polygon_shape, polygons_from_rings, shape_names, stain_names
from .nuclei import NucleiTable

#: QuPath's default cell expansion
DEFAULT_EXPANSION_UM = 5.0
#: expansion in input px when the MPP is unknown
DEFAULT_EXPANSION_PX = 10.0
DEFAULT_WINDOW = 2048
#: images up to this many measurement px are resampled once (3 bytes each), larger ones per window
WHOLE_RESAMPLE_PX = 64_000_000


@dataclass(frozen=True)
class CellOptions:
    """expansion_um: distance a nucleus is grown by (µm; QuPath's ``cellExpansionMicrons``);
    expansion_px: used instead when the MPP is unknown (input px).
    measure_mpp: µm/px of the measurement raster (None: the table's model MPP
    ``meta["model_mpp"]``, else 0.5 — QuPath's default requested pixel size); never finer than
    the input. window: measurement px per processing window (memory bound)."""

    expansion_um: float = DEFAULT_EXPANSION_UM
    expansion_px: float = DEFAULT_EXPANSION_PX
    measure_mpp: float | None = None
    window: int = DEFAULT_WINDOW


@dataclass
class CellTable:
    """One cell per row of the nuclei table it was built from (same order).

    polygons: (K, 2) float arrays, (x, y) input px (empty array when a nucleus got no cell).
    measurements: QuPath name -> (N,) float (µm units when the table's MPP is known).
    meta: expansion and measurement resolution used."""

    polygons: list[np.ndarray]
    measurements: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.polygons)

    def subset(self, idx: np.ndarray) -> "CellTable":
        idx = np.asarray(idx, np.int64)
        return CellTable([self.polygons[i] for i in idx], {k: v[idx] for k, v in self.measurements.items()},
                         dict(self.meta))


def _rasterise(polys: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Label raster (1..len(polys)) of polygons in corner-convention px of the raster: a pixel
    belongs to a polygon when its centre is inside (even-odd rule; exact for outlines traced on
    this grid, whose edges never pass through a pixel centre). One vectorised scanline fill for
    all polygons (crossings of every edge with the pixel-centre rows, sorted, paired, expanded to
    runs); later polygons overwrite earlier ones where they overlap."""
    H, W = int(shape[0]), int(shape[1])
    lab = np.zeros((H, W), np.int32)
    arrs = [(k, np.asarray(p, np.float64).reshape(-1, 2)) for k, p in enumerate(polys) if len(p) >= 3]
    if not arrs or H == 0 or W == 0:
        return lab
    v0 = np.concatenate([a for _, a in arrs])
    v1 = np.concatenate([np.roll(a, -1, axis=0) for _, a in arrs])
    pid = np.repeat(np.array([k for k, _ in arrs], np.int64), [len(a) for _, a in arrs])
    x0, y0, x1, y1 = v0[:, 0], v0[:, 1], v1[:, 0], v1[:, 1]
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    r_lo = np.ceil(lo - 0.5).astype(np.int64)  # rows whose centre r + 0.5 is in [lo, hi)
    r_hi = np.ceil(hi - 0.5).astype(np.int64) - 1
    r_lo, r_hi = np.maximum(r_lo, 0), np.minimum(r_hi, H - 1)
    cnt = np.maximum(r_hi - r_lo + 1, 0)
    cnt[hi == lo] = 0  # horizontal edges never cross a row centre
    e = np.repeat(np.arange(len(cnt)), cnt)
    if not len(e):
        return lab
    r = r_lo[e] + (np.arange(len(e)) - np.repeat(np.cumsum(cnt) - cnt, cnt))
    yc = r + 0.5
    x = x0[e] + (yc - y0[e]) * (x1[e] - x0[e]) / (y1[e] - y0[e])
    k = pid[e]
    order = np.lexsort((x, r, k))
    x, r, k = x[order], r[order], k[order]
    new = np.r_[True, (k[1:] != k[:-1]) | (r[1:] != r[:-1])]
    start = np.maximum.accumulate(np.where(new, np.arange(len(x)), 0))
    first = ((np.arange(len(x)) - start) % 2) == 0
    i = np.flatnonzero(first[:-1] & ~new[1:])  # an entering crossing followed by its leaving one
    xa, xb, rr, kk = x[i], x[i + 1], r[i], k[i]
    c_lo = np.maximum(np.ceil(xa - 0.5).astype(np.int64), 0)
    c_hi = np.minimum(np.ceil(xb - 0.5).astype(np.int64) - 1, W - 1)
    n_run = np.maximum(c_hi - c_lo + 1, 0)
    run = np.repeat(np.arange(len(n_run)), n_run)
    cols = c_lo[run] + (np.arange(len(run)) - np.repeat(np.cumsum(n_run) - n_run, n_run))
    lab[rr[run], cols] = (kk[run] + 1).astype(np.int32)
    return lab


def _region_rgb(image: np.ndarray, box_in: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """RGB of the input-px box (x0, y0, x1, y1) resampled to ``size`` (w, h) by area averaging
    (PIL BOX), or cropped when no resampling is needed."""
    x0, y0, x1, y1 = box_in
    w, h = size
    if abs((x1 - x0) - w) < 1e-6 and abs((y1 - y0) - h) < 1e-6 and float(x0).is_integer() and float(y0).is_integer():
        return np.ascontiguousarray(image[int(y0) : int(y0) + h, int(x0) : int(x0) + w])
    from PIL import Image

    H, W = image.shape[:2]
    a, b = max(0, int(math.floor(x0))), max(0, int(math.floor(y0)))
    c, d = int(math.ceil(x1)), int(math.ceil(y1))
    arr = image[b:min(d, H), a:min(c, W)]
    if c > W or d > H:  # the last measurement px may overhang the image: repeat the edge (the same
        arr = np.pad(arr, ((0, max(0, d - H)), (0, max(0, c - W)), (0, 0)), mode="edge")  # in every window)
    crop = Image.fromarray(np.ascontiguousarray(arr))
    return np.asarray(crop.resize((w, h), Image.Resampling.BOX, box=(x0 - a, y0 - b, x1 - a, y1 - b)))


def build_cells(
    table: NucleiTable,
    image: np.ndarray | None = None,
    options: CellOptions = CellOptions(),
    *,
    image_size: tuple[int, int] | None = None,
    region: tuple[float, float, float, float] | None = None,
    progress: Callable[[str], None] | None = None,
) -> CellTable:
    """Cells of every nucleus of ``table`` (see the module docstring).

    image: the input image (H, W, 3) uint8 the table's coordinates refer to (for the cell and
    cytoplasm OD measurements), or None (shape measurements only; then ``image_size`` or
    ``table.meta["image_size"]`` gives the image extent (w, h) in input px).
    region: (x0, y0, x1, y1) input px the cells are confined to (default: the whole image); with
    neither an image nor a size, the nuclei's bounds grown by the expansion (a tile of a slide:
    the raster covers only that, whatever the tile's offset)."""
    import shapely
    from skimage.segmentation import expand_labels

    from .contours import outer_contours

    n = len(table)
    mpp = table.mpp
    exp_guess = float(options.expansion_um) / float(mpp) if mpp else float(options.expansion_px)
    if region is not None:
        ox, oy = float(region[0]), float(region[1])
        W_in, H_in = float(region[2]) - ox, float(region[3]) - oy
    elif image is not None:
        ox = oy = 0.0
        W_in, H_in = int(image.shape[1]), int(image.shape[0])
    elif image_size or table.meta.get("image_size"):
        size = image_size or table.meta.get("image_size")
        ox = oy = 0.0
        W_in, H_in = int(size[0]), int(size[1])
    elif n:
        xy = np.concatenate([np.asarray(p, np.float64).reshape(-1, 2) for p in table.polygons])
        pad = exp_guess + 2
        ox, oy = max(0.0, math.floor(xy[:, 0].min() - pad)), max(0.0, math.floor(xy[:, 1].min() - pad))
        W_in, H_in = math.ceil(xy[:, 0].max() + pad) - ox, math.ceil(xy[:, 1].max() + pad) - oy
    else:
        ox = oy = 0.0
        W_in = H_in = 1
    if mpp:
        m_mpp = options.measure_mpp or table.meta.get("model_mpp") or 0.5
        r = min(1.0, float(mpp) / float(m_mpp))  # measurement px per input px
        exp_in = float(options.expansion_um) / float(mpp)
    else:
        r = 1.0
        exp_in = float(options.expansion_px)
    exp_m = exp_in * r
    Wm, Hm = max(1, round(W_in * r)), max(1, round(H_in * r))
    origin_in = np.array([ox, oy])
    polys_m = [(np.asarray(p, np.float64).reshape(-1, 2) - origin_in) * r for p in table.polygons]

    cell_polys: list[np.ndarray] = [np.zeros((0, 2)) for _ in range(n)]
    cell_area = np.zeros(n)
    cell_ecc = np.full(n, np.nan)
    cyto_area = np.zeros(n)
    stain_keys = list(stain_names("Cell"))
    cell_st = {k: np.full(n, np.nan) for k in stain_keys}
    cyto_st = {k: np.full(n, np.nan) for k in stain_keys}
    window_of = np.full(n, -1, np.int64)
    if n:
        lens = np.array([len(p) for p in polys_m])
        flat = np.concatenate([p if len(p) else np.zeros((1, 2)) for p in polys_m])
        starts = np.r_[0, np.cumsum(np.maximum(lens, 1))[:-1]]
        bx0 = np.minimum.reduceat(flat[:, 0], starts)
        by0 = np.minimum.reduceat(flat[:, 1], starts)
        bx1 = np.maximum.reduceat(flat[:, 0], starts)
        by1 = np.maximum.reduceat(flat[:, 1], starts)
        ext = float(max((bx1 - bx0).max(), (by1 - by0).max()))
        cm = (np.asarray(table.centroid, np.float64).reshape(-1, 2) - origin_in) * r
        halo = int(math.ceil(exp_m + ext + 2))
        step = max(64, int(options.window))
        whole = None  # the image at measurement resolution, once, when it is not too large: then
        if image is not None and Wm * Hm <= WHOLE_RESAMPLE_PX:  # the windows cut the same pixels
            whole = _region_rgb(image, (ox, oy, ox + Wm / r, oy + Hm / r), (Wm, Hm))
        wins = [(x, y) for y in range(0, Hm, step) for x in range(0, Wm, step)]
        for w_i, (cx0, cy0) in enumerate(wins):
            cx1, cy1 = min(Wm, cx0 + step), min(Hm, cy0 + step)
            own = np.flatnonzero((cm[:, 0] >= cx0) & (cm[:, 0] < cx1) & (cm[:, 1] >= cy0) & (cm[:, 1] < cy1)
                                 & (lens >= 3))
            if not len(own):
                continue
            rx0, ry0 = max(0, cx0 - halo), max(0, cy0 - halo)
            rx1, ry1 = min(Wm, cx1 + halo), min(Hm, cy1 + halo)
            sel = np.flatnonzero((bx1 >= rx0) & (bx0 <= rx1) & (by1 >= ry0) & (by0 <= ry1) & (lens >= 3))
            origin = np.array([rx0, ry0], np.float64)
            lab = _rasterise([polys_m[i] - origin for i in sel], (ry1 - ry0, rx1 - rx0))
            cells = expand_labels(lab, distance=exp_m) if exp_m > 0 else lab
            k = len(sel)
            local = np.zeros(n, np.int64)
            local[sel] = np.arange(1, k + 1)
            own_l = local[own]  # 1-based local labels of the owned nuclei
            mo = moments(cells, k)
            cell_area[own] = mo["area"][own_l - 1] / (r * r)
            cell_ecc[own] = mo["eccentricity"][own_l - 1]
            cyto = np.where(lab == 0, cells, 0)
            cyto_area[own] = np.bincount(cyto.ravel(), minlength=k + 1)[own_l] / (r * r)
            if image is not None:
                from ..stain import hed_od

                rgb = (whole[ry0:ry1, rx0:rx1] if whole is not None
                       else _region_rgb(image, (ox + rx0 / r, oy + ry0 / r, ox + rx1 / r, oy + ry1 / r),
                                        (rx1 - rx0, ry1 - ry0)))
                od = hed_od(rgb)[..., :2]
                # one pass over the cytoplasm pixels and one over the nucleus pixels; the cell's
                # statistics combine the two (counts, sums, sums of squares, max, min)
                st_c = label_stats(cyto, k, od)
                st_n = label_stats(np.where(lab > 0, cells, 0), k, od)
                st_cell = _combine(st_n, st_c)
                for st, dst in ((st_cell, cell_st), (st_c, cyto_st)):
                    for j, s in enumerate(("hematoxylin", "eosin")):
                        for q in ("mean", "std", "max", "min"):
                            dst[f"{s}_od_{q}"][own] = st[q][own_l - 1, j]
            rings = outer_contours(cells, k)
            if rings is None:
                from .nuclei import _outlines_one_by_one

                rings = _outlines_one_by_one(cells)
            for i, li in zip(own, own_l):
                ring = rings[li - 1]
                if len(ring) >= 3:
                    cell_polys[i] = (ring + origin) / r + origin_in
            window_of[own] = w_i
            if progress is not None:
                progress(f"cells: window {w_i + 1}/{len(wins)}")

    geoms = polygons_from_rings(cell_polys)
    nuc = polygons_from_rings(table.polygons)
    has = np.array([len(p) >= 3 for p in cell_polys], bool)
    geoms = _repair(geoms, nuc, has, window_of)
    for i in np.flatnonzero(has):
        g = geoms[i]
        cell_polys[i] = np.asarray(g.exterior.coords)[:-1] if g is not None and not g.is_empty else np.zeros((0, 2))
    sh = polygon_shape(geoms) if n else {k: np.zeros(0) for k in ("perimeter", "solidity", "max_caliper", "min_caliper")}
    m = float(mpp) if mpp else 1.0
    names = shape_names("Cell", mpp)
    meas: dict[str, np.ndarray] = {
        names["area"]: cell_area * m * m,
        names["perimeter"]: sh["perimeter"] * m,
        names["circularity"]: circularity(cell_area, sh["perimeter"]),
        names["max_caliper"]: sh["max_caliper"] * m,
        names["min_caliper"]: sh["min_caliper"] * m,
        names["eccentricity"]: cell_ecc,
    }
    if image is not None:
        meas.update({stain_names("Cell")[k]: v for k, v in cell_st.items()})
        meas.update({stain_names("Cytoplasm")[k]: v for k, v in cyto_st.items()})
    with np.errstate(divide="ignore", invalid="ignore"):
        meas["Nucleus/Cell area ratio"] = np.where(cell_area > 0, np.minimum(np.asarray(table.area_px) / cell_area, 1.0),
                                                   np.nan)
    for k in meas:
        meas[k] = np.where(has, meas[k], np.nan)
    return CellTable(cell_polys, meas, {"cell_expansion_um": float(options.expansion_um) if mpp else None,
                                        "cell_expansion_px": exp_in, "measure_mpp": (float(mpp) / r) if mpp else None,
                                        "windows": int(window_of.max() + 1) if n else 0})


def _combine(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``label_stats`` of the union of two disjoint pixel sets from the stats of each."""
    ca, cb = a["count"][:, None], b["count"][:, None]
    c = ca + cb
    s = np.nan_to_num(a["sum"]) + np.nan_to_num(b["sum"])
    ss = (np.nan_to_num(a["std"]) ** 2 * np.maximum(ca - 1, 0) + np.nan_to_num(a["mean"]) ** 2 * ca
          + np.nan_to_num(b["std"]) ** 2 * np.maximum(cb - 1, 0) + np.nan_to_num(b["mean"]) ** 2 * cb)  # sums of squares
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(c > 0, s / np.maximum(c, 1), np.nan)
        var = np.where(c > 1, (ss - s * s / np.maximum(c, 1)) / np.maximum(c - 1, 1), np.nan)
    return {"count": c[:, 0], "mean": mean, "sum": s, "std": np.sqrt(np.maximum(var, 0)),
            "max": np.fmax(a["max"], b["max"]), "min": np.fmin(a["min"], b["min"])}


def _repair(geoms: np.ndarray, nuc: np.ndarray, has: np.ndarray, window_of: np.ndarray) -> np.ndarray:
    """Cells as valid single Polygons that cover their nucleus and do not overlap a cell of
    another window (ties of the distance map at window seams): vectorised checks, shapely set
    operations only for the few cells that need them."""
    import shapely

    geoms = geoms.copy()
    bad = has & ~shapely.is_valid(geoms)
    for i in np.flatnonzero(bad):
        geoms[i] = _largest(shapely.make_valid(geoms[i]))
    miss = has & ~shapely.covers(geoms, nuc)
    for i in np.flatnonzero(miss):
        geoms[i] = _largest(shapely.union(geoms[i], shapely.make_valid(nuc[i])))
    if has.any() and window_of[has].max() > window_of[has].min():
        idx = np.flatnonzero(has)
        tree = shapely.STRtree(geoms[idx])
        a, b = tree.query(geoms[idx], predicate="overlaps")
        sel = (a < b) & (window_of[idx[a]] != window_of[idx[b]])
        for i, j in zip(idx[a[sel]], idx[b[sel]]):
            inter = shapely.intersection(geoms[i], geoms[j])
            if shapely.area(inter) > 0:
                geoms[j] = _largest(shapely.union(shapely.difference(geoms[j], geoms[i]), nuc[j]))
    return geoms


def _largest(g):
    """The largest Polygon part of a geometry (a Polygon is returned as is)."""
    if g is None or g.geom_type == "Polygon":
        return g
    parts = [p for p in getattr(g, "geoms", []) if p.geom_type == "Polygon" and p.area > 0]
    return max(parts, key=lambda p: p.area) if parts else g
