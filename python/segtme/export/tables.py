"""CSV export of the nuclei table (one row per nucleus; px columns always, µm columns when the
MPP is known; see ``NucleiTable.to_records``)."""

from __future__ import annotations

import csv
from pathlib import Path

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
        for r in table.to_records():
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return Path(path)
