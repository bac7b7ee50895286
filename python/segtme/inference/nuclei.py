"""The nuclei table: the hand-off between segmentation and everything after it.

Maps go in (instance map + class probabilities), tables come out; TME features, GeoJSON export,
server responses and evaluation all read this table. Coordinates are **input-image pixels**
(x = column, y = row; for the server: full-resolution slide pixels after the tile offset is
added); ``mpp`` is the micrometres per pixel of those coordinates (None if unknown).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..taxonomy import Taxonomy

#: per-nucleus numeric columns (all length N), with their units
NUMERIC_COLUMNS: dict[str, str] = {
    "class_prob": "probability 0-1 (mean softmax of the assigned class over the nucleus)",
    "area_px": "px^2 (input image pixels)",
    "perimeter_px": "px",
    "major_axis_px": "px",
    "minor_axis_px": "px",
    "eccentricity": "unitless 0-1",
    "solidity": "unitless 0-1",
    "hematoxylin_od": "optical density (mean haematoxylin OD after colour deconvolution)",
}

#: optional per-nucleus columns kept in ``NucleiTable.extra`` (all length N). Keys ending in
#: ``_px`` are lengths in input px (scaled by ``translated``); the OD statistics are unitless
#: (``sum``: over the pixels of the measured resolution, the model's working MPP) —
#: see ``inference.measurements`` for the QuPath names.
EXTRA_COLUMNS: dict[str, str] = {
    "max_caliper_px": "px (largest Feret diameter of the outline)",
    "min_caliper_px": "px (smallest width of the convex hull)",
    **{f"{s}_od_{q}": "optical density" for s in ("hematoxylin", "eosin")
       for q in ("mean", "sum", "std", "max", "min", "range") if not (s == "hematoxylin" and q == "mean")},
    "mitosis_prob": "probability 0-1 (segtme.mitosis.detect.mark_mitoses)",
    "mitosis_atypical_prob": "probability 0-1 (segtme.mitosis.detect.mark_mitoses)",
}


@dataclass
class NucleiTable:
    """Columnar table of nuclei.

    ids: (N,) int64, unique, >= 1.
    class_id: (N,) int32, index into ``taxonomy.classes``.
    centroid: (N, 2) float64, (x, y) in input pixels.
    polygons: list of (K_i, 2) float64 arrays, (x, y) vertices in input pixels, closed implicitly.
    numeric columns: see NUMERIC_COLUMNS.
    mpp: micrometres per pixel of the coordinates, or None.
    """

    taxonomy: Taxonomy
    ids: np.ndarray
    class_id: np.ndarray
    centroid: np.ndarray
    polygons: list[np.ndarray]
    class_prob: np.ndarray
    area_px: np.ndarray
    perimeter_px: np.ndarray
    major_axis_px: np.ndarray
    minor_axis_px: np.ndarray
    eccentricity: np.ndarray
    solidity: np.ndarray
    hematoxylin_od: np.ndarray
    mpp: float | None = None
    meta: dict = field(default_factory=dict)
    #: further measurement columns (``EXTRA_COLUMNS`` keys; absent when not measured)
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name in ("class_id", "centroid", "polygons", *NUMERIC_COLUMNS):
            if len(getattr(self, name)) != n:
                raise ValueError(f"NucleiTable: column {name} has {len(getattr(self, name))} rows, expected {n}")
        for name, col in self.extra.items():
            if len(col) != n:
                raise ValueError(f"NucleiTable: extra column {name} has {len(col)} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls, taxonomy: Taxonomy, mpp: float | None = None) -> "NucleiTable":
        z = np.zeros(0)
        return cls(
            taxonomy, np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros((0, 2)), [],
            z.copy(), z.copy(), z.copy(), z.copy(), z.copy(), z.copy(), z.copy(), z.copy(), mpp,
        )

    @property
    def class_names(self) -> list[str]:
        names = self.taxonomy.names
        return [names[int(c)] for c in self.class_id]

    @property
    def roles(self) -> list[str]:
        cls = self.taxonomy.classes
        return [cls[int(c)].role for c in self.class_id]

    def subset(self, index: np.ndarray) -> "NucleiTable":
        """Rows selected by a boolean mask or an index array (ids kept)."""
        idx = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index, dtype=np.int64)
        return NucleiTable(
            self.taxonomy, self.ids[idx], self.class_id[idx], self.centroid[idx].reshape(-1, 2),
            [self.polygons[i] for i in idx],
            *(getattr(self, c)[idx] for c in NUMERIC_COLUMNS), mpp=self.mpp, meta=dict(self.meta),
            extra={k: np.asarray(v)[idx] for k, v in self.extra.items()},
        )

    def translated(self, dx: float, dy: float, scale: float = 1.0, mpp: float | None = None) -> "NucleiTable":
        """Coordinates mapped by p' = p * scale + (dx, dy); lengths scale by ``scale``, areas by
        ``scale**2``. Used to go from working-resolution tile pixels to full-resolution pixels."""
        s = float(scale)
        return NucleiTable(
            self.taxonomy, self.ids.copy(), self.class_id.copy(),
            self.centroid * s + np.array([dx, dy]),
            _moved(self.polygons, s, dx, dy),
            self.class_prob.copy(), self.area_px * s * s, self.perimeter_px * s, self.major_axis_px * s,
            self.minor_axis_px * s, self.eccentricity.copy(), self.solidity.copy(), self.hematoxylin_od.copy(),
            mpp=mpp if mpp is not None else (self.mpp / s if self.mpp else None), meta=dict(self.meta),
            extra={k: (np.asarray(v) * s if k.endswith("_px") else np.array(v, copy=True)) for k, v in self.extra.items()},
        )

    @staticmethod
    def concat(tables: list["NucleiTable"], renumber: bool = True) -> "NucleiTable":
        if not tables:
            raise ValueError("concat of no tables")
        t0 = tables[0]
        ids = np.concatenate([t.ids for t in tables]) if tables else np.zeros(0, np.int64)
        if renumber:
            ids = np.arange(1, len(ids) + 1, dtype=np.int64)
        # extra columns present in every non-empty table (an empty table may lack them)
        full = [t for t in tables if len(t)] or tables[:1]
        keys = [k for k in full[0].extra if all(k in t.extra for t in full)]
        extra = {k: np.concatenate([np.asarray(t.extra[k], np.float64) for t in full]) for k in keys}
        return NucleiTable(
            t0.taxonomy, ids,
            np.concatenate([t.class_id for t in full]).astype(np.int32),
            np.concatenate([t.centroid.reshape(-1, 2) for t in full]),
            [p for t in full for p in t.polygons],
            *(np.concatenate([getattr(t, c) for t in full]) for c in NUMERIC_COLUMNS),
            mpp=t0.mpp, meta=dict(t0.meta), extra=extra,
        )

    def to_records(self) -> list[dict]:
        """One dict per nucleus with native Python types (for CSV/JSON); µm units added when mpp known."""
        out = []
        names = self.taxonomy.names
        for i in range(len(self)):
            r = {
                "id": int(self.ids[i]),
                "class": names[int(self.class_id[i])],
                "class_id": int(self.class_id[i]),
                "centroid_x_px": float(self.centroid[i, 0]),
                "centroid_y_px": float(self.centroid[i, 1]),
            }
            for c in NUMERIC_COLUMNS:
                r[c] = float(getattr(self, c)[i])
            if self.mpp:
                m = self.mpp
                r.update(
                    centroid_x_um=r["centroid_x_px"] * m, centroid_y_um=r["centroid_y_px"] * m,
                    area_um2=r["area_px"] * m * m, perimeter_um=r["perimeter_px"] * m,
                    major_axis_um=r["major_axis_px"] * m, minor_axis_um=r["minor_axis_px"] * m,
                )
            out.append(r)
        return out


def _moved(polygons: list[np.ndarray], s: float, dx: float, dy: float) -> list[np.ndarray]:
    """``[p * s + np.array([dx, dy]) for p in polygons]`` in one numpy operation on the stacked
    vertices (the same values; the arrays returned are views of one array)."""
    if not polygons:
        return []
    arrs = [np.asarray(p).reshape(-1, 2) for p in polygons]
    flat = np.concatenate(arrs) * s + np.array([dx, dy])
    o = np.cumsum([len(a) for a in arrs]).tolist()
    return [flat[i:j] for i, j in zip([0] + o[:-1], o)]


def _is_sequential(inst: np.ndarray) -> bool:
    """True if the int32 labels of ``inst`` are already 0 (background) and 1..N, each present."""
    if inst.dtype != np.int32 or inst.size == 0 or int(inst.min()) < 0:
        return False
    return bool(np.all(np.bincount(inst.ravel())[1:] > 0))


# --------------------------------------------------------------------------- building the table
def hematoxylin_od(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin optical density per pixel: (..., 3) uint8 RGB -> (...) float32 (e.g. (H, W, 3)
    -> (H, W), or (P, 3) -> (P,)); the package's one colour deconvolution (``segtme.stain``),
    the quantity QuPath reports as "Hematoxylin OD"."""
    from ..stain import haematoxylin_od

    return haematoxylin_od(np.asarray(rgb, np.uint8))


