"""PAGET runner: the student and the instance source on one image or tile (models in, outputs
out). The science is in ``outputs`` (pure) and ``geometry``; this module only runs models.

Units: ``rgb`` at ``mpp`` µm/px (input px); the student works at ``cfg.mpp`` (working px),
``s = mpp / cfg.mpp``.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from ..models.registry import LoadedModel
from .outputs import PagetResult, paget_result_from_prob


def instance_map_from_model(lm: LoadedModel, rgb: np.ndarray, mpp: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Nucleus instances of ``rgb`` from a SegTME nucleus model, on ``rgb``'s own pixel grid,
    through the one contract dispatch (``inference.instances.predict_instances``: hook models
    called directly, maps models tiled at their MPP + the one maps -> nuclei step + nearest back).

    Returns ``(inst (H, W) int32 1..N, class_id (N,) int32 in the model's taxonomy)``."""
    from ..inference.instances import predict_instances

    if mpp is None:
        raise InputError("the instance source needs the image MPP (µm/px)")
    ins = predict_instances(lm, rgb, mpp)
    return np.asarray(ins.inst, np.int32), np.asarray(ins.class_id, np.int32)


def predict_semantic(lm: LoadedModel, rgb: np.ndarray, mpp: float, *, batch_size: int = 8,
                     tile: int | None = None, overlap: int | None = None,
                     progress: Any = None) -> tuple[np.ndarray, np.ndarray, float]:
    """PAGET-S: (prob (14, h, w) softmax, rgb_work, s) at the model's working MPP (tiled, blended;
    ``tile`` / ``overlap`` in working px, default the config's; ``progress`` called with the
    number of tiles finished)."""
    maps, rgb_w, s = predict_working_maps(lm, rgb, mpp, batch_size=batch_size, tile=tile, overlap=overlap,
                                          progress=progress)
    return maps.prob, rgb_w, s


def predict_working_maps(lm: LoadedModel, rgb: np.ndarray, mpp: float, *, batch_size: int = 8,
                         tile: int | None = None, overlap: int | None = None, progress: Any = None) -> tuple[Any, np.ndarray, float]:
    """(Maps, rgb_work, s): the model's tiled, blended maps of ``rgb`` at its working MPP (every
    head: the 14-class "sem" as ``prob`` and, for ``paget_uperhover``, "hv" and ``aux["nuc"]``)."""
    from ..inference.engine import predict_maps, to_working

    rgb_w, s = to_working(rgb, mpp, lm.config)
    return predict_maps(lm, rgb_w, tile, overlap, batch_size=batch_size, progress=progress), rgb_w, s


def _resolve_instance_source(src: Any, device: str, allow_random: bool) -> Any:
    """None / model spec / LoadedModel / InstanceSource -> something with ``instances`` or a
    LoadedModel. Spec "default" falls back to the classical baseline when no shipped default
    exists (stated in the result's meta)."""
    from ..models.registry import load_model, shipped_models

    from .teachers import InstanceSource

    if src is None or isinstance(src, (LoadedModel, InstanceSource)):
        return src
    spec = str(src)
    if spec == "default" and "default" not in shipped_models():
        spec = "classical"
    return load_model(spec, device, allow_random=allow_random)


def instances_from_maps(prob: np.ndarray, hv: np.ndarray | None, cfg: Any) -> tuple[np.ndarray, np.ndarray]:
    """Nucleus instances from an instance-source model's maps on its own working grid, through
    the one maps -> nuclei step (``inference.maps.instances_from_maps`` with ``cfg.post``: HV
    watershed, or without an HV head the foreground components — both with the small-object
    filter). prob: (C, h, w) softmax; hv: (2, h, w) or None.
    Returns ``(inst (h, w) int32 1..N, class_id (N,) int32 in the model's taxonomy)``."""
    from ..inference.maps import Maps
    from ..inference.maps import instances_from_maps as one_step

    ins = one_step(Maps(prob, hv), cfg.post)
    return np.asarray(ins.inst, np.int32), np.asarray(ins.class_id, np.int32)


