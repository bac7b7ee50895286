"""CSV export of the nuclei table (one row per nucleus; px columns always, µm columns when the
MPP is known; see ``NucleiTable.to_records``)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..inference.nuclei import NUMERIC_COLUMNS, NucleiTable
from .atomic import atomic_write

BASE_COLUMNS = ["id", "class", "class_id", "centroid_x_px", "centroid_y_px", *NUMERIC_COLUMNS]
UM_COLUMNS = ["centroid_x_um", "centroid_y_um", "area_um2", "perimeter_um", "major_axis_um", "minor_axis_um"]


def write_nuclei_csv(path: str | Path, table: NucleiTable) -> Path:
    """Write the table as CSV atomically (UTF-8, header always present even when empty)."""
    cols = BASE_COLUMNS + (UM_COLUMNS if table.mpp else [])
    with atomic_write(path, "w") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        n = len(table)
        for b0 in range(0, n, 8192):  # records of one batch at a time: memory independent of n
            part = table.subset(np.arange(b0, min(n, b0 + 8192)))
            part.mpp = table.mpp
            for r in part.to_records():
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return Path(path)


def rows_to_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """CSV text of dict rows (columns in order of first appearance; floats as %.6g, NaN empty).
    Used for evaluation tables and the trainer's metrics.csv."""
    rows = list(rows)
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (("" if math.isnan(v) else f"{v:.6g}") if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()
