"""Incoming messages: validating a job's configuration and decoding its tiles.

Pure functions and small dataclasses; no gRPC objects except the generated message types being
read. Every refusal raises ``RequestError(code, message)`` whose message names the offending
field (``config.image_mpp``, ``tile[3].downsample``, ...); the handlers turn it into the status.

* ``decode_json`` — JSON text with the nesting depth limited *before* parsing (a deeply nested
  payload is INVALID_ARGUMENT, never a RecursionError);
* ``parse_job_config`` — the whole job configuration, checked on the stream's first message
  (model, image MPP, annotation, output type, narrative backend name **and availability**);
* ``decode_tile`` / ``TileLedger`` — one tile's header and pixels; the ledger refuses a tile
  index seen before, a negative index other than -1 (= "unnumbered"), and a core overlapping an
  earlier tile's core (cores partition the annotation's bounds; overlapping cores would report
  nuclei twice).

Coordinates: a tile's pixel ``(i, j)`` covers full-resolution pixels
``[x + i*d, x + (i+1)*d) x [y + j*d, y + (j+1)*d)`` with ``d = tile.downsample``; cores are
half-open full-resolution rectangles ``(x0, y0, x1, y1)``.
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass

import grpc
import numpy as np

from ..models.config import ModelConfig
from .limits import ServerLimits

#: narrative backends a job may ask for ("" = template)
NARRATIVE_BACKENDS = ("template", "transformers", "openai", "none")
#: deepest JSON nesting accepted anywhere (GeoJSON MultiPolygon in a FeatureCollection: 7)
MAX_JSON_DEPTH = 64
#: largest |coordinate| of an annotation (full-res px; slides are < 1e6 px wide)
MAX_COORD = 1e9


class RequestError(Exception):
    """A request the server refuses: gRPC status code + message naming the field."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(msg: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, msg)


def _positive_finite(v: float, field: str) -> float:
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
        raise invalid(f"{field} must be a finite number > 0, got {v!r}")
    return float(v)


# --------------------------------------------------------------------------- JSON
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


def json_depth(text: str | bytes) -> int:
    """Deepest nesting of ``[``/``{`` in JSON text, ignoring brackets inside strings (linear,
    vectorised: strings are blanked by one regex, depth is a cumulative sum)."""
    b = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if b"[" not in b and b"{" not in b:
        return 0
    if b'"' in b:
        b = _JSON_STRING.sub(b'""', b)
    a = np.frombuffer(b, np.uint8)
    step = ((a == 0x5B) | (a == 0x7B)).astype(np.int32) - ((a == 0x5D) | (a == 0x7D)).astype(np.int32)
    return int(np.cumsum(step).max(initial=0))


def decode_json(text: str, field: str, max_depth: int = MAX_JSON_DEPTH):
    """``json.loads`` with the nesting depth checked first; refusals name ``field``."""
    depth = json_depth(text)
    if depth > max_depth:
        raise invalid(f"{field}: JSON nested {depth} levels deep, more than the limit of {max_depth}")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise invalid(f"{field} is not valid JSON: {e}") from None
    except (RecursionError, ValueError) as e:  # e.g. huge integers; never expected after the depth check
        raise invalid(f"{field}: cannot decode JSON ({type(e).__name__})") from None


# --------------------------------------------------------------------------- job config
@dataclass
class JobSpec:
    """A validated DetectTME / AnalyzeImage job.

    image_mpp: µm per full-resolution pixel. geometry: shapely geometry of the annotation in
    full-resolution pixels (prepared), or None (no clipping). output_type: "detection" | "cell".
    """

    model: str
    image_mpp: float
    geometry: object | None
    output_type: str
    narrative_backend: str
    per_tile_results: bool
    job_id: str
    expected_tiles: int
    annotation_id: str


def _shape(obj, field: str):
    from shapely.geometry import shape

    if not isinstance(obj, dict):
        raise invalid(f"{field}: a geometry must be a JSON object, got {type(obj).__name__}")
    return shape(obj)