def own_instance_map(maps: Any, cfg: Any) -> tuple[np.ndarray, np.ndarray]:
    """PAGET-H instances of a model that makes its own nuclei (``paget.heads.own_instances``):
    the one maps -> nuclei step on its nucleus head ("nuc") and HV head, on the maps' own
    working grid (the same grid as its 14-class map). Returns ``(inst (h, w) int32 1..N,
    class_id (N,) int32 in the nucleus head's taxonomy, ``nucleus_taxonomy(cfg)``)``."""
    from .heads import NUC_HEAD

    return instances_from_maps(maps.aux[NUC_HEAD], maps.hv, cfg)


def nucleus_taxonomy(cfg: Any) -> str:
    """The taxonomy of the classes a PAGET model's own nucleus head gives (``extra.nucleus_taxonomy``,
    ``consep4`` for ``paget_h_shared``)."""
    return str((cfg.extra or {}).get("nucleus_taxonomy", "consep4"))


def instances_to_grid(inst: np.ndarray, out_shape: tuple[int, int], s: float) -> np.ndarray:
    """Bring an instance map to another pixel grid (nearest neighbour, ``s`` = output px per
    input px; the engine's pixel-centre convention) and renumber 1..N. Identity when the shapes
    already match and ``s`` is 1."""
    from ..inference.postprocess import relabel_sequential

    if inst.shape == tuple(out_shape) and abs(s - 1.0) < 1e-9:
        return relabel_sequential(np.asarray(inst, np.int32))
    from .geometry import resize_labels

    return relabel_sequential(resize_labels(np.asarray(inst, np.int32), out_shape, s))


def instances_to_grid_with_classes(inst: np.ndarray, class_id: np.ndarray, out_shape: tuple[int, int],
                                   s: float) -> tuple[np.ndarray, np.ndarray]:
    """``instances_to_grid`` that keeps each instance's class (``class_id[l - 1]`` for label l):
    returns ``(inst (out_shape) int32 1..M, class_id (M,) int32)``; an instance lost on a coarser
    grid loses its class with it."""
    from .outputs import relabel_with_classes

    if inst.shape == tuple(out_shape) and abs(s - 1.0) < 1e-9:
        return relabel_with_classes(inst, class_id)
    from .geometry import resize_labels

    lab_cls = np.concatenate([[0], np.asarray(class_id, np.int32)])[np.asarray(inst, np.int64)]
    new = instances_to_grid(inst, out_shape, s)
    cls_px = resize_labels(lab_cls.astype(np.int32), out_shape, s)  # the same nearest source px as ``new``
    cls = np.zeros(int(new.max(initial=0)), np.int32)
    m = new > 0
    cls[new[m] - 1] = cls_px[m]
    return new, cls


def source_instances(src: Any, rgb_w: np.ndarray, wm: float) -> tuple[np.ndarray, str, np.ndarray | None, Any]:
    """PAGET-H instances of a working-resolution image from an ``InstanceSource`` (``instances``)
    or a SegTME ``LoadedModel`` (run with its own tiling, see ``instance_map_from_model``), on the
    grid of ``rgb_w``. Returns (inst, description, class of each instance in the model's taxonomy
    or None for an ``InstanceSource``, that taxonomy or None)."""
    from .teachers import InstanceSource, TeacherInput

    if isinstance(src, InstanceSource):
        inst_w = np.asarray(src.instances(TeacherInput(rgb_w, wm)).inst, np.int32)
        if inst_w.shape != rgb_w.shape[:2]:
            raise InputError(f"instance source returned {inst_w.shape}, expected {rgb_w.shape[:2]}")
        return inst_w, getattr(src, "name", type(src).__name__), None, None
    inst, cls = instance_map_from_model(src, rgb_w, wm)
    return inst, f"{src.config.name} ({src.source})", cls, src.config.tax


