"""One whole slide -> nuclei, tissue mask and one TME report per analysis unit, streamed to disk.

The flow (``ARCHITECTURE.md``): source -> regions (tissue ∩ ROI / annotations) -> one tile grid
per region (``engine.GridPredictor``, only the tiles touching tissue chunks run) -> the one
maps->nuclei step (``inference.maps.nuclei_from_maps``) per chunk -> the one stitcher
(``inference.stitch.Stitcher``, chunk ownership + seam de-duplication) -> streamed writers
(``export.geojson.GeoJSONStreamWriter``, ``export.tables.NucleiCSVWriter``). Nothing here copies those steps; it only plans which pixels go through them.

Units: *level-0 px* = full-resolution slide pixels (all outputs: nuclei, masks, annotations);
*working px* = pixels at the model's ``cfg.mpp`` on the slide's global working grid
(``ImageSource.read_working``; working px ``X`` covers level-0 ``[X / s, (X + 1) / s)``,
``s = slide mpp / cfg.mpp``).

Memory: per region one chunk of maps in flight (+ its post-processing), the source's tile cache
(96 MiB), the GridPredictor's cached border tiles, the stitcher's border candidates, and a
polygon-free copy of each unit's nuclei for its TME report (~200 B per nucleus). Nothing is
proportional to the slide's pixel count except the thumbnail (8 µm/px: 3000² px for 2.5 cm).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError
from ..inference.nuclei import NucleiTable
from ..inference.options import InferenceOptions
from ..io.regions import Unit, analysis_units, plan_regions, read_annotations, unit_mask
from ..io.source import ImageSource, open_source
from ..io.tissue import TissueMask, TissueParams, detect_tissue, full_mask

log = logging.getLogger(__name__)

#: µm of tissue-mask dilation when deciding which regions / chunks to run (a nucleus on the
#: tissue's edge is never lost to a skipped chunk)
MASK_GROW_UM = 32.0
#: µm added around each (already dilated) tissue piece's bounding box when cutting regions
REGION_MARGIN_UM = 16.0
#: files of a complete slide folder (``summary.json`` is written last and marks completion)
SUMMARY = "summary.json"


@dataclass(frozen=True)
class SlideOptions:
    """What to analyse and how (units in the names; None = default / from the file).

    mpp: level-0 µm/px override (required only when the file has none).
    roi: level-0 (x, y, w, h) box. annotations: QuPath GeoJSON of polygons (one report each).
    detect_tissue: skip background (``io.tissue``); False analyses every pixel of the units.
    tissue: detection settings. reader: ``open_source`` reader. gzip: ``nuclei.geojson.gz``.
    write_csv: also ``nuclei.csv`` (QuPath measurement-table layout). narrative_backend: for the TME reports.
    inference: how the model runs (``InferenceOptions``: tile / overlap / chunk_size / halo in
    working px, batch_size, device / precision for whoever loads the model) — the same object
    ``segtme analyze`` passes for an image. Its ``progress`` must stay None (the options travel
    to Ray workers); slide progress is ``analyze_slide(progress=...)``.
    """

    mpp: float | None = None
    roi: tuple[int, int, int, int] | None = None
    annotations: str | None = None
    detect_tissue: bool = True
    tissue: TissueParams = field(default_factory=TissueParams)
    reader: str = "auto"
    gzip: bool = True
    write_csv: bool = True
    narrative_backend: str = "template"
    inference: InferenceOptions = field(default_factory=InferenceOptions)

    def __post_init__(self) -> None:
        if not isinstance(self.inference, InferenceOptions):
            raise InputError(f"SlideOptions.inference must be an InferenceOptions, got {type(self.inference).__name__}")
        if self.inference.progress is not None:
            raise InputError("SlideOptions.inference.progress must be None: pass progress= to analyze_slide / "
                             "process_job (the options are shipped to Ray workers)")


@dataclass
class UnitResult:
    """One analysis unit's outcome (a row of the cohort table)."""

    name: str
    kind: str
    box: tuple[int, int, int, int]
    tissue_mm2: float
    n_nuclei: int
    class_counts: dict[str, int]
    report: dict | None


@dataclass
class SlideResult:
    """One slide's outcome. size: level-0 (W, H) px; tissue_mm2: whole-slide tissue area."""

    path: str
    mpp: float
    mpp_source: str
    size: tuple[int, int]
    model: str
    tissue_mm2: float
    tissue_fraction: float
    units: list[UnitResult]
    tiles_run: int
    tiles_total: int
    seconds: float
    seconds_tissue: float
    files: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        for u in d["units"]:
            u.pop("report", None)
        return d


def _light(t: NucleiTable) -> NucleiTable:
    """The table without polygon vertices (for the TME report: centroids, classes, measures)."""
    empty = np.zeros((0, 2))
    out = t.subset(np.arange(len(t)))
    out.polygons = [empty] * len(t)
    return out


