"""The nuclei table: the hand-off between segmentation and everything after it.

Maps go in (instance map + class probabilities), tables come out; TME features, GeoJSON export,
server responses and evaluation all read this table. Coordinates are **input-image pixels**
(x = column, y = row; for the server: full-resolution slide pixels after the tile offset is
added); ``mpp`` is the micrometres per pixel of those coordinates (None if unknown).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..taxonomy import Taxonomy

#: per-nucleus numeric columns (all length N), with their units
NUMERIC_COLUMNS: dict[str, str] = {
    "class_prob": "probability 0-1 (mean softmax of the assigned class over the nucleus)",
    "area_px": "px^2 (input image pixels)",
    "perimeter_px": "px",
    "major_axis_px": "px",
    "minor_axis_px": "px",
    "eccentricity": "unitless 0-1",
    "solidity": "unitless 0-1",
    "hematoxylin_od": "optical density (mean haematoxylin OD after colour deconvolution)",
}


@dataclass
class NucleiTable:
    """Columnar table of nuclei.

    ids: (N,) int64, unique, >= 1.
    class_id: (N,) int32, index into ``taxonomy.classes``.
    centroid: (N, 2) float64, (x, y) in input pixels.
    polygons: list of (K_i, 2) float64 arrays, (x, y) vertices in input pixels, closed implicitly.
    numeric columns: see NUMERIC_COLUMNS.
    mpp: micrometres per pixel of the coordinates, or None.
    """

    taxonomy: Taxonomy
    ids: np.ndarray
    class_id: np.ndarray
    centroid: np.ndarray
    polygons: list[np.ndarray]
    class_prob: np.ndarray
    area_px: np.ndarray
    perimeter_px: np.ndarray
    major_axis_px: np.ndarray
    minor_axis_px: np.ndarray
    eccentricity: np.ndarray
    solidity: np.ndarray
    hematoxylin_od: np.ndarray
    mpp: float | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name in ("class_id", "centroid", "polygons", *NUMERIC_COLUMNS):
            if len(getattr(self, name)) != n:
                raise ValueError(f"NucleiTable: column {name} has {len(getattr(self, name))} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls, taxonomy: Taxonomy, mpp: float | None = None) -> "NucleiTable":
        z = np.zeros(0)
        return cls(
            taxonomy, np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros((0, 2)), [],
            z.copy(), z.copy(), z.copy(), z.copy(), z.copy(), z.copy(), z.copy(), z.copy(), mpp,
        )

    @property
    def class_names(self) -> list[str]:
        names = self.taxonomy.names
        return [names[int(c)] for c in self.class_id]

    @property
    def roles(self) -> list[str]:
        cls = self.taxonomy.classes
        return [cls[int(c)].role for c in self.class_id]

    def subset(self, index: np.ndarray) -> "NucleiTable":
        """Rows selected by a boolean mask or an index array (ids kept)."""
        idx = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index, dtype=np.int64)
        return NucleiTable(
            self.taxonomy, self.ids[idx], self.class_id[idx], self.centroid[idx].reshape(-1, 2),
            [self.polygons[i] for i in idx],
            *(getattr(self, c)[idx] for c in NUMERIC_COLUMNS), mpp=self.mpp, meta=dict(self.meta),
        )

    def translated(self, dx: float, dy: float, scale: float = 1.0, mpp: float | None = None) -> "NucleiTable":
        """Coordinates mapped by p' = p * scale + (dx, dy); lengths scale by ``scale``, areas by
        ``scale**2``. Used to go from working-resolution tile pixels to full-resolution pixels."""
        s = float(scale)
        return NucleiTable(
            self.taxonomy, self.ids.copy(), self.class_id.copy(),
            self.centroid * s + np.array([dx, dy]),
            [p * s + np.array([dx, dy]) for p in self.polygons],
            self.class_prob.copy(), self.area_px * s * s, self.perimeter_px * s, self.major_axis_px * s,
            self.minor_axis_px * s, self.eccentricity.copy(), self.solidity.copy(), self.hematoxylin_od.copy(),
            mpp=mpp if mpp is not None else (self.mpp / s if self.mpp else None), meta=dict(self.meta),
        )

    @staticmethod
    def concat(tables: list["NucleiTable"], renumber: bool = True) -> "NucleiTable":
        if not tables:
            raise ValueError("concat of no tables")
        t0 = tables[0]
        ids = np.concatenate([t.ids for t in tables]) if tables else np.zeros(0, np.int64)
        if renumber:
            ids = np.arange(1, len(ids) + 1, dtype=np.int64)
        return NucleiTable(
            t0.taxonomy, ids,
            np.concatenate([t.class_id for t in tables]).astype(np.int32),
            np.concatenate([t.centroid.reshape(-1, 2) for t in tables]),
            [p for t in tables for p in t.polygons],
            *(np.concatenate([getattr(t, c) for t in tables]) for c in NUMERIC_COLUMNS),
            mpp=t0.mpp, meta=dict(t0.meta),
        )

    def to_records(self) -> list[dict]:
        """One dict per nucleus with native Python types (for CSV/JSON); µm units added when mpp known."""
        out = []
        names = self.taxonomy.names
        for i in range(len(self)):
            r = {
                "id": int(self.ids[i]),
                "class": names[int(self.class_id[i])],
                "class_id": int(self.class_id[i]),
                "centroid_x_px": float(self.centroid[i, 0]),
                "centroid_y_px": float(self.centroid[i, 1]),
            }
            for c in NUMERIC_COLUMNS:
                r[c] = float(getattr(self, c)[i])
            if self.mpp:
                m = self.mpp
                r.update(
                    centroid_x_um=r["centroid_x_px"] * m, centroid_y_um=r["centroid_y_px"] * m,
                    area_um2=r["area_px"] * m * m, perimeter_um=r["perimeter_px"] * m,
                    major_axis_um=r["major_axis_px"] * m, minor_axis_um=r["minor_axis_px"] * m,
                )
            out.append(r)
        return out
