"""QuPath's measurement set for nuclei and cells, vectorised over all objects of a label map.

Names and units follow QuPath's own cell detection (``qupath.imagej.detect.cells.
WatershedCellDetection`` and its shape statistics): per compartment ``Nucleus:`` / ``Cell:`` the
shape features ``Area µm^2``, ``Perimeter µm``, ``Circularity``, ``Max caliper µm``,
``Min caliper µm``, ``Eccentricity`` (SegTME adds ``Solidity``), and stain statistics of the
colour-deconvolved optical densities (``segtme.stain.hed_od``): ``Nucleus: Hematoxylin OD
mean|sum|std dev|max|min|range`` (and Eosin); ``Cell:`` / ``Cytoplasm:`` ``… OD mean|std dev|max|min``;
``Nucleus/Cell area ratio``. Lengths are in µm when the MPP is known, else the names say ``px``.

Like QuPath (which measures at its "requested pixel size", 0.5 µm by default), intensities are
measured on the pixels of the resolution the label map has (SegTME: the model's working MPP);
``sum`` is the sum over those pixels, ``std dev`` the sample standard deviation (n - 1; undefined
for one pixel). Pure numpy functions; one sort per map, no per-object Python loop.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

MICRON = "µm"

#: stain statistics per compartment, as QuPath writes them
NUCLEUS_STATS = ("mean", "sum", "std dev", "max", "min", "range")
CELL_STATS = ("mean", "std dev", "max", "min")
STAINS = ("Hematoxylin", "Eosin")


def unit(mpp: float | None) -> str:
    return MICRON if mpp else "px"


def shape_names(compartment: str, mpp: float | None) -> dict[str, str]:
    """internal shape key -> QuPath name for ``compartment`` ("Nucleus" / "Cell")."""
    u = unit(mpp)
    return {
        "area": f"{compartment}: Area {u}^2",
        "perimeter": f"{compartment}: Perimeter {u}",
        "circularity": f"{compartment}: Circularity",
        "max_caliper": f"{compartment}: Max caliper {u}",
        "min_caliper": f"{compartment}: Min caliper {u}",
        "eccentricity": f"{compartment}: Eccentricity",
        "solidity": f"{compartment}: Solidity",
    }


def stain_names(compartment: str) -> dict[str, str]:
    """internal stain key (e.g. ``hematoxylin_od_std``) -> QuPath name for ``compartment``."""
    stats = NUCLEUS_STATS if compartment == "Nucleus" else CELL_STATS
    key = {"mean": "mean", "sum": "sum", "std dev": "std", "max": "max", "min": "min", "range": "range"}
    return {f"{s.lower()}_od_{key[st]}": f"{compartment}: {s} OD {st}" for s in STAINS for st in stats}


def label_stats(lab: np.ndarray, n: int, values: np.ndarray) -> dict[str, np.ndarray]:
    """Per-label statistics of per-pixel ``values`` over labels 1..n of ``lab`` (0 = none).

    lab: (H, W) int; values: (H, W) or (H, W, K) float. Returns arrays of shape (n,) or (n, K):
    ``count``, ``mean``, ``sum``, ``std`` (sample, n - 1; NaN for one pixel), ``max``, ``min``
    (NaN for labels without pixels). One stable sort of the labelled pixels + ``reduceat``."""
    m = lab > 0
    v = values[m]
    out = pixel_stats(lab[m], n, v)
    if values.ndim == 2:
        out = {k: (a[:, 0] if a.ndim == 2 else a) for k, a in out.items()}
    return out


def label_order(li: np.ndarray, n: int) -> np.ndarray:
    """``np.argsort(li, kind="stable")`` of pixel labels 1..n; a radix sort (uint16 keys) when
    n < 65536, which gives the same permutation several times faster."""
    key = li.astype(np.uint16) if n < 65536 else li
    return np.argsort(key, kind="stable")


def pixel_stats(li: np.ndarray, n: int, v: np.ndarray) -> dict[str, np.ndarray]:
    """``label_stats`` of labelled pixels given as a list: ``li`` (P,) labels in 1..n, ``v`` (P,)
    or (P, K) values (any float dtype; accumulated in float64). Returns (n, K) arrays (K = 1
    for 1-D ``v``)."""
    li = np.asarray(li).astype(np.int64, copy=False)
    v = np.asarray(v)
    if v.ndim == 1:
        v = v[:, None]
    K = v.shape[1]
    count = np.bincount(li, minlength=n + 1)[1 : n + 1].astype(np.float64)
    vk = [v[:, k].astype(np.float64) for k in range(K)]
    s = np.stack([np.bincount(li, x, n + 1)[1 : n + 1] for x in vk], 1)
    s2 = np.stack([np.bincount(li, x * x, n + 1)[1 : n + 1] for x in vk], 1)
    c = count[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(c > 0, s / np.maximum(c, 1), np.nan)
        var = np.where(c > 1, (s2 - s * s / np.maximum(c, 1)) / np.maximum(c - 1, 1), np.nan)
    std = np.sqrt(np.maximum(var, 0))
    mx = np.full((n, K), np.nan)
    mn = np.full((n, K), np.nan)
    if len(li):
        order = label_order(li, n)
        ls, vs = li[order], v[order].astype(np.float64)
        starts = np.flatnonzero(np.r_[True, ls[1:] != ls[:-1]])
        present = ls[starts] - 1
        mx[present] = np.maximum.reduceat(vs, starts, axis=0)
        mn[present] = np.minimum.reduceat(vs, starts, axis=0)
    return {"count": count, "mean": mean, "sum": s, "std": std, "max": mx, "min": mn}


def stain_columns(lab: np.ndarray, n: int, rgb: np.ndarray, stats: Sequence[str] = NUCLEUS_STATS) -> dict[str, np.ndarray]:
    """Haematoxylin / eosin OD statistics per label: ``{"hematoxylin_od_mean": (n,), ...}`` for the
    QuPath statistics ``stats`` (``mean``, ``sum``, ``std dev``, ``max``, ``min``, ``range``).
    rgb: (H, W, 3) uint8 at the resolution of ``lab``; only labelled pixels are deconvolved."""
    from ..stain import hed_od

    m = lab > 0
    st = pixel_stats(lab[m], n, hed_od(rgb[m])[:, :2])  # the labelled pixels only, in raster order
    key = {"mean": "mean", "sum": "sum", "std dev": "std", "max": "max", "min": "min", "range": "range"}
    out: dict[str, np.ndarray] = {}
    for j, s in enumerate(STAINS):
        for q in stats:
            a = st["max"][:, j] - st["min"][:, j] if q == "range" else st[key[q]][:, j]
            out[f"{s.lower()}_od_{key[q]}"] = a
    return out


def moments(lab: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Pixel-count area, centroid (corner convention: pixel centres at index + 0.5) and the
    inertia-ellipse axes of labels 1..n (same definitions as skimage ``regionprops``:
    ``major = 4 sqrt(l1)``, ``minor = 4 sqrt(l2)``, ``eccentricity = sqrt(1 - l2 / l1)``)."""
    m = lab > 0
    li = lab[m].astype(np.int64)
    ys, xs = np.nonzero(m)
    area = np.bincount(li, minlength=n + 1)[1 : n + 1].astype(np.float64)
    a = np.maximum(area, 1)
    sx = np.bincount(li, xs, n + 1)[1 : n + 1] / a
    sy = np.bincount(li, ys, n + 1)[1 : n + 1] / a
    dx = xs - sx[li - 1]
    dy = ys - sy[li - 1]
    cxx = np.bincount(li, dx * dx, n + 1)[1 : n + 1] / a
    cyy = np.bincount(li, dy * dy, n + 1)[1 : n + 1] / a
    cxy = np.bincount(li, dx * dy, n + 1)[1 : n + 1] / a
    tr = (cxx + cyy) / 2
    det = np.sqrt(np.maximum(((cxx - cyy) / 2) ** 2 + cxy**2, 0))
    l1, l2 = tr + det, np.maximum(tr - det, 0)
    ecc = np.sqrt(np.clip(1 - np.divide(l2, l1, out=np.ones_like(l1), where=l1 > 0), 0, 1))
    return {"area": area, "cx": sx + 0.5, "cy": sy + 0.5, "major": 4 * np.sqrt(l1), "minor": 4 * np.sqrt(l2),
            "eccentricity": ecc}