def _drop_collinear(c: np.ndarray) -> np.ndarray:
    """Remove vertices lying on a straight line between their neighbours (closed ring)."""
    if len(c) > 1 and c[0, 0] == c[-1, 0] and c[0, 1] == c[-1, 1]:
        c = c[:-1]
    n = len(c)
    if n < 4:
        return c
    idx = np.arange(n)
    prev = c - c[idx - 1]
    nxt = c[(idx + 1) % n] - c
    keep = np.abs(prev[:, 0] * nxt[:, 1] - prev[:, 1] * nxt[:, 0]) > 1e-9
    return c[keep] if keep.sum() >= 3 else c


def _outline(mask: np.ndarray, y0: int, x0: int) -> np.ndarray:
    """Outer contour of a binary crop that has a 1-px empty margin, as (K, 2) float (x, y) in
    pixel-corner coordinates of the full map (QuPath convention: pixel (r, c) covers
    [c, c+1) x [r, r+1)). ``(y0, x0)`` is the full-map position of the crop's first *inner* pixel."""
    from skimage.measure import find_contours

    contours = find_contours(mask.astype(np.float32), 0.5)
    if not contours:
        return np.zeros((0, 2))
    c = _drop_collinear(max(contours, key=len))
    # crop (row, col) centre coords -> corner coords of the full map
    return np.stack([c[:, 1] - 1 + x0 + 0.5, c[:, 0] - 1 + y0 + 0.5], axis=1)


