"""The ``segtme.v1.SegTME`` gRPC service and the server around it.

``build_server(ServerConfig)`` loads each model once, starts one ``MicroBatcher`` per model, and
returns a started ``SegTMEServer`` with the SegTME service, the standard ``grpc.health.v1``
health service and server reflection, behind the optional bearer-token interceptor and TLS.

DetectTME (bidirectional stream): the first message is a ``JobConfig``; then ``Tile`` messages;
then an optional ``End`` (the client's half-close also ends the job). Per tile the server
decodes the pixels (PNG / JPEG / RAW_RGB; corrupt data refused), rescales from the tile's
resolution (``image_mpp * downsample``) to the model's working MPP, pads short edge tiles,
sends the tile through the shared batcher, post-processes it (``pipeline.nuclei_from_maps``),
maps coordinates back to full-resolution pixels (``x_full = tile.x + x_tile * downsample``) and
keeps the nuclei whose centroid lies in the tile's core (half-open) and inside the annotation.
Responses: ``Progress`` after every tile, ``NucleiBatch`` (after each tile when
``per_tile_results``, else in chunks at the end), a final ``Progress`` with fraction 1.0, then the
``TMEReport`` computed over all nuclei of the annotation.

PAGET models (``paget_s`` / ``paget_h``, arch ``paget_segformer``): the student's forward pass
goes through the same shared batcher (its output has only ``"sem"``); per tile
``paget.product.paget_result_from_prob`` gives the classified nuclei (same ownership rule), the
tissue region under each nucleus and the tile's tissue annotations, clipped to the tile's core.
PAGET-H also queues the tile on its instance source's batcher (a second model, e.g. the shipped
UperHoVer ``default``; see ``attach_instance_sources``). At the end the tissue pieces are merged
per class and clipped to the annotation, sent as ``NucleiBatch`` messages whose Features have
``objectType "annotation"`` (after the nuclei, before the report), and the report (taxonomy
paget13) includes the tissue area fractions and immune location.

Reading, decoding and submitting tiles happens on a per-stream reader thread, so a single
stream keeps several tiles in flight (bounded by ``max_inflight_tiles_per_stream``) and the
batcher can fill micro-batches from one client as well as from many.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Iterator

import grpc
import numpy as np

from .. import __version__
from ..errors import InputError, SegTMEError
from ..inference.nuclei import NucleiTable
from ..models.registry import LoadedModel
from ._proto.segtme.v1 import segtme_pb2 as pb
from ._proto.segtme.v1 import segtme_pb2_grpc as pb_grpc
from .batcher import Cancelled, JobToken, MicroBatcher
from .limits import ServerLimits, StreamSlots
from .tiles import (
    DecodedTile,
    JobSpec,
    RequestError,
    WorkTile,
    decode_pixels,
    decode_tile,
    invalid,
    parse_job_config,
    paget_instances,
    tile_nuclei,
    tile_paget,
    to_work_tile,
)

log = logging.getLogger("segtme.server")
job_log = logging.getLogger("segtme.server.jobs")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SegTME"].full_name
#: largest JSON payload of one NucleiBatch message (bytes); batches are split above this
NUCLEI_BATCH_BYTES = 1_000_000
_POLL_S = 0.05


# --------------------------------------------------------------------------- configuration
@dataclass
class ServerConfig:
    """Everything ``segtme serve`` configures.

    models: model specs for ``load_model`` (name, preset or .json/.safetensors path); the first
    is the default. max_batch: micro-batch size (1 = batching off); max_wait_ms: how long the
    batcher waits for a batch to fill; queue_size: tiles queued for the model (all streams).
    token / tls_cert / tls_key: optional bearer token and TLS PEM files. grace_s: how long
    in-flight calls may finish on shutdown.
    """

    host: str = "127.0.0.1"
    port: int = 50051
    models: list[str] = field(default_factory=lambda: ["default"])
    device: str = "auto"
    #: forward-pass arithmetic for every model (``LoadedModel.precision``: auto | fp32 | bf16)
    precision: str = "auto"
    max_batch: int = 8
    max_wait_ms: float = 10.0
    queue_size: int = 64
    limits: ServerLimits = field(default_factory=ServerLimits)
    token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    grace_s: float = 10.0
    warmup: bool = True
    allow_random: bool = False
    #: PAGET-H instance source (model spec) for every PAGET-H model; None = each config's
    #: ``extra["instance_source"]`` (default: the shipped ``default`` UperHoVer)
    instance_source: str | None = None


@dataclass
class ModelRunner:
    """One loaded model and its shared batcher.

    PAGET-H (panoptic PAGET) also needs a nucleus instance source: ``instance_runner`` is a
    second model (e.g. the shipped UperHoVer ``default``) with its own shared batcher — the same
    runner object when that model is also served — and ``instance_direct`` an instance source
    without a batched forward pass (the classical baseline), run in the job's thread."""

    model: LoadedModel
    batcher: MicroBatcher
    instance_runner: "ModelRunner | None" = None
    instance_direct: Any = None

    @property
    def cfg(self):
        return self.model.config

    @property
    def paget_mode(self) -> str | None:
        """"semantic" (PAGET-S) / "panoptic" (PAGET-H) for PAGET models, else None."""
        from ..paget.model import is_paget, paget_mode

        return paget_mode(self.cfg) if is_paget(self.cfg) else None

    def batchers(self) -> list[MicroBatcher]:
        """This runner's batcher and its instance source's (no duplicates)."""
        out = [self.batcher]
        if self.instance_runner is not None and self.instance_runner.batcher is not self.batcher:
            out.append(self.instance_runner.batcher)
        return out


