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
from typing import Any, Iterable, Sequence

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


def nucleus_measurements(table: NucleiTable, i: int) -> dict[str, float]:
    """QuPath measurements of nucleus ``i`` (lengths in µm when ``table.mpp`` is known, else px)."""
    names = measurement_names(table.mpp)
    m = float(table.mpp) if table.mpp else 1.0
    area = float(table.area_px[i])
    perim = float(table.perimeter_px[i])
    circ = min(1.0, 4.0 * math.pi * area / perim**2) if perim > 0 else float("nan")
    vals = {
        "area": area * m * m,
        "perimeter": perim * m,
        "circularity": circ,
        "major_axis": float(table.major_axis_px[i]) * m,
        "minor_axis": float(table.minor_axis_px[i]) * m,
        "eccentricity": float(table.eccentricity[i]),
        "solidity": float(table.solidity[i]),
        "hematoxylin_od": float(table.hematoxylin_od[i]),
        "class_prob": float(table.class_prob[i]),
    }
    return {names[k]: round(v, 6) for k, v in vals.items() if math.isfinite(v)}


def _ring(poly: np.ndarray, ndigits: int = 3) -> list[list[float]]:
    """Closed ring (first vertex repeated at the end) as a list of [x, y]."""
    pts = [[round(float(x), ndigits), round(float(y), ndigits)] for x, y in np.asarray(poly).reshape(-1, 2)]
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
    if output_type not in ("detection", "cell"):
        raise ValueError(f"output_type must be 'detection' or 'cell', got {output_type!r}")
    tax = table.taxonomy
    nuclei = [_valid_polygon(p) for p in table.polygons]
    cells = None
    if output_type == "cell":
        exp_px = cell_expansion_um / table.mpp if table.mpp else 10.0
        cells = cell_polygons(table, exp_px, nuclei)
    rng = np.random.default_rng(id_seed) if id_seed is not None else None
    feats = []
    for i, g in enumerate(nuclei):
        if g is None:
            continue
        info = tax.classes[int(table.class_id[i])]
        fid = str(uuid.UUID(bytes=rng.bytes(16), version=4)) if rng is not None else str(uuid.uuid4())
        f: dict[str, Any] = {"type": "Feature", "id": fid}
        if cells is not None:
            f["geometry"] = _geometry(cells[i] if cells[i] is not None else g)
            f["nucleusGeometry"] = _geometry(g)
        else:
            f["geometry"] = _geometry(g)
        f["properties"] = {
            "objectType": output_type,
            "classification": {"name": info.name, "color": [int(c) for c in info.color]},
            "isLocked": False,
            "measurements": nucleus_measurements(table, i),
        }
        feats.append(f)
    return feats


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
    size = table.meta.get("image_size")
    if report is not None and size:
        try:
            from ..tme.report import report_measurements  # type: ignore[import-not-found]
        except ImportError:
            report_measurements = None
        if report_measurements is not None:
            meas = {k: float(v) for k, v in report_measurements(report).items() if _finite(v)}
            w, h = size
            feats.append({
                "type": "Feature",
                "id": str(uuid.uuid4()),
                "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [w, 0], [w, h], [0, h], [0, 0]]]},
                "properties": {"objectType": "annotation", "name": "SegTME TME report", "isLocked": False,
                               "measurements": meas},
            })
    return {"type": "FeatureCollection", "features": feats}


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def dumps(fc: dict[str, Any]) -> str:
    """Compact JSON, UTF-8 characters kept (``µm``), NaN refused."""
    return json.dumps(fc, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def write_geojson(path: str | Path, fc: dict[str, Any], gzip: bool = False) -> Path:
    """Write a FeatureCollection atomically; gzip-compressed when asked (``.gz`` appended to the
    name if missing). Returns the path written."""
    gz = gzip
    path = Path(path)
    if gz and path.suffix != ".gz":
        path = path.with_name(path.name + ".gz")
    data = dumps(fc).encode("utf-8")
    with atomic_write(path, "wb") as f:
        if gz:
            with _gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as z:
                z.write(data)
        else:
            f.write(data)
    return path


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
