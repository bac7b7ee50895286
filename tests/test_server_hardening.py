"""Hostile-input regressions of issue #13 (server items), on the real gRPC server over loopback.

Model: the deterministic fixture model (see test_server_detect.py), tiles of a real MoNuSeg image.
Each test states which finding of the hostile test it pins:

2. deeply nested JSON (Narrate payload, annotation_geojson) -> INVALID_ARGUMENT, no traceback;
3. the job's whole configuration is checked on the first message (no tile is segmented before a
   narrative backend the server cannot run is refused);
4. a repeated tile index, overlapping cores, a negative index other than -1 -> INVALID_ARGUMENT;
5. ``segtme serve`` on a busy port / an invalid --host -> one line, exit 2, before the model loads;
7. idle streams are closed (they cannot hold every job slot); during the shutdown grace period
   health answers NOT_SERVING and new jobs get UNAVAILABLE while running jobs finish;
8. nothing of a finished job stays referenced by the server (memory: see scripts/soak_server.py).
"""

from __future__ import annotations

import gc
import json
import logging
import socket
import threading
import time

import grpc
import pytest

from segtme.server._proto.segtme.v1 import segtme_pb2 as pb
from segtme.server._proto.segtme.v1 import segtme_pb2_grpc as pb_grpc
from segtme.server.limits import ServerLimits
from segtme.server.service import ServerConfig, build_server, make_runner
from test_server_detect import (  # noqa: F401  (module fixtures)
    _stub,
    _wait,
    ann_tiles,
    image,
    model_cfg,
    model_json,
    requests,
    run_job,
    server,
    stub,
)

pytestmark = pytest.mark.data


def _code(fn):
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details() or ""


def _no_tracebacks(caplog) -> None:
    bad = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not bad, f"traceback logged: {bad[0].getMessage()}"