def parse_annotation(text: str, field: str = "config.annotation_geojson"):
    """Shapely (multi)polygon from a GeoJSON Geometry, Feature or FeatureCollection (full-res px).

    Invalid polygons (self-intersections) are repaired with ``make_valid``; non-areal geometry,
    empty geometry, non-finite coordinates and JSON nested deeper than ``MAX_JSON_DEPTH`` are
    refused. The geometry is prepared (fast repeated point tests)."""
    import shapely

    obj = decode_json(text, field)
    if not isinstance(obj, dict):
        raise invalid(f"{field} must be a GeoJSON object")
    kind = obj.get("type")
    try:
        if kind == "Feature":
            geoms = [_shape(obj.get("geometry") or {}, field)]
        elif kind == "FeatureCollection":
            feats = obj.get("features", [])
            if not isinstance(feats, list):
                raise invalid(f"{field}: 'features' must be a list")
            geoms = [_shape((f.get("geometry") if isinstance(f, dict) else None) or {}, field) for f in feats]
        else:
            geoms = [_shape(obj, field)]
        if not geoms:
            raise invalid(f"{field}: the FeatureCollection has no features")
        geom = shapely.union_all(geoms) if len(geoms) > 1 else geoms[0]
        if geom.is_empty:
            raise invalid(f"{field}: the geometry is empty")
        coords = shapely.get_coordinates(geom)
        if not np.isfinite(coords).all():
            raise invalid(f"{field}: coordinates must be finite")
        if coords.size and np.abs(coords).max() > MAX_COORD:
            raise invalid(f"{field}: coordinates must be within ±{MAX_COORD:.0e} px (full-resolution slide pixels)")
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
        # keep the areal part (make_valid may return a collection with lines)
        if geom.geom_type == "GeometryCollection":
            polys = [g for g in geom.geoms if g.geom_type in ("Polygon", "MultiPolygon")]
            geom = shapely.union_all(polys) if polys else shapely.Polygon()
        if geom.geom_type not in ("Polygon", "MultiPolygon") or geom.area <= 0:
            raise invalid(f"{field}: need a Polygon or MultiPolygon with positive area, got {geom.geom_type}")
    except RequestError:
        raise
    except Exception as e:  # shapely / GEOS raise several types for malformed GeoJSON
        raise invalid(f"{field}: not a valid GeoJSON geometry ({type(e).__name__}: {e})") from None
    shapely.prepare(geom)
    return geom


def check_narrative_backend(backend: str, field: str = "config.narrative_backend") -> None:
    """Refuse a narrative backend the server cannot run, before any work: unknown name ->
    INVALID_ARGUMENT; ``transformers`` / ``openai`` not configured on this server (missing
    ``SEGTME_NARRATOR_MODEL`` / ``SEGTME_OPENAI_*``, or the ``transformers`` package) ->
    FAILED_PRECONDITION. Constructing the backend only reads its configuration (no model is
    loaded, no network call is made)."""
    if backend not in NARRATIVE_BACKENDS:
        raise invalid(f"{field} must be one of {list(NARRATIVE_BACKENDS)}, got {backend!r}")
    if backend in ("template", "none"):
        return
    from ..narrative.backends import NarrativeBackendError, get_backend

    if backend == "transformers":
        import importlib.util

        if importlib.util.find_spec("transformers") is None:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"{field} {backend!r}: the transformers package is not installed on the server")
    try:
        get_backend(backend)
    except NarrativeBackendError as e:
        raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"{field} {backend!r}: {e}") from None


def parse_job_config(cfg, default_model: str, known_models: dict[str, ModelConfig]) -> JobSpec:
    """Validate a whole ``segtme.v1.JobConfig`` message (the stream's first): unknown model ->
    NOT_FOUND; a narrative backend the server cannot run -> FAILED_PRECONDITION; any other bad
    field -> INVALID_ARGUMENT."""
    from ._proto.segtme.v1 import segtme_pb2 as pb

    model = cfg.model or default_model
    if model not in known_models:
        raise RequestError(grpc.StatusCode.NOT_FOUND,
                           f"config.model: unknown model {model!r}; served models: {sorted(known_models)}")
    mpp = _positive_finite(cfg.image_mpp, "config.image_mpp")
    if not 0.01 <= mpp <= 100:
        raise invalid(f"config.image_mpp must be within 0.01-100 µm/px, got {mpp}")
    if cfg.output_type not in (pb.OUTPUT_TYPE_UNSPECIFIED, pb.DETECTIONS, pb.CELLS):
        raise invalid(f"config.output_type: unknown value {cfg.output_type}")
    output_type = "cell" if cfg.output_type == pb.CELLS else "detection"
    if cfg.expected_tiles < 0:
        raise invalid(f"config.expected_tiles must be >= 0, got {cfg.expected_tiles}")
    backend = cfg.narrative_backend or "template"
    check_narrative_backend(backend)
    geometry = parse_annotation(cfg.annotation_geojson) if cfg.annotation_geojson.strip() else None
    return JobSpec(model, mpp, geometry, output_type, backend, bool(cfg.per_tile_results), cfg.job_id,
                   int(cfg.expected_tiles), cfg.annotation_id)


