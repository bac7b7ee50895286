"""The gRPC server, for real, on loopback inside pytest.

Model: the deterministic fixture model (``segtme.server.fixture_model``: local haematoxylin
density -> nuclei; see its docstring) saved to a temporary .json + .safetensors and loaded through
``load_model`` like any model. Its output depends only on a 5x5 neighbourhood, so streaming an
image as overlapping tiles must give the nuclei of analysing it whole (``pipeline.analyze``),
except within a few pixels of tile edges: the test checks the server's plumbing (rescaling,
padding, coordinates, the ownership rule, annotation clipping), not a network's tile context.

Image: a real 1000x1000 MoNuSeg image (0.2527 µm/px) from ../shared/data; the client reads each
region of ``plan_stream_tiles`` at the plan's downsample (~1.98, i.e. the model's 0.5 µm/px) as
QuPath does, with a non-rectangular annotation (a concave polygon with a notch).
"""

from __future__ import annotations

import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from conftest import load_monuseg
from segtme.inference.tiling import plan_stream_tiles
from segtme.server import fixture_model
from segtme.server._proto.segtme.v1 import segtme_pb2 as pb
from segtme.server._proto.segtme.v1 import segtme_pb2_grpc as pb_grpc
from segtme.server.limits import ServerLimits
from segtme.server.service import ServerConfig, build_server, make_runner

pytestmark = pytest.mark.data

#: concave annotation (full-res px): a pentagon-ish outline with a deep notch from the top
ANNOTATION = [[120, 80], [480, 80], [520, 420], [620, 90], [900, 140], [930, 880], [520, 930], [90, 800], [120, 80]]
MAX_MESSAGE = 3 * 1024 * 1024


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def image():
    rgb, _inst, mpp = load_monuseg(1)[0]
    return rgb, mpp


@pytest.fixture(scope="module")
def model_json(tmp_path_factory) -> Path:
    fixture_model.register()
    return fixture_model.save_fixture_model(tmp_path_factory.mktemp("fixture_model"))


@pytest.fixture(scope="module")
def server(model_json):
    cfg = ServerConfig(
        # bf16 forward (emulated where the CPU has no native bf16): its rounding differs between
        # overlapping tiles enough that two tiles place a seam nucleus's centroid on either side
        # of their shared edge, which the server's border de-duplication must then merge
        port=0, models=[str(model_json)], device="cpu", precision="bf16", max_batch=4, max_wait_ms=5,
        limits=ServerLimits(max_message_bytes=MAX_MESSAGE, max_tile_pixels=400 * 400, max_tiles_per_stream=200,
                            max_concurrent_streams=12, max_image_pixels=700 * 700),
        grace_s=2,
    )
    srv = build_server(cfg)
    yield srv
    srv.stop(1)


@pytest.fixture(scope="module")
def stub(server):
    ch = grpc.insecure_channel(f"127.0.0.1:{server.port}",
                               options=[("grpc.max_send_message_length", 16 * 1024 * 1024),
                                        ("grpc.max_receive_message_length", 16 * 1024 * 1024)])
    yield pb_grpc.SegTMEStub(ch)
    ch.close()


@pytest.fixture(scope="module")
def slow_server(server, model_json):
    """Second server sharing the loaded model but with its own slow batcher (batch size 1, 50 ms
    extra per batch) and tight limits: lets tests observe queued tiles, cancellation, deadlines."""
    lm = server.servicer.runners["fixture"].model
    runner = make_runner(lm, max_batch=1, max_wait_ms=0, queue_size=64)
    fast = runner.batcher.fn

    def slow(batch):
        time.sleep(0.05)
        return fast(batch)

    runner.batcher.fn = slow
    cfg = ServerConfig(port=0, max_batch=1,
                       limits=ServerLimits(max_tiles_per_stream=40, max_concurrent_streams=1,
                                           max_inflight_tiles_per_stream=32), grace_s=1)
    srv = build_server(cfg, runners={"fixture": runner})
    yield srv
    srv.stop(1)
    runner.batcher.close()


def one_megapixel_server(model: str):
    """A gRPC server on a free port serving ``model`` (a name or config path) on the CPU, with
    small batches and tiles / images up to 1100² px (the PAGET stream tests' server)."""
    return build_server(ServerConfig(port=0, models=[str(model)], device="cpu", max_batch=4, max_wait_ms=5,
                                     limits=ServerLimits(max_tile_pixels=1100 * 1100, max_image_pixels=1100 * 1100),
                                     grace_s=2))


