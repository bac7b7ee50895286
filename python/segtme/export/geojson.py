"""QuPath GeoJSON export, in the layout QuPath (0.4 - 0.6) itself writes and reads.

Checked against QuPath's ``qupath.lib.io.PathObjectTypeAdapters``: a ``FeatureCollection`` of
``Feature``s, each with a UUID ``id``; ``geometry`` a GeoJSON Polygon in full-resolution pixel
coordinates (origin top-left, pixel corner convention); ``properties.objectType`` =
``"detection"`` or ``"cell"``; ``properties.classification`` = ``{"name", "color": [r, g, b]}``;
``properties.measurements`` a name -> number map; for cells the nucleus polygon as
``nucleusGeometry`` at the Feature level (QuPath reads it from there). ``isLocked`` is written
as false (QuPath reads it when present).

Measurement names follow QuPath's cell-detection names with units in the names
(``Nucleus: Area µm^2``, ``Nucleus: Perimeter µm``, ...) when the MPP is known and ``px``
versions (``Nucleus: Area px^2``) when it is not. Values that are not finite are left out (JSON
has no NaN).
"""

from __future__ import annotations

import gzip as _gzip
import json
import math
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ..inference.nuclei import NucleiTable
from .atomic import atomic_write

MICRON = "µm"


def measurement_names(mpp: float | None) -> dict[str, str]:
    """Table column -> QuPath measurement name (µm units when ``mpp`` is known, else px)."""
    u = MICRON if mpp else "px"
    return {
        "area": f"Nucleus: Area {u}^2",
        "perimeter": f"Nucleus: Perimeter {u}",
        "circularity": "Nucleus: Circularity",
        "major_axis": f"Nucleus: Major axis {u}",
        "minor_axis": f"Nucleus: Minor axis {u}",
        "eccentricity": "Nucleus: Eccentricity",
        "solidity": "Nucleus: Solidity",
        "hematoxylin_od": "Nucleus: Hematoxylin OD mean",
        "class_prob": "Class probability",
    }


def _measurement_columns(table: NucleiTable) -> list[tuple[str, list[float]]]:
    """(QuPath name, per-nucleus values as Python floats) for every measurement column
    (lengths in µm when ``table.mpp`` is known, else px); NaN where undefined."""
    names = measurement_names(table.mpp)
    m = float(table.mpp) if table.mpp else 1.0
    area = np.asarray(table.area_px, np.float64)
    perim = np.asarray(table.perimeter_px, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        circ = np.where(perim > 0, np.minimum(1.0, 4.0 * math.pi * area / np.where(perim > 0, perim, 1.0) ** 2), np.nan)
    cols = {
        "area": area * m * m,
        "perimeter": perim * m,
        "circularity": circ,
        "major_axis": np.asarray(table.major_axis_px, np.float64) * m,
        "minor_axis": np.asarray(table.minor_axis_px, np.float64) * m,
        "eccentricity": np.asarray(table.eccentricity, np.float64),
        "solidity": np.asarray(table.solidity, np.float64),
        "hematoxylin_od": np.asarray(table.hematoxylin_od, np.float64),
        "class_prob": np.asarray(table.class_prob, np.float64),
    }
    return [(names[k], v.tolist()) for k, v in cols.items()]


def _measurements_at(cols: list[tuple[str, list[float]]], i: int) -> dict[str, float]:
    out = {}
    for name, vals in cols:
        v = vals[i]
        if math.isfinite(v):
            out[name] = round(v, 6)
    return out


def nucleus_measurements(table: NucleiTable, i: int) -> dict[str, float]:
    """QuPath measurements of nucleus ``i`` (lengths in µm when ``table.mpp`` is known, else px)."""
    return _measurements_at(_measurement_columns(table.subset(np.array([i]))), 0)


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
    coords = np.concatenate([np.vstack([arrs[k], arrs[k][:1]]) for k in ok])
    idx = np.repeat(np.arange(len(ok)), [len(arrs[k]) + 1 for k in ok])
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


def _geometry_of(g) -> dict[str, Any]:
    """``_geometry`` for an item of ``_oriented_rings`` (ring array or shapely Polygon)."""
    if isinstance(g, np.ndarray):
        return {"type": "Polygon", "coordinates": [_ring(g)]}
    return _geometry(g)


def _geometry(g) -> dict[str, Any]:
    """GeoJSON Polygon dict from a shapely Polygon (exterior ring only for nuclei; holes kept)."""
    rings = [_ring(np.asarray(g.exterior.coords)[:-1])]
    rings += [_ring(np.asarray(r.coords)[:-1]) for r in g.interiors]
    return {"type": "Polygon", "coordinates": rings}


def cell_polygons(table: NucleiTable, expansion_px: float, nuclei: list | None = None) -> list:
    """Cell outlines: each nucleus grown by ``expansion_px`` (input px), limited to its Voronoi
    region of the nucleus centroids so that neighbouring cells do not overlap (QuPath's cell
    expansion likewise stops where cells meet). Returns shapely geometries (None where the
    nucleus polygon is degenerate)."""
    import shapely
    from shapely.geometry import MultiPoint

    nuclei = nuclei if nuclei is not None else [_valid_polygon(p) for p in table.polygons]
    if expansion_px <= 0 or len(table) == 0:
        return list(nuclei)
    grown = [g.buffer(expansion_px) if g is not None else None for g in nuclei]
    if len(table) == 1:
        return grown
    pts = [tuple(c) for c in np.asarray(table.centroid)]
    vor = shapely.voronoi_polygons(MultiPoint(pts), extend_to=MultiPoint(pts).buffer(1e6))
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
    id_seed: int | None = None,
) -> list[dict[str, Any]]:
    """One QuPath Feature per nucleus (coordinates = the table's input/full-res px).

    output_type: "detection" (geometry = nucleus) or "cell" (geometry = nucleus grown by
    ``cell_expansion_um`` — QuPath's default 5 µm; 10 px when the MPP is unknown — and
    ``nucleusGeometry`` = nucleus). Nuclei with degenerate polygons (< 3 vertices / zero area)
    are skipped. ``id_seed``: make the UUIDs reproducible (tests); default random uuid4.
    """
    return list(iter_features(table, output_type, cell_expansion_um=cell_expansion_um, id_seed=id_seed))