def make_runner(model: LoadedModel, max_batch: int, max_wait_ms: float, queue_size: int) -> ModelRunner:
    from ..inference.engine import forward_tiles

    def run(batch: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        return forward_tiles(model, batch)

    b = MicroBatcher(run, max_batch=max_batch, max_wait_s=max_wait_ms / 1000.0, max_queue=queue_size,
                     name=model.config.name)
    return ModelRunner(model, b)


# --------------------------------------------------------------------------- job
@dataclass
class _Submitted:
    """One tile queued for the model(s): the student's work tile + future, and for PAGET-H with a
    batched instance source that model's own work tile + future."""

    wt: WorkTile
    fut: Future
    iwt: WorkTile | None = None
    ifut: Future | None = None


class _TileJob:
    """Per-job state shared by DetectTME and AnalyzeImage: tiles in flight, nuclei kept, and for
    PAGET models the tissue context of each nucleus and the tiles' tissue annotations."""

    def __init__(self, runner: ModelRunner, spec: JobSpec, token: JobToken, limits: ServerLimits):
        self.runner = runner
        self.spec = spec
        self.token = token
        self.limits = limits
        self.tables: list[NucleiTable] = []
        #: nuclei near a core edge, held for de-duplication: (table, centroid in own core, tile k)
        self.border: list[tuple[NucleiTable, np.ndarray, int]] = []
        self.cores: list[tuple[int, int, int, int]] = []
        self._border_table: NucleiTable | None = None
        self.paget_mode = runner.paget_mode
        self.nucleus_tissue: list[np.ndarray] = []
        self.tissue_pieces: list[dict] = []
        self.tiles_done = 0
        self.nuclei = 0
        self.inflight = threading.BoundedSemaphore(limits.max_inflight_tiles_per_stream)
        #: set by the reader thread when the client sent something invalid (the job stops at once)
        self.error: RequestError | None = None

    def submit(self, tile: DecodedTile, field_name: str) -> _Submitted:
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
        return _Submitted(wt, fut, iwt, ifut)

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

    def collect(self, sub: _Submitted, field_name: str) -> NucleiTable:
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
            # nuclei near a core edge (either side) wait for de-duplication (``border_table``);
            # the others are final now (streamed at once with ``per_tile_results``)
            t, held, held_in_core = tile_nuclei(wt, out, self.runner.cfg, self.spec.image_mpp, self.spec.geometry)
            self.border.append((held, held_in_core, len(self.cores)))
            self.cores.append(wt.tile.core)
            self.nuclei += len(t) + int(held_in_core.sum())  # progress count (held copies may still merge)
        else:
            inst = None
            if self.paget_mode == "panoptic":
                inst = self._instances(sub, iout, field_name)
            pt_ = tile_paget(wt, out, self.runner.cfg, self.spec.image_mpp, self.spec.geometry,
                             mode=self.paget_mode, inst=inst)
            t = pt_.table
            self.nucleus_tissue.append(pt_.nucleus_tissue)
            self.tissue_pieces.extend(pt_.tissue_features)
            self.nuclei += len(t)
        self.tables.append(t)
        self.tiles_done += 1
        return t

    def _instances(self, sub: _Submitted, iout: dict | None, field_name: str) -> np.ndarray:
        """PAGET-H instance map of a tile on the student's valid working grid."""
        h, w = sub.wt.valid
        r = self.runner
        if r.instance_runner is not None and iout is not None and sub.iwt is not None:
            return paget_instances(sub.iwt, iout, r.instance_runner.cfg, (h, w), sub.wt.s)
        if r.instance_direct is not None:
            from ..paget.product import source_instances

            try:
                inst, _ = source_instances(r.instance_direct, np.ascontiguousarray(sub.wt.padded[:h, :w]), r.cfg.mpp)
            except InputError as e:
                raise invalid(f"{field_name}: {e}") from None
            return inst
        raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"model {r.cfg.name!r} is PAGET-H but the server has no instance source for it")

    def border_table(self) -> NucleiTable:
        """The held-back nuclei near core edges, each nucleus once: two neighbouring tiles'
        copies (centroids within ``pipeline.BORDER_TOL_WORK`` of the shared edge, either side) merge when
        their polygons overlap with IoU >= 0.3 (``pipeline.dedupe_across_chunks``; the copy in
        its own tile's core wins); a copy outside every core of the job is dropped (the cores
        partition the annotation's bounds). Computed once, at the end of the job."""
        if self._border_table is not None:
            return self._border_table
        cfg = self.runner.cfg
        parts = [p for p in self.border if len(p[0])]
        if not parts:
            self._border_table = NucleiTable.empty(cfg.tax, self.spec.image_mpp)
            return self._border_table
        from ..pipeline import dedupe_across_chunks

        t = NucleiTable.concat([p[0] for p in parts], renumber=False)
        in_core = np.concatenate([p[1] for p in parts])
        tile_of = np.concatenate([np.full(len(p[0]), p[2]) for p in parts])
        keep = dedupe_across_chunks(t, tile_of, in_core)
        out = np.flatnonzero(keep & ~in_core)
        if len(out):
            cx, cy = t.centroid[out, 0], t.centroid[out, 1]
            hit = np.zeros(len(out), bool)
            for x0, y0, x1, y1 in self.cores:
                hit |= (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)
            keep[out[~hit]] = False
        self._border_table = t.subset(keep)
        return self._border_table

    def table(self) -> NucleiTable:
        """All nuclei of the job: each tile's final nuclei plus ``border_table``, numbered 1..N."""
        cfg = self.runner.cfg
        tables = list(self.tables)
        if self.paget_mode is None and self.border:
            tables.append(self.border_table())
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
        from ..paget.product import attach_tissue_context, merge_tissue_features

        merged = merge_tissue_features(self.tissue_pieces, clip=self.spec.geometry, mpp=self.spec.image_mpp)
        order = {c.name: c.id for c in self.runner.cfg.tax.classes}
        merged.sort(key=lambda f: order.get(f["properties"]["classification"]["name"], 1 << 30))
        ctx = np.concatenate(self.nucleus_tissue) if self.nucleus_tissue else np.zeros(0, np.int32)
        attach_tissue_context(table, ctx, merged)
        return merged

    def drop(self) -> None:
        """Drop this job's queued tiles from every batcher it uses."""
        for b in self.runner.batchers():
            b.drop(self.token)