def mitosis_marker(spec: Any = "mitosis", device: str = "cpu", threshold: float | None = None,
                   precision: str = "auto") -> Any:
    """A ``callable(table, rgb, mpp, candidates=None)`` marking mitotic figures with the mitosis
    teacher (``segtme.mitosis``; ``candidates``: the nuclei to classify, default all), or None
    when ``spec`` is None / "none" or ``spec`` is "mitosis" and no mitosis model ships (PAGET
    then keeps the student's own "Mitotic cell" pixels only). ``precision``: the teacher's
    forward arithmetic (``registry.load_model``; callers pass the PAGET model's)."""
    if spec is None or str(spec) == "none":
        return None
    from ..mitosis.detect import MitosisParams, load_mitosis_model, mark_mitoses
    from ..models.registry import LoadedModel, shipped_models

    if not isinstance(spec, LoadedModel) and str(spec) == "mitosis" and "mitosis" not in shipped_models():
        return None
    lm = load_mitosis_model(spec, device, precision)
    params = MitosisParams(threshold=threshold)

    def mark(table: Any, rgb: np.ndarray, mpp: float, candidates: np.ndarray | None = None) -> None:
        mark_mitoses(table, rgb, mpp, lm, params, candidates=candidates)

    mark.takes_candidates = True  # type: ignore[attr-defined]  (core_marker may restrict it)

    return mark


def resolve_mitosis(cfg: Any, mitosis: Any = "config", device: str = "cpu", precision: str = "auto") -> Any:
    """The mitosis marker PAGET-H runs on its instances — ONE resolution for the CLI
    (``analyze_paget``) and the server (``server.runners``): ``mitosis`` = "config" → the
    student config's ``extra["mitosis"]`` (the shipped ``mitosis`` model for the shipped
    PAGET-H), a model spec / LoadedModel → ``mitosis_marker``, a ready marker (callable) → itself,
    None / "none" → None. ``cfg``: the student's ``ModelConfig``; ``precision``: the student's
    (``LoadedModel.precision``), so a forced fp32 / bf16 run is that everywhere. Returns a
    ``callable(table_w, rgb_w, mpp_w)`` or None."""
    spec = cfg.extra.get("mitosis") if isinstance(mitosis, str) and mitosis == "config" else mitosis
    if callable(spec) and not isinstance(spec, LoadedModel):
        return spec
    return mitosis_marker(spec, device, precision=precision)


def core_marker(mark: Any, core_w: Sequence[float]) -> Any:
    """A mitosis marker (``mitosis_marker``) restricted to the nuclei of a chunk or tile that its
    stitcher can keep: centroid within ``stitch.BORDER_TOL_WORK`` of ``core_w`` (x0, y0, x1, y1,
    working px of the image the marker sees), + 1 working px against rounding between the grids.
    The halo's other nuclei (~20 % of a 1024 px chunk's with its 64 px halo) are dropped anyway,
    so the result is the same at less cost. A marker that takes no ``candidates`` (a caller's own
    ``callable(table, rgb, mpp)``) is returned as it is."""
    from ..inference.stitch import BORDER_TOL_WORK, split_owned

    if not getattr(mark, "takes_candidates", False):
        return mark

    def mark_core(table_w: Any, rgb_w: np.ndarray, mpp_w: float) -> None:
        fin, bor, _ = split_owned(table_w.centroid[:, 0], table_w.centroid[:, 1], core_w, BORDER_TOL_WORK + 1.0, 0.0)
        mark(table_w, rgb_w, mpp_w, candidates=fin | bor)

    return mark_core


