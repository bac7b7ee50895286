"""The output folder of one analysis (`segtme analyze`): GeoJSON, overlay PNG, CSV, TME JSON.

``write_outputs`` writes every file into a staging directory inside ``out_dir`` and only then
moves each into place with an atomic rename, so a failure leaves no partial or half-written
file. The overlay (rendering + PNG encoding, most of it in PIL's C code, which releases the GIL)
runs in a worker thread while the GeoJSON and the CSV are written, so both CPU cores work.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_text


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_outputs(result: Any, out_dir: str | Path, rgb: np.ndarray, *, gzip: bool = False) -> list[Path]:
    """Write ``nuclei.geojson`` (``.gz`` when ``gzip``), ``overlay.png``, ``nuclei.csv`` and, when
    the result has a TME report, ``tme.json`` into ``out_dir`` (created if missing).

    result: a ``pipeline.AnalysisResult``; rgb: the analysed image (input px, for the overlay).
    Returns the paths written, in that order. Existing files of the same names are replaced
    only once all outputs were written successfully.
    """
    from .overlay import write_overlay
    from .tables import write_nuclei_csv

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".segtme-", dir=out))
    try:
        names = ["nuclei.geojson.gz" if gzip else "nuclei.geojson", "overlay.png", "nuclei.csv"]
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="segtme-overlay") as ex:
            overlay = ex.submit(write_overlay, stage / "overlay.png", rgb, result.nuclei,
                                tissue_features=result.tissue_features)
            result.write_geojson(stage / "nuclei.geojson", gzip=gzip)  # streamed, never one big string
            write_nuclei_csv(stage / "nuclei.csv", result.nuclei)
            overlay.result()
        if result.report is not None:
            atomic_write_text(stage / "tme.json",
                              json.dumps(result.report, indent=2, ensure_ascii=False, default=_jsonable) + "\n")
            names.append("tme.json")
        for n in names:
            (stage / n).replace(out / n)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return [out / n for n in names]