def _features_messages(table: NucleiTable, output_type: str, tile_index: int) -> Iterator[pb.NucleiBatch]:
    """NucleiBatch messages (GeoJSON FeatureCollections, each at most ~NUCLEI_BATCH_BYTES)."""
    from ..export.geojson import nuclei_to_features

    if len(table) == 0:
        return
    yield from _feature_batches(nuclei_to_features(table, output_type), tile_index)


def _feature_batches(features, tile_index: int) -> Iterator[pb.NucleiBatch]:
    """Any GeoJSON Features (nuclei, or PAGET tissue annotations) as NucleiBatch messages of at
    most ~NUCLEI_BATCH_BYTES each (a single larger feature gets a message of its own)."""
    chunk: list[str] = []
    size = 0
    for f in features:
        s = json.dumps(f, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        if chunk and size + len(s) > NUCLEI_BATCH_BYTES:
            yield _batch(chunk, tile_index)
            chunk, size = [], 0
        chunk.append(s)
        size += len(s) + 1
    if chunk:
        yield _batch(chunk, tile_index)


def _batch(chunk: list[str], tile_index: int) -> pb.NucleiBatch:
    text = '{"type":"FeatureCollection","features":[' + ",".join(chunk) + "]}"
    return pb.NucleiBatch(tile_index=tile_index, features_geojson=text, count=len(chunk))


def _report_message(report: dict | None, table: NucleiTable, annotation_id: str, seconds: float) -> pb.TMEReport:
    msg = pb.TMEReport(nuclei_total=len(table), annotation_id=annotation_id, seconds=seconds)
    if report is None:
        return msg
    from ..tme.report import report_measurements

    msg.report_json = json.dumps(report, ensure_ascii=False, allow_nan=False, default=_json_default)
    narrative = report.get("narrative")
    msg.narrative = narrative if isinstance(narrative, str) else ""
    msg.tokens.extend(str(t) for t in (report.get("generated_tokens") or []))
    for k, v in report_measurements(report).items():
        try:
            fv = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(fv):
            msg.measurements[k] = fv
    return msg


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def build_report(table: NucleiTable, backend: str, tissue: list[dict] | None = None) -> dict:
    """TME report over all nuclei of the job (``tme.report.build_tme_report``).

    tissue: PAGET tissue annotations sent with the job (their number goes into the report).
    backend "none": the report without a narrative (computed with the template backend, whose
    text, verifier result and backend names are then removed). A backend the server cannot run
    (e.g. ``transformers`` without ``SEGTME_NARRATOR_MODEL``) -> FAILED_PRECONDITION."""
    from ..narrative.backends import NarrativeBackendError
    from ..tme.report import build_tme_report

    try:
        report = build_tme_report(table, narrative_backend="template" if backend == "none" else backend)
    except NarrativeBackendError as e:
        raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"narrative_backend {backend!r}: {e}") from None
    if backend == "none":
        report.update(narrative="", narrative_backend="none", narrative_backend_used="none", verifier=None)
    if tissue is not None:
        # PAGET: how many tissue annotations were sent (lets a client check it received them all)
        report["tissue_annotations_total"] = len(tissue)
    return _sanitise(report)


