"""QuPath GeoJSON export, in the layout QuPath (0.4 - 0.6) itself writes and reads.

Checked against QuPath's ``qupath.lib.io.PathObjectTypeAdapters``: a ``FeatureCollection`` of
``Feature``s, each with a UUID ``id``; ``geometry`` a GeoJSON Polygon in full-resolution pixel
coordinates (origin top-left, pixel corner convention); ``properties.objectType`` =
``"detection"`` or ``"cell"``; ``properties.classification`` = ``{"name", "color": [r, g, b]}``;
``properties.measurements`` a name -> number map; for cells the nucleus polygon as
``nucleusGeometry`` at the Feature level (QuPath reads it from there). ``isLocked`` is written
as false (QuPath reads it when present).

Measurement names are QuPath's cell-detection names with units in the names
(``Nucleus: Area µm^2``, ``Nucleus: Max caliper µm``, ``Nucleus: Hematoxylin OD mean``, ``Cell: …``,
``Cytoplasm: …``, ``Nucleus/Cell area ratio``; see ``inference.measurements``) when the MPP is
known and ``px`` versions (``Nucleus: Area px^2``) when it is not. Values that are not finite are
left out (JSON has no NaN).

Provenance (``export.provenance``) goes into the FeatureCollection's ``properties.segtme``
(QuPath ignores foreign members); each object carries only the short run id
``properties.segtmeRun``. The TME report is *not* an object by default: an image-sized
annotation would become the parent of a user's own annotations on QuPath's *Resolve hierarchy*;
its measurements are in ``properties.segtme.tme`` unless ``report_annotation=True`` asks for
the annotation.
"""

from __future__ import annotations

import gzip as _gzip
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..inference.nuclei import NucleiTable
from .atomic import atomic_write

MICRON = "µm"


def measurement_names(mpp: float | None) -> dict[str, str]:
    """Nucleus table column -> QuPath measurement name (µm units when ``mpp`` is known, else px)."""
    from ..inference.measurements import shape_names, stain_names

    names = dict(shape_names("Nucleus", mpp))
    names.update(stain_names("Nucleus"))
    names["class_prob"] = CLASS_PROBABILITY
    return names


#: name of the class-probability measurement (mean softmax of the assigned class)
CLASS_PROBABILITY = "Class probability"
#: further ``NucleiTable.extra`` columns written when present -> measurement name
OTHER_MEASUREMENTS = {"mitosis_prob": "Mitosis: probability", "mitosis_atypical_prob": "Mitosis: atypical probability"}


def measurement_columns(table: NucleiTable, cells: Any = None) -> list[tuple[str, np.ndarray]]:
    """(QuPath name, (N,) float values) of every measurement of the table's nuclei — shape,
    haematoxylin / eosin OD statistics (those measured), class probability — and, when
    ``cells`` (an ``inference.cells.CellTable`` of the same rows) is given, the ``Cell:`` /
    ``Cytoplasm:`` group and ``Nucleus/Cell area ratio``. Lengths in µm when ``table.mpp`` is
    known, else px; NaN where undefined."""
    from ..inference.measurements import circularity

    names = measurement_names(table.mpp)
    m = float(table.mpp) if table.mpp else 1.0
    area = np.asarray(table.area_px, np.float64)
    perim = np.asarray(table.perimeter_px, np.float64)
    ex = table.extra
    cols: dict[str, np.ndarray] = {
        "area": area * m * m,
        "perimeter": perim * m,
        "circularity": circularity(area, perim),
    }
    if "max_caliper_px" in ex:
        cols["max_caliper"] = np.asarray(ex["max_caliper_px"], np.float64) * m
        cols["min_caliper"] = np.asarray(ex["min_caliper_px"], np.float64) * m
    cols["eccentricity"] = np.asarray(table.eccentricity, np.float64)
    cols["solidity"] = np.asarray(table.solidity, np.float64)
    measured_od = "hematoxylin_od_sum" in ex
    for k in names:
        if "_od_" not in k:
            continue
        if k == "hematoxylin_od_mean":
            if measured_od or np.any(table.hematoxylin_od):
                cols[k] = np.asarray(table.hematoxylin_od, np.float64)
        elif k in ex:
            cols[k] = np.asarray(ex[k], np.float64)
    cols["class_prob"] = np.asarray(table.class_prob, np.float64)
    out = [(names[k], v) for k, v in cols.items()]
    out += [(name, np.asarray(ex[k], np.float64)) for k, name in OTHER_MEASUREMENTS.items() if k in ex]
    if cells is not None:
        out += [(k, np.asarray(v, np.float64)) for k, v in cells.measurements.items()]
    return out


