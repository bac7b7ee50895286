"""The path from an H&E image to classified nuclei and a TME report.

* ``nuclei_from_maps``: model maps of one working-resolution tile/chunk -> nuclei table in
  input px (post-processing + measurements + coordinate mapping). The gRPC server calls it per
  streamed tile.
* ``segment_image``: any-size RGB image -> nuclei table, processed in chunks with a halo so memory
  stays bounded (no full-size float maps are ever allocated); each nucleus is kept only by the
  chunk whose core holds its centroid, so it appears once.
* ``analyze``: file or array + MPP + model -> ``AnalysisResult`` (nuclei + TME report). PAGET
  models (``paget_s`` / ``paget_h``) go through ``analyze_paget_image``: classified nuclei in the
  13-class taxonomy plus tissue regions as QuPath annotations (``AnalysisResult.tissue_features``).

Units: *input px* = pixels of the given image (µm/px = its MPP); *working px* = pixels at the
model's ``cfg.mpp``; ``s = mpp_in / cfg.mpp``.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import InputError
from .inference.nuclei import NucleiTable, build_nuclei_table
from .models.config import ModelConfig
from .models.registry import LoadedModel

log = logging.getLogger(__name__)

#: default chunk edge and halo in working px. The model tiles do not depend on the chunks
#: (``engine.GridPredictor``), so the halo only has to hold the largest nucleus (64 px = 32 µm
#: at 0.5 µm/px). 1024 / 1536 / 2048-px chunks measured equally fast end to end; 1024 keeps two
#: chunks in flight (pipelined post-processing) small: with 1536 the 10 000² px run peaked at
#: 2228 MiB instead of ~1950 (docs/benchmarks.md)
DEFAULT_CHUNK_WORK = 1024
DEFAULT_HALO_WORK = 64
#: working pixels per forward batch when no batch size is given (8 x 256^2)
BATCH_PIXELS = 8 * 256 * 256
#: working px outside a chunk core within which its nuclei are still candidates, and inside it
#: within which they are held for de-duplication with the neighbour (``tiling.border_split``)
BORDER_TOL_WORK = 2.0
BORDER_HOLD_WORK = 6.0
#: chunks post-processed concurrently with the model (``segment_image(pipelined=True)``)
POST_WORKERS = int(os.environ.get("SEGTME_POST_WORKERS", "1"))


def nuclei_from_maps(
    prob: np.ndarray,
    hv: np.ndarray | None,
    rgb_work: np.ndarray | None,
    cfg: ModelConfig,
    scale: float,
    offset_xy: Sequence[float] = (0.0, 0.0),
    input_mpp: float | None = None,
) -> NucleiTable:
    """Nuclei from the model maps of one working-resolution image (tile or chunk).

    prob: (C, h, w) softmax at ``cfg.mpp``; hv: (2, h, w) or None (then instances are the
    connected components of the foreground); rgb_work: (h, w, 3) uint8 at the same resolution
    (for haematoxylin OD) or None.
    scale: s = working px per input px; offset_xy: input-px position of working pixel corner
    (0, 0), i.e. the tile/chunk origin in the input image (full-res px for the server).
    input_mpp: µm/px of the input coordinates (None if unknown; then µm columns are omitted).
    Returns the table in input px: ``x_in = x_work / s + offset`` (corner convention); areas
    scale by 1/s², lengths by 1/s. Post-processing parameters come from ``cfg.postprocess``.
    """
    from .inference.postprocess import PostprocessParams, classify_instances, hv_watershed

    params = PostprocessParams.from_mapping(cfg.postprocess)
    fg_prob = 1.0 - prob[0]
    if hv is not None:
        inst = hv_watershed(fg_prob, hv, params)
    else:
        from .inference.postprocess import foreground_components, relabel_sequential

        inst = relabel_sequential(foreground_components(fg_prob, params))
    cls, cprob = classify_instances(inst, prob)
    table = build_nuclei_table(inst, cfg.tax, class_id=cls, class_prob=cprob, rgb=rgb_work, mpp=cfg.mpp)
    out = table.translated(float(offset_xy[0]), float(offset_xy[1]), scale=1.0 / float(scale), mpp=input_mpp)
    out.mpp = input_mpp
    return out


def _chunk_params(chunk_size: int | None, halo: int | None) -> tuple[int, int]:
    c = int(chunk_size) if chunk_size else DEFAULT_CHUNK_WORK
    h = int(halo) if halo is not None else DEFAULT_HALO_WORK
    if c <= 0 or h < 0:
        raise InputError(f"need chunk_size > 0 and halo >= 0 (working px), got {c}, {h}")
    return c, h


def plan_chunks(rgb_shape: Sequence[int], mpp: float, cfg: ModelConfig, chunk_size: int | None = None,
                halo: int | None = None):
    """The chunks ``segment_image`` will process, in *working* px of the whole image."""
    from .inference.engine import scale_factor, working_size
    from .inference.tiling import chunk_grid

    s = scale_factor(mpp, cfg)
    c, h = _chunk_params(chunk_size, halo)
    hw, ww = working_size(int(rgb_shape[0]), int(rgb_shape[1]), 1.0 if abs(s - 1) < 1e-6 else s)
    return chunk_grid(ww, hw, c, h)


def count_tiles(rgb_shape: Sequence[int], mpp: float, cfg: ModelConfig, chunk_size: int | None = None,
                halo: int | None = None, tile: int | None = None, overlap: int | None = None) -> int:
    """Number of model tiles ``segment_image`` (or, for PAGET models, ``analyze_paget_image``)
    will run (for a progress bar's total)."""
    from .inference.tiling import tile_grid

    t = int(tile or cfg.tile_size)
    o = int(cfg.tile_overlap if overlap is None else overlap)
    # segment_image runs one tile grid over the whole working image, each tile once
    # (engine.GridPredictor), whatever the chunks
    from .inference.engine import scale_factor, working_size

    s = scale_factor(mpp, cfg)
    hw, ww = working_size(int(rgb_shape[0]), int(rgb_shape[1]), 1.0 if abs(s - 1) < 1e-6 else s)
    return len(tile_grid(hw, ww, t, o))


def dedupe_across_chunks(table: NucleiTable, chunk_of: np.ndarray, inside: np.ndarray, iou_min: float = 0.3) -> np.ndarray:
    """Boolean keep-mask removing the same nucleus found by two neighbouring chunks.

    Candidates are nuclei kept with a small tolerance around their chunk core; two candidates from
    different chunks whose polygons overlap with IoU >= ``iou_min`` are one nucleus: the copy whose
    centroid lies inside its own chunk's core is kept (ties: the first).
    """
    import shapely

    keep = np.ones(len(table), bool)
    if len(table) < 2:
        return keep
    from shapely.geometry import Polygon

    geoms = np.array([Polygon(p) if len(p) >= 3 else Polygon() for p in table.polygons], dtype=object)
    geoms = shapely.make_valid(geoms)
    tree = shapely.STRtree(geoms)
    a, b = tree.query(geoms, predicate="intersects")
    sel = (a < b) & (chunk_of[a] != chunk_of[b])
    for i, j in zip(a[sel], b[sel]):
        if not (keep[i] and keep[j]):
            continue
        inter = shapely.area(shapely.intersection(geoms[i], geoms[j]))
        union = shapely.area(shapely.union(geoms[i], geoms[j]))
        if union > 0 and inter / union >= iou_min:
            drop = j if inside[i] or not inside[j] else i
            keep[drop] = False
    return keep


def segment_image(
    rgb: np.ndarray,
    mpp: float,
    model: LoadedModel,
    *,
    chunk_size: int | None = None,
    halo: int | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    pipelined: bool = True,
) -> NucleiTable:
    """Nuclei of an (H, W, 3) uint8 image at ``mpp`` µm/px, in input px.

    batch_size: tiles per forward pass; default: as many as fit ``BATCH_PIXELS`` working pixels
    (8 tiles of 256 px, 2 of 512), which bounds activation memory whatever the tile size.

    The image's working-resolution grid (``s = mpp / cfg.mpp``, size ``round(size * s)``) is cut
    into chunks of ``chunk_size`` working px (default 1024) with a ``halo`` of working px (default
    64) on each side. One tile grid (``tile``/``overlap`` working px, default the config's) covers
    the whole working image and every tile runs once (``engine.GridPredictor``): a chunk region's
    maps are the blend of all grid tiles touching it, i.e. the whole image's blended maps cropped
    to the region, and the input is resampled window by window (exactly the pixels the whole
    image would give). Each region is then post-processed and measured. A nucleus is kept by the chunk
    whose core holds its centroid; nuclei within ``BORDER_TOL_WORK`` (2) working px outside a core
    border are also taken from the neighbour and, with those up to ``BORDER_HOLD_WORK`` (6) px
    inside it, de-duplicated by polygon overlap, so each nucleus appears once even if the two
    chunks place its centroid on different sides of the border. The halo must exceed the largest
    nucleus (the model tiles do not depend on the chunks); the default 64 px (32 µm) does.
    pipelined: post-process chunk k in a worker thread while the model predicts chunk k + 1
    (same result as False, which runs the stages one after the other).
    Peak memory ~ 2 x (C + 6) x (chunk + 2 halo)^2 x 4 bytes (two chunks in flight) + the tile
    cache, independent of the image size.
    progress: called with the number of model tiles finished.
    """
    from .inference.engine import GridPredictor, scale_factor, working_region, working_size
    from .inference.tiling import border_split

    cfg = model.config
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise InputError(f"image has zero size ({rgb.shape[1]}x{rgb.shape[0]} px)")
    s = scale_factor(mpp, cfg)
    if abs(s - 1.0) < 1e-6:
        s = 1.0
    if hasattr(model.module, "predict_instances"):
        return _segment_with_predict_instances(rgb, mpp, model, s)
    chunks = plan_chunks(rgb.shape, mpp, cfg, chunk_size, halo)
    if batch_size is None:
        t_edge = int(tile or cfg.tile_size)
        batch_size = max(1, BATCH_PIXELS // (t_edge * t_edge))
    from . import release_free_memory

    hw, ww = working_size(int(rgb.shape[0]), int(rgb.shape[1]), s)
    predictor = GridPredictor(
        model, hw, ww, lambda r: working_region(rgb, s, r), [ch.region for ch in chunks],
        tile, overlap, batch_size, progress,
    )

    def post(k: int, ch, maps, rgb_work) -> tuple[NucleiTable, NucleiTable, np.ndarray]:
        """Chunk k's nuclei: (final ones, border candidates, which of those are in its core)."""
        x0, y0 = ch.region[:2]
        t = nuclei_from_maps(maps.prob, maps.hv, rgb_work, cfg, s, (x0 / s, y0 / s), mpp)
        cw = t.centroid * s  # centroids in working px of the whole image
        fin, bor, in_core = border_split(cw[:, 0], cw[:, 1], ch.core, BORDER_TOL_WORK, BORDER_HOLD_WORK)
        return t.subset(fin), t.subset(bor), in_core[bor]

    final: list[NucleiTable] = []
    border: list[tuple[NucleiTable, np.ndarray, int]] = []

    def collect(res: tuple[NucleiTable, NucleiTable, np.ndarray], k: int) -> None:
        final.append(res[0])
        border.append((res[1], res[2], k))

    # post-processing (single-threaded numpy / scikit-image) of chunk k runs in worker threads
    # while the model predicts chunk k + 1, so both CPU stages keep the cores busy; at most
    # POST_WORKERS chunks wait for or are in post-processing (bounded memory)
    workers = POST_WORKERS if pipelined else 0
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="segtme-post") as ex:
        pending: deque = deque()
        for k, ch in enumerate(chunks):
            maps = predictor.predict(ch.region)
            rgb_work = working_region(rgb, s, ch.region)
            while len(pending) >= max(1, workers):
                fut, kk = pending.popleft()
                collect(fut.result(), kk)
            if workers:
                pending.append((ex.submit(post, k, ch, maps, rgb_work), k))
            else:
                collect(post(k, ch, maps, rgb_work), k)
            del maps, rgb_work
        while pending:
            fut, kk = pending.popleft()
            collect(fut.result(), kk)
    del predictor
    release_free_memory()  # the forward passes' retained buffers are not needed any more
    parts = [t for t in final if len(t)]
    bparts = [x for x in border if len(x[0])]
    if bparts:
        bt = NucleiTable.concat([x[0] for x in bparts], renumber=False)
        keep = dedupe_across_chunks(bt, np.concatenate([np.full(len(x[0]), x[2]) for x in bparts]),
                                    np.concatenate([x[1] for x in bparts]))
        parts.append(bt.subset(keep))
    if parts:
        table = NucleiTable.concat(parts, renumber=False)
        table.ids = np.arange(1, len(table) + 1, dtype=np.int64)
    else:
        table = NucleiTable.empty(cfg.tax, mpp)
    table.mpp = mpp
    table.meta.update(
        model=cfg.name, model_mpp=cfg.mpp, input_mpp=mpp, scale=s,
        image_size=[int(rgb.shape[1]), int(rgb.shape[0])], n_chunks=len(chunks),
    )
    return table


def _segment_with_predict_instances(rgb: np.ndarray, mpp: float, model: LoadedModel, s: float) -> NucleiTable:
    """Models without a tensor forward (the classical baseline) that expose
    ``module.predict_instances(rgb, mpp) -> (inst, class_id, class_prob)`` at the input
    resolution (as ``eval.evaluate.predict_instances`` calls them): the whole image in one call
    (their own resampling and global thresholds), measured in input px."""
    cfg = model.config
    inst, cls, cprob = model.module.predict_instances(rgb, mpp)
    inst = np.asarray(inst)
    if inst.shape != rgb.shape[:2]:
        raise ValueError(f"{cfg.name}: predict_instances returned labels of shape {inst.shape}, image is {rgb.shape[:2]}")
    table = build_nuclei_table(inst.astype(np.int32, copy=False), cfg.tax, class_id=np.asarray(cls),
                               class_prob=np.asarray(cprob, np.float32), rgb=rgb, mpp=mpp)
    table.mpp = mpp
    table.meta.update(
        model=cfg.name, model_mpp=cfg.mpp, input_mpp=mpp, scale=s,
        image_size=[int(rgb.shape[1]), int(rgb.shape[0])], n_chunks=1,
    )
    return table


# --------------------------------------------------------------------------- analyze


@dataclass
class AnalysisResult:
    """Output of ``analyze``.

    nuclei: the nuclei table (input px; ``nuclei.mpp`` = input MPP).
    report: the TME report (``segtme.tme.report.build_tme_report``) or None when that module is
        not available.
    model: the model used.
    mpp: µm/px of the input; image_size: (width, height) input px; notes: input conversions.
    output_type: "detection" or "cell" (for ``feature_collection``).
    tissue_features: PAGET models only: tissue regions as QuPath annotation Features (input px;
        ``objectType "annotation"``, classified Epithelium / Stroma / Smooth muscle / Red blood
        cell); empty for nucleus models.
    paget: PAGET models only: the full ``segtme.paget.product.PagetResult`` (14-class map etc.).
    """

    nuclei: NucleiTable
    report: dict | None
    model: LoadedModel
    mpp: float
    image_size: tuple[int, int]
    notes: list[str] = field(default_factory=list)
    output_type: str = "detection"
    tissue_features: list[dict] = field(default_factory=list)
    paget: Any = None

    def feature_collection(self, output_type: str | None = None) -> dict:
        """QuPath GeoJSON FeatureCollection: PAGET tissue annotations (if any), the nuclei, and
        the TME measurements (if any)."""
        from .export.geojson import feature_collection

        return feature_collection(self.nuclei, output_type=output_type or self.output_type, report=self.report,
                                  annotations=self.tissue_features)

    def write_geojson(self, path: str | Path, output_type: str | None = None, gzip: bool = False) -> Path:
        """Write ``feature_collection()`` to ``path`` (atomically) without building it in memory:
        Features are generated and written in batches (``export.geojson.write_nuclei_geojson``).
        Returns the path written (``.gz`` appended when ``gzip``)."""
        from .export.geojson import write_nuclei_geojson

        return write_nuclei_geojson(path, self.nuclei, output_type or self.output_type, report=self.report,
                                    annotations=self.tissue_features, gzip=gzip)


def build_report(table: NucleiTable, narrative_backend: str = "template") -> dict | None:
    """TME report via ``segtme.tme.report.build_tme_report`` if that module exists, else None."""
    try:
        from .tme.report import build_tme_report  # type: ignore[import-not-found]
    except ImportError as e:
        log.warning("TME report not available (%s); writing nuclei only", e)
        return None
    return build_tme_report(table, narrative_backend=narrative_backend)


def _is_paget(cfg: ModelConfig) -> bool:
    return cfg.arch == "paget_segformer"


def analyze_paget_image(
    rgb: np.ndarray,
    mpp: float,
    model: LoadedModel,
    *,
    narrative_backend: str = "template",
    instance_source: Any = None,
    device: str = "auto",
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> tuple[Any, dict | None]:
    """PAGET-S / PAGET-H on a whole image (``segtme.paget.product.analyze_paget``) and the TME
    report over its nuclei in the paget13 taxonomy.

    rgb: (H, W, 3) uint8 at ``mpp`` µm/px. instance_source (PAGET-H): a model spec /
    LoadedModel / InstanceSource, default the config's (the shipped UperHoVer ``default``).
    The nuclei table (input px) gets the tissue region under each nucleus and the tissue areas
    of the result's annotations (``attach_tissue_context``), so the report's tissue fractions
    and immune location use the same regions the user imports. Returns (PagetResult, report).
    Memory: the student's 14-class map of the whole image (no chunking, unlike ``segment_image``)."""
    from .paget.product import analyze_paget, attach_tissue_context

    res = analyze_paget(rgb, mpp, model, instance_source=instance_source, device=device, batch_size=batch_size,
                        compute_features=False, tile=tile, overlap=overlap, progress=progress)
    attach_tissue_context(res.nuclei, res.nucleus_tissue, res.tissue_features)
    res.nuclei.meta.update(scale=res.scale, image_size=[int(rgb.shape[1]), int(rgb.shape[0])])
    report = build_report(res.nuclei, narrative_backend)
    if report is not None:
        report["tissue_annotations_total"] = len(res.tissue_features)
    return res, report


def _resolve_model(model: Any, device: str, weights: str | Path | None) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    from .models.registry import load_model

    return load_model(model, device, weights=weights)


def analyze(
    image_or_path: Any,
    mpp: float | None = None,
    model: Any = "default",
    narrative_backend: str = "template",
    output_type: str = "detection",
    *,
    device: str = "auto",
    weights: str | Path | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    halo: int | None = None,
    max_pixels: int | None = None,
    progress: Callable[[int], None] | None = None,
    instance_source: Any = None,
) -> AnalysisResult:
    """Analyse an H&E image: nuclei (segmented, classified, measured) and the TME report.

    image_or_path: a file path (PNG/JPEG/TIFF) or an (H, W[, C]) array.
    mpp: µm/px of the image; overrides the file's resolution tags; required when the file has
    none. model: a model name / config path / ``LoadedModel``; PAGET models (``paget_s``,
    ``paget_h``, their variants) also return tissue annotations (``analyze_paget_image``;
    ``instance_source`` for PAGET-H, chunk_size/halo unused). output_type: "detection" | "cell".
    Raises InputError / SegTMEError subclasses with a user-facing message.
    """
    from .inference.imageio import image_from_array, read_image, validate_mpp

    if output_type not in ("detection", "cell"):
        raise InputError(f"output_type must be 'detection' or 'cell', got {output_type!r}")
    if isinstance(image_or_path, (str, os.PathLike)):
        img = read_image(image_or_path, max_pixels=max_pixels)
    else:
        img = image_from_array(np.asarray(image_or_path), max_pixels=max_pixels)
    if mpp is not None:
        use = validate_mpp(mpp, "--mpp")
        if img.mpp is not None and abs(img.mpp - use) > 0.02 * use:
            log.warning("using --mpp %.4g although the file says %.4g µm/px", use, img.mpp)
    elif img.mpp is not None:
        use = img.mpp
        log.info("MPP from file: %.4g µm/px", use)
    else:
        raise InputError(f"{img.source}: the image has no resolution information; pass its microns per pixel (--mpp)")
    lm = _resolve_model(model, device, weights)
    if _is_paget(lm.config):
        res, report = analyze_paget_image(img.rgb, use, lm, narrative_backend=narrative_backend,
                                          instance_source=instance_source, device=device, tile=tile, overlap=overlap,
                                          batch_size=batch_size or 8, progress=progress)
        res.nuclei.meta["source"] = img.source
        return AnalysisResult(res.nuclei, report, lm, use, img.size, list(img.notes), output_type,
                              tissue_features=res.tissue_features, paget=res)
    table = segment_image(
        img.rgb, use, lm, chunk_size=chunk_size, halo=halo, tile=tile, overlap=overlap,
        batch_size=batch_size, progress=progress,
    )
    table.meta["source"] = img.source
    report = build_report(table, narrative_backend)
    return AnalysisResult(table, report, lm, use, img.size, list(img.notes), output_type)