def _sanitise(o: Any) -> Any:
    """Replace non-finite floats by None so the report is strict JSON."""
    if isinstance(o, dict):
        return {str(k): _sanitise(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_sanitise(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(float(o)) else None
    if isinstance(o, np.generic):
        return o.item()
    return o


# --------------------------------------------------------------------------- servicer
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
        self._jobs_lock = threading.Lock()
        self.jobs_started = 0

    # ------------------------------------------------------------------ helpers
    def _model_name(self, name: str) -> str:
        return self.aliases.get(name, name)

    def _known_models(self) -> dict:
        d = {k: r.cfg for k, r in self.runners.items()}
        d.update({a: self.runners[n].cfg for a, n in self.aliases.items()})
        return d

    def _acquire_slot(self, context: grpc.ServicerContext) -> None:
        if not self.slots.acquire():
            job_log.info(json.dumps({"event": "refused", "status": "RESOURCE_EXHAUSTED", "peer": context.peer(),
                                     "reason": "max_concurrent_streams"}))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"server busy: {self.limits.max_concurrent_streams} concurrent jobs already running "
                          "(max_concurrent_streams); retry later")

    def _log_job(self, rpc: str, spec: JobSpec | None, job: _TileJob | None, status: str, t0: float,
                 context: grpc.ServicerContext, message: str = "") -> None:
        rec = {
            "event": "job", "rpc": rpc, "job_id": spec.job_id if spec else "", "model": spec.model if spec else "",
            "annotation_id": spec.annotation_id if spec else "", "status": status,
            "tiles": job.tiles_done if job else 0, "nuclei": job.nuclei if job else 0,
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
            mi = out.models.add(name=name, mpp=cfg.mpp, tile_size=cfg.tile_size, tile_overlap=cfg.tile_overlap,
                                description=desc)
            for c in tax.classes:
                mi.classes.add(id=c.id, name=c.name, color=list(c.color), role=c.role, level=c.level)
            mi.substitutions.extend(tax.substitutions())
        return out

    def Narrate(self, request, context):
        from ..tme.report import report_from_features

        try:
            features = json.loads(request.features_json or "")
        except json.JSONDecodeError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"features_json is not valid JSON: {e}")
        if not isinstance(features, dict):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "features_json must be a JSON object (the raw_data dict)")
        backend = request.narrative_backend or "template"
        from .tiles import NARRATIVE_BACKENDS

        if backend not in NARRATIVE_BACKENDS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"narrative_backend must be one of {list(NARRATIVE_BACKENDS)}, got {backend!r}")
        kw: dict[str, Any] = {"narrative_backend": backend}
        if request.taxonomy:
            from ..taxonomy import get_taxonomy

            try:
                kw["taxonomy"] = get_taxonomy(request.taxonomy)
            except (KeyError, ValueError) as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"taxonomy: {e}")
        from ..narrative.backends import NarrativeBackendError

        if backend == "none":
            kw["narrative_backend"] = "template"
        try:
            report = _sanitise(report_from_features(features, **kw))
        except NarrativeBackendError as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"narrative_backend {backend!r}: {e}")
        except (InputError, ValueError, KeyError, TypeError) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"features_json: {e}")
        if backend == "none":
            report.update(narrative="", narrative_backend="none", narrative_backend_used="none", verifier=None)
        narrative = report.get("narrative")
        return pb.NarrateResponse(
            report_json=json.dumps(report, ensure_ascii=False, allow_nan=False),
            narrative=narrative if isinstance(narrative, str) else "",
            tokens=[str(t) for t in report.get("generated_tokens") or []],
        )

    def AnalyzeImage(self, request, context):
        from ..inference.tiling import plan_stream_tiles

        t0 = time.perf_counter()
        self._acquire_slot(context)
        token = JobToken("analyze")
        context.add_callback(token.cancel)
        spec: JobSpec | None = None
        job: _TileJob | None = None
        status = "OK"
        try:
            cfg_msg = pb.JobConfig(model=request.model, image_mpp=request.image_mpp, output_type=request.output_type,
                                   narrative_backend=request.narrative_backend, job_id="analyze")
            spec = parse_job_config(cfg_msg, self.default_model, self._known_models())
            spec.model = self._model_name(spec.model)
            runner = self.runners[spec.model]
            if request.encoding not in (pb.PNG, pb.JPEG, pb.RAW_RGB):
                raise invalid(f"encoding must be PNG, JPEG or RAW_RGB, got {request.encoding}")
            if not request.pixels:
                raise invalid("pixels is empty")
            w, h = request.width, request.height
            if request.encoding != pb.RAW_RGB and (w == 0 and h == 0):
                w, h = _image_size(request.pixels, request.encoding)
            if w <= 0 or h <= 0:
                raise invalid(f"width/height must be > 0, got {w}x{h}")
            if w * h > self.limits.max_image_pixels:
                raise invalid(f"width*height = {w}x{h} exceeds max_image_pixels ({self.limits.max_image_pixels}); "
                              "stream it with DetectTME instead")
            rgb = decode_pixels(request.encoding, request.pixels, w, h, "image", self.limits.max_image_pixels)
            cfg = runner.cfg
            plan = plan_stream_tiles((0, 0, w, h), (w, h), spec.image_mpp, cfg.mpp, cfg.tile_size, cfg.tile_overlap)
            job = _TileJob(runner, spec, token, self.limits)
            pending: list[tuple[_Submitted, str]] = []
            for k, st in enumerate(plan):
                rx, ry, rw, rh = st.region
                dt = DecodedTile(k, rx, ry, 1.0, st.core, np.ascontiguousarray(rgb[ry:ry + rh, rx:rx + rw]))
                if len(pending) >= self.limits.max_inflight_tiles_per_stream:
                    job.collect(*pending.pop(0))
                pending.append((job.submit(dt, f"image tile {k}"), f"image tile {k}"))
            for p in pending:
                job.collect(*p)
            table = job.table()
            table.meta["image_size"] = [w, h]
            tissue = job.tissue(table)
            report = build_report(table, spec.narrative_backend, tissue if job.paget_mode else None)
            from ..export.geojson import dumps, nuclei_to_features

            # PAGET: tissue annotations (objectType "annotation") first, then the nuclei
            fc = {"type": "FeatureCollection", "features": tissue + nuclei_to_features(table, spec.output_type)}
            return pb.AnalyzeImageResponse(
                features_geojson=dumps(fc),
                report=_report_message(report, table, "", time.perf_counter() - t0))
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
            self._log_job("AnalyzeImage", spec, job, status, t0, context)

    # ------------------------------------------------------------------ DetectTME
    def DetectTME(self, request_iterator, context):
        t0 = time.perf_counter()
        self._acquire_slot(context)
        token = JobToken("detect")
        context.add_callback(token.cancel)  # runs when the RPC ends for any reason (cancel, deadline)
        state: dict[str, Any] = {"spec": None, "job": None}
        status, message = "OK", ""
        abort: tuple[grpc.StatusCode, str] | None = None
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        try:
            yield from self._detect(request_iterator, context, token, state, t0)
        except RequestError as e:
            abort = (e.code, e.message)
        except SegTMEError as e:
            abort = (grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except Cancelled:
            job = state["job"]
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
            job = state["job"]
            if job is not None:
                job.drop()
            self.slots.release()
            if abort is not None:
                status, message = abort[0].name, abort[1]
            self._log_job("DetectTME", state["spec"], job, status, t0, context, message)
        if abort is not None:
            context.abort(*abort)

    def _detect(self, request_iterator, context, token: JobToken, state: dict, t0: float):
        try:
            first = next(request_iterator)
        except StopIteration:
            raise invalid("config: the stream ended before the JobConfig message") from None
        kind = first.WhichOneof("msg")
        if kind != "config":
            raise invalid(f"config: the first message must be a JobConfig, got {kind or 'an empty message'}")
        spec = parse_job_config(first.config, self.default_model, self._known_models())
        spec.model = self._model_name(spec.model)
        state["spec"] = spec
        token.name = spec.job_id or "detect"
        runner = self.runners[spec.model]
        job = _TileJob(runner, spec, token, self.limits)
        state["job"] = job
        inbox: queue.Queue = queue.Queue()
        reader = threading.Thread(target=self._read_tiles, args=(request_iterator, job, inbox),
                                  name=f"segtme-reader-{token.name}", daemon=True)
        reader.start()
        expected = spec.expected_tiles
        while True:
            item = self._next_item(inbox, token)
            if item[0] == "end":
                break
            if item[0] == "error":
                raise item[1]
            _, sub, fname = item
            t = job.collect(sub, fname)
            if spec.per_tile_results and len(t):
                yield from (pb.DetectResponse(nuclei=m) for m in _features_messages(t, spec.output_type, sub.wt.tile.index))
            frac = min(job.tiles_done / expected, 0.99) if expected > 0 else 0.0
            yield pb.DetectResponse(progress=pb.Progress(
                tiles_done=job.tiles_done, tiles_expected=expected, nuclei_so_far=job.nuclei,
                fraction=frac, stage="segmenting"))
        if spec.per_tile_results and job.paget_mode is None:
            held = job.border_table()  # nuclei near tile edges, de-duplicated across tiles
            if len(held):
                yield from (pb.DetectResponse(nuclei=m) for m in _features_messages(held, spec.output_type, -1))
        table = job.table()
        tissue = job.tissue(table)
        yield pb.DetectResponse(progress=pb.Progress(
            tiles_done=job.tiles_done, tiles_expected=expected, nuclei_so_far=len(table),
            fraction=min(job.tiles_done / expected, 0.99) if expected > 0 else 0.0, stage="features"))
        if not spec.per_tile_results:
            for m in _features_messages(table, spec.output_type, -1):
                if token.cancelled:
                    raise Cancelled(token.name)
                yield pb.DetectResponse(nuclei=m)
        # PAGET: the annotation's tissue regions (objectType "annotation"), after all nuclei
        for m in _feature_batches(tissue, -1):
            if token.cancelled:
                raise Cancelled(token.name)
            yield pb.DetectResponse(nuclei=m)
        report = build_report(table, spec.narrative_backend, tissue if job.paget_mode else None)
        if token.cancelled:
            raise Cancelled(token.name)
        yield pb.DetectResponse(progress=pb.Progress(
            tiles_done=job.tiles_done, tiles_expected=expected, nuclei_so_far=len(table), fraction=1.0, stage="done"))
        yield pb.DetectResponse(report=_report_message(report, table, spec.annotation_id, time.perf_counter() - t0))

    def _next_item(self, inbox: queue.Queue, token: JobToken):
        while True:
            try:
                return inbox.get(timeout=_POLL_S)
            except queue.Empty:
                if token.cancelled:
                    raise Cancelled(token.name) from None

    def _read_tiles(self, request_iterator, job: _TileJob, inbox: queue.Queue) -> None:
        """Reader thread: validate, decode, rescale and submit tiles; hand (tile, future) to the
        response loop in order. Ends with ("end",) or ("error", RequestError)."""
        n = 0
        try:
            for msg in request_iterator:
                if job.token.cancelled:
                    return
                kind = msg.WhichOneof("msg")
                if kind == "end":
                    break
                if kind == "config":
                    raise invalid(f"config: a JobConfig may only be the first message (got another after {n} tile(s))")
                if kind != "tile":
                    raise invalid(f"message {n + 1}: empty DetectRequest (set config, tile or end)")
                if n >= self.limits.max_tiles_per_stream:
                    raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                       f"tile[{n}]: more than max_tiles_per_stream ({self.limits.max_tiles_per_stream}) "
                                       "tiles in one stream")
                fname = f"tile[{n}]"
                dt = decode_tile(msg.tile, self.limits, n)
                inbox.put(("tile", job.submit(dt, fname), fname))
                n += 1
            inbox.put(("end",))
        except RequestError as e:
            # stop this job's compute at once (queued tiles dropped), then report the error
            job.error = e
            job.token.cancel()
            inbox.put(("error", e))
        except Cancelled:
            pass
        except grpc.RpcError:
            job.token.cancel()  # the client went away
        except Exception as e:  # never let a reader crash silently
            if job.token.cancelled:
                return
            log.exception("reading tiles failed")
            inbox.put(("error", RequestError(grpc.StatusCode.INTERNAL, f"reading tiles failed: {type(e).__name__}: {e}")))


