"""DetectTME for nucleus models: the tile stream as an image SOURCE of the CLI's own path.

Each received tile's pixels (at the plan's downsample ``d``, i.e. the model's working
resolution) are pasted into one canvas over the annotation's bounds, on the working grid of
``segtme analyze`` of that region: canvas pixel ``(X, Y)`` covers full-res
``[ox + X * d, ox + (X + 1) * d) x [oy + Y * d, ...)``, where the canvas box ``(ox, oy, ox1, oy1)``
is the annotation's bounds (floor of the minimum clipped at 0, ceil of the maximum: the plan's
bounds, docs/INTERFACES.md) plus the plan's margin ``m = floor(O / 2 * d)`` (``canvas_box``). A
tile pixel ``i`` covers ``[tile.x + i * d, ...)``, so it lands on canvas column
``round((tile.x - ox) / d) + i`` (the rounding moves a tile by < 0.5 working px; the first
tile's is exact). Each tile's core is pasted, extended to the canvas edge where the core touches
the bounds' edge (so every canvas pixel comes from exactly one tile, never from a tile's
resampled inner edge). When the stream ends, ``pipeline.segment_source(CanvasSource, ...)`` runs on it:
the CLI's tile grid, blending, maps -> nuclei step and stitcher, on the same grid as
``segtme analyze`` of the canvas box (the annotation's bounds with the streamed margin); nuclei come back in full-res px of the image and are kept when
their centroid lies inside the annotation (the ownership rule of the per-tile path).

Memory rule: the canvas holds 3 bytes per working px of the annotation's bounds; a job whose
bounds exceed ``ServerLimits.max_canvas_pixels`` working px (400 M: ~1 cm² at 0.5 µm/px) runs
tile by tile instead (``job.TileJob``: same model, maps → nuclei step and stitcher on the stream
plan's tiles, ~95 % of nuclei matched to the CLI; no band-by-band canvas yet). Jobs without an annotation (bounds unknown up front) and PAGET models keep the per-tile path
(``job.TileJob``).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import InputError
from ..inference.nuclei import NucleiTable
from .batcher import Cancelled, JobToken
from .limits import ServerLimits
from .requests import DecodedTile, JobSpec, TileLedger, invalid
from .runners import ModelRunner


def annotation_bounds(geometry) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) full-res integer bounds of the annotation as the client plans them:
    floor of the minimum clipped at 0, ceil of the maximum (QuPath's ``SegTME.java``)."""
    minx, miny, maxx, maxy = geometry.bounds
    x0, y0 = max(0, math.floor(minx)), max(0, math.floor(miny))
    return x0, y0, max(x0 + 1, math.ceil(maxx)), max(y0 + 1, math.ceil(maxy))


