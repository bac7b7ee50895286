"""CSV export of the nuclei table, laid out like QuPath's own measurement export: one row per
object, ``Object ID`` (the same UUID as the GeoJSON Feature ``id``, so the two files join),
``Image``, ``Object type``, ``Classification``, centroids (``Centroid X µm`` … and px), then the
measurements under the GeoJSON's QuPath names with units (``Nucleus: Area µm^2``, ...; px names
when the MPP is unknown). The first line is a provenance comment ``# segtme: {json}`` (read with
``pandas.read_csv(path, comment="#")`` or skip the line).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..inference.nuclei import NucleiTable
from .atomic import atomic_write

ID_COLUMNS = ["Object ID", "Image", "Object type", "Classification"]


def centroid_columns(mpp: float | None) -> list[str]:
    return (["Centroid X µm", "Centroid Y µm"] if mpp else []) + ["Centroid X px", "Centroid Y px"]


class NucleiCSVWriter:
    """CSV written incrementally and atomically: ``add`` may be called once per chunk of nuclei;
    the header comes from the first chunk's columns (later chunks must measure the same); the
    file appears only when the ``with`` block exits without an exception."""

    def __init__(self, path: str | Path, *, comment: str | None = None, image: str = "",
                 object_type: str = "detection") -> None:
        self.path = Path(path)
        self._comment = comment
        self._image = image
        self._type = object_type
        self._cols: list[str] | None = None
        self.rows = 0

    def __enter__(self) -> "NucleiCSVWriter":
        self._cm = atomic_write(self.path, "w")
        self._f = self._cm.__enter__()
        if self._comment:
            self._f.write(self._comment.replace("\n", " ") + "\n")
        self._w = csv.writer(self._f, lineterminator="\n")
        return self

    def add(self, table: NucleiTable, ids: Sequence[str] | None = None, cells: Any = None, batch: int = 8192) -> int:
        """Append the rows of ``table`` (``ids``: its objects' UUIDs, default generated;
        ``cells``: a ``CellTable`` of the same rows for the Cell/Cytoplasm columns)."""
        from .geojson import measurement_columns, object_ids

        n = len(table)
        ids = list(ids) if ids is not None else object_ids(n)
        if len(ids) != n:
            raise ValueError(f"ids: {len(ids)} given for {n} nuclei")
        names = table.taxonomy.names
        for b0 in range(0, max(n, 1), batch):  # an empty table still gives the header
            rows = np.arange(b0, min(n, b0 + batch))
            sub = table.subset(rows)
            meas = measurement_columns(sub, cells.subset(rows) if cells is not None else None)
            cen = np.asarray(sub.centroid, np.float64).reshape(-1, 2)
            num = ([("Centroid X µm", cen[:, 0] * table.mpp), ("Centroid Y µm", cen[:, 1] * table.mpp)] if table.mpp else [])
            num += [("Centroid X px", cen[:, 0]), ("Centroid Y px", cen[:, 1])] + meas
            header = ID_COLUMNS + [k for k, _ in num]
            if self._cols is None:
                self._cols = header
                self._w.writerow(header)
            elif header != self._cols:
                raise ValueError("NucleiCSVWriter: a later chunk has different columns than the first")
            text = [_fmt_column(v) for _, v in num]
            cls = [names[c] for c in np.asarray(sub.class_id).tolist()]
            k = len(rows)
            self._w.writerows(zip(ids[b0:b0 + k], [self._image] * k, [self._type] * k, cls, *text))
            self.rows += len(rows)
        return n

    def __exit__(self, et, ev, tb) -> bool:
        if et is None and self._cols is None:  # no chunk at all: header of an empty table
            self._w.writerow(ID_COLUMNS)
        self._cm.__exit__(et, ev, tb)
        return False


def _fmt_column(v: np.ndarray) -> list[str]:
    """Values as %.6g text, empty where not finite."""
    v = np.asarray(v, np.float64)
    fin = np.isfinite(v)
    out = ["%.6g" % x for x in np.where(fin, v, 0.0).tolist()]  # = np.char.mod("%.6g", ...), faster
    if not fin.all():
        for i in np.flatnonzero(~fin):
            out[i] = ""
    return out


def write_nuclei_csv(path: str | Path, table: NucleiTable, *, ids: Sequence[str] | None = None, cells: Any = None,
                     comment: str | None = None, image: str | None = None, object_type: str = "detection") -> Path:
    """Write the table as CSV atomically (UTF-8; header always present even when empty). ``ids``:
    the same UUIDs as the GeoJSON's Features; ``comment``: provenance line (``Provenance.csv_comment``);
    ``image``: the ``Image`` column (default ``table.meta["source"]``)."""
    img = image if image is not None else str(table.meta.get("source", "") or "")
    with NucleiCSVWriter(path, comment=comment, image=img, object_type=object_type) as w:
        w.add(table, ids=ids, cells=cells)
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