def _image_size(data: bytes, encoding: int) -> tuple[int, int]:
    import io

    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data), formats=["PNG" if encoding == pb.PNG else "JPEG"])
        return im.width, im.height
    except Exception as e:
        raise invalid(f"pixels: cannot read the image header ({type(e).__name__}: {e})") from None


# --------------------------------------------------------------------------- server
class SegTMEServer:
    """A running server: ``port``, ``stop(grace)``, ``wait()``."""

    def __init__(self, server: grpc.Server, port: int, servicer: SegTMEServicer, health, config: ServerConfig,
                 owns_runners: bool = True):
        self.owns_runners = owns_runners
        self.server = server
        self.port = port
        self.servicer = servicer
        self.health = health
        self.config = config
        self._stopped = threading.Event()

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop: health -> NOT_SERVING, refuse new calls, let running calls finish for
        ``grace`` seconds, then cancel them and shut the batchers down."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        from grpc_health.v1 import health_pb2

        self.health.enter_graceful_shutdown()
        for svc in ("", SERVICE_NAME):
            self.health.set(svc, health_pb2.HealthCheckResponse.NOT_SERVING)
        ev = self.server.stop(self.config.grace_s if grace is None else grace)
        ev.wait()
        if self.owns_runners:
            seen: set[int] = set()
            for r in self.servicer.runners.values():
                for b in r.batchers():
                    if id(b) not in seen:
                        seen.add(id(b))
                        b.close()
        log.info("server stopped")

    def wait(self) -> None:
        self.server.wait_for_termination()