#: chunking of large images for PAGET (working px): the student's and the instance source's maps
#: of one chunk at a time (memory ~ chunk² x 90 B). With one tile grid per model the chunk size no
#: longer changes which tiles run, only the memory and the halo's share of the post-processing:
#: 1024 as ``pipeline.segment_image`` (1536 before: 2.35 GiB peak on the 4000² px mosaic)
PAGET_CHUNK_WORK = 1024
PAGET_HALO_WORK = 64
#: at most this many working px per forward batch on large images (8 x 256², as the
#: ``pipeline.BATCH_PIXELS`` default: 2 tiles of 512²; 8 tiles of 512² held ~0.3 GiB more in the
#: student's decoder)
PAGET_BATCH_PIXELS = 8 * 256 * 256
#: after each chunk the heap's free memory goes back to the OS only while the resident set is above
#: this many MiB (env ``SEGTME_PAGET_TRIM_ABOVE_MIB``; 0 = after every chunk, as before 2026-12-05):
#: memory handed back is faulted in again by the next chunk. 4000² region, paget_h_shared, 3 runs
#: each on 2 idle cores, mean ± sd: every chunk 57.4 ± 3.5 CPU s (sys 7-15 s, wall 39.4 s), above
#: 1500 MiB 50.4 ± 1.4 (33.2 s), never 47.9 ± 0.5 (sys 3.6, 31.4 s); peaks 1.48-1.60 GiB for all
#: three, the 10 000² figures in docs/paget.md
PAGET_TRIM_ABOVE_MIB = int(os.environ.get("SEGTME_PAGET_TRIM_ABOVE_MIB", "2048"))


def _grid_instances(src: Any, wm: float) -> bool:
    """True when the instance source is a maps model at the student's working MPP: its maps are
    then served chunk by chunk from one tile grid over the whole working image
    (``engine.GridPredictor``), like the student's and like ``pipeline.segment_image``."""
    return (isinstance(src, LoadedModel) and src.contract.instances == "maps"
            and abs(float(src.config.mpp) - wm) < 1e-9)