# --------------------------------------------------------------------------- 2. nested JSON
def test_deeply_nested_json_is_invalid_argument(stub, image, caplog) -> None:
    _, mpp = image
    caplog.set_level(logging.INFO)
    deep = "[" * 100_000 + "]" * 100_000
    code, msg = _code(lambda: stub.Narrate(pb.NarrateRequest(features_json=deep), timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "features_json" in msg and "nested" in msg
    deep_obj = '{"a":' * 5000 + "1" + "}" * 5000
    code, msg = _code(lambda: stub.Narrate(pb.NarrateRequest(features_json=deep_obj), timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "nested" in msg
    # an annotation nested 5000 levels (inside "coordinates"), and one whose nesting hides in a property
    geo = '{"type":"Polygon","coordinates":' + "[" * 5000 + "]" * 5000 + "}"
    code, msg = _code(lambda: list(stub.DetectTME(iter([pb.DetectRequest(config=pb.JobConfig(
        image_mpp=mpp, annotation_geojson=geo))]), timeout=30)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "config.annotation_geojson" in msg and "nested" in msg
    feat = ('{"type":"Feature","properties":{"x":' + "[" * 3000 + "]" * 3000 +
            '},"geometry":{"type":"Polygon","coordinates":[[[0,0],[9,0],[9,9],[0,0]]]}}')
    code, msg = _code(lambda: list(stub.DetectTME(iter([pb.DetectRequest(config=pb.JobConfig(
        image_mpp=mpp, annotation_geojson=feat))]), timeout=30)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "nested" in msg
    # brackets inside strings do not count; ordinary GeoJSON still works
    ok = json.dumps({"type": "Feature", "properties": {"name": "[[[[" * 50},
                     "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [300, 0], [300, 300], [0, 0]]]}})
    list(stub.DetectTME(iter([pb.DetectRequest(config=pb.JobConfig(image_mpp=mpp, annotation_geojson=ok)),
                              pb.DetectRequest(end=pb.End())]), timeout=30))
    _no_tracebacks(caplog)


def test_json_depth_counts_only_structure() -> None:
    from segtme.server.requests import decode_json, json_depth

    assert json_depth('{"a": [1, {"b": "[[[{{{"}], "c": "\\"]]"}') == 3
    assert json_depth("[]") == 1 and json_depth("1") == 0 and json_depth('"[["') == 0
    assert decode_json('{"a": "x\\"[y"}', "f") == {"a": 'x"[y'}


# --------------------------------------------------------------------------- 3. config first
@pytest.mark.parametrize("backend,env", [("transformers", "SEGTME_NARRATOR_MODEL"), ("openai", "SEGTME_OPENAI_BASE_URL")])
def test_unavailable_narrative_backend_refused_before_any_tile(stub, server, image, ann_tiles, monkeypatch,
                                                                backend, env) -> None:
    _, mpp = image
    monkeypatch.delenv(env, raising=False)
    runner = server.servicer.runners["fixture"]
    _wait(lambda: server.servicer.slots.in_use == 0)
    items0 = runner.batcher.stats.items
    cfg = pb.JobConfig(image_mpp=mpp, narrative_backend=backend, job_id=f"backend-{backend}")
    code, msg = _code(lambda: list(stub.DetectTME(requests(cfg, ann_tiles[:6]), timeout=60)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "narrative_backend" in msg and backend in msg
    time.sleep(0.3)
    assert runner.batcher.stats.items == items0, "tiles were segmented before the backend was refused"
    # AnalyzeImage checks the same configuration before decoding its image
    code, msg = _code(lambda: stub.AnalyzeImage(pb.AnalyzeImageRequest(image_mpp=mpp, narrative_backend=backend,
                                                                       encoding=pb.PNG, pixels=b"not decoded"), timeout=30))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    code, msg = _code(lambda: stub.Narrate(pb.NarrateRequest(features_json="{}", narrative_backend=backend), timeout=30))
    assert code == grpc.StatusCode.FAILED_PRECONDITION


def test_bad_output_type_and_model_refused_on_first_message(stub, server, image, ann_tiles) -> None:
    _, mpp = image
    runner = server.servicer.runners["fixture"]
    _wait(lambda: server.servicer.slots.in_use == 0)
    items0 = runner.batcher.stats.items
    for cfg, want in ((pb.JobConfig(image_mpp=mpp, output_type=7), grpc.StatusCode.INVALID_ARGUMENT),
                      (pb.JobConfig(image_mpp=mpp, model="nope"), grpc.StatusCode.NOT_FOUND),
                      (pb.JobConfig(image_mpp=mpp, expected_tiles=-3), grpc.StatusCode.INVALID_ARGUMENT)):
        code, _ = _code(lambda: list(stub.DetectTME(requests(cfg, ann_tiles[:4]), timeout=60)))
        assert code == want
    time.sleep(0.3)
    assert runner.batcher.stats.items == items0


# --------------------------------------------------------------------------- 4. duplicate tiles
def _copy(t: pb.Tile, **kw) -> pb.Tile:
    c = pb.Tile()
    c.CopyFrom(t)
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_duplicate_index_overlapping_core_and_negative_index_refused(stub, image, ann_tiles) -> None:
    _, mpp = image
    cfg = pb.JobConfig(image_mpp=mpp)
    t0, t1 = ann_tiles[0], ann_tiles[1]
    # the same tile (same index and core) twice: once counted 22 instead of 12
    code, msg = _code(lambda: run_job(stub, cfg, [t0, t0], timeout=60))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "tile[1].index" in msg and "already sent" in msg
    # a new index, but the core overlaps tile 0's core
    shifted = _copy(t0, index=99)
    shifted.core.x += 10
    code, msg = _code(lambda: run_job(stub, cfg, [t0, shifted], timeout=60))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "tile[1].core" in msg and "overlaps" in msg
    code, msg = _code(lambda: run_job(stub, cfg, [_copy(t0, index=-5)], timeout=60))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "tile[0].index" in msg
    # -1 (unnumbered) is allowed, several times, when the cores do not overlap; touching cores are fine
    feats, _, report, _ = run_job(stub, cfg, [_copy(t0, index=-1), _copy(t1, index=-1)], timeout=60)
    assert report.nuclei_total == len(feats) > 0
    single = run_job(stub, cfg, [t0], timeout=60)[2].nuclei_total
    assert report.nuclei_total >= single


def test_tile_ledger_unit() -> None:
    from segtme.server.requests import RequestError, TileLedger

    led = TileLedger()
    for k in range(50):  # a 10 x 5 grid of 100 px cores: touching, never overlapping
        led.add(k, (100 * (k % 10), 100 * (k // 10), 100 * (k % 10) + 100, 100 * (k // 10) + 100), k)
    with pytest.raises(RequestError, match="overlaps the core of tile\\[11\\]"):
        led.add(50, (150, 150, 160, 160), 50)
    with pytest.raises(RequestError, match="already sent"):
        led.add(3, (5000, 5000, 5100, 5100), 50)
    led.add(-1, (0, 1000, 4000, 1100), 50)  # a wide core spanning many cells
    with pytest.raises(RequestError, match="overlaps"):
        led.add(-1, (3990, 1050, 4010, 1060), 51)


# --------------------------------------------------------------------------- 5. serve: bind first
def test_serve_busy_port_and_bad_host_fail_before_model_load(tmp_path, capsys) -> None:
    from segtme.cli import main

    missing_model = str(tmp_path / "no_such_model.json")  # loading it would fail with another message
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        busy = s.getsockname()[1]
        assert main(["serve", "--port", str(busy), "--model", missing_model, "--no-warmup"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: cannot listen on 127.0.0.1:") and "already in use" in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for host in ("999.1.1.1", "not a host!"):
        assert main(["serve", "--host", host, "--port", "0", "--model", missing_model]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: cannot listen on") and host in err and len(err.strip().splitlines()) == 1


def test_build_server_on_busy_port_is_a_project_error(server) -> None:
    from segtme.errors import SegTMEError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        busy = s.getsockname()[1]
        with pytest.raises(SegTMEError, match="cannot listen on 127.0.0.1"):
            build_server(ServerConfig(port=busy), runners=server.servicer.runners)


# --------------------------------------------------------------------------- 7. idle / shutdown
@pytest.fixture()
def idle_server(server):
    cfg = ServerConfig(port=0, limits=ServerLimits(max_concurrent_streams=1, idle_timeout_s=0.6), grace_s=1)
    srv = build_server(cfg, runners=server.servicer.runners)
    yield srv
    srv.stop(0)


def test_idle_streams_are_closed_and_free_their_slot(idle_server, image, ann_tiles) -> None:
    _, mpp = image
    stub, ch = _stub(idle_server.port)
    hold = threading.Event()

    def silent():  # opens the stream, sends nothing
        hold.wait(15)
        return
        yield

    def stalls_after_config():
        yield pb.DetectRequest(config=pb.JobConfig(image_mpp=mpp))
        yield pb.DetectRequest(tile=ann_tiles[0])
        hold.wait(15)

    try:
        for gen in (silent, stalls_after_config):
            t0 = time.monotonic()
            code, msg = _code(lambda: list(stub.DetectTME(gen(), timeout=12)))
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "idle" in msg, msg
            assert time.monotonic() - t0 < 8
            _wait(lambda: idle_server.servicer.slots.in_use == 0)
            # the single slot is free again: a real job runs
            feats, _, report, _ = run_job(stub, pb.JobConfig(image_mpp=mpp), ann_tiles[:2], timeout=60)
            assert report.nuclei_total == len(feats)
        # a client that is slow but not idle (a tile every 0.3 s < 0.6 s) is not cut off
        out = list(stub.DetectTME(requests(pb.JobConfig(image_mpp=mpp), ann_tiles[:4], delay=0.3), timeout=60))
        assert out[-1].WhichOneof("msg") == "report"
    finally:
        hold.set()
        ch.close()


def test_shutdown_grace_answers_not_serving_and_lets_jobs_finish(server, image, ann_tiles) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    _, mpp = image
    lm = server.servicer.runners["fixture"].model
    runner = make_runner(lm, max_batch=1, max_wait_ms=0, queue_size=64)
    fast = runner.batcher.fn
    runner.batcher.fn = lambda b: (time.sleep(0.15), fast(b))[1]
    srv = build_server(ServerConfig(port=0, limits=ServerLimits(max_concurrent_streams=4), grace_s=20),
                       runners={"fixture": runner})
    stub, ch = _stub(srv.port)
    health = health_pb2_grpc.HealthStub(ch)
    result: dict = {}

    def long_job():
        try:
            result["out"] = run_job(stub, pb.JobConfig(image_mpp=mpp, job_id="draining"), ann_tiles[:10], timeout=60)
        except grpc.RpcError as e:
            result["err"] = (e.code(), e.details())

    th = threading.Thread(target=long_job)
    th.start()
    _wait(lambda: srv.servicer.slots.in_use == 1)
    stopper = threading.Thread(target=srv.stop)
    stopper.start()
    try:
        _wait(lambda: srv.servicer.draining.is_set())
        h = health.Check(health_pb2.HealthCheckRequest(service="segtme.v1.SegTME"), timeout=5)
        assert h.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING
        code, msg = _code(lambda: list(stub.DetectTME(requests(pb.JobConfig(image_mpp=mpp), ann_tiles[:1]), timeout=10)))
        assert code == grpc.StatusCode.UNAVAILABLE and "shutting down" in msg
        th.join(60)
        assert "err" not in result, result.get("err")
        feats, _, report, _ = result["out"]
        assert report.nuclei_total == len(feats) > 0
        stopper.join(30)
        assert not stopper.is_alive()  # stopped as soon as the running job ended, not after the full grace
    finally:
        stopper.join(30)
        ch.close()
        runner.batcher.close()


# --------------------------------------------------------------------------- 8. nothing retained
def test_finished_jobs_leave_nothing_referenced(stub, image, ann_tiles, server) -> None:
    from segtme.server.job import TileJob
    from segtme.server.tiles import WorkTile

    _, mpp = image
    for _ in range(2):
        run_job(stub, pb.JobConfig(image_mpp=mpp, per_tile_results=True), ann_tiles[:6], timeout=60)
    try:
        stub.AnalyzeImage(pb.AnalyzeImageRequest(image_mpp=mpp, encoding=pb.RAW_RGB, width=300, height=300,
                                                 pixels=bytes(300 * 300 * 3)), timeout=60)
    except grpc.RpcError:
        pass
    _wait(lambda: server.servicer.slots.in_use == 0)
    _wait(lambda: not [t for t in threading.enumerate() if t.name.startswith("segtme-reader")])
    gc.collect()
    left = [o for o in gc.get_objects() if isinstance(o, (TileJob, WorkTile))]
    assert not left, f"{len(left)} job objects still referenced after the jobs ended"
    from segtme.server.memory import release_after_job

    from segtme import runtime

    assert release_after_job() is (runtime._libc() is not None)  # runs on glibc, a no-op elsewhere


def test_serve_refuses_bad_idle_timeout_and_grace(capsys) -> None:
    from segtme.cli import main

    for args, word in ((["--idle-timeout", "0"], "idle_timeout_s"), (["--idle-timeout", "nan"], "idle_timeout_s"),
                       (["--grace", "-1"], "--grace"), (["--grace", "inf"], "--grace")):
        assert main(["serve", "--port", "0", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and word in err and len(err.strip().splitlines()) == 1