def iter_features(
    table: NucleiTable,
    output_type: str = "detection",
    *,
    cell_expansion_um: float = 5.0,
    id_seed: int | None = None,
    batch: int = 4096,
) -> Iterator[dict[str, Any]]:
    """``nuclei_to_features`` as a generator (same Features, same order, same ids for the same
    ``id_seed``). Detections are built ``batch`` nuclei at a time, so a writer that consumes the
    generator holds only one batch of Python Features in memory; cells need the Voronoi partition
    of all centroids, so their polygons are computed up front."""
    if output_type not in ("detection", "cell"):
        raise ValueError(f"output_type must be 'detection' or 'cell', got {output_type!r}")
    tax = table.taxonomy
    rng = np.random.default_rng(id_seed) if id_seed is not None else None
    classif = [(c.name, [int(v) for v in c.color]) for c in tax.classes]
    n = len(table)
    nuclei_all = cells = None
    if output_type == "cell":
        nuclei_all = _valid_polygons(table.polygons)
        exp_px = cell_expansion_um / table.mpp if table.mpp else 10.0
        cells = cell_polygons(table, exp_px, nuclei_all)
        batch = max(n, 1)
    for b0 in range(0, n, max(1, int(batch))):
        b1 = min(n, b0 + max(1, int(batch)))
        sub = table.subset(np.arange(b0, b1))
        nuclei = nuclei_all[b0:b1] if nuclei_all is not None else _oriented_rings(sub.polygons)
        cols = _measurement_columns(sub)
        class_ids = np.asarray(sub.class_id).tolist()
        for j, g in enumerate(nuclei):
            if g is None:
                continue
            i = b0 + j
            name, color = classif[int(class_ids[j])]
            fid = str(uuid.UUID(bytes=rng.bytes(16), version=4)) if rng is not None else str(uuid.uuid4())
            f: dict[str, Any] = {"type": "Feature", "id": fid}
            if cells is not None:
                f["geometry"] = _geometry(cells[i] if cells[i] is not None else g)
                f["nucleusGeometry"] = _geometry(g)
            else:
                f["geometry"] = _geometry_of(g)
            f["properties"] = {
                "objectType": output_type,
                "classification": {"name": name, "color": list(color)},
                "isLocked": False,
                "measurements": _measurements_at(cols, j),
            }
            yield f


def feature_collection(
    table: NucleiTable,
    output_type: str = "detection",
    *,
    report: dict | None = None,
    cell_expansion_um: float = 5.0,
    id_seed: int | None = None,
    annotations: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """A QuPath-readable FeatureCollection of the nuclei. When a TME ``report`` is given and
    ``segtme.tme.report.report_measurements`` exists, one extra ``annotation`` Feature covering
    the analysed image (``table.meta["image_size"]``) carries the report's measurements.
    ``annotations``: ready-made annotation Features placed first (PAGET tissue regions), so one
    File > Import objects brings tissue regions and nuclei into QuPath together."""
    feats = list(annotations) + nuclei_to_features(table, output_type, cell_expansion_um=cell_expansion_um,
                                                   id_seed=id_seed)
    rep = _report_feature(table, report)
    if rep is not None:
        feats.append(rep)
    return {"type": "FeatureCollection", "features": feats}


def _report_feature(table: NucleiTable, report: dict | None) -> dict[str, Any] | None:
    """The annotation Feature carrying the TME report's measurements (see ``feature_collection``),
    or None."""
    size = table.meta.get("image_size")
    if report is None or not size:
        return None
    try:
        from ..tme.report import report_measurements  # type: ignore[import-not-found]
    except ImportError:
        return None
    meas = {k: float(v) for k, v in report_measurements(report).items() if _finite(v)}
    w, h = size
    return {
        "type": "Feature",
        "id": str(uuid.uuid4()),
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [w, 0], [w, h], [0, h], [0, 0]]]},
        "properties": {"objectType": "annotation", "name": "SegTME TME report", "isLocked": False,
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
    id_seed: int | None = None,
    gzip: bool = False,
) -> Path:
    """``write_geojson(path, feature_collection(table, ...))`` without ever building the whole
    collection: Features are generated (``iter_features``) and written in batches through the
    atomic temporary file, so memory stays at one batch of Features for any number of nuclei.
    The file has the same content as the two-step path (byte-identical for the same ``id_seed``
    apart from the report Feature's random id)."""

    def features() -> Iterator[dict[str, Any]]:
        yield from annotations
        yield from iter_features(table, output_type, cell_expansion_um=cell_expansion_um, id_seed=id_seed)
        rep = _report_feature(table, report)
        if rep is not None:
            yield rep

    return _write_pieces(path, _iter_feature_pieces(features()), gzip)


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def dumps(fc: dict[str, Any]) -> str:
    """Compact JSON, UTF-8 characters kept (``µm``), NaN refused."""
    return json.dumps(fc, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


_ENC = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


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