def _analyze_chunked(rgb: np.ndarray, mpp: float, lm: LoadedModel, mode: str, src: Any, mark: Any, *,
                     offset_xy: Sequence[float], chunk_work: int, halo_work: int, progress: Any,
                     compute_features: bool, batch_size: int, tile: int | None, overlap: int | None,
                     simplify_px: float, min_tissue_area_um2: float, min_nucleus_area_um2: float,
                     pipelined: bool = True) -> PagetResult:
    """PAGET on a large image chunk by chunk: chunks of ``chunk_work`` working px with a
    ``halo_work`` halo (``tiling.chunk_grid`` on the working grid, as ``pipeline.segment_image``).
    One tile grid over the whole working image per model (``engine.GridPredictor``: every tile
    runs once; a chunk's maps are the whole image's blended maps cropped to it) for the student
    and for a maps instance source at the same MPP (any other instance source runs per chunk).
    Nuclei joined by the one stitcher (``inference.stitch.Stitcher``: core ownership + seam
    de-duplication), tissue annotations clipped to each chunk's core (kept as shapely geometries)
    and merged per class at the end, the 14-class map kept as uint8 only.
    Forward batches: at most ``PAGET_BATCH_PIXELS`` working px (and ``batch_size`` tiles).
    Coordinates: input px + ``offset_xy``; ``progress`` called with the number of student tiles
    just run. pipelined: post-process chunk k (instances, classes, mitoses, tissue polygons) in a
    worker thread while the student runs chunk k + 1 (``inference.overlap``; same result)."""

    from ..inference.engine import GridPredictor
    from ..inference.overlap import POST_WORKERS, run_overlapped
    from ..inference.stitch import Stitcher
    from ..inference.tiling import chunk_grid
    from ..resample import resample_region, scale, working_size
    from ..runtime import release_free_memory, trim_free_memory
    from .features import analyze_paget_features
    from .geometry import merge_tissue_geometries
    from .heads import own_instances
    from .outputs import attach_tissue_context

    h, w = rgb.shape[:2]
    wm = float(lm.config.mpp)
    s_in = scale(float(mpp), wm)
    ww, hw = working_size((w, h), mpp, wm) if s_in != 1.0 else (w, h)
    ox, oy = float(offset_xy[0]), float(offset_xy[1])
    # chunks start on the student's class-map grid (io.sem_stride), as GridPredictor needs
    chunks = chunk_grid(ww, hw, int(chunk_work), int(halo_work), int(lm.config.io.sem_stride))
    regions = [ch.region for ch in chunks]

    def fetch(r: Sequence[int]) -> np.ndarray:
        return rgb[r[1]:r[3], r[0]:r[2]] if s_in == 1.0 else resample_region(rgb, s_in, r)

    def capped(t: int) -> int:
        return max(1, min(int(batch_size), PAGET_BATCH_PIXELS // (t * t)))

    t_s = int(tile or lm.config.tile_size)
    student = GridPredictor(lm, hw, ww, fetch, regions, tile, overlap, capped(t_s), progress)
    inst_grid = None
    if mode == "panoptic" and _grid_instances(src, wm):
        inst_grid = GridPredictor(src, hw, ww, fetch, regions, None, None, capped(int(src.config.tile_size)))
    own = mode == "panoptic" and src is None and own_instances(lm.config)  # as analyze_paget decides
    stitcher = Stitcher(lm.config.tax, mpp)
    tissue: list[tuple[str, dict, Any]] = []
    sem_full = np.zeros((hw, ww), np.uint8)
    base_meta: dict[str, Any] = {}
    if mode == "panoptic" and own:
        base_meta["instances"] = f"{lm.config.name} (its own nucleus heads)"
    elif mode == "panoptic" and inst_grid is not None:
        base_meta["instances"] = f"{src.config.name} ({src.source})"
    meta: dict[str, Any] = dict(base_meta)
    without = 0

    def produce(ch: Any) -> tuple[Any, Any, Any, dict]:
        """The chunk's forward passes (calling thread): the student's maps, the instance grid's
        maps, or the instances of a per-chunk instance source."""
        smaps = student.predict(ch.region)
        rgb_w = fetch(ch.region)
        extra, info = None, dict(base_meta)
        if mode == "panoptic" and not own:
            if inst_grid is not None:
                extra = inst_grid.predict(ch.region)
            else:
                extra = source_instances(src, rgb_w, wm)
                info["instances"] = extra[1]
        return smaps, extra, rgb_w, info

    def post(ch: Any, made: tuple) -> tuple[PagetResult, list]:
        """maps -> nuclei, classes, mitoses, tissue annotations clipped to the core (worker thread)."""
        smaps, extra, rgb_w, info = made
        inst = icls = itax = None
        if mode == "panoptic":
            if own:  # the student's own nucleus heads, from the same forward pass
                inst, icls = own_instance_map(smaps, lm.config)
                itax = nucleus_taxonomy(lm.config)
            elif inst_grid is not None:
                inst, icls = instances_from_maps(extra.prob, extra.hv, src.config)
                itax = src.config.tax
            else:
                inst, _, icls, itax = extra
        x0, y0 = ch.region[:2]
        core_w = (ch.core[0] - x0, ch.core[1] - y0, ch.core[2] - x0, ch.core[3] - y0)  # chunk working px
        res = paget_result_from_prob(smaps.prob, rgb_w, lm.config, scale=s_in, input_mpp=mpp, mode=mode, inst=inst,
                                     offset_xy=(ox + x0 / s_in, oy + y0 / s_in), simplify_px=simplify_px,
                                     min_tissue_area_um2=min_tissue_area_um2,
                                     min_nucleus_area_um2=min_nucleus_area_um2, compute_features=False,
                                     meta=info, mitosis=None if mark is None else core_marker(mark, core_w),
                                     tissue_core=core_w, inst_class=icls, inst_taxonomy=itax)
        return res, res.tissue_pieces

    def _core_in(ch: Any) -> tuple[float, float, float, float]:
        cx0, cy0, cx1, cy1 = ch.core
        return (ox + cx0 / s_in, oy + cy0 / s_in, ox + cx1 / s_in, oy + cy1 / s_in)

    def consume(ch: Any, done: tuple[PagetResult, list]) -> None:
        """In chunk order (calling thread): the stitcher, the tissue pieces, the class map."""
        nonlocal without, meta
        res, pieces = done
        meta = {k: v for k, v in res.meta.items() if k not in ("nuclei_without_class", "mitosis")}
        without += int(res.meta.get("nuclei_without_class", 0))
        t = res.nuclei
        t.extra["paget_tissue"] = np.asarray(res.nucleus_tissue, np.float64)
        stitcher.add(t, _core_in(ch), scale=s_in)
        tissue.extend(pieces)
        x0, y0 = ch.region[:2]
        cx0, cy0, cx1, cy1 = ch.core
        sem_full[cy0:cy1, cx0:cx1] = res.sem[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
        del res, done
        # the chunk's maps are freed: hand the heap's free memory back (glibc) once the process is
        # large. Never trimming (measured 2026-12-03 with paget_h_shared on the 10 000² region) cut
        # system time 56.6 -> 10.5 s, total CPU -10 s, but raised the peak RSS 2.62 -> 3.02 GiB
        trim_free_memory(PAGET_TRIM_ABOVE_MIB << 20)

    # post-processing of chunk k in a worker thread while the student runs chunk k + 1 (as
    # pipeline.segment_image); the stitcher, tissue pieces and class map see chunks in order
    run_overlapped(chunks, produce, post, consume, POST_WORKERS if pipelined else 0)
    del student, inst_grid
    release_free_memory()  # the forward passes' retained buffers are not needed any more (as segment_image)
    table = stitcher.finish()
    del stitcher  # its per-chunk tables are copied into ``table``: free them before the tissue merge
    trim_free_memory()
    table.mpp = mpp
    ctx = np.asarray(table.extra.pop("paget_tissue", np.zeros(len(table))), np.int32)
    # the chunk cores' inner edges (input px): the only lines where clipped pieces meet
    seams = (sorted({ox + ch.core[0] / s_in for ch in chunks if ch.core[0] > 0}),
             sorted({oy + ch.core[1] / s_in for ch in chunks if ch.core[1] > 0}))
    tissue_f = merge_tissue_geometries(tissue, mpp=mpp, seams=seams)
    del tissue
    trim_free_memory()  # the per-chunk pieces and GEOS's noding buffers: not held into the export
    if mode == "panoptic":
        meta["nuclei_without_class"] = without
    if mark is not None:
        n_mit = int((np.asarray(table.class_names) == "Mitotic cell").sum()) if len(table) else 0
        meta["mitosis"] = {"n_mitotic_cells": n_mit}
    table.meta.update(meta, model=lm.config.name, model_mpp=wm, input_mpp=float(mpp), scale=s_in,
                      chunks=len(chunks), chunk_work=chunk_work)
    features = None
    if compute_features:
        attach_tissue_context(table, ctx, tissue_f)
        features = analyze_paget_features(table)
    return PagetResult(mode, sem_full, s_in, wm, float(mpp), (ox, oy), table, tissue_f, features, dict(meta), ctx)


def analyze_paget(
    rgb: np.ndarray,
    mpp: float,
    model: Any = "paget_s",
    *,
    mode: str | None = None,
    instance_source: Any = None,
    offset_xy: Sequence[float] = (0.0, 0.0),
    device: str = "auto",
    allow_random: bool = False,
    batch_size: int = 8,
    simplify_px: float = 1.0,
    min_tissue_area_um2: float = 25.0,
    min_nucleus_area_um2: float = 3.0,
    compute_features: bool = True,
    tile: int | None = None,
    overlap: int | None = None,
    progress: Any = None,
    mitosis: Any = "config",
    chunk_work: int = PAGET_CHUNK_WORK,
    pipelined: bool = True,
) -> PagetResult:
    """Run PAGET-S or PAGET-H on one RGB image / tile.

    rgb: (H, W, 3) uint8 at ``mpp`` µm/px. model: "paget_s" / "paget_h" / a variant / a config
    or weights path / a LoadedModel. mode: "semantic" | "panoptic" (default: the config's
    ``extra["mode"]``). instance_source (PAGET-H): a model spec (default: the config's
    ``extra["instance_source"]``, i.e. the shipped UperHoVer ``default``; the classical baseline
    if no default model is shipped), a LoadedModel, or an ``InstanceSource``; a model that makes
    its own nuclei (``paget_uperhover``, ``model.own_instances``) uses its own nucleus heads
    unless an instance source is given.
    offset_xy: added to all output coordinates (server: tile origin in full-res px).
    tile / overlap: the student's tiling in working px (default the config's); progress: called
    with the number of student tiles finished. The whole image's 14-class map is held in memory
    (about 60 bytes per working px) only up to ``chunk_work`` x 1.25 working px per side; larger
    images are processed in chunks of ``chunk_work`` working px (``_analyze_chunked``: one
    stitcher for the nuclei, tissue annotations merged, TME features from the stitched table).
    mitosis (PAGET-H): the mitosis teacher run on the instances (marks "Mitotic cell", adds the
    ``mitosis_prob`` / ``mitosis_atypical_prob`` columns): "config" = the config's
    ``extra["mitosis"]`` (the shipped ``mitosis`` model for the shipped PAGET-H), a model spec /
    LoadedModel, a marker from ``mitosis_marker``, or None. pipelined (chunked images): the
    post-processing of one chunk overlaps the student's forward of the next (same result)."""
    from ..inference.imageio import validate_mpp
    from ..models.registry import load_model
    from .heads import own_instances
    from .zoo import paget_mode

    mpp = validate_mpp(mpp, "mpp")
    lm = model if isinstance(model, LoadedModel) else load_model(model, device, allow_random=allow_random)
    if lm.contract.product != "paget":
        raise InputError(f"model {lm.config.name!r} is not a PAGET model (arch {lm.config.arch!r})")
    mode = mode or paget_mode(lm.config)
    if mode not in ("semantic", "panoptic"):
        raise InputError(f"PAGET mode must be 'semantic' or 'panoptic', got {mode!r}")
    wm = float(lm.config.mpp)
    meta: dict[str, Any] = {"model": lm.config.name, "weights": lm.source, "mode": mode}
    src = mark = None
    own = mode == "panoptic" and instance_source is None and own_instances(lm.config)
    if mode == "panoptic":
        if not own:
            src = _resolve_instance_source(instance_source or lm.config.extra.get("instance_source", "default"),
                                           device, allow_random)
        mark = resolve_mitosis(lm.config, mitosis, "cpu" if lm.device.type == "cpu" else str(lm.device),
                               lm.precision)
    s_in = float(mpp) / wm
    if max(rgb.shape[0], rgb.shape[1]) * s_in > chunk_work * 1.25:
        res = _analyze_chunked(rgb, mpp, lm, mode, src, mark, offset_xy=offset_xy, chunk_work=chunk_work,
                               halo_work=PAGET_HALO_WORK, progress=progress, compute_features=compute_features,
                               batch_size=batch_size, tile=tile, overlap=overlap, simplify_px=simplify_px,
                               min_tissue_area_um2=min_tissue_area_um2, min_nucleus_area_um2=min_nucleus_area_um2,
                               pipelined=pipelined)
        res.meta.update(meta)
        res.nuclei.meta["image_size"] = [int(rgb.shape[1]), int(rgb.shape[0])]
        return res
    inst = icls = itax = None
    if own:  # one forward pass: the 14-class map and the nuclei
        maps, rgb_w, s = predict_working_maps(lm, rgb, mpp, batch_size=batch_size, tile=tile, overlap=overlap,
                                              progress=progress)
        prob = maps.prob
        (inst, icls), itax = own_instance_map(maps, lm.config), nucleus_taxonomy(lm.config)
        meta["instances"] = f"{lm.config.name} (its own nucleus heads)"
        del maps
    else:
        prob, rgb_w, s = predict_semantic(lm, rgb, mpp, batch_size=batch_size, tile=tile, overlap=overlap,
                                          progress=progress)
    if mode == "panoptic" and not own:
        inst, meta["instances"], icls, itax = source_instances(src, rgb_w, wm)
    res = paget_result_from_prob(prob, rgb_w, lm.config, scale=s, input_mpp=mpp, mode=mode, inst=inst,
                                 offset_xy=offset_xy, simplify_px=simplify_px,
                                 min_tissue_area_um2=min_tissue_area_um2, min_nucleus_area_um2=min_nucleus_area_um2,
                                 compute_features=compute_features, meta=meta, mitosis=mark,
                                 inst_class=icls, inst_taxonomy=itax)
    res.nuclei.meta["image_size"] = [int(rgb.shape[1]), int(rgb.shape[0])]
    return res


