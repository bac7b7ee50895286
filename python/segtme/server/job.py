"""One job's tiles: queueing them for the model(s), post-processing each, and stitching them
into the job's nuclei (ownership rule + seam de-duplication), plus PAGET tissue context.

Used by DetectTME for PAGET models and for jobs without an annotation (tiles streamed by the
client; nucleus models over an annotation run the CLI's path on a canvas instead, ``canvas.py``)
and by AnalyzeImage for PAGET models (tiles cut by the server).
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from ..errors import InputError
from ..inference.nuclei import NucleiTable
from ..inference.stitch import Stitcher
from .batcher import Cancelled, JobToken
from .limits import ServerLimits
from .requests import DecodedTile, JobSpec, RequestError, TileLedger, invalid
from .runners import ModelRunner
from ..paget.heads import NUC_HEAD, own_instances
from .tiles import TISSUE_ID, WorkTile, paget_instances, tile_nuclei, tile_paget, to_work_tile

log = logging.getLogger("segtme.server")
_POLL_S = 0.05


@dataclass
class Submitted:
    """One tile queued for the model(s): the student's work tile + future, and for PAGET-H with a
    batched instance source that model's own work tile + future."""

    wt: WorkTile
    fut: Future
    iwt: WorkTile | None = None
    ifut: Future | None = None


