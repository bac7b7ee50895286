"""The ``segtme.v1.SegTME`` RPC handlers: GetInfo, ListModels, Narrate, AnalyzeImage, DetectTME.

DetectTME (bidirectional stream): the first message is a ``JobConfig``, validated whole before
any tile is touched (``requests.parse_job_config``: model, MPP, annotation, output type, narrative
backend name and availability); then ``Tile`` messages (each validated and decoded, refused when
its index repeats or its core overlaps an earlier core: ``requests.TileLedger``); then an optional
``End`` (the client's half-close also ends the job). Responses: ``Progress`` after every tile,
``NucleiBatch`` (per tile with ``per_tile_results``, else in chunks at the end), a final
``Progress`` with fraction 1.0, then the ``TMEReport`` over all nuclei of the annotation.

Two job kinds (``_stream_job``): a nucleus model over an annotation pastes the tiles into one
canvas over the annotation's bounds (+ the plan's margin) and, when the stream ends, runs the
CLI's own path on it (``canvas.CanvasJob``: ``pipeline.segment_source``; Progress stage
"receiving" per tile, then "segmenting" per batch of model tiles; with ``per_tile_results`` the
nuclei come per chunk as the stitcher finalises them). PAGET models and jobs without an annotation
segment tile by tile through the model's shared batcher (``job.TileJob``).

A per-stream reader thread reads the client's messages (the config too), decodes and submits
tiles, so one stream keeps several tiles in flight; the handler thread collects results and
answers. A stream whose client sends nothing for ``limits.idle_timeout_s`` while the server has
nothing left to send it is closed with DEADLINE_EXCEEDED (its job slot is freed). While the
server drains for shutdown (``draining``) new jobs get UNAVAILABLE.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from ..version import __version__
from ..errors import SegTMEError
from ..paget.heads import own_instances
from ._proto.segtme.v1 import segtme_pb2 as pb
from ._proto.segtme.v1 import segtme_pb2_grpc as pb_grpc
from .batcher import Cancelled, JobToken
from .canvas import CanvasJob, canvas_fits
from .job import Submitted, TileJob
from .limits import ServerLimits, StreamSlots
from .messages import feature_batches, features_messages, report_message
from .report import build_report, narrate_report
from .requests import (
    DecodedTile,
    JobSpec,
    RequestError,
    decode_pixels,
    decode_tile,
    image_size,
    invalid,
    parse_job_config,
)
from .runners import ModelRunner

log = logging.getLogger("segtme.server")
job_log = logging.getLogger("segtme.server.jobs")
_POLL_S = 0.05
#: DetectTME over a canvas: the part of the progress bar for receiving tiles (the rest is the
#: segmentation of the canvas, by model tiles run)
RECEIVE_FRACTION = 0.3


def _streams_chunks(spec: JobSpec) -> bool:
    """Whether a canvas job streams its final nuclei chunk by chunk (``per_tile_results``).
    Cells are not streamed: a cell is grown into the space its neighbours leave, so cells built
    per chunk could overlap at chunk seams; they are built once over the whole table instead."""
    return bool(spec.per_tile_results) and spec.output_type == "detection"


@dataclass
class _Stream:
    """State shared by a DetectTME handler and its reader thread."""

    spec: JobSpec | None = None
    job: TileJob | None = None
    #: set by the handler once the job exists (the reader may then submit tiles)
    ready: threading.Event = field(default_factory=threading.Event)
    #: monotonic time the reader started waiting for the client's next message (None: not waiting)
    waiting_since: float | None = None
    #: monotonic time the handler last sent a response
    last_sent: float = field(default_factory=time.monotonic)

    def idle_for(self) -> float:
        """Seconds the stream has been idle: the reader is waiting for the client and nothing
        was sent to the client meanwhile (0 when the reader is busy or done)."""
        ws = self.waiting_since
        if ws is None:
            return 0.0
        return time.monotonic() - max(ws, self.last_sent)


class SegTMEServicer(pb_grpc.SegTMEServicer):
    """The SegTME service. ``runners``: model name -> ModelRunner (first = default)."""

    def __init__(self, runners: dict[str, ModelRunner], limits: ServerLimits, max_batch: int,
                 aliases: dict[str, str] | None = None):
        if not runners:
            raise ValueError("the server needs at least one model")
        self.runners = runners
        self.aliases = dict(aliases or {})
        self.default_model = next(iter(runners))
        self.limits = limits
        self.max_batch = max_batch
        self.slots = StreamSlots(limits.max_concurrent_streams)
        #: set when the server shuts down: new jobs are refused with UNAVAILABLE
        self.draining = threading.Event()

    # ------------------------------------------------------------------ helpers
    def _model_name(self, name: str) -> str:
        return self.aliases.get(name, name)

    def _known_models(self) -> dict:
        d = {k: r.cfg for k, r in self.runners.items()}
        d.update({a: self.runners[n].cfg for a, n in self.aliases.items()})
        return d

    def _spec(self, cfg_msg) -> tuple[JobSpec, ModelRunner]:
        """The validated job and its runner; a PAGET-H model without an instance source is
        refused here (FAILED_PRECONDITION), before any tile."""
        spec = parse_job_config(cfg_msg, self.default_model, self._known_models())
        spec.model = self._model_name(spec.model)
        runner = self.runners[spec.model]
        if (runner.paget_mode == "panoptic" and runner.instance_runner is None and runner.instance_direct is None
                and not own_instances(runner.cfg)):
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"config.model: {runner.cfg.name!r} is PAGET-H but the server has no instance source for it")
        return spec, runner

    def _acquire_slot(self, context: grpc.ServicerContext) -> None:
        if self.draining.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down; retry on another server or later")
        if not self.slots.acquire():
            job_log.info(json.dumps({"event": "refused", "status": "RESOURCE_EXHAUSTED", "peer": context.peer(),
                                     "reason": "max_concurrent_streams"}))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"server busy: {self.limits.max_concurrent_streams} concurrent jobs already running "
                          "(max_concurrent_streams); retry later")

    def _log_job(self, rpc: str, spec: JobSpec | None, job: TileJob | None, status: str, t0: float,
                 context: grpc.ServicerContext, message: str = "", nuclei: int | None = None) -> None:
        rec = {
            "event": "job", "rpc": rpc, "job_id": spec.job_id if spec else "", "model": spec.model if spec else "",
            "annotation_id": spec.annotation_id if spec else "", "status": status,
            "tiles": job.tiles_done if job else 0,
            "nuclei": nuclei if nuclei is not None else (job.nuclei if job else 0),
            "seconds": round(time.perf_counter() - t0, 3), "peer": context.peer(),
        }
        if message:
            rec["message"] = message[:300]
        job_log.info(json.dumps(rec, ensure_ascii=False))

    # ------------------------------------------------------------------ unary
    def GetInfo(self, request, context):
        first = next(iter(self.runners.values()))
        return pb.ServerInfo(
            version=__version__, device=str(first.model.device), models_loaded=list(self.runners),
            default_model=self.default_model, max_batch=self.max_batch,
            limits=pb.Limits(max_message_bytes=self.limits.max_message_bytes,
                             max_tile_pixels=self.limits.max_tile_pixels,
                             max_tiles_per_stream=self.limits.max_tiles_per_stream,
                             max_concurrent_streams=self.limits.max_concurrent_streams),
        )

    def ListModels(self, request, context):
        out = pb.ListModelsResponse()
        for name, r in self.runners.items():
            cfg = r.cfg
            tax = cfg.tax
            desc = f"{cfg.arch} / {cfg.backbone} ({r.model.source})"
            if r.paget_mode is not None:
                desc += f"; PAGET-{'H' if r.paget_mode == 'panoptic' else 'S'}: tissue annotations + nuclei"
                src = r.instance_runner.model if r.instance_runner is not None else r.instance_direct
                if src is not None:
                    desc += f"; instances from {src.config.name}"
                elif r.paget_mode == "panoptic" and own_instances(cfg):
                    desc += "; instances from its own nucleus heads (one forward pass)"
            mi = out.models.add(name=name, mpp=cfg.mpp, tile_size=cfg.tile_size, tile_overlap=cfg.tile_overlap,
                                description=desc)
            for c in tax.classes:
                mi.classes.add(id=c.id, name=c.name, color=list(c.color), role=c.role, level=c.level)
            mi.substitutions.extend(tax.substitutions())
        return out

    def Narrate(self, request, context):
        try:
            report = narrate_report(request.features_json, request.narrative_backend or "template", request.taxonomy)
        except RequestError as e:
            context.abort(e.code, e.message)
        narrative = report.get("narrative")
        return pb.NarrateResponse(
            report_json=json.dumps(report, ensure_ascii=False, allow_nan=False),
            narrative=narrative if isinstance(narrative, str) else "",
            tokens=[str(t) for t in report.get("generated_tokens") or []],
        )

    def AnalyzeImage(self, request, context):
        t0 = time.perf_counter()
        self._acquire_slot(context)
        token = JobToken("analyze")
        context.add_callback(token.cancel)
        spec: JobSpec | None = None
        job: TileJob | None = None
        status = "OK"
        n_nuclei: int | None = None
        try:
            cfg_msg = pb.JobConfig(model=request.model, image_mpp=request.image_mpp, output_type=request.output_type,
                                   narrative_backend=request.narrative_backend, job_id="analyze")
            spec, runner = self._spec(cfg_msg)
            if request.encoding not in (pb.PNG, pb.JPEG, pb.RAW_RGB):
                raise invalid(f"encoding must be PNG, JPEG or RAW_RGB, got {request.encoding}")
            if not request.pixels:
                raise invalid("pixels is empty")
            w, h = request.width, request.height
            if request.encoding != pb.RAW_RGB and (w == 0 and h == 0):
                w, h = image_size(request.pixels, request.encoding)
            if w <= 0 or h <= 0:
                raise invalid(f"width/height must be > 0, got {w}x{h}")
            if w * h > self.limits.max_image_pixels:
                raise invalid(f"width*height = {w}x{h} exceeds max_image_pixels ({self.limits.max_image_pixels}); "
                              "stream it with DetectTME instead")
            rgb = decode_pixels(request.encoding, request.pixels, w, h, "image", self.limits.max_image_pixels)
            if runner.paget_mode is None:
                table = self._analyze_whole(rgb, spec, runner, token)
                tissue: list[dict] = []
            else:
                job = TileJob(runner, spec, token, self.limits)
                table, tissue = self._analyze_tiles(rgb, spec, runner, job)
            del rgb
            n_nuclei = len(table)
            table.meta["image_size"] = [w, h]
            report = build_report(table, spec.narrative_backend, tissue if runner.paget_mode else None)
            from ..export.geojson import dumps, nuclei_to_features

            # PAGET: tissue annotations (objectType "annotation") first, then the nuclei
            fc = {"type": "FeatureCollection", "features": tissue + nuclei_to_features(table, spec.output_type)}
            return pb.AnalyzeImageResponse(
                features_geojson=dumps(fc),
                report=report_message(report, table, "", time.perf_counter() - t0))
        except RequestError as e:
            status = e.code.name
            context.abort(e.code, e.message)
        except Cancelled:
            status = "CANCELLED"
            context.abort(grpc.StatusCode.CANCELLED, "cancelled")
        except SegTMEError as e:
            status = "INVALID_ARGUMENT"
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except Exception as e:
            if status == "OK" and type(e) is not Exception:  # context.abort raises a bare Exception
                status = "INTERNAL"
                log.exception("AnalyzeImage failed")
                context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")
            raise
        finally:
            token.cancel()
            if job is not None:
                job.drop()
            self.slots.release()
            self._log_job("AnalyzeImage", spec, job, status, t0, context, nuclei=n_nuclei)
            job = None
            _after_job()

    def _analyze_whole(self, rgb: np.ndarray, spec: JobSpec, runner: ModelRunner, token: JobToken):
        """AnalyzeImage for nucleus models: exactly ``segtme analyze``'s path
        (``pipeline.segment_image``: one blended tile grid, the one maps -> nuclei step, the one
        stitcher), run in this handler thread; the job's token is checked after every model tile
        (a cancelled call stops at the next tile)."""
        from ..errors import InputError
        from ..inference.options import InferenceOptions
        from ..pipeline import segment_image

        def progress(_n: int) -> None:
            if token.cancelled:
                raise Cancelled(token.name)

        try:
            table = segment_image(rgb, spec.image_mpp, runner.model, InferenceOptions(progress=progress))
        except InputError as e:
            raise invalid(f"image: {e}") from None
        cfg = runner.cfg
        table.mpp = spec.image_mpp
        table.meta.update(model=cfg.name, model_mpp=cfg.mpp, input_mpp=spec.image_mpp, job_id=spec.job_id,
                          annotation_id=spec.annotation_id)
        return table

    def _analyze_tiles(self, rgb: np.ndarray, spec: JobSpec, runner: ModelRunner, job: TileJob):
        """AnalyzeImage for PAGET models: the image cut by the stream plan and run through the
        job's tiles (the model's shared batcher), as DetectTME does."""
        from ..inference.tiling import plan_stream_tiles

        h, w = rgb.shape[:2]
        cfg = runner.cfg
        plan = plan_stream_tiles((0, 0, w, h), (w, h), spec.image_mpp, cfg.mpp, cfg.tile_size, cfg.tile_overlap)
        pending: list[tuple[Submitted, str]] = []
        for k, st in enumerate(plan):
            rx, ry, rw, rh = st.region
            dt = DecodedTile(k, rx, ry, 1.0, st.core, np.ascontiguousarray(rgb[ry:ry + rh, rx:rx + rw]))
            if len(pending) >= self.limits.max_inflight_tiles_per_stream:
                job.collect(*pending.pop(0))
            pending.append((job.submit(dt, f"image tile {k}"), f"image tile {k}"))
        for p in pending:
            job.collect(*p)
        pending.clear()
        table = job.table()
        return table, job.tissue(table)

    # ------------------------------------------------------------------ DetectTME
    def DetectTME(self, request_iterator, context):
        t0 = time.perf_counter()
        self._acquire_slot(context)
        token = JobToken("detect")
        context.add_callback(token.cancel)  # runs when the RPC ends for any reason (cancel, deadline)
        st = _Stream()
        status, message = "OK", ""
        abort: tuple[grpc.StatusCode, str] | None = None
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        try:
            yield from self._detect(request_iterator, context, token, st, t0)
        except RequestError as e:
            abort = (e.code, e.message)
        except SegTMEError as e:
            abort = (grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except Cancelled:
            job = st.job
            if job is not None and job.error is not None:
                abort = (job.error.code, job.error.message)
            else:
                expired = deadline is not None and time.monotonic() >= deadline - 0.25  # log label only
                status = "DEADLINE_EXCEEDED" if expired else "CANCELLED"
        except GeneratorExit:
            status = "CANCELLED"
            raise
        except Exception as e:  # one stream's failure never reaches another: it ends this RPC only
            log.exception("DetectTME failed")
            abort = (grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")
        finally:
            token.cancel()
            st.ready.set()  # release a reader still waiting for the job
            job = st.job
            if job is not None:
                job.drop()
            self.slots.release()
            if abort is not None:
                status, message = abort[0].name, abort[1]
            self._log_job("DetectTME", st.spec, job, status, t0, context, message)
            st.job = job = None
            _after_job()
        if abort is not None:
            context.abort(*abort)

    def _detect(self, request_iterator, context, token: JobToken, st: _Stream, t0: float):
        inbox: queue.Queue = queue.Queue()
        reader = threading.Thread(target=self._read_stream, args=(request_iterator, st, token, inbox),
                                  name="segtme-reader-detect", daemon=True)
        reader.start()
        item = self._next_item(inbox, token, st)
        if item[0] == "error":
            raise item[1]
        if item[0] == "end":
            raise invalid("config: the stream ended before the JobConfig message")
        first = item[1]
        kind = first.WhichOneof("msg")
        if kind != "config":
            raise invalid(f"config: the first message must be a JobConfig, got {kind or 'an empty message'}")
        spec, runner = self._spec(first.config)
        st.spec = spec
        token.name = spec.job_id or "detect"
        job = self._stream_job(runner, spec, token)
        st.job = job
        st.ready.set()
        canvas = isinstance(job, CanvasJob)
        last_frac = 0.0

        def send(msg):
            st.last_sent = time.monotonic()
            return msg

        expected = spec.expected_tiles
        while True:
            item = self._next_item(inbox, token, st)
            if item[0] == "end":
                break
            if item[0] == "error":
                raise item[1]
            _, sub, fname = item
            t = job.collect(sub, fname)
            if spec.per_tile_results and len(t):
                for m in features_messages(t, spec.output_type, sub.wt.tile.index):
                    yield send(pb.DetectResponse(nuclei=m))
            del sub
            frac = min(job.tiles_done / expected, 0.99) if expected > 0 else 0.0
            if canvas:  # tiles received: the first RECEIVE_FRACTION of the bar
                frac = RECEIVE_FRACTION * min(frac, 1.0)
            last_frac = max(last_frac, frac)
            yield send(pb.DetectResponse(progress=pb.Progress(
                tiles_done=job.tiles_done, tiles_expected=expected, nuclei_so_far=job.nuclei,
                fraction=last_frac, stage="receiving" if canvas else "segmenting")))
        if canvas:
            for msg in self._segment_canvas(job, spec, token, expected):
                if msg.HasField("progress"):
                    last_frac = max(last_frac, msg.progress.fraction)
                yield send(msg)
        elif spec.per_tile_results:
            held = job.border_table()  # nuclei near tile edges, de-duplicated across tiles
            if len(held):
                for m in features_messages(held, spec.output_type, -1):
                    yield send(pb.DetectResponse(nuclei=m))
        table = job.table()
        tissue = job.tissue(table)
        last_frac = max(last_frac, min(job.tiles_done / expected, 0.99) if expected > 0 else 0.0)
        yield send(pb.DetectResponse(progress=pb.Progress(
            tiles_done=job.tiles_done, tiles_expected=expected, nuclei_so_far=len(table),
            fraction=last_frac, stage="features")))
        if not spec.per_tile_results or (canvas and not _streams_chunks(spec)):
            for m in features_messages(table, spec.output_type, -1):
                if token.cancelled:
                    raise Cancelled(token.name)
                yield send(pb.DetectResponse(nuclei=m))
        # PAGET: the annotation's tissue regions (objectType "annotation"), after all nuclei
        for m in feature_batches(tissue, -1):
            if token.cancelled:
                raise Cancelled(token.name)
            yield send(pb.DetectResponse(nuclei=m))
        report = build_report(table, spec.narrative_backend, tissue if job.paget_mode else None)
        if token.cancelled:
            raise Cancelled(token.name)
        yield send(pb.DetectResponse(progress=pb.Progress(
            tiles_done=job.tiles_done, tiles_expected=expected, nuclei_so_far=len(table), fraction=1.0, stage="done")))
        yield pb.DetectResponse(report=report_message(report, table, spec.annotation_id, time.perf_counter() - t0))

    def _stream_job(self, runner: ModelRunner, spec: JobSpec, token: JobToken):
        """The job for a DetectTME stream: nucleus models over an annotation run the CLI's path
        on a canvas of the streamed tiles (``canvas.CanvasJob``); PAGET models, jobs without an
        annotation and annotations whose bounds exceed ``limits.max_canvas_pixels`` (a canvas of
        them would not fit in memory) segment tile by tile (``job.TileJob``: same model, maps →
        nuclei step and stitcher, but on the stream plan's tiles, ~95 % matched to the CLI)."""
        c = runner.model.contract
        if (runner.paget_mode is None and spec.geometry is not None and c.product == "nuclei"
                and c.instances == "maps" and canvas_fits(runner, spec, self.limits)):
            return CanvasJob(runner, spec, token, self.limits)
        return TileJob(runner, spec, token, self.limits)

    def _segment_canvas(self, job: CanvasJob, spec: JobSpec, token: JobToken, expected: int):
        """Run ``job.segment`` (the CLI's path on the canvas) in a worker thread and yield its
        progress (model tiles run / planned, after the receiving part of the bar) and, with
        ``per_tile_results``, its batches of final nuclei as they come. A cancelled job stops at
        the worker's next model tile."""
        events: queue.Queue = queue.Queue()

        def progress(run: int, total: int) -> None:
            events.put(("progress", run, total))

        sink = (lambda t: events.put(("nuclei", t))) if _streams_chunks(spec) else None

        def work() -> None:
            try:
                job.segment(progress, sink)
                events.put(("done",))
            except BaseException as e:  # handed to the handler thread
                events.put(("error", e))

        def msg(run: int, total: int):
            frac = RECEIVE_FRACTION + (0.99 - RECEIVE_FRACTION) * (min(run / total, 1.0) if total > 0 else 0.0)
            return pb.DetectResponse(progress=pb.Progress(
                tiles_done=job.tiles_done, tiles_expected=expected, nuclei_so_far=job.nuclei,
                fraction=frac, stage="segmenting"))

        threading.Thread(target=work, name=f"segtme-canvas-{spec.job_id or 'detect'}", daemon=True).start()
        yield msg(0, 1)
        while True:
            try:
                ev = events.get(timeout=_POLL_S)
            except queue.Empty:
                if token.cancelled:
                    raise Cancelled(token.name) from None
                continue
            if ev[0] == "done":
                return
            if ev[0] == "error":
                raise ev[1]
            if token.cancelled:
                raise Cancelled(token.name)
            if ev[0] == "progress":
                yield msg(ev[1], ev[2])
            else:
                for m in features_messages(ev[1], spec.output_type, -1):
                    yield pb.DetectResponse(nuclei=m)

    def _next_item(self, inbox: queue.Queue, token: JobToken, st: _Stream):
        idle = self.limits.idle_timeout_s
        while True:
            try:
                return inbox.get(timeout=_POLL_S)
            except queue.Empty:
                if token.cancelled:
                    raise Cancelled(token.name) from None
                if st.idle_for() > idle:
                    raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                       f"no message from the client for {idle:g} s (idle_timeout); stream closed") from None

    def _read_stream(self, request_iterator, st: _Stream, token: JobToken, inbox: queue.Queue) -> None:
        """Reader thread: hand the first message to the handler, wait for its job, then validate,
        decode and submit tiles; hand (tile, future) to the handler in order. Ends with ("end",)
        or ("error", RequestError)."""
        n = 0
        first = True
        try:
            st.waiting_since = time.monotonic()
            for msg in request_iterator:
                st.waiting_since = None
                if token.cancelled:
                    return
                if first:
                    first = False
                    inbox.put(("first", msg))
                    st.ready.wait()
                    if token.cancelled or st.job is None:
                        return
                    st.waiting_since = time.monotonic()
                    continue
                job = st.job
                kind = msg.WhichOneof("msg")
                if kind == "end":
                    break
                if kind == "config":
                    raise invalid(f"config: a JobConfig may only be the first message (got another after {n} tile(s))")
                if kind != "tile":
                    raise invalid(f"message {n + 2}: empty DetectRequest (set config, tile or end)")
                if n >= self.limits.max_tiles_per_stream:
                    raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                       f"tile[{n}]: more than max_tiles_per_stream ({self.limits.max_tiles_per_stream}) "
                                       "tiles in one stream")
                fname = f"tile[{n}]"
                dt = decode_tile(msg.tile, self.limits, n)
                del msg
                job.ledger.add(dt.index, dt.core, n)
                inbox.put(("tile", job.submit(dt, fname), fname))
                del dt
                n += 1
                st.waiting_since = time.monotonic()
            st.waiting_since = None
            inbox.put(("end",))
        except RequestError as e:
            # stop this job's compute at once (queued tiles dropped), then report the error
            st.waiting_since = None
            if st.job is not None:
                st.job.error = e
            token.cancel()
            inbox.put(("error", e))
        except Cancelled:
            pass
        except grpc.RpcError:
            token.cancel()  # the client went away
        except Exception as e:  # never let a reader crash silently
            if token.cancelled:
                return
            log.exception("reading tiles failed")
            inbox.put(("error", RequestError(grpc.StatusCode.INTERNAL, f"reading tiles failed: {type(e).__name__}: {e}")))
        finally:
            st.waiting_since = None


def _after_job() -> None:
    """Give freed memory back after a job (``runtime.release_free_memory`` when core provides
    it, else glibc ``malloc_trim``)."""
    from .memory import release_after_job

    release_after_job()
