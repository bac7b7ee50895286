"""One streamed tile: validation, decoding, rescaling, and the ownership rule.

Pure functions and small dataclasses; no gRPC objects except the generated message types being
read. Every refusal raises ``RequestError(code, message)`` whose message names the offending
field (``config.image_mpp``, ``tile[3].downsample``, ...); the servicer turns it into the status.

Coordinates: a tile's pixel ``(i, j)`` covers full-resolution pixels
``[x + i*d, x + (i+1)*d) x [y + j*d, y + (j+1)*d)`` with ``d = tile.downsample``; its resolution is
``image_mpp * d`` µm/px. After rescaling to the model's working MPP (``s`` working px per tile
px) a working-px position maps back by ``x_full = tile.x + x_work / s * d``.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass

import grpc
import numpy as np

from ..inference.nuclei import NucleiTable
from ..models.config import ModelConfig
from .limits import ServerLimits

#: narrative backends a job may ask for ("" = template)
NARRATIVE_BACKENDS = ("template", "transformers", "openai", "none")


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


# --------------------------------------------------------------------------- job config
@dataclass
class JobSpec:
    """A validated DetectTME job.

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


def parse_annotation(text: str, field: str = "config.annotation_geojson"):
    """Shapely (multi)polygon from a GeoJSON Geometry, Feature or FeatureCollection (full-res px).

    Invalid polygons (self-intersections) are repaired with ``make_valid``; non-areal geometry,
    empty geometry and non-finite coordinates are refused. The geometry is prepared (fast
    repeated point tests)."""
    import shapely
    from shapely.geometry import shape

    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise invalid(f"{field} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise invalid(f"{field} must be a GeoJSON object")
    kind = obj.get("type")
    try:
        if kind == "Feature":
            geoms = [shape(obj.get("geometry") or {})]
        elif kind == "FeatureCollection":
            geoms = [shape(f.get("geometry") or {}) for f in obj.get("features", [])]
        else:
            geoms = [shape(obj)]
    except Exception as e:  # shapely raises several types for malformed GeoJSON
        raise invalid(f"{field}: not a valid GeoJSON geometry ({e})") from None
    if not geoms:
        raise invalid(f"{field}: the FeatureCollection has no features")
    geom = shapely.union_all(geoms) if len(geoms) > 1 else geoms[0]
    if geom.is_empty:
        raise invalid(f"{field}: the geometry is empty")
    coords = shapely.get_coordinates(geom)
    if not np.isfinite(coords).all():
        raise invalid(f"{field}: coordinates must be finite")
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    # keep the areal part (make_valid may return a collection with lines)
    if geom.geom_type == "GeometryCollection":
        polys = [g for g in geom.geoms if g.geom_type in ("Polygon", "MultiPolygon")]
        geom = shapely.union_all(polys) if polys else shapely.Polygon()
    if geom.geom_type not in ("Polygon", "MultiPolygon") or geom.area <= 0:
        raise invalid(f"{field}: need a Polygon or MultiPolygon with positive area, got {geom.geom_type}")
    shapely.prepare(geom)
    return geom


def parse_job_config(cfg, default_model: str, known_models: dict[str, ModelConfig]) -> JobSpec:
    """Validate a ``segtme.v1.JobConfig`` message. Unknown model -> NOT_FOUND."""
    from ._proto.segtme.v1 import segtme_pb2 as pb

    model = cfg.model or default_model
    if model not in known_models:
        raise RequestError(grpc.StatusCode.NOT_FOUND,
                           f"config.model: unknown model {model!r}; served models: {sorted(known_models)}")
    mpp = _positive_finite(cfg.image_mpp, "config.image_mpp")
    if not 0.01 <= mpp <= 100:
        raise invalid(f"config.image_mpp must be within 0.01-100 µm/px, got {mpp}")
    geometry = parse_annotation(cfg.annotation_geojson) if cfg.annotation_geojson.strip() else None
    if cfg.output_type not in (pb.OUTPUT_TYPE_UNSPECIFIED, pb.DETECTIONS, pb.CELLS):
        raise invalid(f"config.output_type: unknown value {cfg.output_type}")
    output_type = "cell" if cfg.output_type == pb.CELLS else "detection"
    backend = cfg.narrative_backend or "template"
    if backend not in NARRATIVE_BACKENDS:
        raise invalid(f"config.narrative_backend must be one of {list(NARRATIVE_BACKENDS)}, got {backend!r}")
    if cfg.expected_tiles < 0:
        raise invalid(f"config.expected_tiles must be >= 0, got {cfg.expected_tiles}")
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
        im = Image.open(io.BytesIO(data), formats=[name])  # reads the header only
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
    return np.ascontiguousarray(rgb)


def decode_tile(t, limits: ServerLimits, n: int) -> DecodedTile:
    """Validate and decode one Tile message."""
    validate_tile_header(t, limits, n)
    rgb = decode_pixels(t.encoding, t.pixels, t.width, t.height, f"tile[{n}]", limits.max_tile_pixels)
    c = t.core
    return DecodedTile(int(t.index), int(t.x), int(t.y), float(t.downsample),
                       (int(c.x), int(c.y), int(c.x + c.width), int(c.y + c.height)), rgb)


# --------------------------------------------------------------------------- working resolution
@dataclass
class WorkTile:
    """A tile rescaled to the model's working MPP and padded for batching.

    padded: (P, P', 3) uint8 fed to the model; valid: (h, w) of the real content (top-left);
    s: working px per *tile* px; full_scale: working px per *full-resolution* px (= s / d).
    """

    tile: DecodedTile
    padded: np.ndarray
    valid: tuple[int, int]
    s: float
    full_scale: float


def to_work_tile(tile: DecodedTile, image_mpp: float, cfg: ModelConfig, field: str) -> WorkTile:
    """Rescale from the tile's resolution (``image_mpp * d``) to ``cfg.mpp`` and pad short edge
    tiles to the model tile size (reflect, bottom/right, like the engine) so tiles batch together.
    A tile larger than the model tile is padded to a multiple of ``cfg.pad_multiple`` only."""
    from ..inference.engine import to_working

    try:
        rgb_work, s = to_working(tile.rgb, image_mpp * tile.d, cfg)
    except Exception as e:
        raise invalid(f"{field}: cannot rescale to the model's resolution ({e})") from None
    h, w = rgb_work.shape[:2]
    T, m = int(cfg.tile_size), int(cfg.pad_multiple)
    H = max(T, h + (-h) % m)
    W = max(T, w + (-w) % m)
    if (H, W) != (h, w):
        mode = "reflect" if (H - h) < h and (W - w) < w else "edge"
        padded = np.pad(rgb_work, ((0, H - h), (0, W - w), (0, 0)), mode=mode)
    else:
        padded = rgb_work
    return WorkTile(tile, np.ascontiguousarray(padded), (h, w), s, s / tile.d)


def tile_nuclei(wt: WorkTile, out: dict[str, np.ndarray], cfg: ModelConfig, image_mpp: float,
                geometry=None) -> tuple[NucleiTable, NucleiTable, np.ndarray]:
    """Nuclei of one tile in full-resolution px whose centroid lies inside ``geometry`` (if
    given), split by the tile's core (half-open) as ``segment_image`` splits chunks
    (``tiling.border_split`` with ``pipeline.BORDER_TOL_WORK`` / ``BORDER_HOLD_WORK``, converted
    from working px): (final nuclei — centroid well inside the core, this tile's alone —, border
    nuclei — centroid near the core edge, either side —, which border nuclei are in the core).
    The border nuclei go through de-duplication across tiles at the end of the job
    (``pipeline.dedupe_across_chunks``: two tiles may place one nucleus's centroid on either side
    of their shared core edge); final + in-core border nuclei = the ownership rule of
    docs/INTERFACES.md."""
    from ..inference.tiling import border_split
    from ..pipeline import BORDER_HOLD_WORK, BORDER_TOL_WORK, nuclei_from_maps

    h, w = wt.valid
    prob = out["prob"][:, :h, :w]
    hv = out["hv"][:, :h, :w] if "hv" in out else None
    rgb_work = wt.padded[:h, :w]
    table = nuclei_from_maps(prob, hv, rgb_work, cfg, wt.full_scale, (wt.tile.x, wt.tile.y), image_mpp)
    x, y = table.centroid[:, 0], table.centroid[:, 1]
    fin, bor, in_core = border_split(x, y, wt.tile.core, BORDER_TOL_WORK / wt.full_scale,
                                     BORDER_HOLD_WORK / wt.full_scale)
    if geometry is not None and len(table):
        import shapely

        inside = shapely.intersects_xy(geometry, x, y)
        fin &= inside
        bor &= inside
    return table.subset(fin), table.subset(bor), in_core[bor]


def owned(table: NucleiTable, core: tuple[int, int, int, int], geometry=None) -> np.ndarray:
    """Boolean mask of the nuclei a tile reports: centroid in the tile's core (half-open,
    full-res px) and inside ``geometry`` when given (the ownership rule)."""
    import shapely

    if len(table) == 0:
        return np.zeros(0, bool)
    x, y = table.centroid[:, 0], table.centroid[:, 1]
    x0, y0, x1, y1 = core
    keep = (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
    if geometry is not None and keep.any():
        keep &= shapely.intersects_xy(geometry, x, y)
    return keep


@dataclass
class PagetTile:
    """What one streamed tile contributes to a PAGET job (all in full-resolution px).

    table: the owned nuclei (ownership rule); nucleus_tissue: (N,) PAGET id of the tissue region
    under each owned nucleus; tissue_features: the tile's tissue annotations clipped to its core
    (cores partition the annotation bounds, so merging the tiles' pieces per class gives seamless
    regions without overlaps between classes)."""

    table: NucleiTable
    nucleus_tissue: np.ndarray
    tissue_features: list[dict]


def paget_instances(iwt: WorkTile, iout: dict[str, np.ndarray], icfg: ModelConfig, out_shape: tuple[int, int],
                    s_out: float) -> np.ndarray:
    """PAGET-H: the instance-source model's output for one tile (its own working tile ``iwt``)
    -> instance map on the PAGET working grid (``out_shape``; ``s_out`` = PAGET working px per
    tile px, so PAGET px per instance px = ``s_out / iwt.s``)."""
    from ..paget.product import instances_from_maps, instances_to_grid

    h, w = iwt.valid
    prob = iout["prob"][:, :h, :w]
    hv = iout["hv"][:, :h, :w] if "hv" in iout else None
    inst, _ = instances_from_maps(prob, hv, icfg)
    return instances_to_grid(inst, out_shape, s_out / iwt.s)


def tile_paget(wt: WorkTile, out: dict[str, np.ndarray], cfg: ModelConfig, image_mpp: float, geometry=None, *,
               mode: str = "semantic", inst: np.ndarray | None = None) -> PagetTile:
    """PAGET-S / PAGET-H for one tile from the student's output (``out["prob"]``, padded tile):
    nuclei in full-resolution px kept by the ownership rule, their tissue context, and the tile's
    tissue annotations clipped to its core. ``inst``: PAGET-H instance map on the valid working
    grid of ``wt``."""
    import shapely

    from ..paget.product import merge_tissue_features, paget_result_from_prob

    h, w = wt.valid
    res = paget_result_from_prob(
        out["prob"][:, :h, :w], wt.padded[:h, :w], cfg, scale=wt.full_scale, input_mpp=image_mpp, mode=mode,
        inst=inst, offset_xy=(wt.tile.x, wt.tile.y), compute_features=False)
    keep = owned(res.nuclei, wt.tile.core, geometry)
    x0, y0, x1, y1 = wt.tile.core
    tissue = merge_tissue_features(res.tissue_features, clip=shapely.box(x0, y0, x1, y1), mpp=image_mpp)
    return PagetTile(res.nuclei.subset(keep), res.nucleus_tissue[keep], tissue)