# --------------------------------------------------------------------------- tiles
@dataclass
class DecodedTile:
    """A validated, decoded tile. rgb: (height, width, 3) uint8 tile pixels; x, y: full-res
    origin; d: downsample (full-res px per tile px); core: (x0, y0, x1, y1) half-open full-res."""

    index: int
    x: int
    y: int
    d: float
    core: tuple[int, int, int, int]
    rgb: np.ndarray


def validate_tile_header(t, limits: ServerLimits, n: int) -> None:
    """Check a Tile's fields before touching its pixels (``n``: position in the stream)."""
    from ._proto.segtme.v1 import segtme_pb2 as pb

    f = f"tile[{n}]"
    if t.index < -1:
        raise invalid(f"{f}.index must be >= 0 (or -1 for an unnumbered tile), got {t.index}")
    if not (math.isfinite(t.downsample) and t.downsample > 0):
        raise invalid(f"{f}.downsample must be a finite number > 0, got {t.downsample!r}")
    if t.width <= 0 or t.height <= 0:
        raise invalid(f"{f}.width/height must be > 0, got {t.width}x{t.height}")
    if t.width * t.height > limits.max_tile_pixels:
        raise invalid(f"{f}.width*height = {t.width}x{t.height} exceeds the server's max_tile_pixels "
                      f"({limits.max_tile_pixels})")
    if t.x < 0 or t.y < 0:
        raise invalid(f"{f}.x/y must be >= 0 (full-resolution origin), got ({t.x}, {t.y})")
    if not t.HasField("core"):
        raise invalid(f"{f}.core is required (the full-resolution region this tile owns)")
    c = t.core
    if c.width <= 0 or c.height <= 0:
        raise invalid(f"{f}.core.width/height must be > 0, got {c.width}x{c.height}")
    # the core may extend past the tile where the plan clipped the region to the image, but it
    # must overlap the tile's full-resolution region
    fw, fh = t.width * t.downsample, t.height * t.downsample
    if c.x >= t.x + fw or c.y >= t.y + fh or c.x + c.width <= t.x or c.y + c.height <= t.y:
        raise invalid(f"{f}.core ({c.x}, {c.y}, {c.width}x{c.height}) does not overlap the tile's full-resolution "
                      f"region ({t.x}, {t.y}, {fw:.1f}x{fh:.1f})")
    if t.encoding not in (pb.PNG, pb.JPEG, pb.RAW_RGB):
        raise invalid(f"{f}.encoding must be PNG, JPEG or RAW_RGB, got {t.encoding}")
    if not t.pixels:
        raise invalid(f"{f}.pixels is empty")


def decode_pixels(encoding: int, data: bytes, width: int, height: int, field: str, max_pixels: int) -> np.ndarray:
    """(height, width, 3) uint8 from PNG/JPEG bytes or raw RGB; refuses corrupt data, a size
    that differs from the declared one, and images over ``max_pixels`` (checked from the header,
    before decoding)."""
    from PIL import Image

    from ._proto.segtme.v1 import segtme_pb2 as pb

    if encoding == pb.RAW_RGB:
        if len(data) != width * height * 3:
            raise invalid(f"{field}.pixels: RAW_RGB needs width*height*3 = {width * height * 3} bytes, got {len(data)}")
        return np.frombuffer(data, np.uint8).reshape(height, width, 3).copy()
    name = "PNG" if encoding == pb.PNG else "JPEG"
    try:
        with Image.open(io.BytesIO(data), formats=[name]) as im:  # reads the header only
            if im.width * im.height > max_pixels:
                raise invalid(f"{field}.pixels: {name} is {im.width}x{im.height}, over the limit of {max_pixels} pixels")
            if (im.width, im.height) != (width, height):
                raise invalid(f"{field}.pixels: {name} is {im.width}x{im.height} but the message says {width}x{height}")
            im.load()
            rgb = np.asarray(im.convert("RGB"))
    except RequestError:
        raise
    except Exception as e:  # PIL raises many types for corrupt/truncated data
        raise invalid(f"{field}.pixels: cannot decode {name} ({type(e).__name__}: {e})") from None
    if rgb.shape != (height, width, 3):
        raise invalid(f"{field}.pixels: decoded {name} has shape {rgb.shape}, expected ({height}, {width}, 3)")
    return np.ascontiguousarray(rgb)