def _prepared(cols: list[tuple[str, np.ndarray]]) -> list[tuple[str, list, list]]:
    """Columns as (name, rounded Python floats, finite flags) for fast per-object dicts."""
    out = []
    for name, v in cols:
        v = np.asarray(v, np.float64)
        fin = np.isfinite(v)
        out.append((name, np.round(np.where(fin, v, 0.0), 6).tolist(), fin.tolist()))
    return out


def _measurements_at(cols: list[tuple[str, list, list]], i: int) -> dict[str, float]:
    return {name: vals[i] for name, vals, fin in cols if fin[i]}


def _measurement_dicts(cols: list[tuple[str, np.ndarray]], n: int) -> list[dict[str, float]]:
    """``[_measurements_at(_prepared(cols), i) for i in range(n)]`` built row-wise: one rounding
    and one ``tolist`` of the (n, k) matrix, ``dict(zip(names, row))`` for rows whose values are
    all finite (the common case); the same dicts (keys in column order, non-finite left out)."""
    if not cols:
        return [{} for _ in range(n)]
    names = [name for name, _ in cols]
    M = np.empty((n, len(cols)), np.float64)
    for j, (_, v) in enumerate(cols):
        M[:, j] = np.asarray(v, np.float64)
    fin = np.isfinite(M)
    rows = np.round(np.where(fin, M, 0.0), 6).tolist()
    all_fin = fin.all(axis=1).tolist()
    out = []
    for i, row in enumerate(rows):
        if all_fin[i]:
            out.append(dict(zip(names, row)))
        else:
            f = fin[i].tolist()
            out.append({name: x for name, x, ok in zip(names, row, f) if ok})
    return out


def nucleus_measurements(table: NucleiTable, i: int) -> dict[str, float]:
    """QuPath measurements of nucleus ``i`` (lengths in µm when ``table.mpp`` is known, else px)."""
    return _measurements_at(_prepared(measurement_columns(table.subset(np.array([i])))), 0)


def _ring(poly: np.ndarray, ndigits: int = 3) -> list[list[float]]:
    """Closed ring (first vertex repeated at the end) as a list of [x, y], rounded to
    ``ndigits`` decimals (numpy rounding: a value exactly half-way at the last digit may round
    differently from Python's ``round`` in the final digit)."""
    p = np.round(np.asarray(poly, dtype=np.float64).reshape(-1, 2), ndigits)
    pts = p.tolist()
    if pts and pts[0] != pts[-1]:
        pts.append(list(pts[0]))
    return pts


def _valid_polygon(poly: np.ndarray):
    """A valid shapely Polygon for a vertex array (largest part if it had to be repaired), or None."""
    import shapely
    from shapely.geometry import Polygon
    from shapely.geometry.polygon import orient

    p = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    if len(p) < 3:
        return None
    g = Polygon(p)
    if not g.is_valid:
        g = shapely.make_valid(g)
        parts = [x for x in getattr(g, "geoms", [g]) if x.geom_type == "Polygon" and x.area > 0]
        if not parts:
            return None
        g = max(parts, key=lambda x: x.area)
    if g.is_empty or g.area <= 0:
        return None
    return orient(g, sign=1.0)


def _check_rings(polys: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[int], np.ndarray, np.ndarray]:
    """(vertex arrays, indices with >= 3 vertices, their shapely Polygons, valid-with-area mask),
    the polygons built and checked in one vectorised shapely call."""
    import shapely

    arrs = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polys]
    ok = [k for k, a in enumerate(arrs) if len(a) >= 3]
    if not ok:
        return arrs, ok, np.zeros(0, object), np.zeros(0, bool)
    lens = np.array([len(arrs[k]) for k in ok], np.int64)
    flat = np.concatenate([arrs[k] for k in ok])
    # each ring closed (its first vertex repeated after its last), in one gather
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    rel = np.arange(int(lens.sum()) + len(ok)) - np.repeat(starts + np.arange(len(ok)), lens + 1)
    coords = flat[np.repeat(starts, lens + 1) + np.where(rel == np.repeat(lens, lens + 1), 0, rel)]
    idx = np.repeat(np.arange(len(ok)), lens + 1)
    geoms = shapely.polygons(shapely.linearrings(coords, indices=idx))
    return arrs, ok, geoms, shapely.is_valid(geoms) & (shapely.area(geoms) > 0)


def _valid_polygons(polys: Sequence[np.ndarray]) -> list:
    """``[_valid_polygon(p) for p in polys]``, with the common case (a valid simple polygon)
    built and checked in one vectorised shapely call; only invalid ones take the repair path."""
    from shapely.geometry.polygon import orient

    out: list = [None] * len(polys)
    arrs, ok, geoms, valid = _check_rings(polys)
    for j, k in enumerate(ok):
        out[k] = orient(geoms[j], sign=1.0) if valid[j] else _valid_polygon(arrs[k])
    return out