def _outlines_one_by_one(lab: np.ndarray) -> list[np.ndarray]:
    """Per-nucleus outlines with ``skimage.measure.find_contours`` (reference for
    ``contours.outer_contours``, and its fallback)."""
    from scipy import ndimage as ndi

    polys: list[np.ndarray] = []
    lab_p = np.pad(lab, 1)  # crops below get a 1-px empty margin without per-nucleus padding
    for i, sl in enumerate(ndi.find_objects(lab)):
        if sl is None:  # cannot happen after relabel_sequential, kept for safety
            polys.append(np.zeros((0, 2)))
            continue
        ys, xs = sl
        crop = lab_p[ys.start : ys.stop + 2, xs.start : xs.stop + 2] == i + 1
        polys.append(_outline(crop, ys.start, xs.start))
    return polys


def build_nuclei_table(
    inst: np.ndarray,
    taxonomy: Taxonomy,
    *,
    prob: np.ndarray | None = None,
    class_id: np.ndarray | None = None,
    class_prob: np.ndarray | None = None,
    cls_map: np.ndarray | None = None,
    rgb: np.ndarray | None = None,
    mpp: float | None = None,
) -> NucleiTable:
    """Nuclei table from an instance map, in that map's own pixel coordinates (corner convention).

    inst: (H, W) int labels (0 = background; relabelled to 1..N in sorted label order).
    Class per nucleus, by priority: ``class_id`` (N,) given; else majority vote of ``prob``
    (C, H, W) softmax; else majority of ``cls_map`` (H, W) class values; else class 1.
    rgb: the image at the same resolution (for haematoxylin OD; NaN-free zeros if absent).
    mpp: micrometres per pixel of ``inst`` (None if unknown). Callers map to input-image pixels
    with ``NucleiTable.translated``.
    """
    import shapely

    from .contours import outer_contours
    from .postprocess import classify_instances, relabel_sequential

    inst = np.asarray(inst)
    if inst.ndim != 2:
        raise ValueError(f"instance map must be 2-D (H, W), got shape {inst.shape}")
    lab = inst if _is_sequential(inst) else relabel_sequential(inst.astype(np.int64))
    n = int(lab.max())
    if n == 0:
        return NucleiTable.empty(taxonomy, mpp)

    if class_id is not None:
        cid = np.asarray(class_id, np.int32)
        cp = np.ones(n, np.float32) if class_prob is None else np.asarray(class_prob, np.float32)
        if len(cid) != n or len(cp) != n:
            raise ValueError(f"class_id/class_prob need {n} entries (one per instance), got {len(cid)}/{len(cp)}")
    elif prob is not None:
        cid, cp = classify_instances(lab, prob)
    elif cls_map is not None:
        cm = np.asarray(cls_map).astype(np.int64)
        if cm.shape != lab.shape:
            raise ValueError(f"class map shape {cm.shape} differs from instance map shape {lab.shape}")
        C = max(int(cm.max()) + 1, 2)
        m = lab > 0
        counts = np.bincount(lab[m] * C + cm[m], minlength=(n + 1) * C).reshape(n + 1, C)[1:]
        counts[:, 0] = -1  # background never wins while a class pixel exists
        cid = counts.argmax(axis=1).astype(np.int32)
        cid[cid == 0] = 1
        cp = np.ones(n, np.float32)
    else:
        cid = np.ones(n, np.int32)
        cp = np.ones(n, np.float32)
    if cid.size and (cid.min() < 0 or cid.max() >= taxonomy.num_classes):
        raise ValueError(f"class ids {int(cid.min())}..{int(cid.max())} outside taxonomy {taxonomy.name} (0..{taxonomy.num_classes - 1})")

    from .measurements import moments, polygon_shape, stain_columns

    extra: dict[str, np.ndarray] = {}
    hod = None
    if rgb is not None:
        if rgb.shape[:2] != lab.shape:
            raise ValueError(f"rgb shape {rgb.shape[:2]} differs from instance map shape {lab.shape}")
        st = stain_columns(lab, n, np.asarray(rgb, np.uint8))  # nucleus pixels only, one sort
        hod = st.pop("hematoxylin_od_mean")
        extra.update(st)

    mo = moments(lab, n)  # vectorised (same definitions as skimage regionprops)
    cen = np.stack([mo["cx"], mo["cy"]], axis=1)

    polys = outer_contours(lab, n)  # all nuclei at once; same polygons as the loop below
    if polys is None:  # segments that do not chain into rings: never expected, kept for safety
        polys = _outlines_one_by_one(lab)
    rings = [p if len(p) >= 3 else np.zeros((3, 2)) for p in polys]
    geoms = shapely.polygons(
        shapely.linearrings(np.concatenate(rings), indices=np.repeat(np.arange(n), [len(r) for r in rings]))
    )
    sh = polygon_shape(geoms)  # closed-ring perimeter, solidity, calipers (0 for degenerate rings)
    extra["max_caliper_px"] = sh["max_caliper"]
    extra["min_caliper_px"] = sh["min_caliper"]
    cols = {
        "area_px": mo["area"],
        "perimeter_px": sh["perimeter"],
        "major_axis_px": mo["major"],
        "minor_axis_px": mo["minor"],
        "eccentricity": mo["eccentricity"],
        "solidity": sh["solidity"],
    }
    return NucleiTable(
        taxonomy=taxonomy,
        ids=np.arange(1, n + 1, dtype=np.int64),
        class_id=cid,
        centroid=cen,
        polygons=polys,
        class_prob=cp.astype(np.float64),
        hematoxylin_od=hod if hod is not None else np.zeros(n),
        mpp=mpp,
        extra=extra,
        **cols,
    )