def _warmup(lm: LoadedModel) -> None:
    from ..inference.engine import forward_tiles

    T = lm.config.tile_size
    forward_tiles(lm, [np.full((T, T, 3), 200, np.uint8)])


def attach_instance_sources(runners: dict[str, ModelRunner], aliases: dict[str, str], config: ServerConfig) -> None:
    """Give every PAGET-H runner its nucleus instance source (``cfg.extra["instance_source"]``,
    default ``"default"`` = the shipped UperHoVer; ``config.instance_source`` overrides).

    A source that is also served (by config name or by the spec given on the command line) shares
    that model's runner and batcher; another model spec is loaded once (shared by all PAGET-H
    runners naming it) with its own batcher; a model without a batched forward pass (the
    classical baseline, which also stands in for ``default`` when no default model is shipped)
    runs in each job's thread."""
    from ..paget.product import _resolve_instance_source

    extra: dict[str, ModelRunner] = {}
    for r in runners.values():
        if r.paget_mode != "panoptic" or r.instance_runner is not None or r.instance_direct is not None:
            continue
        spec = str(config.instance_source or r.cfg.extra.get("instance_source", "default"))
        name = aliases.get(spec, spec)
        if name in runners:
            src_runner = runners[name]
        elif spec in extra:
            src_runner = extra[spec]
        else:
            lm = _resolve_instance_source(spec, config.device, config.allow_random)
            lm.precision = config.precision
            if hasattr(lm.module, "predict_instances") or lm.config.arch == "classical":
                r.instance_direct = lm
                log.info("PAGET-H %s: instances from %s (%s), run per tile in the job thread", r.cfg.name,
                         lm.config.name, lm.source)
                continue
            src_runner = make_runner(lm, config.max_batch, config.max_wait_ms, config.queue_size)
            if config.warmup:
                _warmup(lm)
            extra[spec] = src_runner
        if src_runner.paget_mode is not None:
            raise SegTMEError(f"PAGET-H model {r.cfg.name!r}: the instance source {spec!r} is itself a PAGET model")
        r.instance_runner = src_runner
        log.info("PAGET-H %s: instances from %s (%s) through its shared batcher", r.cfg.name, src_runner.cfg.name,
                 src_runner.model.source)