class TileJob:
    """Per-job state shared by DetectTME and AnalyzeImage: tiles in flight, nuclei kept, and for
    PAGET models the tissue context of each nucleus and the tiles' tissue annotations."""

    def __init__(self, runner: ModelRunner, spec: JobSpec, token: JobToken, limits: ServerLimits):
        self.runner = runner
        self.spec = spec
        self.token = token
        self.limits = limits
        #: the job's final nuclei, in the order they became final (full-res px)
        self.tables: list[NucleiTable] = []
        self.cores: list[tuple[int, int, int, int]] = []
        #: nucleus models: the one stitcher (``inference.stitch.Stitcher``) decides ownership and
        #: de-duplicates seam nuclei; its sink receives each tile's final nuclei at once
        self.stitcher = Stitcher(runner.cfg.tax, spec.image_mpp, sink=self._sink, keep=False)
        self._fresh: list[NucleiTable] = []
        self._finishing = False
        self._border_table: NucleiTable | None = None
        self.paget_mode = runner.paget_mode
        self.tissue_pieces: list[dict] = []
        self.tiles_done = 0
        self.nuclei = 0
        self.inflight = threading.BoundedSemaphore(limits.max_inflight_tiles_per_stream)
        #: set by the reader thread when the client sent something invalid (the job stops at once)
        self.error: RequestError | None = None
        #: tile indices and cores accepted so far (duplicates / overlapping cores are refused)
        self.ledger = TileLedger()

    def submit(self, tile: DecodedTile, field_name: str) -> Submitted:
        """Rescale + pad a decoded tile and queue it for the model (blocks while this job has too
        many tiles in flight or the model queue is full; raises Cancelled when the job ends).
        PAGET-H with a batched instance source: the tile is also rescaled to that model's MPP and
        queued on its (shared) batcher."""
        wt = to_work_tile(tile, self.spec.image_mpp, self.runner.cfg, field_name)
        ir = self.runner.instance_runner if self.paget_mode == "panoptic" else None
        iwt = to_work_tile(tile, self.spec.image_mpp, ir.cfg, field_name) if ir is not None else None
        while not self.inflight.acquire(timeout=_POLL_S):
            if self.token.cancelled:
                raise Cancelled(self.token.name)
        fut = None
        try:
            fut = self.runner.batcher.submit(wt.padded, self.token)
            ifut = ir.batcher.submit(iwt.padded, self.token) if ir is not None else None
        except BaseException:
            if fut is not None:
                fut.cancel()
            self.inflight.release()
            raise
        return Submitted(wt, fut, iwt, ifut)

    def _await(self, fut: Future, field_name: str) -> dict[str, np.ndarray]:
        while True:
            if self.token.cancelled:
                fut.cancel()
                raise Cancelled(self.token.name)
            try:
                return fut.result(timeout=_POLL_S)
            except futures.TimeoutError:
                continue
            except futures.CancelledError:
                raise Cancelled(self.token.name) from None
            except Cancelled:
                raise
            except InputError as e:
                raise invalid(f"{field_name}: {e}") from None
            except Exception as e:
                log.exception("model failed on %s", field_name)
                raise RequestError(grpc.StatusCode.INTERNAL, f"{field_name}: model failed: {type(e).__name__}: {e}") from None

    def collect(self, sub: Submitted, field_name: str) -> NucleiTable:
        """Wait for a tile's model output(s), post-process, apply the ownership rule; returns the
        tile's owned nuclei (PAGET: also keeps their tissue context and the tile's tissue pieces)."""
        try:
            out = self._await(sub.fut, field_name)
            iout = self._await(sub.ifut, field_name) if sub.ifut is not None else None
        finally:
            if sub.ifut is not None and not sub.ifut.done():
                sub.ifut.cancel()
            self.inflight.release()
        wt = sub.wt
        if self.paget_mode is None:
            found = tile_nuclei(wt, out, self.runner.cfg, self.spec.image_mpp, self.spec.geometry)
        else:
            inst = mark = icls = itax = None
            if self.paget_mode == "panoptic":
                inst, icls, itax = self._instances(sub, out, iout, field_name)
                mark = self.runner.mitosis
            pt_ = tile_paget(wt, out, self.runner.cfg, self.spec.image_mpp, self.spec.geometry,
                             mode=self.paget_mode, inst=inst, mitosis=mark, inst_class=icls, inst_taxonomy=itax)
            found = pt_.table  # carries each nucleus's tissue id in extra[TISSUE_ID]
            self.tissue_pieces.extend(pt_.tissue_features)
        # the one stitcher: nuclei near a core edge (either side) wait for de-duplication
        # (``border_table``); the others are final now (streamed at once with ``per_tile_results``)
        self._fresh = []
        self.stitcher.add(found, wt.tile.core, wt.full_scale)
        self.cores.append(wt.tile.core)
        t = NucleiTable.concat(self._fresh, renumber=False) if self._fresh else NucleiTable.empty(
            self.runner.cfg.tax, self.spec.image_mpp)
        self._fresh = []
        self.nuclei = self.stitcher.count  # progress: final nuclei so far (held ones follow at the end)
        self.tiles_done += 1
        return t

    def _sink(self, t: NucleiTable) -> None:
        """Stitcher sink: final nuclei of the tile being added, or (at ``finish``) the
        de-duplicated border nuclei — of which those outside every core of the job are dropped
        (the cores partition the region the client asked for)."""
        if self._finishing and len(t) and self.cores:
            cx, cy = t.centroid[:, 0], t.centroid[:, 1]
            hit = np.zeros(len(t), bool)
            for x0, y0, x1, y1 in self.cores:
                hit |= (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)
            t = t.subset(hit)
            self._border_table = t
        if len(t):
            self.tables.append(t)
            self._fresh.append(t)

    def _instances(self, sub: Submitted, out: dict, iout: dict | None,
                   field_name: str) -> tuple[np.ndarray, np.ndarray | None, Any]:
        """PAGET-H instances of a tile on the student's valid working grid (from the instance
        source's output ``iout``, or from the student's own nucleus heads in ``out``):
        ``(inst, class of each instance in the source's taxonomy or None, that taxonomy)``."""
        from ..paget.runner import nucleus_taxonomy

        h, w = sub.wt.valid
        r = self.runner
        if r.instance_runner is not None and iout is not None and sub.iwt is not None:
            icfg = r.instance_runner.cfg
            return (*paget_instances(sub.iwt, iout, icfg, (h, w), sub.wt.s), icfg.tax)
        if r.instance_runner is None and r.instance_direct is None and own_instances(r.cfg):
            own = paget_instances(sub.wt, {"prob": out[NUC_HEAD], "hv": out["hv"]}, r.cfg, (h, w), sub.wt.s)
            return (*own, nucleus_taxonomy(r.cfg))
        if r.instance_direct is not None:
            from ..paget.runner import source_instances

            try:
                inst, _, icls, itax = source_instances(r.instance_direct, np.ascontiguousarray(sub.wt.padded[:h, :w]),
                                                       r.cfg.mpp)
            except InputError as e:
                raise invalid(f"{field_name}: {e}") from None
            return inst, icls, itax
        raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"model {r.cfg.name!r} is PAGET-H but the server has no instance source for it")

    def border_table(self) -> NucleiTable:
        """The held-back nuclei near core edges, each nucleus once (``Stitcher.finish``: two
        neighbouring tiles' copies merge when their outlines overlap with IoU >= 0.3, the copy in
        its own tile's core wins); a copy outside every core of the job is dropped. Computed once,
        at the end of the job."""
        if self._border_table is None:
            self._finishing = True
            self.stitcher.finish()
            if self._border_table is None:
                self._border_table = NucleiTable.empty(self.runner.cfg.tax, self.spec.image_mpp)
        return self._border_table

    def table(self) -> NucleiTable:
        """All nuclei of the job: each tile's final nuclei plus ``border_table``, numbered 1..N."""
        cfg = self.runner.cfg
        self.border_table()  # appends the de-duplicated border nuclei to self.tables
        tables = list(self.tables)
        tables = [x for x in tables if len(x)]
        t = NucleiTable.concat(tables, renumber=True) if tables else NucleiTable.empty(cfg.tax, self.spec.image_mpp)
        t.mpp = self.spec.image_mpp
        t.meta.update(model=cfg.name, model_mpp=cfg.mpp, input_mpp=self.spec.image_mpp, job_id=self.spec.job_id,
                      annotation_id=self.spec.annotation_id)
        return t

    def tissue(self, table: NucleiTable) -> list[dict]:
        """PAGET: the tiles' tissue pieces merged into one annotation per class (in taxonomy
        order), clipped to the annotation geometry, with the areas recomputed (full-res px); the
        tissue context and areas are attached to ``table`` for the 13-class TME features.
        Other models: []."""
        if self.paget_mode is None:
            return []
        from ..paget.geometry import merge_tissue_features
        from ..paget.outputs import attach_tissue_context

        merged = merge_tissue_features(self.tissue_pieces, clip=self.spec.geometry, mpp=self.spec.image_mpp)
        order = {c.name: c.id for c in self.runner.cfg.tax.classes}
        merged.sort(key=lambda f: order.get(f["properties"]["classification"]["name"], 1 << 30))
        ctx = np.asarray(table.extra.pop(TISSUE_ID, np.zeros(len(table))), np.float64).astype(np.int32)
        attach_tissue_context(table, ctx, merged)
        return merged

    def drop(self) -> None:
        """Drop this job's queued tiles from every batcher it uses."""
        for b in self.runner.batchers():
            b.drop(self.token)