def image_size(data: bytes, encoding: int, field: str = "pixels") -> tuple[int, int]:
    """(width, height) from a PNG / JPEG header (nothing decoded)."""
    from PIL import Image

    from ._proto.segtme.v1 import segtme_pb2 as pb

    try:
        with Image.open(io.BytesIO(data), formats=["PNG" if encoding == pb.PNG else "JPEG"]) as im:
            return im.width, im.height
    except Exception as e:
        raise invalid(f"{field}: cannot read the image header ({type(e).__name__}: {e})") from None


def decode_tile(t, limits: ServerLimits, n: int) -> DecodedTile:
    """Validate and decode one Tile message."""
    validate_tile_header(t, limits, n)
    rgb = decode_pixels(t.encoding, t.pixels, t.width, t.height, f"tile[{n}]", limits.max_tile_pixels)
    c = t.core
    return DecodedTile(int(t.index), int(t.x), int(t.y), float(t.downsample),
                       (int(c.x), int(c.y), int(c.x + c.width), int(c.y + c.height)), rgb)


class TileLedger:
    """The tiles a job has accepted: refuses a repeated tile index (>= 0) and a core that
    overlaps an earlier core (half-open rectangles; touching edges are fine).

    Cores are bucketed on a grid of the first core's size, so a check costs the few cores in
    the cells the new core spans (a core spanning more than ``max_cells`` cells is compared with
    all cores)."""

    def __init__(self, max_cells: int = 256):
        self.indices: dict[int, int] = {}
        self.cores: list[tuple[int, int, int, int]] = []
        self._grid: dict[tuple[int, int], list[int]] = {}
        self._cell: tuple[int, int] | None = None
        self._big: list[int] = []
        self.max_cells = int(max_cells)

    def _cells(self, core):
        cw, ch = self._cell
        x0, y0, x1, y1 = core
        i0, i1, j0, j1 = x0 // cw, (x1 - 1) // cw, y0 // ch, (y1 - 1) // ch
        if (i1 - i0 + 1) * (j1 - j0 + 1) > self.max_cells:
            return None
        return [(i, j) for i in range(i0, i1 + 1) for j in range(j0, j1 + 1)]

    def add(self, index: int, core: tuple[int, int, int, int], n: int) -> None:
        """Record tile ``n`` of the stream (``index`` as sent, ``core`` half-open full-res px)
        or raise INVALID_ARGUMENT naming both tiles."""
        f = f"tile[{n}]"
        if index >= 0:
            if index in self.indices:
                raise invalid(f"{f}.index {index} was already sent (tile[{self.indices[index]}]); each tile once")
        if self._cell is None:
            self._cell = (max(1, core[2] - core[0]), max(1, core[3] - core[1]))
        cells = self._cells(core)
        cand = set(self._big)
        if cells is None:
            cand.update(range(len(self.cores)))
        else:
            for c in cells:
                cand.update(self._grid.get(c, ()))
        x0, y0, x1, y1 = core
        for k in sorted(cand):
            a0, b0, a1, b1 = self.cores[k]
            if x0 < a1 and a0 < x1 and y0 < b1 and b0 < y1:
                raise invalid(f"{f}.core ({x0}, {y0}, {x1 - x0}x{y1 - y0}) overlaps the core of tile[{k}] "
                              f"({a0}, {b0}, {a1 - a0}x{b1 - b0}); tile cores must not overlap")
        k = len(self.cores)
        self.cores.append(core)
        if index >= 0:
            self.indices[index] = n
        if cells is None:
            self._big.append(k)
        else:
            for c in cells:
                self._grid.setdefault(c, []).append(k)