def _oriented_rings(polys: Sequence[np.ndarray]) -> list:
    """For each vertex array: its exterior ring as an (n, 2) float64 array (not closed), oriented
    counter-clockwise (positive shoelace area; the same ring ``orient(Polygon(p), 1.0)`` gives),
    when it is a valid polygon of positive area; otherwise the repaired shapely Polygon of
    ``_valid_polygon`` (or None). No shapely object is kept for the common (valid) case."""
    out: list = [None] * len(polys)
    arrs, ok, _, valid = _check_rings(polys)
    for j, k in enumerate(ok):
        a = arrs[k]
        if not valid[j]:
            out[k] = _valid_polygon(a)
            continue
        x, y = a[:, 0], a[:, 1]
        signed = float(x[:-1] @ y[1:] - x[1:] @ y[:-1] + x[-1] * y[0] - x[0] * y[-1])  # 2 x shoelace area
        # shapely's orient reverses the closed ring: p0, p[n-1], ..., p1
        out[k] = a if signed > 0 else np.concatenate([a[:1], a[:0:-1]])
    return out


def _oriented_vertices(polys: Sequence[np.ndarray]) -> tuple[list, list, list, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """The shared first half of ``_ring_coordinates`` and ``_ring_texts`` for a batch:
    ``(out, arrs, good, P, starts, lens)``. ``out`` holds the repaired shapely Polygon of
    ``_valid_polygon`` at each invalid ring and None elsewhere; ``good`` lists the indices of the
    valid rings, whose vertices, oriented as shapely's ``orient`` does (a clockwise ring becomes
    p0, p[n-1], ..., p1), are ``P[starts[j]:starts[j] + lens[j]]`` (unrounded, not closed).
    ``P``, ``starts``, ``lens`` are None when no ring is valid."""
    out: list = [None] * len(polys)
    arrs, ok, _, valid = _check_rings(polys)
    good = [k for j, k in enumerate(ok) if valid[j]]
    for j, k in enumerate(ok):
        if not valid[j]:
            out[k] = _valid_polygon(arrs[k])
    if not good:
        return out, arrs, good, None, None, None
    lens = np.array([len(arrs[k]) for k in good], np.int64)
    xy = np.concatenate([arrs[k] for k in good])
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    ends = np.repeat(starts + lens, lens)
    g = np.repeat(np.arange(len(good)), lens)
    i = np.arange(len(xy))
    nxt = np.where(i + 1 == ends, np.repeat(starts, lens), i + 1)
    x, y = xy[:, 0], xy[:, 1]
    # 2 x the shoelace area (the sign is all that is used: valid rings have an area well away from 0)
    signed = np.bincount(g, weights=x * y[nxt] - x[nxt] * y, minlength=len(good))
    rel = i - np.repeat(starts, lens)
    src = np.where(np.repeat(signed <= 0, lens) & (rel > 0), ends - rel, i)
    return out, arrs, good, xy[src], starts, lens


def _ring_coordinates(polys: Sequence[np.ndarray], ndigits: int = 3) -> list:
    """``[_geometry_of(g)["coordinates"][0] if isinstance(g, np.ndarray) else g for g in
    _oriented_rings(polys)]`` for a batch, vectorised: the valid rings are checked in one shapely
    call, oriented by their shoelace sign, rounded and converted to Python lists in one numpy
    pass each; each item is the closed ring as a list of [x, y] (first vertex repeated at the
    end), the repaired shapely Polygon of ``_valid_polygon`` for an invalid ring, or None."""
    out, _, good, P, starts, lens = _oriented_vertices(polys)
    if not good:
        return out
    pts = np.round(P, ndigits).tolist()
    b0 = starts.tolist()
    b1 = (starts + lens).tolist()
    for j, k in enumerate(good):
        r = pts[b0[j]:b1[j]]
        if r[0] != r[-1]:
            r.append(list(r[0]))
        out[k] = r
    return out


#: largest |coordinate| the numpy number writer handles (beyond it: the encoder, ring by ring)
_TEXT_MAX = 1e12


def _number_chars(v: np.ndarray) -> np.ndarray:
    """(N, 17) uint8 ASCII of values already rounded to 3 decimals (|v| < ``_TEXT_MAX``), 0 where
    no character: the text ``json`` writes for them (``float.__repr__``: the 3-decimal number
    with trailing zeros dropped, at least one decimal, ``-`` for negatives and -0.0)."""
    neg = np.signbit(v)
    k = np.rint(np.abs(v) * 1000.0).astype(np.int64)  # np.round(x, 3) = rint(x * 1000) / 1000
    ip, fr = np.divmod(k, 1000)
    M = np.zeros((len(v), 17), np.uint8)
    M[:, 0] = np.where(neg, ord("-"), 0)
    t = ip.copy()
    ndig = np.ones(len(v), np.int64)
    for j in range(12, 0, -1):  # 12 integer digits, the least significant at column 12
        M[:, j] = t % 10 + 48
        t //= 10
    for p in range(1, 12):
        ndig += ip >= 10**p
    M[:, 1:13][np.arange(1, 13)[None, :] <= 12 - ndig[:, None]] = 0  # no leading zeros
    M[:, 13] = ord(".")
    d1, d2, d3 = fr // 100, fr // 10 % 10, fr % 10
    M[:, 14] = d1 + 48
    M[:, 15] = np.where((d2 > 0) | (d3 > 0), d2 + 48, 0)
    M[:, 16] = np.where(d3 > 0, d3 + 48, 0)
    return M


def _ring_texts(polys: Sequence[np.ndarray]) -> list:
    """For each vertex array: the JSON text ``_ENC.encode(ring)`` of its closed ring from
    ``_ring_coordinates`` (same orientation, rounding and closing), written for the whole batch
    by numpy (``_number_chars``) instead of Python lists + the encoder; the repaired shapely
    Polygon for an invalid ring, or None (as ``_ring_coordinates``)."""
    out, arrs, good, P, starts, lens = _oriented_vertices(polys)
    if not good:
        return out
    ends = starts + lens
    R = np.round(P, 3)
    if not (np.isfinite(R).all() and np.abs(R).max() < _TEXT_MAX):
        for k, r in zip(good, _ring_coordinates([arrs[k] for k in good])):
            out[k] = _ENC.encode(r)
        return out
    close = (R[starts] != R[ends - 1]).any(axis=1)  # as _ring_coordinates: repeat the first vertex
    tot = lens + close
    reps = np.repeat(np.arange(len(good)), tot)
    relc = np.arange(int(tot.sum())) - np.repeat(np.concatenate([[0], np.cumsum(tot)[:-1]]), tot)
    vid = np.repeat(starts, tot) + np.where(relc == np.repeat(lens, tot), 0, relc)
    V = len(vid)
    rows = np.zeros((V, 39), np.uint8)
    rows[:, 0] = np.where(relc == 0, ord("["), 0)  # the ring's opening bracket
    rows[:, 1] = ord("[")
    rows[:, 2:19] = _number_chars(R[vid, 0])
    rows[:, 19] = ord(",")
    rows[:, 20:37] = _number_chars(R[vid, 1])
    rows[:, 37] = ord("]")
    last = relc == np.repeat(tot - 1, tot)
    rows[:, 38] = np.where(last, ord("]"), ord(","))
    keep = rows != 0
    text = rows[keep].tobytes().decode("ascii")
    per_ring = np.bincount(reps, weights=keep.sum(axis=1), minlength=len(good)).astype(np.int64)
    o = np.concatenate([[0], np.cumsum(per_ring)]).tolist()
    for j, k in enumerate(good):
        out[k] = text[o[j]:o[j + 1]]
    return out


def _geometry_of(g) -> dict[str, Any]:
    """``_geometry`` for an item of ``_oriented_rings`` (ring array or shapely Polygon)."""
    if isinstance(g, np.ndarray):
        return {"type": "Polygon", "coordinates": [_ring(g)]}
    return _geometry(g)


def _polygon_of(g) -> dict[str, Any]:
    """GeoJSON Polygon of an item of ``_ring_coordinates`` (closed [x, y] list or shapely Polygon)."""
    if isinstance(g, list):
        return {"type": "Polygon", "coordinates": [g]}
    return _geometry(g)


def _geometry(g) -> dict[str, Any]:
    """GeoJSON Polygon dict from a shapely Polygon (exterior ring only for nuclei; holes kept)."""
    rings = [_ring(np.asarray(g.exterior.coords)[:-1])]
    rings += [_ring(np.asarray(r.coords)[:-1]) for r in g.interiors]
    return {"type": "Polygon", "coordinates": rings}


def cell_polygons(table: NucleiTable, expansion_px: float, nuclei: list | None = None) -> list:
    """Cell outlines by the *Voronoi* method (kept for comparison; the export uses label
    expansion, ``inference.cells.build_cells``): each nucleus grown by ``expansion_px`` (input
    px), limited to its Voronoi region of the nucleus centroids (box envelope) so that
    neighbouring cells do not overlap. Returns shapely geometries (None where the nucleus polygon
    is degenerate). Not clipped to the image."""
    import shapely
    from shapely.geometry import MultiPoint

    nuclei = nuclei if nuclei is not None else [_valid_polygon(p) for p in table.polygons]
    if expansion_px <= 0 or len(table) == 0:
        return list(nuclei)
    grown = [g.buffer(expansion_px) if g is not None else None for g in nuclei]
    if len(table) == 1:
        return grown
    pts = [tuple(c) for c in np.asarray(table.centroid)]
    # a box envelope just beyond the nuclei: buffering the points by a huge distance made GEOS
    # build enormous polygons (2000 nuclei: 136 s, 8.8 GB; with the box: 0.01 s)
    x0, y0, x1, y1 = MultiPoint(pts).bounds
    pad = 2 * float(expansion_px) + 1
    vor = shapely.voronoi_polygons(MultiPoint(pts), extend_to=shapely.box(x0 - pad, y0 - pad, x1 + pad, y1 + pad))
    cells = list(vor.geoms)
    tree = shapely.STRtree(cells)
    valid = [k for k, n in enumerate(nuclei) if n is not None]
    ntree = shapely.STRtree([nuclei[k] for k in valid])
    out = []
    for k, (g, n) in enumerate(zip(grown, nuclei)):
        if g is None:
            out.append(None)
            continue
        idx = tree.query(shapely.points(pts[k]), predicate="intersects")
        region = cells[int(idx[0])] if len(idx) else None
        c = g.intersection(region).union(n) if region is not None else g
        # never cover another nucleus (a large nucleus may reach into a neighbour's Voronoi cell)
        others = [nuclei[valid[q]] for q in ntree.query(c, predicate="intersects") if valid[q] != k]
        if others:
            c = c.difference(shapely.union_all(others)).union(n)
        if c.geom_type != "Polygon":
            parts = [x for x in getattr(c, "geoms", []) if x.geom_type == "Polygon"]
            c = max(parts, key=lambda x: x.area) if parts else n
        out.append(c)
    return out


def nuclei_to_features(
    table: NucleiTable,
    output_type: str = "detection",
    *,
    cell_expansion_um: float = 5.0,
    cells: Any = None,
    id_seed: int | None = None,
    ids: Sequence[str] | None = None,
    run: str | None = None,
) -> list[dict[str, Any]]:
    """One QuPath Feature per nucleus (coordinates = the table's input/full-res px).

    output_type: "detection" (geometry = nucleus) or "cell" (geometry = the cell of ``cells``, an
    ``inference.cells.CellTable`` of the same rows — built here from the nuclei alone, shapes
    only, with ``cell_expansion_um`` when not given — and ``nucleusGeometry`` = nucleus).
    Nuclei with degenerate polygons (< 3 vertices / zero area) are skipped. ``ids``: the objects'
    UUIDs (e.g. shared with the CSV); else generated (``id_seed``: reproducible). ``run``: short
    provenance id written as ``properties.segtmeRun``.
    """
    return list(iter_features(table, output_type, cell_expansion_um=cell_expansion_um, cells=cells,
                              id_seed=id_seed, ids=ids, run=run))


def _cells_for(table: NucleiTable, cell_expansion_um: float):
    """Shape-only cells of a table (no image at hand): confined to ``meta["image_size"]`` when
    known, else to the nuclei's bounds grown by the expansion (e.g. one streamed slide tile)."""
    from ..inference.cells import DEFAULT_EXPANSION_PX, CellOptions, build_cells

    return build_cells(table, None, CellOptions(expansion_um=cell_expansion_um, expansion_px=DEFAULT_EXPANSION_PX),
                       image_size=table.meta.get("image_size"))


def object_ids(n: int, id_seed: int | None = None) -> list[str]:
    """``n`` UUID4 strings (reproducible for an ``id_seed``)."""
    from .ids import uuid4_strings

    return uuid4_strings(n, np.random.default_rng(id_seed) if id_seed is not None else None)


def iter_features(
    table: NucleiTable,
    output_type: str = "detection",
    *,
    cell_expansion_um: float = 5.0,
    cells: Any = None,
    id_seed: int | None = None,
    ids: Sequence[str] | None = None,
    run: str | None = None,
    batch: int = 4096,
) -> Iterator[dict[str, Any]]:
    """``nuclei_to_features`` as a generator (same Features, same order, same ids for the same
    ``id_seed`` / ``ids``), built ``batch`` nuclei at a time, so a writer that consumes it holds
    only one batch of Python Features in memory."""
    if output_type not in ("detection", "cell"):
        raise ValueError(f"output_type must be 'detection' or 'cell', got {output_type!r}")
    tax = table.taxonomy
    classif = [(c.name, [int(v) for v in c.color]) for c in tax.classes]
    n = len(table)
    if ids is None:
        ids = object_ids(n, id_seed)
    elif len(ids) != n:
        raise ValueError(f"ids: {len(ids)} given for {n} nuclei")
    if output_type == "cell" and cells is None:
        cells = _cells_for(table, cell_expansion_um)
    if cells is not None and len(cells) != n:
        raise ValueError(f"cells: {len(cells)} rows for {n} nuclei")
    step = max(1, int(batch))
    for b0 in range(0, n, step):
        b1 = min(n, b0 + step)
        rows = np.arange(b0, b1)
        sub = table.subset(rows)
        csub = cells.subset(rows) if cells is not None else None
        nuclei = _ring_coordinates(sub.polygons)
        cell_rings = _ring_coordinates(csub.polygons) if output_type == "cell" else None
        meas = _measurement_dicts(measurement_columns(sub, csub), b1 - b0)
        class_ids = np.asarray(sub.class_id).tolist()
        for j, g in enumerate(nuclei):
            if g is None:
                continue
            name, color = classif[int(class_ids[j])]
            f: dict[str, Any] = {"type": "Feature", "id": ids[b0 + j]}
            if cell_rings is not None:
                c = cell_rings[j]
                f["geometry"] = _polygon_of(c if c is not None else g)
                f["nucleusGeometry"] = _polygon_of(g)
            else:
                f["geometry"] = _polygon_of(g)
            props: dict[str, Any] = {
                "objectType": output_type,
                "classification": {"name": name, "color": list(color)},
                "isLocked": False,
                "measurements": meas[j],
            }
            if run is not None:
                props["segtmeRun"] = run
            f["properties"] = props
            yield f


def iter_feature_texts(
    table: NucleiTable,
    *,
    id_seed: int | None = None,
    ids: Sequence[str] | None = None,
    run: str | None = None,
    batch: int = 4096,
    cell_expansion_um: float = 5.0,
    cells: Any = None,
) -> Iterator[list[str]]:
    """The detection Features of ``iter_features`` as JSON text, one list per batch: each string
    is ``_ENC.encode(f)`` of the same Feature (byte-identical), the ring written by numpy
    (``_ring_texts``) and only the properties by the encoder. ``cells`` must be None."""
    if cells is not None:
        raise ValueError("iter_feature_texts writes detections only")
    tax = table.taxonomy
    classif = [_ENC.encode({"name": c.name, "color": [int(v) for v in c.color]}) for c in tax.classes]
    n = len(table)
    if ids is None:
        ids = object_ids(n, id_seed)
    elif len(ids) != n:
        raise ValueError(f"ids: {len(ids)} given for {n} nuclei")
    tail = "" if run is None else ',"segtmeRun":' + _ENC.encode(run)
    step = max(1, int(batch))
    for b0 in range(0, n, step):
        b1 = min(n, b0 + step)
        sub = table.subset(np.arange(b0, b1))
        rings = _ring_texts(sub.polygons)
        meas = _measurement_dicts(measurement_columns(sub, None), b1 - b0)
        class_ids = np.asarray(sub.class_id).tolist()
        texts = []
        for j, g in enumerate(rings):
            if g is None:
                continue
            geom = ('{"type":"Polygon","coordinates":[' + g + "]}") if isinstance(g, str) else _ENC.encode(_geometry(g))
            texts.append('{"type":"Feature","id":' + _ENC.encode(ids[b0 + j]) + ',"geometry":' + geom
                         + ',"properties":{"objectType":"detection","classification":' + classif[class_ids[j]]
                         + ',"isLocked":false,"measurements":' + _ENC.encode(meas[j]) + tail + "}}")
        yield texts


def feature_collection(
    table: NucleiTable,
    output_type: str = "detection",
    *,
    report: dict | None = None,
    cell_expansion_um: float = 5.0,
    cells: Any = None,
    id_seed: int | None = None,
    ids: Sequence[str] | None = None,
    annotations: Sequence[dict[str, Any]] = (),
    provenance: dict[str, Any] | None = None,
    report_annotation: bool = False,
) -> dict[str, Any]:
    """A QuPath-readable FeatureCollection of the nuclei (``annotations`` — PAGET tissue regions —
    first, so one File > Import objects brings both). ``provenance`` (a ``Provenance.to_dict()``)
    and the TME ``report``'s measurements go into ``properties.segtme``; with
    ``report_annotation`` the report is also an image-sized annotation (QuPath's *Resolve
    hierarchy* then makes it the parent of every object inside, a user's annotations included)."""
    run = (provenance or {}).get("run")
    feats = list(annotations) + nuclei_to_features(table, output_type, cell_expansion_um=cell_expansion_um,
                                                   cells=cells, id_seed=id_seed, ids=ids, run=run)
    if report_annotation:
        rep = _report_feature(table, report)
        if rep is not None:
            feats.append(rep)
    return {**_collection_head(table, provenance, report), "features": feats}


def _collection_head(table: NucleiTable, provenance: dict[str, Any] | None, report: dict | None) -> dict[str, Any]:
    """``{"type": "FeatureCollection"[, "properties": {"segtme": {...}}]}``."""
    head: dict[str, Any] = {"type": "FeatureCollection"}
    seg: dict[str, Any] = dict(provenance or {})
    tme = _report_measurements(report)
    if tme:
        seg["tme"] = tme
    if seg:
        head["properties"] = {"segtme": seg}
    return head


def _report_measurements(report: dict | None) -> dict[str, float]:
    if report is None:
        return {}
    try:
        from ..tme.report import report_measurements  # type: ignore[import-not-found]
    except ImportError:
        return {}
    try:
        return {k: float(v) for k, v in report_measurements(report).items() if _finite(v)}
    except (KeyError, TypeError, ValueError, AttributeError):
        return {}


def _report_feature(table: NucleiTable, report: dict | None) -> dict[str, Any] | None:
    """The annotation Feature carrying the TME report's measurements (see ``feature_collection``),
    or None."""
    size = table.meta.get("image_size")
    if report is None or not size:
        return None
    meas = _report_measurements(report)
    w, h = size
    from .ids import KIND_REPORT, annotation_key, segtme_id

    return {
        "type": "Feature",
        # a SegTME report id (kind 3): the QuPath extension never analyses it as a target
        "id": segtme_id(KIND_REPORT, annotation_key(str(table.meta.get("source") or "")), 0),
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [w, 0], [w, h], [0, h], [0, 0]]]},
        "properties": {"objectType": "annotation", "name": "SegTME TME report", "isLocked": True,
                       "measurements": meas},
    }


