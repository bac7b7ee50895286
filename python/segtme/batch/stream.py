"""Chunk-wise writers for slide outputs: nuclei are appended as each chunk finishes, so memory
does not grow with the slide (only the files do).

* ``GeoJSONStream``: a QuPath FeatureCollection (gzip optional) of detections, built from
  ``export.geojson.iter_features`` per appended table (the same Features the whole-table writer
  makes), then the unit annotations / report Features at ``close``.
* ``CSVStream``: the nuclei CSV with ``export.tables``' columns (gzip optional).

Both write into a path the caller stages (``export.outdir.OutputFolder`` / the batch slide
folder), which is published atomically only when the whole slide finished; ids are renumbered
1..N in the order written.

(When the outputs owner offers append writers in ``export/``, these become thin wrappers.)
"""

from __future__ import annotations

import csv
import gzip as _gzip
import io
import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..inference.nuclei import NucleiTable

_ENC = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _open(path: Path, gz: bool):
    raw = open(path, "wb")
    if gz:
        return raw, _gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6)
    return raw, raw


class GeoJSONStream:
    """Append-only FeatureCollection writer (see the module docstring)."""

    def __init__(self, path: str | Path, *, gzip: bool = True, id_seed: int | None = None) -> None:
        self.path = Path(path)
        self._raw, self._f = _open(self.path, gzip)
        self._f.write(b'{"type":"FeatureCollection","features":[')
        self._first = True
        self.count = 0
        self._seed = id_seed

    def _write(self, feats: Iterable[dict[str, Any]]) -> None:
        buf = []
        for f in feats:
            buf.append(_ENC.encode(f))
            if len(buf) >= 2000:
                self._flush(buf)
                buf = []
        if buf:
            self._flush(buf)

    def _flush(self, buf: list[str]) -> None:
        self._f.write((("" if self._first else ",") + ",".join(buf)).encode("utf-8"))
        self._first = False

    def append(self, table: NucleiTable) -> None:
        """Write the table's nuclei as detection Features (ids continue from the last chunk)."""
        from ..export.geojson import iter_features

        if not len(table):
            return
        seed = None if self._seed is None else self._seed + self.count
        self._write(iter_features(table, "detection", id_seed=seed))
        self.count += len(table)

    def add_features(self, feats: Iterable[dict[str, Any]]) -> None:
        self._write(feats)

    def close(self) -> Path:
        self._f.write(b"]}")
        if self._f is not self._raw:
            self._f.close()
        self._raw.close()
        return self.path

    def abort(self) -> None:
        try:
            if self._f is not self._raw:
                self._f.close()
            self._raw.close()
        finally:
            self.path.unlink(missing_ok=True)


class CSVStream:
    """Append-only nuclei CSV (``export.tables.BASE_COLUMNS`` + µm columns when mpp known)."""

    def __init__(self, path: str | Path, mpp: float | None, *, gzip: bool = False) -> None:
        from ..export.tables import BASE_COLUMNS, UM_COLUMNS

        self.path = Path(path)
        self._raw, self._bin = _open(self.path, gzip)
        self._f = io.TextIOWrapper(self._bin, encoding="utf-8", newline="")
        self.cols = BASE_COLUMNS + (UM_COLUMNS if mpp else [])
        self._w = csv.DictWriter(self._f, fieldnames=self.cols, extrasaction="ignore", lineterminator="\n")
        self._w.writeheader()
        self.mpp = mpp
        self.count = 0

    def append(self, table: NucleiTable) -> None:
        n = len(table)
        for b0 in range(0, n, 8192):
            part = table.subset(np.arange(b0, min(n, b0 + 8192)))
            part.mpp = self.mpp
            for r in part.to_records():
                self._w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        self.count += n

    def close(self) -> Path:
        self._f.flush()
        self._f.detach()
        if self._bin is not self._raw:
            self._bin.close()
        self._raw.close()
        return self.path

    def abort(self) -> None:
        try:
            self.close()
        finally:
            self.path.unlink(missing_ok=True)