def _check_model(model) -> None:
    """Slides need a tiled nucleus model (maps -> nuclei); refused up front otherwise."""
    cfg = model.config
    c = getattr(model, "contract", None)
    if c is not None and c.product != "nuclei":
        raise InputError(f"model {cfg.name}: {c.product} models are not supported on whole slides yet; use a nucleus model")
    if c is not None and c.instances == "hook":
        raise InputError(f"model {cfg.name} segments whole images in one call; slides need a tiled model (e.g. 'default')")


def _count_tiles(shape_hw: tuple[int, int], mpp: float, cfg, opt: InferenceOptions) -> int:
    """Model tiles the pipeline plans for a (H, W) level-0 px box at ``mpp`` under ``opt``."""
    from ..pipeline import count_tiles

    return count_tiles(shape_hw, mpp, cfg, opt)


def segment_region(
    src: ImageSource,
    box: tuple[int, int, int, int],
    model,
    sink: Callable[[NucleiTable], None],
    *,
    keep_chunk: Callable[[tuple[float, float, float, float]], bool] | None = None,
    opts: SlideOptions = SlideOptions(),
    progress: Callable[[int], None] | None = None,
) -> tuple[int, int]:
    """Segment the level-0 ``box = (x0, y0, x1, y1)`` of ``src`` with the pipeline's
    ``segment_source`` (one tile grid, maps -> nuclei, the stitcher) on the slide's global
    working grid (``io.source.SubSource``); nuclei, shifted to slide level-0 px, go to ``sink``
    chunk by chunk as they become final.

    keep_chunk(level-0 (x0, y0, x1, y1) of a chunk core) -> False skips a background chunk, when
    the pipeline supports chunk filtering (otherwise the whole box is segmented; boxes are
    already cut to the tissue's pieces). Returns (tiles run, tiles planned) of this box."""
    import inspect

    from ..io.source import SubSource
    from ..pipeline import segment_source

    cfg = model.config
    sub = SubSource(src, box)
    ox, oy = sub.offset_l0(cfg.mpp)
    ran = [0]

    def tick(n: int) -> None:
        ran[0] += n
        if progress is not None:
            progress(n)

    def shifted(t: NucleiTable) -> None:
        out = t.translated(ox, oy, mpp=src.mpp)
        out.ids, out.mpp = t.ids, src.mpp
        sink(out)

    opt = opts.inference.replace(progress=tick)
    kw: dict[str, Any] = {}
    if keep_chunk is not None and "keep_chunk" in inspect.signature(segment_source).parameters:
        kw["keep_chunk"] = lambda core: keep_chunk((core[0] + ox, core[1] + oy, core[2] + ox, core[3] + oy))
    w, h = sub.size
    planned = _count_tiles((h, w), src.mpp, cfg, opt)
    segment_source(sub, model, opt, sink=shifted, **kw)
    return ran[0], planned if not kw else ran[0]


def _unit_feature(unit: Unit, report: dict | None, n: int, tissue_mm2: float) -> dict[str, Any]:
    from shapely.geometry import box as sbox
    from shapely.geometry import mapping

    meas: dict[str, float] = {"Nuclei": float(n), "Tissue area mm^2": round(tissue_mm2, 6)}
    if report is not None:
        try:
            from ..tme.report import report_measurements

            meas.update(report_measurements(report))
        except Exception as e:  # a report without the expected keys: keep counts only
            log.warning("report measurements unavailable: %s", e)
    g = unit.geometry if unit.geometry is not None else sbox(*unit.box)
    return {
        "type": "Feature",
        "geometry": mapping(g),
        "properties": {"objectType": "annotation", "name": f"SegTME {unit.name}",
                       "classification": {"name": "SegTME region", "color": [0, 120, 255]},
                       "isLocked": False, "measurements": meas},
    }