def write_nuclei_geojson(
    path: str | Path,
    table: NucleiTable,
    output_type: str = "detection",
    *,
    report: dict | None = None,
    annotations: Sequence[dict[str, Any]] = (),
    cell_expansion_um: float = 5.0,
    cells: Any = None,
    id_seed: int | None = None,
    ids: Sequence[str] | None = None,
    provenance: dict[str, Any] | None = None,
    report_annotation: bool = False,
    gzip: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """``write_geojson(path, feature_collection(table, ...))`` without ever building the whole
    collection: Features are generated (``iter_features``) and written in batches through the
    atomic temporary file, so memory stays at one batch of Features for any number of nuclei.
    Same content as the two-step path (byte-identical for the same ids). ``progress``: called
    with the number of nucleus Features written so far, after each batch. For slides written
    chunk by chunk, see ``GeoJSONStreamWriter``."""
    with GeoJSONStreamWriter(path, _collection_head(table, provenance, report), gzip=gzip) as w:
        w.add_features(annotations)
        w.add_nuclei(table, output_type, cells=cells, cell_expansion_um=cell_expansion_um, id_seed=id_seed, ids=ids,
                     run=(provenance or {}).get("run"), progress=progress)
        if report_annotation:
            rep = _report_feature(table, report)
            if rep is not None:
                w.add_features([rep])
    return w.path


class GeoJSONStreamWriter:
    """A FeatureCollection written incrementally and atomically: ``add_features`` /
    ``add_nuclei`` may be called any number of times (e.g. once per slide chunk); the file
    appears (atomic rename) only when the ``with`` block exits without an exception.

    head: the collection's members before ``features`` (default ``{"type": "FeatureCollection"}``;
    put provenance in ``properties``). gzip: compress (``.gz`` appended to the name if missing)."""

    def __init__(self, path: str | Path, head: dict[str, Any] | None = None, *, gzip: bool = False) -> None:
        p = Path(path)
        if gzip and p.suffix != ".gz":
            p = p.with_name(p.name + ".gz")
        self.path = p
        self._head = {"type": "FeatureCollection"} if head is None else head
        self._gzip = gzip
        self._first = True
        self._count = 0

    def __enter__(self) -> "GeoJSONStreamWriter":
        self._cm = atomic_write(self.path, "wb")
        f = self._cm.__enter__()
        self._raw = f
        self._z = _gzip.GzipFile(fileobj=f, mode="wb", mtime=0) if self._gzip else None
        h = _ENC.encode(self._head)
        self._write(h[:-1] + ("," if self._head else "") + '"features":[')
        return self

    def _write(self, text: str) -> None:
        (self._z or self._raw).write(text.encode("utf-8"))

    def add_features(self, features: Iterable[dict[str, Any]], batch: int = 2000) -> int:
        """Append ready-made Features; returns how many."""
        buf: list[str] = []
        k = 0
        for f in features:
            buf.append(_ENC.encode(f))
            k += 1
            if len(buf) >= batch:
                self._flush(buf)
                buf = []
        if buf:
            self._flush(buf)
        return k

    def _flush(self, buf: list[str]) -> None:
        self._write(("" if self._first else ",") + ",".join(buf))
        self._first = False
        self._count += len(buf)

    def add_nuclei(self, table: NucleiTable, output_type: str = "detection", *, progress: Callable[[int], None] | None = None,
                   batch: int = 4096, **kw: Any) -> int:
        """Append the nuclei of ``table`` (``iter_features`` keywords: cells, ids, id_seed, run,
        cell_expansion_um); returns how many Features were written. Detections are written as
        text (``iter_feature_texts``: the same bytes as encoding ``iter_features``' dicts)."""
        if output_type == "detection" and kw.get("cells") is None:
            k = 0
            for texts in iter_feature_texts(table, batch=batch, **kw):
                if texts:
                    self._flush(texts)
                k += len(texts)
                if progress is not None:
                    progress(k)
            if progress is not None and not len(table):
                progress(0)
            return k
        k = 0
        buf: list[dict[str, Any]] = []
        for f in iter_features(table, output_type, batch=batch, **kw):
            buf.append(f)
            if len(buf) >= batch:
                k += self.add_features(buf)
                buf = []
                if progress is not None:
                    progress(k)
        if buf:
            k += self.add_features(buf)
        if progress is not None:
            progress(k)
        return k

    def __exit__(self, et, ev, tb) -> bool:
        try:
            if et is None:
                self._write("]}")
            if self._z is not None:
                self._z.close()
        finally:
            self._cm.__exit__(et, ev, tb)
        return False


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def dumps(fc: dict[str, Any]) -> str:
    """Compact JSON, UTF-8 characters kept (``µm``), NaN refused."""
    return json.dumps(fc, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


#: no circular-reference bookkeeping: Features are trees built here (the same text, ~10 % less encoding time)
_ENC = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=False)


def _iter_feature_pieces(features: Iterable[dict[str, Any]], head: dict[str, Any] | None = None,
                         batch: int = 2000) -> Iterator[str]:
    """JSON text of ``{**head, "features": [...]}`` (head default: a FeatureCollection) in pieces
    of ``batch`` Features; joined, equal to ``dumps`` of that dict."""
    head = {"type": "FeatureCollection"} if head is None else head
    h = _ENC.encode(head)
    yield h[:-1] + ("," if head else "") + '"features":['
    buf: list[str] = []
    first = True
    for f in features:
        buf.append(_ENC.encode(f))
        if len(buf) >= batch:
            yield ("" if first else ",") + ",".join(buf)
            first, buf = False, []
    if buf:
        yield ("" if first else ",") + ",".join(buf)
    yield "]}"


def iter_dumps(fc: dict[str, Any], batch: int = 2000) -> Iterator[str]:
    """``dumps(fc)`` in pieces (the same text when joined), Features serialised one by one, so no
    single string of the whole file is ever built."""
    if "features" not in fc or list(fc)[-1] != "features":  # keep dumps' key order exactly
        yield dumps(fc)
        return
    head = {k: v for k, v in fc.items() if k != "features"}
    yield from _iter_feature_pieces(fc["features"], head, batch)


def _write_pieces(path: str | Path, pieces: Iterable[str], gzip: bool) -> Path:
    path = Path(path)
    if gzip and path.suffix != ".gz":
        path = path.with_name(path.name + ".gz")
    with atomic_write(path, "wb") as f:
        if gzip:
            with _gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as z:
                for piece in pieces:
                    z.write(piece.encode("utf-8"))
        else:
            for piece in pieces:
                f.write(piece.encode("utf-8"))
    return path


def write_geojson(path: str | Path, fc: dict[str, Any], gzip: bool = False) -> Path:
    """Write a FeatureCollection atomically (streamed Feature by Feature through the temporary
    file; byte-identical to ``dumps(fc)``); gzip-compressed when asked (``.gz`` appended to the
    name if missing). Returns the path written."""
    return _write_pieces(path, iter_dumps(fc), gzip)


def read_geojson(path: str | Path) -> dict[str, Any]:
    """Read a (optionally gzipped) GeoJSON file."""
    p = Path(path)
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = _gzip.decompress(raw)
    return json.loads(raw.decode("utf-8"))


def iter_nucleus_features(fc: dict[str, Any]) -> Iterable[dict[str, Any]]:
    """Features that are nuclei (detection / cell objects)."""
    return (f for f in fc.get("features", []) if f.get("properties", {}).get("objectType") in ("detection", "cell"))