def calipers(hull_xy: np.ndarray, hull_index: np.ndarray, n: int, batch: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Max and min caliper (Feret) diameters of n convex polygons given as flat vertex arrays
    (``shapely.get_coordinates(hulls, return_index=True)``; rings may be closed). Max caliper = the
    largest vertex-to-vertex distance; min caliper = the smallest width over the edge directions
    (rotating calipers: for a convex polygon the minimum width is attained perpendicular to an
    edge). Exact, vectorised over batches of polygons padded to the largest vertex count."""
    mx = np.zeros(n)
    mn = np.zeros(n)
    if len(hull_xy) == 0:
        return mx, mn
    order = np.argsort(hull_index, kind="stable")
    xy, idx = hull_xy[order], hull_index[order]
    counts_all = np.bincount(idx, minlength=n)
    starts_all = np.r_[0, np.cumsum(counts_all)[:-1]]
    by_size = np.argsort(counts_all, kind="stable")  # batches of similar vertex counts: little padding
    for b0 in range(0, n, batch):
        sel = by_size[b0 : b0 + batch]
        c = counts_all[sel]
        K = int(c.max()) if len(c) else 0
        if K < 2:
            continue
        j = np.arange(K)
        valid = j[None, :] < c[:, None]  # (B, K)
        pos = starts_all[sel, None] + np.minimum(j[None, :], np.maximum(c[:, None] - 1, 0))
        P = xy[np.minimum(pos, len(xy) - 1)]  # (B, K, 2)
        P = np.where(valid[..., None], P, P[:, :1])  # padding repeats the first vertex (closed rings)
        X, Y = P[..., 0], P[..., 1]
        dx = X[:, :, None] - X[:, None, :]
        dy = Y[:, :, None] - Y[:, None, :]
        dx *= dx
        dy *= dy
        dx += dy  # = ((P_k - P_j) ** 2).sum(-1), the same two-term sum
        mx[sel] = np.sqrt(dx.max(axis=(1, 2)))
        # edges k -> k+1 (the padding repeats the first vertex, giving zero-length edges: ignored)
        E = np.roll(P, -1, axis=1) - P
        L = np.hypot(E[..., 0], E[..., 1])
        ok = (L > 1e-12) & valid
        nrm = np.stack([-E[..., 1], E[..., 0]], -1) / np.where(L > 1e-12, L, 1)[..., None]  # (B, K, 2)
        proj = nrm[:, :, None, 0] * X[:, None, :]  # (B, K edges, K vertices): nrm . P
        proj += nrm[:, :, None, 1] * Y[:, None, :]
        width = proj.max(axis=2) - proj.min(axis=2)
        width = np.where(ok, width, np.inf)
        w = width.min(axis=1)
        mn[sel] = np.where(np.isfinite(w), w, 0.0)
    return mx, mn


def polygons_from_rings(rings: Sequence[np.ndarray]) -> np.ndarray:
    """Shapely Polygons of ragged (K_i, 2) vertex arrays in one vectorised call; rings with fewer
    than 3 vertices become empty polygons."""
    import shapely

    n = len(rings)
    if n == 0:
        return np.zeros(0, object)
    arrs = [np.asarray(r, np.float64).reshape(-1, 2) for r in rings]
    ok = np.array([len(a) >= 3 for a in arrs])
    out = np.full(n, shapely.Polygon(), dtype=object)
    if ok.any():
        good = [arrs[i] for i in np.flatnonzero(ok)]
        idx = np.repeat(np.arange(len(good)), [len(a) for a in good])
        out[ok] = shapely.polygons(shapely.linearrings(np.concatenate(good), indices=idx))
    return out


def polygon_shape(geoms: np.ndarray) -> dict[str, np.ndarray]:
    """Perimeter, polygon area, solidity and calipers of an array of shapely Polygons (input
    units; empty polygons give 0 / solidity 1)."""
    import shapely

    n = len(geoms)
    perim = shapely.length(geoms)
    parea = shapely.area(geoms)
    hulls = shapely.convex_hull(geoms)
    harea = shapely.area(hulls)
    solidity = np.clip(np.divide(parea, harea, out=np.ones(n), where=harea > 0), 0, 1)
    hxy, hidx = shapely.get_coordinates(hulls, return_index=True)
    mx, mn = calipers(hxy, hidx, n)
    return {"perimeter": perim, "polygon_area": parea, "solidity": solidity, "max_caliper": mx, "min_caliper": mn}


def circularity(area: np.ndarray, perimeter: np.ndarray) -> np.ndarray:
    """4 pi area / perimeter^2, at most 1 (QuPath / ImageJ); NaN where the perimeter is 0."""
    area = np.asarray(area, np.float64)
    p = np.asarray(perimeter, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, np.minimum(1.0, 4.0 * np.pi * area / np.where(p > 0, p, 1.0) ** 2), np.nan)