def analyze_slide(
    source: "str | Path | ImageSource",
    model,
    out_dir: str | Path,
    opts: SlideOptions = SlideOptions(),
    *,
    progress: Callable[[int, int], None] | None = None,
    annotations: list | None = None,
) -> SlideResult:
    """Analyse one slide into ``out_dir`` (an existing, empty staging folder the caller publishes
    atomically): ``nuclei.geojson.gz`` (+ ``nuclei.csv``), ``tissue.geojson``, ``tissue.png``,
    ``report-<unit>.json`` per unit, and last ``summary.json``.

    model: a ``LoadedModel`` (loaded once per worker by the caller). progress(tiles_done,
    tiles_planned_so_far) is called as tiles finish. annotations: pre-parsed
    ``io.regions.read_annotations`` (else ``opts.annotations`` is read). All validation (file,
    MPP, ROI, annotations) happens before any model work."""
    from ..pipeline import build_report
    from ..runtime import set_torch_threads

    t_start = time.perf_counter()
    _check_model(model)
    set_torch_threads(opts.inference.threads)  # as ``pipeline.analyze`` does for an image
    out = Path(out_dir)
    src = open_source(source, opts.mpp, reader=opts.reader) if not isinstance(source, ImageSource) else source
    own = not isinstance(source, ImageSource)
    files: list[str] = []
    try:
        ann = annotations if annotations is not None else (read_annotations(opts.annotations) if opts.annotations else None)
        units = analysis_units(src.size, opts.roi, ann)
        t0 = time.perf_counter()
        tissue: TissueMask = detect_tissue(src, opts.tissue) if opts.detect_tissue else full_mask(src, opts.tissue.thumb_mpp)
        t_tissue = time.perf_counter() - t0
        tissue.write_geojson(out / "tissue.geojson")
        tissue.write_png(out / "tissue.png")
        files += ["tissue.geojson", "tissue.png"]
        cfg = model.config
        from ..export.atomic import atomic_write_text
        from ..export.geojson import GeoJSONStreamWriter, object_ids
        from ..export.tables import NucleiCSVWriter

        head = {"type": "FeatureCollection",
                "properties": {"segtme": {"source": src.path, "mpp": src.mpp, "mpp_source": src.mpp_source,
                                          "model": cfg.name, "level0_size_px": list(src.size)}}}
        grow = int(np.ceil(MASK_GROW_UM / tissue.mpp))

        def run_mask(unit: Unit) -> tuple[np.ndarray, np.ndarray]:
            m = unit_mask(tissue, unit)
            if grow and m.any():
                from scipy import ndimage as ndi

                return m, ndi.binary_dilation(m, iterations=grow)
            return m, m

        # plan every unit's regions first: the tile total for progress, before any model work
        plans = [plan_regions(tissue, run_mask(u)[1], u, margin_um=REGION_MARGIN_UM) for u in units]
        tiles_total = sum(_count_tiles((b[3] - b[1], b[2] - b[0]), src.mpp, cfg, opts.inference)
                          for boxes in plans for b in boxes)
        tiles_run = 0
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            if progress is not None:
                progress(done[0], tiles_total)

        results: list[UnitResult] = []
        feats: list[dict] = []
        with contextlib.ExitStack() as stack:
            gj = stack.enter_context(GeoJSONStreamWriter(out / "nuclei.geojson", head, gzip=opts.gzip))
            csvw = None
            if opts.write_csv:
                csvw = stack.enter_context(NucleiCSVWriter(out / "nuclei.csv",
                                                           image=str(src.path or "")))
            written = [0]
            for unit, boxes in zip(units, plans):
                m, m_run = run_mask(unit)
                light: list[NucleiTable] = []
                geom = unit.geometry

                def sink(t: NucleiTable, geom=geom, light=light) -> None:
                    if geom is not None and len(t):
                        import shapely

                        t = t.subset(shapely.intersects_xy(geom, t.centroid[:, 0], t.centroid[:, 1]))
                    if not len(t):
                        return
                    t = t.subset(np.arange(len(t)))
                    t.ids = np.arange(written[0] + 1, written[0] + len(t) + 1, dtype=np.int64)
                    t.mpp = src.mpp
                    written[0] += len(t)
                    ids = object_ids(len(t))
                    gj.add_nuclei(t, "detection", ids=ids)
                    if csvw is not None:
                        csvw.add(t, ids=ids)
                    light.append(_light(t))

                for box in boxes:
                    r, _ = segment_region(src, box, model, sink, keep_chunk=lambda b, m_run=m_run: tissue.any_in(b, m_run),
                                          opts=opts, progress=tick)
                    tiles_run += r
                del m_run
                table = NucleiTable.concat(light, renumber=True) if light else NucleiTable.empty(cfg.tax, src.mpp)
                table.mpp = src.mpp
                x0, y0, x1, y1 = unit.box
                table.meta.update(model=cfg.name, model_mpp=cfg.mpp, input_mpp=src.mpp, image_size=[x1 - x0, y1 - y0],
                                  source=src.path, unit=unit.name)
                area = tissue.area_mm2(m)
                report = build_report(table, opts.narrative_backend) if len(table) else None
                if report is not None:
                    report["tissue_area_mm2"] = area
                    report["unit"] = {"name": unit.name, "kind": unit.kind, "box_level0_px": list(unit.box)}
                names = cfg.tax.names
                counts = {names[i]: int(c) for i, c in enumerate(np.bincount(table.class_id, minlength=len(names)))}
                results.append(UnitResult(unit.name, unit.kind, unit.box, area, len(table), counts, report))
                feats.append(_unit_feature(unit, report, len(table), area))
                rname = f"report-{_safe(unit.name)}.json"
                atomic_write_text(out / rname, json.dumps({"unit": unit.name, "tissue_area_mm2": area, "n_nuclei": len(table),
                                                           "class_counts": counts, "report": report}, default=_json_default))
                files.append(rname)
                del table, light
            gj.add_features(feats)
        files.append(gj.path.name)
        if csvw is not None:
            files.append(csvw.path.name)
        res = SlideResult(str(src.path), src.mpp, src.mpp_source, tuple(src.size), cfg.name, tissue.area_mm2(),
                          tissue.fraction, results, tiles_run, tiles_total, time.perf_counter() - t_start, t_tissue, files)
        atomic_write_text(out / SUMMARY, json.dumps(res.summary(), default=_json_default))
        res.files.append(SUMMARY)
        return res
    finally:
        if own:
            src.close()


def _safe(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "unit"


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
