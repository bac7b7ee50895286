"""The one stitcher: which tile / chunk owns a nucleus, and how seam duplicates are removed.

Used by ``pipeline.segment_image`` (chunks of one image or slide), the server's streamed tiles
and PAGET tiles. Its Java twin is the tile planner (``client/TilePlanner.java``: the same
half-open core rule, checked on ``tests/data/tile_plan_examples.json``).

The rule. Every part (tile or chunk) has a half-open *core* ``(x0, y0, x1, y1)``; the cores
partition the area. A part reports each nucleus it found by its centroid:

* centroid more than ``hold`` inside the core: the nucleus is this part's alone (*final*);
* centroid within ``hold`` inside or ``tol`` outside the core's edge: a *border candidate* —
  the neighbour may have found the same nucleus with its centroid on the other side;
* anything else is the neighbour's.

At the end, border candidates of different parts whose outlines overlap with IoU >= ``iou_min``
are one nucleus: the copy whose centroid lies in its own part's core is kept (ties: the first
reported). ``tol`` and ``hold`` are given in working px (``BORDER_TOL_WORK``,
``BORDER_HOLD_WORK``) and converted with each part's scale, so the rule is the same at any
input resolution.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .nuclei import NucleiTable

#: working px outside a core within which its nuclei are still candidates, and inside it within
#: which they are held for de-duplication with the neighbour
BORDER_TOL_WORK = 2.0
BORDER_HOLD_WORK = 6.0
#: polygon IoU at or above which two border candidates of different parts are one nucleus
SEAM_IOU = 0.3

#: receives nuclei as soon as they are final (``Stitcher(sink=...)``), in input px, ids set
ChunkSink = Callable[[NucleiTable], None]


def owns(core: Sequence[float], x: float, y: float) -> bool:
    """Half-open core test: ``x0 <= x < x1 and y0 <= y < y1`` (one point)."""
    x0, y0, x1, y1 = core
    return x0 <= x < x1 and y0 <= y < y1


def split_owned(x: np.ndarray, y: np.ndarray, core: Sequence[float], tol: float, hold: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean masks ``(final, border, in_core)`` for centroids (x, y) against a half-open
    ``core`` (same units as ``tol`` / ``hold``); see the module doc. ``in_core`` is the plain
    ownership rule (``owns``)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    x0, y0, x1, y1 = (float(v) for v in core)

    def within(d: float) -> np.ndarray:
        return (x >= x0 - d) & (x < x1 + d) & (y >= y0 - d) & (y < y1 + d)

    final = within(-hold)
    return final, within(tol) & ~final, within(0.0)


def dedupe_seams(table: NucleiTable, part_of: np.ndarray, in_core: np.ndarray, iou_min: float = SEAM_IOU) -> np.ndarray:
    """Keep-mask over border candidates (``table``, in one coordinate frame) of several parts
    (``part_of``: part index per nucleus; ``in_core``: centroid in its own part's core): of two
    candidates from different parts whose polygons overlap with IoU >= ``iou_min``, the one in
    its own core is kept (ties: the first)."""
    import shapely

    keep = np.ones(len(table), bool)
    if len(table) < 2:
        return keep
    part_of = np.asarray(part_of)
    in_core = np.asarray(in_core, bool)
    from shapely.geometry import Polygon

    geoms = np.array([Polygon(p) if len(p) >= 3 else Polygon() for p in table.polygons], dtype=object)
    geoms = shapely.make_valid(geoms)
    tree = shapely.STRtree(geoms)
    a, b = tree.query(geoms, predicate="intersects")
    sel = (a < b) & (part_of[a] != part_of[b])
    for i, j in zip(a[sel], b[sel]):
        if not (keep[i] and keep[j]):
            continue
        inter = shapely.area(shapely.intersection(geoms[i], geoms[j]))
        union = shapely.area(shapely.union(geoms[i], geoms[j]))
        if union > 0 and inter / union >= iou_min:
            keep[j if in_core[i] or not in_core[j] else i] = False
    return keep


class Stitcher:
    """Nuclei of many parts (tiles / chunks) -> one table without seam duplicates.

    ``add(table, core, scale)`` for each part, in any order: ``table`` in input px (the common
    frame), ``core`` in the same px, ``scale`` = working px per input px of that part (converts
    ``tol_work`` / ``hold_work``). Final nuclei get ids 1, 2, ... in the order they become final
    and go to ``sink`` at once when one is given (streamed exports; memory then holds the border
    candidates only); ``finish()`` de-duplicates the border candidates, emits them and returns
    the whole table — unless ``keep=False`` with a sink (then an empty table: nothing is held)."""

    def __init__(self, taxonomy, mpp: float | None = None, *, sink: ChunkSink | None = None, keep: bool = True,
                 tol_work: float = BORDER_TOL_WORK, hold_work: float = BORDER_HOLD_WORK, iou_min: float = SEAM_IOU):
        self.taxonomy = taxonomy
        self.mpp = mpp
        self.sink = sink
        self.keep = bool(keep) or sink is None
        self.tol_work, self.hold_work, self.iou_min = float(tol_work), float(hold_work), float(iou_min)
        self.count = 0
        self._parts: list[NucleiTable] = []
        self._border: list[tuple[NucleiTable, np.ndarray, int]] = []
        self._n_parts = 0
        self._done = False

    def _emit(self, t: NucleiTable) -> None:
        if not len(t):
            return
        t.ids = np.arange(self.count + 1, self.count + len(t) + 1, dtype=np.int64)
        t.mpp = self.mpp
        self.count += len(t)
        if self.sink is not None:
            self.sink(t)
        if self.keep:
            self._parts.append(t)

    def add(self, table: NucleiTable, core: Sequence[float], scale: float = 1.0) -> None:
        """One part's nuclei (input px) with its half-open core (input px)."""
        if self._done:
            raise RuntimeError("Stitcher.add after finish()")
        k = self._n_parts
        self._n_parts += 1
        if not len(table):
            return
        s = float(scale)
        fin, bor, in_core = split_owned(table.centroid[:, 0], table.centroid[:, 1], core,
                                        self.tol_work / s, self.hold_work / s)
        self._emit(table.subset(fin))
        if bor.any():
            self._border.append((table.subset(bor), in_core[bor], k))

    def finish(self) -> NucleiTable:
        """De-duplicate and emit the border candidates; the whole table (or an empty one when a
        sink received everything)."""
        if not self._done:
            self._done = True
            if self._border:
                bt = NucleiTable.concat([b[0] for b in self._border], renumber=False)
                keep = dedupe_seams(bt, np.concatenate([np.full(len(b[0]), b[2]) for b in self._border]),
                                    np.concatenate([b[1] for b in self._border]), self.iou_min)
                self._border = []
                self._emit(bt.subset(keep))
        if self._parts:
            out = NucleiTable.concat(self._parts, renumber=False)
        else:
            out = NucleiTable.empty(self.taxonomy, self.mpp)
        out.mpp = self.mpp
        return out
