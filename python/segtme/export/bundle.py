"""The output folder of one analysis (`segtme analyze`): GeoJSON, overlay PNG, CSV, TME JSON.

``write_outputs`` writes every file into the staging folder of an ``outdir.OutputFolder``
(validated before the analysis started) and only then moves each into place with an atomic
rename, so a failure — or SIGINT/SIGTERM — leaves no partial or half-written file. The overlay
(rendering + PNG encoding, most of it in PIL's C code, which releases the GIL) runs in a worker
thread while the GeoJSON and the CSV are written, so both CPU cores work.

Every file records its provenance (``export.provenance.Provenance``): GeoJSON collection
properties + a short run id per object, a comment line atop the CSV, ``provenance`` in tme.json.
The CSV's ``Object ID`` is the GeoJSON Feature ``id`` of the same nucleus.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .atomic import atomic_write_text
from .outdir import OutputFolder
from .overlay import OverlayOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportOptions:
    """gzip: nuclei.geojson.gz. cells: write QuPath cell objects (label expansion by
    ``cell_expansion_um``, with Cell/Cytoplasm measurements) instead of detections.
    overlay: write overlay.png (``overlay_options``: size cap, fill, legend).
    report_annotation: also put the TME report into the GeoJSON as an image-sized annotation
    (QuPath's *Resolve hierarchy* then makes it the parent of a user's own annotations; off by
    default: the report's measurements are in the collection's ``properties.segtme.tme``)."""

    gzip: bool = False
    cells: bool = False
    cell_expansion_um: float = 5.0
    overlay: bool = True
    overlay_options: OverlayOptions = field(default_factory=OverlayOptions)
    report_annotation: bool = False


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _tissue_with_segtme_ids(features: list, table: Any) -> list:
    """PAGET tissue annotations with SegTME kind-2 ids (``export.ids.segtme_id``), so the QuPath
    extension never analyses them as targets after a drag-and-drop import."""
    from .ids import KIND_TISSUE, annotation_key, segtme_id

    key = annotation_key(str(table.meta.get("source") or ""))
    return [{**f, "id": segtme_id(KIND_TISSUE, key, i)} for i, f in enumerate(features or [])]


def write_outputs(
    result: Any,
    out: str | Path | OutputFolder,
    rgb: np.ndarray,
    *,
    gzip: bool = False,
    options: ExportOptions | None = None,
    provenance: Any = None,
    status: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write ``nuclei.geojson`` (``.gz`` when gzip), ``overlay.png`` (unless off), ``nuclei.csv``
    and, when the result has a TME report, ``tme.json``.

    result: a ``pipeline.AnalysisResult``; rgb: the analysed image (input px, for the overlay and
    the cell measurements); out: an ``OutputFolder`` (prepared up front) or a folder path.
    options: ``ExportOptions`` (``gzip`` here is used when options is None); provenance: a
    ``Provenance`` (default: built from the result). status: called with one line per stage.
    Returns the paths written. Existing files of the same names are replaced only once all
    outputs were written successfully.
    """
    from .geojson import object_ids, write_nuclei_geojson
    from .overlay import write_overlay
    from .provenance import Provenance
    from .tables import write_nuclei_csv

    opt = options or ExportOptions(gzip=gzip)
    say = status or (lambda m: log.info("%s", m))
    folder = out if isinstance(out, OutputFolder) else OutputFolder.prepare(out)
    table = result.nuclei
    if provenance is None:
        provenance = Provenance.for_run(result.model, str(table.meta.get("source") or "") or None, result.mpp,
                                        str(getattr(result, "mpp_source", "") or ""))
    prov = provenance.to_dict()
    output_type = "cell" if opt.cells else getattr(result, "output_type", "detection")
    try:
        ids = object_ids(len(table))
        gj = "nuclei.geojson.gz" if opt.gzip else "nuclei.geojson"
        names = [gj] + (["overlay.png"] if opt.overlay else []) + ["nuclei.csv"]
        n = len(table)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="segtme-overlay") as ex:
            overlay = None
            if opt.overlay:  # started first: it renders while the cells are built and the files written
                say("overlay: rendering in the background")
                overlay = ex.submit(write_overlay, folder.staged("overlay.png"), rgb, table,
                                    tissue_features=result.tissue_features, options=opt.overlay_options)
            cells = None
            if output_type == "cell":
                from ..inference.cells import CellOptions, build_cells

                t0 = time.perf_counter()
                say(f"cells: expanding {len(table)} nuclei by {opt.cell_expansion_um:g} µm")
                cells = build_cells(table, rgb, CellOptions(expansion_um=opt.cell_expansion_um))
                say(f"cells: done in {time.perf_counter() - t0:.1f} s")
            t0 = time.perf_counter()
            last = [t0]

            def geo_progress(k: int) -> None:
                now = time.perf_counter()
                if k == n or now - last[0] >= 2.0:
                    last[0] = now
                    say(f"writing {gj}: {k}/{n} objects ({now - t0:.1f} s)")

            write_nuclei_geojson(folder.staged("nuclei.geojson"), table, output_type, report=result.report,
                                 annotations=_tissue_with_segtme_ids(result.tissue_features, table), cells=cells,
                                 ids=ids, provenance=prov,
                                 report_annotation=opt.report_annotation, gzip=opt.gzip, progress=geo_progress)
            say(f"writing nuclei.csv ({n} rows)")
            write_nuclei_csv(folder.staged("nuclei.csv"), table, ids=ids, cells=cells, comment=provenance.csv_comment(),
                             object_type=output_type)
            if overlay is not None:
                overlay.result()
                say("overlay: done")
        if result.report is not None:
            report = dict(result.report)
            report["provenance"] = prov
            atomic_write_text(folder.staged("tme.json"),
                              json.dumps(report, indent=2, ensure_ascii=False, default=_jsonable) + "\n")
            names.append("tme.json")
        return folder.publish(names)
    finally:
        folder.discard()