def _stub(port: int):
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    return pb_grpc.SegTMEStub(ch), ch


# --------------------------------------------------------------------------- client helpers
def annotation_geojson(ring=ANNOTATION) -> str:
    return json.dumps({"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}})


def encode(rgb: np.ndarray, encoding: int = pb.PNG) -> bytes:
    if encoding == pb.RAW_RGB:
        return np.ascontiguousarray(rgb).tobytes()
    b = io.BytesIO()
    Image.fromarray(rgb).save(b, "PNG" if encoding == pb.PNG else "JPEG", quality=95)
    return b.getvalue()


def make_tiles(rgb: np.ndarray, mpp: float, model_mpp: float, tile: int, overlap: int, bounds,
               encoding: int = pb.PNG) -> list[pb.Tile]:
    """Tiles of the streaming plan, each region read at the plan's downsample d (the client's job)."""
    from segtme.resample import resample

    H, W = rgb.shape[:2]
    plan = plan_stream_tiles(bounds, (W, H), mpp, model_mpp, tile, overlap)
    tiles = []
    for k, t in enumerate(plan):
        rx, ry, rw, rh = t.region
        s = 1.0 / t.d
        small = resample(rgb[ry:ry + rh, rx:rx + rw], s)
        x0, y0, x1, y1 = t.core
        tiles.append(pb.Tile(index=k, x=rx, y=ry, downsample=t.d, width=small.shape[1], height=small.shape[0],
                             core=pb.Rect(x=x0, y=y0, width=x1 - x0, height=y1 - y0), encoding=encoding,
                             pixels=encode(small, encoding)))
    return tiles


def distinct_tiles(tiles, n: int) -> list[pb.Tile]:
    """``n`` tiles cycling through ``tiles``, each repeat moved 100000 px right (own index and a
    core that overlaps no other), so a long stream can be built from a few real tiles."""
    out = []
    for k in range(n):
        t = pb.Tile()
        t.CopyFrom(tiles[k % len(tiles)])
        shift = 100_000 * (k // len(tiles))
        t.index, t.x = k, t.x + shift
        t.core.x += shift
        out.append(t)
    return out


def requests(config: pb.JobConfig | None, tiles, end: bool = True, delay: float = 0.0):
    if config is not None:
        yield pb.DetectRequest(config=config)
    for t in tiles:
        if delay:
            time.sleep(delay)
        yield pb.DetectRequest(tile=t)
    if end:
        yield pb.DetectRequest(end=pb.End())


def run_job(stub, config, tiles, **kw):
    """Stream a job; returns (features, progress messages, report, all responses)."""
    feats, progress, report, order = [], [], None, []
    for r in stub.DetectTME(requests(config, tiles), **kw):
        kind = r.WhichOneof("msg")
        order.append(kind)
        if kind == "nuclei":
            fc = json.loads(r.nuclei.features_geojson)
            assert fc["type"] == "FeatureCollection" and len(fc["features"]) == r.nuclei.count
            feats += fc["features"]
        elif kind == "progress":
            progress.append(r.progress)
        else:
            report = r.report
    return feats, progress, report, order


def polygons_of(features):
    from shapely.geometry import shape

    return [shape(f["nucleusGeometry"] if "nucleusGeometry" in f else f["geometry"]) for f in features]


def match_fraction(a, b) -> float:
    """Fraction of polygons in ``a`` with a partner in ``b`` of IoU >= 0.5."""
    from shapely import STRtree

    if not a:
        return 1.0
    tree = STRtree(b)
    hit = 0
    for p in a:
        for j in tree.query(p, predicate="intersects"):
            q = b[j]
            if p.intersection(q).area / p.union(q).area >= 0.5:
                hit += 1
                break
    return hit / len(a)


@pytest.fixture(scope="module")
def model_cfg(server):
    return server.servicer.runners["fixture"].cfg


@pytest.fixture(scope="module")
def ann_tiles(image, model_cfg):
    from shapely.geometry import Polygon

    rgb, mpp = image
    x0, y0, x1, y1 = (int(v) for v in Polygon(ANNOTATION).bounds)
    return make_tiles(rgb, mpp, model_cfg.mpp, model_cfg.tile_size, model_cfg.tile_overlap, (x0, y0, x1 - x0, y1 - y0))


@pytest.fixture(scope="module")
def detect_result(stub, image, ann_tiles):
    rgb, mpp = image
    cfg = pb.JobConfig(image_mpp=mpp, annotation_geojson=annotation_geojson(), per_tile_results=True,
                       job_id="match", expected_tiles=len(ann_tiles), annotation_id="ann-1")
    return run_job(stub, cfg, ann_tiles, timeout=120)


# --------------------------------------------------------------------------- tests
def test_info_models_health_reflection(stub, server, model_cfg) -> None:
    info = stub.GetInfo(pb.GetInfoRequest())
    assert info.models_loaded == ["fixture"] and info.default_model == "fixture" and info.device == "cpu"
    assert info.max_batch == 4 and info.limits.max_tile_pixels == 400 * 400
    models = stub.ListModels(pb.ListModelsRequest()).models
    assert [m.name for m in models] == ["fixture"]
    m = models[0]
    assert m.mpp == pytest.approx(model_cfg.mpp) and m.tile_size == model_cfg.tile_size
    assert [c.name for c in m.classes] == model_cfg.tax.names
    assert list(m.classes[1].color) == list(model_cfg.tax.classes[1].color)
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    ch = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    h = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="segtme.v1.SegTME"))
    assert h.status == health_pb2.HealthCheckResponse.SERVING
    rs = reflection_pb2_grpc.ServerReflectionStub(ch)
    resp = next(rs.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in resp.list_services_response.service}
    assert {"segtme.v1.SegTME", "grpc.health.v1.Health"} <= names
    ch.close()


def test_streamed_tiles_match_whole_image_analysis(detect_result, image, server, ann_tiles) -> None:
    import shapely
    from shapely.geometry import Polygon

    from segtme.pipeline import analyze

    feats, progress, report, order = detect_result
    rgb, mpp = image
    ann = Polygon(ANNOTATION)
    # reference: the whole image analysed at once, nuclei whose centroid is inside the annotation
    ref = analyze(rgb, mpp, model=server.servicer.runners["fixture"].model, narrative_backend="template")
    t = ref.nuclei
    inside = shapely.intersects_xy(ann, t.centroid[:, 0], t.centroid[:, 1])
    from segtme.export.geojson import nuclei_to_features

    ref_polys = polygons_of(nuclei_to_features(t.subset(inside)))
    got = polygons_of(feats)
    assert len(ref_polys) > 150, "the fixture model should find a realistic number of nuclei"
    assert len(got) == report.nuclei_total
    assert match_fraction(ref_polys, got) >= 0.95
    assert match_fraction(got, ref_polys) >= 0.95
    assert abs(len(got) - len(ref_polys)) <= 0.05 * len(ref_polys)
    # no duplicates along seams: no two streamed nuclei overlap substantially
    tree = shapely.STRtree(got)
    for i, p in enumerate(got):
        for j in tree.query(p, predicate="intersects"):
            if j != i:
                assert p.intersection(got[j]).area < 0.2 * min(p.area, got[j].area), f"duplicate nuclei {i}, {j}"
    # none outside the annotation (the server tests the mask centroid; the polygon centroid may
    # differ from it by a fraction of a pixel)
    cents = np.array([[p.centroid.x, p.centroid.y] for p in got])
    assert shapely.intersects_xy(ann.buffer(1.5), cents[:, 0], cents[:, 1]).all()
    # per-tile batches carry the tile index; every feature is a QuPath detection
    assert {f["properties"]["objectType"] for f in feats} == {"detection"}


def test_progress_and_report(detect_result, ann_tiles) -> None:
    feats, progress, report, order = detect_result
    assert order[-1] == "report" and order[-2] == "progress"
    fr = [p.fraction for p in progress]
    assert fr[-1] == 1.0 and all(f < 1.0 for f in fr[:-1]) and fr == sorted(fr)
    assert progress[-1].stage == "done" and progress[-1].tiles_done == len(ann_tiles)
    assert max(p.tiles_done for p in progress) == len(ann_tiles)
    assert report.annotation_id == "ann-1" and report.nuclei_total == len(feats)
    rep = json.loads(report.report_json)
    assert {"raw_data", "interpretation", "generated_tokens", "narrative", "verifier"} <= set(rep)
    assert list(report.tokens) == rep["generated_tokens"] and report.narrative == rep["narrative"]
    assert report.narrative and len(report.measurements) > 0
    raw = rep["raw_data"]
    assert raw["N_total"] == report.nuclei_total
    assert sum(raw[f"N_{c}"] for c in ("Neoplastic", "Inflammatory", "Connective", "Dead", "Epithelial")) == raw["N_total"]


def test_cells_batched_at_end_and_raw_rgb_give_same_nuclei(stub, image, model_cfg, detect_result) -> None:
    rgb, mpp = image
    bounds = (300, 300, 300, 260)
    tiles = make_tiles(rgb, mpp, model_cfg.mpp, model_cfg.tile_size, model_cfg.tile_overlap, bounds, pb.RAW_RGB)
    ring = [[300, 300], [600, 300], [600, 560], [300, 560], [300, 300]]
    cfg = pb.JobConfig(image_mpp=mpp, annotation_geojson=annotation_geojson(ring), output_type=pb.CELLS)
    feats, _, report, order = run_job(stub, cfg, tiles, timeout=60)
    assert {f["properties"]["objectType"] for f in feats} == {"cell"} and all("nucleusGeometry" in f for f in feats)
    # not per tile: all nuclei come after the last "segmenting" progress
    assert order.index("nuclei") > max(i for i, k in enumerate(order) if k == "progress" and i < order.index("nuclei"))
    # the same nuclei as the big job has inside this box
    from shapely.geometry import box

    b = box(300, 300, 600, 560)
    big = [p for p in polygons_of(detect_result[0]) if b.contains(p.centroid)]
    mine = polygons_of(feats)
    assert len(mine) == report.nuclei_total and len(mine) > 10
    # the two jobs' plans start at different full-res origins, so their tiles sample the image on
    # grids offset by a fraction of a tile px (d ~ 1.98; the client's anti-aliased resampling is
    # phase-sensitive): small outlines move by up to ~1 px, which costs a few IoU >= 0.5 matches
    assert match_fraction(big, mine) >= 0.9 and match_fraction(mine, big) >= 0.9


def test_jpeg_tiles(stub, image, model_cfg, detect_result) -> None:
    """JPEG tiles (lossy, quality 95) give essentially the same nuclei as the PNG job."""
    from shapely.geometry import box

    rgb, mpp = image
    tiles = make_tiles(rgb, mpp, model_cfg.mpp, model_cfg.tile_size, model_cfg.tile_overlap, (300, 300, 300, 260),
                       pb.JPEG)
    ring = [[300, 300], [600, 300], [600, 560], [300, 560], [300, 300]]
    feats, _, report, _ = run_job(stub, pb.JobConfig(image_mpp=mpp, annotation_geojson=annotation_geojson(ring)), tiles,
                                  timeout=60)
    big = [p for p in polygons_of(detect_result[0]) if box(300, 300, 600, 560).contains(p.centroid)]
    assert report.nuclei_total == len(feats) > 10
    assert match_fraction(big, polygons_of(feats)) >= 0.8


def test_analyze_image_and_narrate(stub, image) -> None:
    rgb, mpp = image
    crop = np.ascontiguousarray(rgb[100:500, 200:600])
    r = stub.AnalyzeImage(pb.AnalyzeImageRequest(image_mpp=mpp, encoding=pb.PNG, pixels=encode(crop)), timeout=60)
    fc = json.loads(r.features_geojson)
    assert len(fc["features"]) == r.report.nuclei_total > 20
    rep = json.loads(r.report.report_json)
    n = stub.Narrate(pb.NarrateRequest(features_json=json.dumps(rep["raw_data"])), timeout=30)
    assert list(n.tokens) == rep["generated_tokens"] and n.narrative == rep["narrative"]
    none = stub.Narrate(pb.NarrateRequest(features_json=json.dumps(rep["raw_data"]), narrative_backend="none"))
    assert none.narrative == "" and list(none.tokens) == rep["generated_tokens"]
    with pytest.raises(grpc.RpcError) as e:
        stub.Narrate(pb.NarrateRequest(features_json="[1, 2"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "features_json" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        stub.AnalyzeImage(pb.AnalyzeImageRequest(image_mpp=mpp, encoding=pb.PNG, pixels=encode(rgb)))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_image_pixels" in e.value.details()


def _good_tile(ann_tiles) -> pb.Tile:
    t = pb.Tile()
    t.CopyFrom(ann_tiles[0])
    return t


def _malformed_cases(ann_tiles, mpp):
    cfg = pb.JobConfig(image_mpp=mpp)
    corrupt = _good_tile(ann_tiles)
    corrupt.pixels = corrupt.pixels[:40] + b"\x00garbage" * 10
    neg = _good_tile(ann_tiles)
    neg.downsample = -2.0
    big = _good_tile(ann_tiles)
    big.width, big.height, big.encoding = 500, 500, pb.RAW_RGB
    big.pixels = bytes(500 * 500 * 3)
    wrong_size = _good_tile(ann_tiles)
    wrong_size.width += 3
    no_core = _good_tile(ann_tiles)
    no_core.ClearField("core")
    huge = _good_tile(ann_tiles)
    huge.encoding, huge.width, huge.height = pb.RAW_RGB, 1100, 1000
    huge.pixels = bytes(1100 * 1000 * 3)  # 3.3 MB > max_message_bytes
    return {
        "missing config": ([pb.DetectRequest(tile=ann_tiles[0])], grpc.StatusCode.INVALID_ARGUMENT, "config"),
        "empty stream": ([], grpc.StatusCode.INVALID_ARGUMENT, "config"),
        "config twice": ([pb.DetectRequest(config=cfg), pb.DetectRequest(tile=ann_tiles[0]),
                          pb.DetectRequest(config=cfg)], grpc.StatusCode.INVALID_ARGUMENT, "config"),
        "corrupt png": ([pb.DetectRequest(config=cfg), pb.DetectRequest(tile=corrupt)],
                        grpc.StatusCode.INVALID_ARGUMENT, "tile[0].pixels"),
        "negative downsample": ([pb.DetectRequest(config=cfg), pb.DetectRequest(tile=neg)],
                                grpc.StatusCode.INVALID_ARGUMENT, "tile[0].downsample"),
        "oversized tile": ([pb.DetectRequest(config=cfg), pb.DetectRequest(tile=big)],
                           grpc.StatusCode.INVALID_ARGUMENT, "tile[0].width*height"),
        "size mismatch": ([pb.DetectRequest(config=cfg), pb.DetectRequest(tile=wrong_size)],
                          grpc.StatusCode.INVALID_ARGUMENT, "tile[0].pixels"),
        "missing core": ([pb.DetectRequest(config=cfg), pb.DetectRequest(tile=no_core)],
                         grpc.StatusCode.INVALID_ARGUMENT, "tile[0].core"),
        "message too large": ([pb.DetectRequest(config=cfg), pb.DetectRequest(tile=huge)],
                              grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
        "bad mpp": ([pb.DetectRequest(config=pb.JobConfig(image_mpp=-0.25))],
                    grpc.StatusCode.INVALID_ARGUMENT, "config.image_mpp"),
        "unknown model": ([pb.DetectRequest(config=pb.JobConfig(image_mpp=mpp, model="nope"))],
                          grpc.StatusCode.NOT_FOUND, "config.model"),
        "bad annotation": ([pb.DetectRequest(config=pb.JobConfig(image_mpp=mpp, annotation_geojson='{"type":"Point","coordinates":[1,2]}'))],
                           grpc.StatusCode.INVALID_ARGUMENT, "config.annotation_geojson"),
        "bad backend": ([pb.DetectRequest(config=pb.JobConfig(image_mpp=mpp, narrative_backend="gpt-99"))],
                        grpc.StatusCode.INVALID_ARGUMENT, "config.narrative_backend"),
    }


def test_malformed_messages_get_clear_status(stub, ann_tiles, image) -> None:
    _, mpp = image
    for name, (msgs, code, field) in _malformed_cases(ann_tiles, mpp).items():
        with pytest.raises(grpc.RpcError) as e:
            list(stub.DetectTME(iter(msgs), timeout=30))
        assert e.value.code() == code, f"{name}: {e.value.code()} {e.value.details()}"
        assert field in (e.value.details() or ""), f"{name}: {e.value.details()}"


def test_eight_concurrent_clients_and_one_failing_stream(stub, image, model_cfg, ann_tiles) -> None:
    rgb, mpp = image
    boxes = [(50 + 90 * k, 80 + 60 * (k % 3), 260, 240) for k in range(8)]
    jobs = []
    for b in boxes:
        x, y, w, h = b
        ring = [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]
        tiles = make_tiles(rgb, mpp, model_cfg.mpp, model_cfg.tile_size, model_cfg.tile_overlap, b)
        jobs.append((pb.JobConfig(image_mpp=mpp, annotation_geojson=annotation_geojson(ring), job_id=f"c{len(jobs)}"), tiles))
    # reference results, one client after another
    serial = [len(run_job(stub, c, t, timeout=60)[0]) for c, t in jobs]
    bad = _good_tile(ann_tiles)
    bad.pixels = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64

    def failing():
        tiles = list(ann_tiles[:3]) + [bad] + list(ann_tiles[3:6])
        try:
            run_job(stub, pb.JobConfig(image_mpp=mpp, job_id="bad"), tiles, timeout=60)
        except grpc.RpcError as e:
            return e.code()
        return grpc.StatusCode.OK

    with ThreadPoolExecutor(9) as ex:
        bad_f = ex.submit(failing)
        futs = [ex.submit(run_job, stub, c, t, timeout=120) for c, t in jobs]
        together = [len(f.result()[0]) for f in futs]
        assert bad_f.result() == grpc.StatusCode.INVALID_ARGUMENT
    assert together == serial and all(n > 0 for n in together)


def test_concurrent_stream_limit_and_tiles_per_stream(slow_server, ann_tiles, image) -> None:
    _, mpp = image
    stub, ch = _stub(slow_server.port)
    hold = threading.Event()

    def held():
        yield pb.DetectRequest(config=pb.JobConfig(image_mpp=mpp))
        hold.wait(10)

    first = stub.DetectTME(held())
    try:
        _wait(lambda: slow_server.servicer.slots.in_use == 1)
        with pytest.raises(grpc.RpcError) as e:
            list(stub.DetectTME(requests(pb.JobConfig(image_mpp=mpp), ann_tiles[:1]), timeout=10))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_concurrent_streams" in e.value.details()
    finally:
        hold.set()
        first.cancel()
    _wait(lambda: slow_server.servicer.slots.in_use == 0)
    many = distinct_tiles(ann_tiles, 41)
    with pytest.raises(grpc.RpcError) as e:
        list(stub.DetectTME(requests(pb.JobConfig(image_mpp=mpp), many), timeout=60))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_tiles_per_stream" in e.value.details()
    _wait(lambda: slow_server.servicer.slots.in_use == 0)
    ch.close()


def _wait(cond, timeout: float = 10.0) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


def _assert_compute_stopped(srv) -> None:
    """After a cancelled/expired job: slot freed, model queue empty, no more tiles processed."""
    runner = srv.servicer.runners["fixture"]
    _wait(lambda: srv.servicer.slots.in_use == 0 and runner.batcher.queued == 0)
    n0 = runner.batcher.stats.items
    time.sleep(0.3)
    assert runner.batcher.stats.items <= n0 + 1  # at most the batch that was already running


def test_cancellation_mid_stream_stops_compute(slow_server, ann_tiles, image) -> None:
    _, mpp = image
    stub, ch = _stub(slow_server.port)
    runner = slow_server.servicer.runners["fixture"]
    items0, dropped0 = runner.batcher.stats.items, runner.batcher.stats.dropped
    tiles = ann_tiles[:30]
    call = stub.DetectTME(requests(pb.JobConfig(image_mpp=mpp, job_id="to-cancel"), tiles, end=False))
    got = 0
    for r in call:
        if r.WhichOneof("msg") == "progress":
            got += 1
            if got == 2:
                _wait(lambda: runner.batcher.queued >= 5)  # tiles are waiting for the model
                call.cancel()
                break
    _assert_compute_stopped(slow_server)
    assert runner.batcher.stats.dropped > dropped0
    assert runner.batcher.stats.items - items0 < len(tiles)
    ch.close()


def test_deadline_expiry(slow_server, ann_tiles, image) -> None:
    _, mpp = image
    stub, ch = _stub(slow_server.port)
    runner = slow_server.servicer.runners["fixture"]
    items0 = runner.batcher.stats.items
    with pytest.raises(grpc.RpcError) as e:
        list(stub.DetectTME(requests(pb.JobConfig(image_mpp=mpp, job_id="deadline"), ann_tiles[:30]), timeout=0.6))
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _assert_compute_stopped(slow_server)
    assert runner.batcher.stats.items - items0 < 30
    ch.close()


def test_auth_token_required(server) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    cfg = ServerConfig(port=0, token="s3cret-token", limits=ServerLimits(max_concurrent_streams=2))
    srv = build_server(cfg, runners=server.servicer.runners)
    try:
        ch = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
        stub = pb_grpc.SegTMEStub(ch)
        for md in (None, [("authorization", "Bearer wrong")], [("authorization", "s3cret-token")]):
            with pytest.raises(grpc.RpcError) as e:
                stub.GetInfo(pb.GetInfoRequest(), metadata=md, timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            list(stub.DetectTME(iter([pb.DetectRequest(config=pb.JobConfig(image_mpp=0.25))]), timeout=10))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = stub.GetInfo(pb.GetInfoRequest(), metadata=[("authorization", "Bearer s3cret-token")], timeout=10)
        assert ok.default_model == "fixture"
        ch.close()
    finally:
        srv.stop(0)


def test_server_healthy_after_everything(stub, server, image, model_cfg) -> None:
    """Runs last: after malformed input, cancellations, deadlines and concurrency, the server
    answers health checks and still analyses correctly; no job slot leaked."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    _wait(lambda: server.servicer.slots.in_use == 0)
    # no stream reader thread outlives its job
    _wait(lambda: not [t for t in threading.enumerate() if t.name.startswith("segtme-reader")])
    ch = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest()).status == \
        health_pb2.HealthCheckResponse.SERVING
    ch.close()
    rgb, mpp = image
    tiles = make_tiles(rgb, mpp, model_cfg.mpp, model_cfg.tile_size, model_cfg.tile_overlap, (0, 0, 200, 200))
    feats, _, report, _ = run_job(stub, pb.JobConfig(image_mpp=mpp), tiles, timeout=60)
    assert report.nuclei_total == len(feats) > 0


def test_border_nuclei_reported_by_two_tiles_are_merged() -> None:
    """Unit check of the job's seam rule (the one stitcher, ``inference.stitch.Stitcher``, fed by
    the job): one nucleus seen by two neighbouring tiles, each placing its centroid inside its own
    core (the case that once came back twice), is kept once; a held nucleus outside every core of
    the job is dropped; a tile's own two near-edge nuclei are never merged."""
    from types import SimpleNamespace

    from segtme.inference.nuclei import build_nuclei_table
    from segtme.server.batcher import JobToken
    from segtme.server.job import TileJob
    from segtme.taxonomy import get_taxonomy

    tax = get_taxonomy("pannuke6")

    def table(*boxes):  # nuclei as filled squares (x0, y0, x1, y1), full-res px
        inst = np.zeros((120, 220), np.int32)
        for k, (x0, y0, x1, y1) in enumerate(boxes, 1):
            inst[y0:y1, x0:x1] = k
        return build_nuclei_table(inst, tax, mpp=0.5)

    runner = SimpleNamespace(cfg=SimpleNamespace(tax=tax, name="t", mpp=0.5), paget_mode=None)
    spec = SimpleNamespace(image_mpp=0.5, job_id="j", annotation_id="a", per_tile_results=False)
    job = TileJob(runner, spec, JobToken("t"), ServerLimits())
    a = table((40, 40, 50, 50), (93, 40, 106, 52), (96, 70, 102, 76))  # tile 0: deep, seam, near-edge
    b = table((94, 40, 107, 52), (196, 101, 204, 112))                  # tile 1: the seam nucleus, 1 px on; one below
    assert a.centroid[1, 0] < 100 <= b.centroid[0, 0]  # each copy in its own tile's core
    cores = [(0, 0, 100, 100), (100, 0, 200, 100)]
    for t, core in zip((a, b), cores):
        job.stitcher.add(t, core, 1.0)
        job.cores.append(core)
    t = job.table()
    assert len(job.border_table()) == 2  # the seam nucleus once + the near-edge one; the outside one dropped
    assert len(t) == 3 and t.ids.tolist() == [1, 2, 3]
    xs = sorted(t.centroid[:, 0].round(1).tolist())
    assert xs == [45.0, 99.0, 99.5]  # deep nucleus, the second near-edge one, the seam nucleus once (tile 0's)