def load_runners(config: ServerConfig) -> tuple[dict[str, ModelRunner], dict[str, str]]:
    """Load each model once (by spec) and start its batcher; PAGET-H models get their instance
    source (``attach_instance_sources``). Returns (runners by config name, aliases spec -> name)."""
    from ..models.registry import load_model

    runners: dict[str, ModelRunner] = {}
    aliases: dict[str, str] = {}
    for spec in config.models:
        lm = load_model(spec, config.device, allow_random=config.allow_random, precision=config.precision)
        name = lm.config.name
        if name in runners:
            raise SegTMEError(f"two models named {name!r}; give each model a distinct name")
        runners[name] = make_runner(lm, config.max_batch, config.max_wait_ms, config.queue_size)
        if str(spec) != name:
            aliases[str(spec)] = name
        if config.warmup:
            _warmup(lm)
        log.info("model %s loaded on %s (%s)", name, lm.device, lm.source)
    attach_instance_sources(runners, aliases, config)
    return runners, aliases


def build_server(config: ServerConfig, runners: dict[str, ModelRunner] | None = None,
                 aliases: dict[str, str] | None = None) -> SegTMEServer:
    """Create, bind and start the server (``config.port`` 0 = pick a free port)."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    from .auth import BearerTokenInterceptor, server_credentials

    owns = runners is None
    if runners is None:
        runners, aliases = load_runners(config)
    lim = config.limits
    servicer = SegTMEServicer(runners, lim, config.max_batch, aliases)
    # streams + unary calls + health; beyond this gRPC answers RESOURCE_EXHAUSTED instead of queueing
    workers = lim.max_concurrent_streams + 8
    interceptors = [BearerTokenInterceptor(config.token)] if config.token else []
    options = [
        ("grpc.max_receive_message_length", int(lim.max_message_bytes)),
        ("grpc.max_send_message_length", int(lim.max_message_bytes)),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="segtme-rpc"),
        interceptors=interceptors, options=options, maximum_concurrent_rpcs=workers,
    )
    pb_grpc.add_SegTMEServicer_to_server(servicer, server)
    hs = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    addr = f"{config.host}:{config.port}"
    if config.tls_cert or config.tls_key:
        if not (config.tls_cert and config.tls_key):
            raise InputError("TLS needs both --tls-cert and --tls-key")
        port = server.add_secure_port(addr, server_credentials(config.tls_cert, config.tls_key))
    else:
        port = server.add_insecure_port(addr)
    if port == 0:
        raise SegTMEError(f"cannot bind {addr}")
    server.start()
    for svc in ("", SERVICE_NAME):
        hs.set(svc, health_pb2.HealthCheckResponse.SERVING)
    log.info("segtme server %s listening on %s:%d (%s, token=%s, models=%s, max_batch=%d)", __version__, config.host,
             port, "TLS" if config.tls_cert else "plaintext", "yes" if config.token else "no", list(runners),
             config.max_batch)
    return SegTMEServer(server, port, servicer, hs, config, owns_runners=owns)