def canvas_box(bounds: tuple[int, int, int, int], d: float, overlap: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) full-res px the canvas covers: the annotation's bounds plus the plan's
    margin ``m = floor(overlap / 2 * d)`` on each side (the context the streamed tiles carry;
    clipped at 0 like the plan's regions, so the first tile's pixels sit exactly on the canvas
    grid). Past the image's right/bottom edge the canvas stays white (as a source's outside)."""
    m = math.floor((int(overlap) / 2.0) * d)
    bx, by, bx1, by1 = bounds
    return max(0, bx - m), max(0, by - m), bx1 + m, by1 + m


def working_shape(size_wh: tuple[int, int], image_mpp: float, work_mpp: float) -> tuple[int, int]:
    """(height, width) working px of a full-res (width, height) region: the same rule as
    ``pipeline.segment_source`` (``resample.working_size``; identity when the MPPs agree)."""
    from ..resample import scale, working_size

    if scale(image_mpp, work_mpp) == 1.0:
        return int(size_wh[1]), int(size_wh[0])
    ww, hw = working_size(size_wh, image_mpp, work_mpp)
    return int(hw), int(ww)


def _edge(v: float) -> int:
    return int(math.floor(v + 0.5))


class CanvasSource:
    """The canvas as an ``ImageSource`` (io/source.py) of the region ``(bx, by) + size``:
    level 0 = full-res px of the region (``mpp`` = the image's), pixels served on the working grid
    through ``read_working`` (what ``pipeline.working_reader`` asks for) without resampling."""

    path = None
    mpp_source = "stream"

    def __init__(self, rgb: np.ndarray, size_l0: tuple[int, int], image_mpp: float, work_mpp: float):
        self.rgb = rgb
        self.size = (int(size_l0[0]), int(size_l0[1]))
        self.mpp = float(image_mpp)
        self.work_mpp = float(work_mpp)

    def read_working(self, region, work_mpp: float) -> np.ndarray:
        """Working-px window (x0, y0, x1, y1) of the canvas (white outside it)."""
        if abs(float(work_mpp) / self.work_mpp - 1.0) > 1e-6:
            raise InputError(f"the stream canvas is at {self.work_mpp:g} µm/px, asked for {work_mpp:g}")
        x0, y0, x1, y1 = (int(v) for v in region)
        H, W = self.rgb.shape[:2]
        out = np.full((y1 - y0, x1 - x0, 3), 255, np.uint8)
        a0, b0, a1, b1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
        if a1 > a0 and b1 > b0:
            out[b0 - y0:b1 - y0, a0 - x0:a1 - x0] = self.rgb[b0:b1, a0:a1]
        return out

    def read_region(self, box, mpp: float) -> np.ndarray:
        """Level-0 box (x, y, w, h) read at the canvas's working MPP (the only one it holds)."""
        s = self.mpp / self.work_mpp
        x, y, w, h = (int(v) for v in box)
        X0, Y0 = _edge(x * s), _edge(y * s)
        return self.read_working((X0, Y0, X0 + round(w * s), Y0 + round(h * s)), mpp)

    def close(self) -> None:
        self.rgb = None


@dataclass
class Received:
    """What the reader hands the handler for one pasted tile."""

    index: int


def canvas_fits(runner: ModelRunner, spec: JobSpec, limits: ServerLimits) -> bool:
    """Whether the annotation's bounds + the plan's margin fit one canvas of at most
    ``limits.max_canvas_pixels`` working px (at the model's MPP)."""
    cfg = runner.cfg
    d = float(cfg.mpp) / float(spec.image_mpp)
    bx, by, bx1, by1 = canvas_box(annotation_bounds(spec.geometry), d, int(cfg.tile_overlap))
    hw, ww = working_shape((bx1 - bx, by1 - by), spec.image_mpp, float(cfg.mpp))
    return hw * ww <= limits.max_canvas_pixels


class CanvasJob:
    """A DetectTME job for a nucleus model over an annotation: tiles pasted into the canvas
    (``submit``, reader thread), then ``segment`` (the CLI's path) once the stream ended.
    Same surface as ``job.TileJob`` where the handler needs it (ledger, error, tiles_done,
    nuclei, collect, table, tissue, drop)."""

    paget_mode = None

    def __init__(self, runner: ModelRunner, spec: JobSpec, token: JobToken, limits: ServerLimits):
        self.runner = runner
        self.spec = spec
        self.token = token
        self.limits = limits
        self.error = None
        self.ledger = TileLedger()
        self.tiles_done = 0
        self.nuclei = 0
        cfg = runner.cfg
        self.work_mpp = float(cfg.mpp)
        self.d = self.work_mpp / float(spec.image_mpp)
        self.ann_bounds = annotation_bounds(spec.geometry)
        #: the canvas box (full-res px): annotation bounds + the plan's margin
        self.bounds = canvas_box(self.ann_bounds, self.d, int(cfg.tile_overlap))
        bx, by, bx1, by1 = self.bounds
        self.shape = working_shape((bx1 - bx, by1 - by), spec.image_mpp, self.work_mpp)
        hw, ww = self.shape
        if hw * ww > limits.max_canvas_pixels:
            raise invalid(
                f"config.annotation_geojson: the annotation's bounds with margin are {bx1 - bx}x{by1 - by} px = {ww}x{hw} "
                f"working px at the model's {self.work_mpp:g} µm/px, more than max_canvas_pixels "
                f"({limits.max_canvas_pixels}); split the annotation into smaller ones")
        self._lock = threading.Lock()
        self.canvas: np.ndarray | None = np.full((hw, ww, 3), 255, np.uint8)
        #: pasted core rectangles (full-res px) and the largest core end (x1, y1) seen
        self.cores: list[tuple[int, int, int, int]] = []
        self._table: NucleiTable | None = None
        self.model_tiles = 0
        self.model_tiles_run = 0

    # ------------------------------------------------------------------ receiving
    def submit(self, tile: DecodedTile, field_name: str) -> Received:
        """Paste the tile's core pixels into the canvas (reader thread)."""
        from ..resample import resample

        if self.token.cancelled:
            raise Cancelled(self.token.name)
        rgb = tile.rgb
        if abs(tile.d / self.d - 1.0) > 1e-6:  # a client that read at another downsample
            try:
                rgb = resample(rgb, tile.d / self.d)
            except Exception as e:
                raise invalid(f"{field_name}: cannot rescale to the model's resolution ({e})") from None
        bx, by = self.bounds[:2]
        ax, ay, ax1, ay1 = self.ann_bounds
        hw, ww = self.shape
        c0, c1, c2, c3 = tile.core
        off_x, off_y = _edge((tile.x - bx) / self.d), _edge((tile.y - by) / self.d)
        # the core; where it touches the annotation bounds' edge, on to the canvas edge (margin)
        X0 = 0 if c0 <= ax else max(0, _edge((c0 - bx) / self.d))
        Y0 = 0 if c1 <= ay else max(0, _edge((c1 - by) / self.d))
        X1 = ww if c2 >= ax1 else min(ww, _edge((c2 - bx) / self.d))
        Y1 = hw if c3 >= ay1 else min(hw, _edge((c3 - by) / self.d))
        # clip to the tile's own pixels
        X0, Y0 = max(X0, off_x), max(Y0, off_y)
        X1, Y1 = min(X1, off_x + rgb.shape[1]), min(Y1, off_y + rgb.shape[0])
        with self._lock:
            if self.canvas is None:
                raise Cancelled(self.token.name)
            if X1 > X0 and Y1 > Y0:
                self.canvas[Y0:Y1, X0:X1] = rgb[Y0 - off_y:Y1 - off_y, X0 - off_x:X1 - off_x]
            self.cores.append((c0, c1, c2, c3))
        return Received(tile.index)

    def collect(self, sub: Received, field_name: str) -> NucleiTable:
        """A tile was pasted: count it (its nuclei come from ``segment``)."""
        self.tiles_done += 1
        return NucleiTable.empty(self.runner.cfg.tax, self.spec.image_mpp)

    # ------------------------------------------------------------------ segmenting
    def _keep_chunk(self, core_l0) -> bool:
        """A chunk (core in full-res px of the canvas box) runs when it touches the annotation
        and a received core."""
        import shapely

        bx, by = self.bounds[:2]
        x0, y0, x1, y1 = core_l0
        x0, y0, x1, y1 = x0 + bx, y0 + by, x1 + bx, y1 + by
        if not any(a < x1 and c > x0 and b < y1 and d > y0 for a, b, c, d in self.cores):
            return False
        return bool(self.spec.geometry.intersects(shapely.box(x0, y0, x1, y1)))

    def _clip(self, t: NucleiTable) -> NucleiTable:
        """Region px -> image full-res px; keep the nuclei whose centroid is in the annotation."""
        import shapely

        bx, by = self.bounds[:2]
        t = t.translated(bx, by)
        if len(t):
            t = t.subset(shapely.intersects_xy(self.spec.geometry, t.centroid[:, 0], t.centroid[:, 1]))
        return t

    def source(self) -> CanvasSource | None:
        """The canvas as a source of the canvas box, or None when no tile came."""
        if not self.cores or self.canvas is None:
            return None
        bx, by, bx1, by1 = self.bounds
        return CanvasSource(self.canvas, (bx1 - bx, by1 - by), self.spec.image_mpp, self.work_mpp)

    def segment(self, progress: Callable[[int, int], None], sink: Callable[[NucleiTable], None] | None) -> None:
        """Run the CLI's path on the canvas (``pipeline.segment_source``). progress(run, total):
        model tiles run so far / planned; raises Cancelled at the next model tile when the job
        is cancelled. sink: each batch of final nuclei (image px, inside the annotation)."""
        from ..inference.options import InferenceOptions
        from ..pipeline import count_tiles, segment_source

        src = self.source()
        cfg = self.runner.cfg
        if src is None:
            self._table = NucleiTable.empty(cfg.tax, self.spec.image_mpp)
            return
        self.model_tiles = count_tiles((src.size[1], src.size[0]), src.mpp, cfg)

        def on_tiles(n: int) -> None:
            if self.token.cancelled:
                raise Cancelled(self.token.name)
            self.model_tiles_run += int(n)
            progress(self.model_tiles_run, self.model_tiles)

        def on_batch(t: NucleiTable) -> None:
            t = self._clip(t)
            self.nuclei += len(t)
            if sink is not None and len(t):
                sink(t)

        try:
            table = segment_source(src, self.runner.model, InferenceOptions(progress=on_tiles), sink=on_batch,
                                   keep_chunk=self._keep_chunk)
        except InputError as e:
            raise invalid(f"tiles: {e}") from None
        finally:
            src.close()
        self._table = self._clip(table)
        self.nuclei = len(self._table)

    def table(self) -> NucleiTable:
        """All nuclei of the job (after ``segment``), numbered 1..N, full-res px."""
        cfg = self.runner.cfg
        t = self._table if self._table is not None else NucleiTable.empty(cfg.tax, self.spec.image_mpp)
        t = NucleiTable.concat([t], renumber=True) if len(t) else NucleiTable.empty(cfg.tax, self.spec.image_mpp)
        t.mpp = self.spec.image_mpp
        t.meta.update(model=cfg.name, model_mpp=cfg.mpp, input_mpp=self.spec.image_mpp, job_id=self.spec.job_id,
                      annotation_id=self.spec.annotation_id, n_model_tiles=self.model_tiles_run,
                      canvas_origin=list(self.bounds[:2]))
        return t

    def tissue(self, table: NucleiTable) -> list[dict]:
        return []

    def drop(self) -> None:
        """Free the canvas (the job ended)."""
        with self._lock:
            self.canvas = None
