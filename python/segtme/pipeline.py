"""The path from an H&E image or slide to classified nuclei and a TME report.

One path for every input: a source (``io.source``: PNG, tiled TIFF, OpenSlide slide, array, a
streamed tile set) -> working-resolution regions (``segtme.resample``) -> one tile grid
(``engine.GridPredictor``) -> the one maps -> nuclei step (``inference.maps``) per chunk -> the one
stitcher (``inference.stitch``) -> ``NucleiTable`` -> TME report (``segtme.report``).

* ``segment_source(source, model, options)``: any-size image or slide -> nuclei table, processed
  in chunks with a halo so memory stays bounded (no full-size float maps are ever allocated);
  ``sink`` receives nuclei chunk by chunk as soon as they are final (streamed exports).
* ``segment_image(rgb, mpp, model, options)``: the same for an in-memory array.
* ``analyze``: file / array / source + MPP + model -> ``AnalysisResult`` (nuclei + TME report).
  Models whose contract says ``product="paget"`` go through ``analyze_paget_image``.

Units: *input px* = level-0 pixels of the source (µm/px = its MPP); *working px* = pixels at
the model's ``cfg.mpp``; ``s = mpp_in / cfg.mpp``. Run-time choices (device, precision, batch,
tiles, chunks, progress) come in one ``InferenceOptions``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import InputError
from .inference.maps import Maps
from .inference.nuclei import NucleiTable, build_nuclei_table
from .inference.options import InferenceOptions
from .inference.overlap import POST_WORKERS, run_overlapped
from .inference.stitch import ChunkSink, Stitcher
from .models.config import ModelConfig
from .models.registry import LoadedModel

log = logging.getLogger(__name__)

__all__ = ["segment_source", "segment_image", "analyze", "analyze_paget_image", "AnalysisResult", "InferenceOptions",
           "plan_chunks", "count_tiles", "build_report"]

#: default chunk edge and halo in working px. The model tiles do not depend on the chunks
#: (``engine.GridPredictor``), so the halo only has to hold the largest nucleus (64 px = 32 µm
#: at 0.5 µm/px). 1024 / 1536 / 2048-px chunks measured equally fast end to end; 1024 keeps two
#: chunks in flight (pipelined post-processing) small: with 1536 the 10 000² px run peaked at
#: 2228 MiB instead of ~1950 (docs/benchmarks.md)
DEFAULT_CHUNK_WORK = 1024
DEFAULT_HALO_WORK = 64
#: working pixels per forward batch when no batch size is given (8 x 256^2)
BATCH_PIXELS = 8 * 256 * 256

def _chunk_params(opt: InferenceOptions) -> tuple[int, int]:
    c = opt.chunk_size or DEFAULT_CHUNK_WORK
    h = DEFAULT_HALO_WORK if opt.halo is None else opt.halo
    return int(c), int(h)


def _working_shape(size_wh: Sequence[int], mpp: float, cfg: ModelConfig) -> tuple[float, int, int]:
    """(s, working height, working width) of a (width, height) input at ``mpp``."""
    from .inference.engine import scale_factor
    from .resample import working_size

    s = scale_factor(mpp, cfg)
    ww, hw = working_size(size_wh, mpp, float(cfg.mpp)) if s != 1.0 else (int(size_wh[0]), int(size_wh[1]))
    return s, hw, ww


def plan_chunks(rgb_shape: Sequence[int], mpp: float, cfg: ModelConfig, options: InferenceOptions | None = None):
    """The chunks ``segment_image`` processes for an image of ``rgb_shape`` (H, W, ...), in
    *working* px of the whole image. options: the run's ``InferenceOptions`` (its chunk_size /
    halo; None = defaults)."""
    from .inference.tiling import chunk_grid

    c, h = _chunk_params(options or InferenceOptions())
    _, hw, ww = _working_shape((int(rgb_shape[1]), int(rgb_shape[0])), mpp, cfg)
    return chunk_grid(ww, hw, c, h)


def count_tiles(rgb_shape: Sequence[int], mpp: float, cfg: ModelConfig, options: InferenceOptions | None = None) -> int:
    """Number of model tiles ``segment_image`` (or, for PAGET models, ``analyze_paget_image``)
    runs on an image of ``rgb_shape`` (H, W, ...): one grid over the whole working image
    (``engine.GridPredictor``), whatever the chunks (for a progress bar's total). options: the
    run's ``InferenceOptions`` (its tile / overlap; None = the model config's)."""
    from .inference.tiling import tile_grid

    opt = options or InferenceOptions()
    t = int(opt.tile or cfg.tile_size)
    o = int(cfg.tile_overlap if opt.overlap is None else opt.overlap)
    _, hw, ww = _working_shape((int(rgb_shape[1]), int(rgb_shape[0])), mpp, cfg)
    return len(tile_grid(hw, ww, t, o))


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise InputError(f"image has zero size ({rgb.shape[1]}x{rgb.shape[0]} px)")


def working_reader(source: Any, work_mpp: float) -> Callable[[Sequence[int]], np.ndarray]:
    """``fetch(region)``: the working-px region ``(x0, y0, x1, y1)`` (of the whole source at
    ``work_mpp``) as (h, w, 3) uint8 — the source's own ``read_working`` when it has one, else
    its level-0 pixels of ``resample.input_window`` resampled here (``read_region`` at the
    source's MPP)."""
    from .resample import input_window, resample, scale

    if hasattr(source, "read_working"):
        return lambda r: source.read_working(tuple(int(v) for v in r), work_mpp)
    s = scale(float(source.mpp), float(work_mpp))
    W, H = (int(v) for v in source.size)

    def fetch(region: Sequence[int]) -> np.ndarray:
        x0, y0, x1, y1 = (int(v) for v in region)
        if s == 1.0:
            return source.read_region((x0, y0, x1 - x0, y1 - y0), source.mpp)
        iy0, ix0, iy1, ix1 = input_window((x0, y0, x1, y1), s, (H, W))
        crop = source.read_region((ix0, iy0, ix1 - ix0, iy1 - iy0), source.mpp)
        return resample(crop, s, (y1 - y0, x1 - x0), origin_out=(y0, x0), origin_in=(iy0, ix0))

    return fetch


def _array_reader(rgb: np.ndarray, s: float) -> Callable[[Sequence[int]], np.ndarray]:
    from .resample import resample_region

    return lambda r: resample_region(rgb, s, r)


def _with_precision(model: LoadedModel, opt: InferenceOptions) -> LoadedModel:
    if opt.precision == "auto" or opt.precision == model.precision:
        return model
    return replace(model, precision=opt.precision)


#: ``keep_chunk(core)``: core = (x0, y0, x1, y1) of a chunk in input (level-0) px of the source;
#: False leaves the chunk out (its nuclei are not reported; its tiles run only where a kept
#: neighbour needs them)
KeepChunk = Callable[[tuple[float, float, float, float]], bool]


def segment_source(source: Any, model: LoadedModel, options: InferenceOptions | None = None, *,
                   sink: ChunkSink | None = None, keep_chunk: KeepChunk | None = None) -> NucleiTable:
    """Nuclei of an ``ImageSource`` (``io.source``: ``size`` (W, H) level-0 px, ``mpp``,
    ``read_region``), in level-0 px; see ``segment_image`` for the method. sink: called with
    each batch of final nuclei (ids already set) as soon as it is known. keep_chunk: a chunk
    filter (e.g. tissue), see ``KeepChunk``."""
    mpp = float(source.mpp)
    W, H = (int(v) for v in source.size)
    if W <= 0 or H <= 0:
        raise InputError(f"image has zero size ({W}x{H} px)")
    opt = options or InferenceOptions()
    model = _with_precision(model, opt)
    c = model.contract
    if c.instances == "hook":
        return _segment_with_hook(source.read_region((0, 0, W, H), mpp), mpp, model, sink)
    if c.product != "nuclei" or c.instances != "maps":
        raise InputError(f"model {model.config.name!r} does not segment nuclei from maps "
                         f"(contract: product={c.product!r}, instances={c.instances!r})")
    s, hw, ww = _working_shape((W, H), mpp, model.config)
    fetch = working_reader(source, float(model.config.mpp))
    table = _segment_regions(fetch, s, hw, ww, mpp, model, opt, sink, keep_chunk)
    table.meta["image_size"] = [W, H]
    if getattr(source, "path", None):
        table.meta["source"] = str(source.path)
    return table


def segment_image(rgb: np.ndarray, mpp: float, model: LoadedModel, options: InferenceOptions | None = None, *,
                  sink: ChunkSink | None = None) -> NucleiTable:
    """Nuclei of an (H, W, 3) uint8 image at ``mpp`` µm/px, in input px.

    The image's working-resolution grid (``s = mpp / cfg.mpp``, size ``resample.working_size``)
    is cut into chunks of ``options.chunk_size`` working px (default 1024) with a halo
    (default 64) on each side. One tile grid (``options.tile``/``overlap``, default the
    config's) covers the whole working image and every tile runs once (``engine.GridPredictor``):
    a chunk region's maps are the blend of all grid tiles touching it, i.e. the whole image's
    blended maps cropped to the region; the input is resampled window by window
    (``resample.resample_region``). Each chunk goes through ``maps.nuclei_from_maps``, and the
    stitcher (``stitch.Stitcher``) keeps each nucleus once: the chunk whose core holds its
    centroid owns it; seam copies within ``stitch.BORDER_TOL_WORK`` / ``BORDER_HOLD_WORK`` working
    px of a core edge are de-duplicated by polygon overlap. The halo must exceed the largest nucleus
    (the model tiles do not depend on the chunks); the default 64 px (32 µm) does.
    options.pipelined: post-process chunk k in a worker thread while the model predicts chunk
    k + 1 (same result). batch_size: default as many tiles as fit ``BATCH_PIXELS``.
    Peak memory ~ 2 x (C + 6) x (chunk + 2 halo)^2 x 4 bytes + the tile cache, independent of the
    image size.
    """
    _check_rgb(rgb)
    opt = options or InferenceOptions()
    model = _with_precision(model, opt)
    c = model.contract
    if c.instances == "hook":
        from .inference.engine import scale_factor

        scale_factor(mpp, model.config)  # validates the MPP
        return _segment_with_hook(rgb, mpp, model, sink)
    if c.product != "nuclei" or c.instances != "maps":
        raise InputError(f"model {model.config.name!r} does not segment nuclei from maps "
                         f"(contract: product={c.product!r}, instances={c.instances!r})")
    s, hw, ww = _working_shape((rgb.shape[1], rgb.shape[0]), mpp, model.config)
    table = _segment_regions(_array_reader(rgb, s), s, hw, ww, mpp, model, opt, sink)
    table.meta["image_size"] = [int(rgb.shape[1]), int(rgb.shape[0])]
    return table


def _segment_regions(fetch: Callable[[Sequence[int]], np.ndarray], s: float, hw: int, ww: int, mpp: float,
                     model: LoadedModel, opt: InferenceOptions, sink: ChunkSink | None,
                     keep_chunk: KeepChunk | None = None) -> NucleiTable:
    """Chunks of the working grid (hw x ww) -> model -> maps -> nuclei -> stitcher."""
    from .inference.engine import GridPredictor
    from .inference.maps import nuclei_from_maps as _nfm
    from .inference.tiling import chunk_grid
    from .runtime import release_free_memory

    cfg = model.config
    post = cfg.post
    c, h = _chunk_params(opt)
    chunks = chunk_grid(ww, hw, c, h)
    n_planned = len(chunks)
    if keep_chunk is not None:
        chunks = [ch for ch in chunks if keep_chunk(tuple(v / s for v in ch.core))]
    batch_size = opt.batch_size
    if batch_size is None:
        t_edge = int(opt.tile or cfg.tile_size)
        batch_size = max(1, BATCH_PIXELS // (t_edge * t_edge))
    predictor = GridPredictor(model, hw, ww, fetch, [ch.region for ch in chunks], opt.tile, opt.overlap,
                              batch_size, opt.progress, opt.tta)
    stitcher = Stitcher(cfg.tax, mpp, sink=sink)

    def post_chunk(ch, maps: Maps, rgb_work: np.ndarray) -> tuple[NucleiTable, tuple[float, ...]]:
        x0, y0 = ch.region[:2]
        t = _nfm(maps, post, cfg.tax, work_mpp=float(cfg.mpp), rgb=rgb_work, scale=s, offset_xy=(x0 / s, y0 / s),
                 input_mpp=mpp)
        return t, tuple(v / s for v in ch.core)

    def produce(ch) -> tuple[Maps, np.ndarray]:
        return predictor.predict(ch.region), fetch(ch.region)

    # post-processing (single-threaded numpy / scikit-image) of chunk k runs in a worker thread
    # while the model predicts chunk k + 1, so both CPU stages keep the cores busy; at most
    # POST_WORKERS chunks wait for or are in post-processing (bounded memory)
    run_overlapped(chunks, produce, lambda ch, made: post_chunk(ch, *made),
                   lambda ch, done: stitcher.add(*done, scale=s), POST_WORKERS if opt.pipelined else 0)
    del predictor
    release_free_memory()  # the forward passes' retained buffers are not needed any more
    table = stitcher.finish()
    table.meta.update(model=cfg.name, model_mpp=cfg.mpp, input_mpp=mpp, scale=s, n_chunks=len(chunks))
    if keep_chunk is not None:
        table.meta["n_chunks_skipped"] = n_planned - len(chunks)
    return table


def _segment_with_hook(rgb: np.ndarray, mpp: float, model: LoadedModel, sink: ChunkSink | None) -> NucleiTable:
    """Models whose contract has ``instances="hook"`` (the classical baseline):
    ``module.predict_instances(rgb, mpp) -> (inst, class_id, class_prob)`` on the input grid, the
    whole image in one call (their own resampling and global thresholds), measured in input px."""
    from .inference.engine import scale_factor

    cfg = model.config
    inst, cls, cprob = model.module.predict_instances(rgb, mpp)
    inst = np.asarray(inst)
    if inst.shape != rgb.shape[:2]:
        raise ValueError(f"{cfg.name}: predict_instances returned labels of shape {inst.shape}, image is {rgb.shape[:2]}")
    table = build_nuclei_table(inst.astype(np.int32, copy=False), cfg.tax, class_id=np.asarray(cls),
                               class_prob=np.asarray(cprob, np.float32), rgb=rgb, mpp=mpp)
    table.mpp = mpp
    table.meta.update(
        model=cfg.name, model_mpp=cfg.mpp, input_mpp=mpp, scale=scale_factor(mpp, cfg),
        image_size=[int(rgb.shape[1]), int(rgb.shape[0])], n_chunks=1,
    )
    if sink is not None and len(table):
        sink(table)
    return table


# --------------------------------------------------------------------------- analyze


@dataclass
class AnalysisResult:
    """Output of ``analyze``.

    nuclei: the nuclei table (input px; ``nuclei.mpp`` = input MPP).
    report: the TME report (``segtme.report.build_tme_report``).
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


def build_report(table: NucleiTable, narrative_backend: str = "template") -> dict:
    """The TME report of ``table`` (``segtme.report.build_tme_report``)."""
    from .report import build_tme_report

    return build_tme_report(table, narrative_backend=narrative_backend)


def analyze_paget_image(
    rgb: np.ndarray,
    mpp: float,
    model: LoadedModel,
    options: InferenceOptions | None = None,
    *,
    narrative_backend: str = "template",
    instance_source: Any = None,
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

    opt = options or InferenceOptions()
    res = analyze_paget(rgb, mpp, _with_precision(model, opt), instance_source=instance_source, device=opt.device,
                        batch_size=opt.batch_size or 8, compute_features=False, tile=opt.tile, overlap=opt.overlap,
                        progress=opt.progress, pipelined=opt.pipelined)
    attach_tissue_context(res.nuclei, res.nucleus_tissue, res.tissue_features)
    res.nuclei.meta.update(scale=res.scale, image_size=[int(rgb.shape[1]), int(rgb.shape[0])])
    report = build_report(res.nuclei, narrative_backend)
    if report is not None:
        report["tissue_annotations_total"] = len(res.tissue_features)
    return res, report


def _resolve_model(model: Any, opt: InferenceOptions, weights: str | Path | None) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return _with_precision(model, opt)
    from .models.registry import load_model

    return load_model(model, opt.device, weights=weights, precision=opt.precision)


#: keyword arguments ``analyze`` still accepts in place of ``options`` (former signature)
_LEGACY_OPTION_KWARGS = ("device", "tile", "overlap", "batch_size", "chunk_size", "halo", "progress")


def analyze(
    image_or_path: Any,
    mpp: float | None = None,
    model: Any = "default",
    options: InferenceOptions | None = None,
    *,
    narrative_backend: str = "template",
    output_type: str = "detection",
    weights: str | Path | None = None,
    max_pixels: int | None = None,
    instance_source: Any = None,
    sink: ChunkSink | None = None,
    **legacy: Any,
) -> AnalysisResult:
    """Analyse an H&E image or slide: nuclei (segmented, classified, measured) and the TME report.

    image_or_path: a file path (PNG/JPEG/TIFF/SVS/any OpenSlide slide), an (H, W[, C]) array, or
    an ``ImageSource``. mpp: µm/px of level 0; overrides the file's metadata; required when the
    file has none. model: a model name / config path / ``LoadedModel``; models with
    ``contract.product == "paget"`` also return tissue annotations (``analyze_paget_image``;
    ``instance_source`` for PAGET-H). options: run-time choices (``InferenceOptions``); the
    former keyword arguments (device, tile, overlap, batch_size, chunk_size, halo, progress)
    are still accepted and override it. output_type: "detection" | "cell". sink: streams the
    final nuclei chunk by chunk (``segment_source``). Raises InputError / SegTMEError
    subclasses with a user-facing message, before any pixel is processed where it can.
    Every pixel of the input is segmented and all nuclei are kept in memory: right for images
    and regions; for a whole slide use ``segtme.analyze_slide`` (tissue only, streamed outputs).
    """
    from .io.source import open_source
    from .runtime import set_torch_threads

    unknown = set(legacy) - set(_LEGACY_OPTION_KWARGS)
    if unknown:
        raise TypeError(f"analyze() got unexpected keyword argument(s) {sorted(unknown)}")
    opt = (options or InferenceOptions()).replace(**{k: v for k, v in legacy.items() if v is not None})
    if output_type not in ("detection", "cell"):
        raise InputError(f"output_type must be 'detection' or 'cell', got {output_type!r}")
    if isinstance(image_or_path, (str, os.PathLike, np.ndarray)):
        src = open_source(image_or_path, mpp, max_pixels=max_pixels)
    elif all(hasattr(image_or_path, a) for a in ("size", "mpp", "read_region")):
        src = open_source(image_or_path)  # an ImageSource as it is
    else:
        raise InputError(f"analyze: expected an image file path, an (H, W[, C]) array or an ImageSource, "
                         f"got {type(image_or_path).__name__}")
    try:
        use = float(src.mpp)
        lm = _resolve_model(model, opt, weights)
        set_torch_threads(opt.threads)
        notes = list(getattr(src, "notes", []) or [])
        size = (int(src.size[0]), int(src.size[1]))
        where = str(src.path) if getattr(src, "path", None) else "<array>"
        if lm.contract.product == "paget":
            rgb = src.read_region((0, 0, size[0], size[1]), use)
            res, report = analyze_paget_image(rgb, use, lm, opt, narrative_backend=narrative_backend,
                                              instance_source=instance_source)
            res.nuclei.meta["source"] = where
            return AnalysisResult(res.nuclei, report, lm, use, size, notes, output_type,
                                  tissue_features=res.tissue_features, paget=res)
        table = segment_source(src, lm, opt, sink=sink)
    finally:
        if src is not image_or_path:
            src.close()
    table.meta["source"] = where
    report = build_report(table, narrative_backend)
    return AnalysisResult(table, report, lm, use, size, notes, output_type)
