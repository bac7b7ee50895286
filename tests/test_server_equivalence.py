"""The server and the CLI give the same nuclei — with the SHIPPED default model on real images
(issue #14): a network's tile context is what makes tilings disagree, so a fixture model with a
5x5 receptive field (test_server_detect.py) cannot show this.

* AnalyzeImage vs ``pipeline.analyze`` (what ``segtme analyze`` runs) on a real MoNuSeg image:
  the same number of nuclei and >= 99.5 % of them matched at IoU >= 0.5, both ways.
* DetectTME streamed over a multi-tile concave annotation vs ``pipeline.analyze`` of the whole
  image restricted to that annotation: >= 99 % matched both ways, counts within 1 % — the
  issue's target, NOT met yet (strict xfail: it turns into a failure the day it passes, so the
  marker goes): 95.0 % measured, see the marker's reason.
  Image: a 2 x 2 mosaic of four real MoNuSeg images (2000 x 2000 px at ~0.25 µm/px: 2 x 2 tiles
  of 512 working px), identical pixels for both paths; the client reads each plan region at the
  plan's downsample with the one resampler (``inference.resample``), as QuPath reads a region
  at a downsample.
"""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest

from conftest import load_monuseg
from segtme.server._proto.segtme.v1 import segtme_pb2 as pb
from segtme.server._proto.segtme.v1 import segtme_pb2_grpc as pb_grpc
from segtme.server.limits import ServerLimits
from segtme.server.service import ServerConfig, build_server
from test_server_detect import encode, match_fraction, polygons_of, run_job

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def shipped():
    from segtme.models.registry import load_model, shipped_models

    assert "default" in shipped_models(), "the shipped default model is missing"
    return load_model("default", "cpu")


@pytest.fixture(scope="module")
def server(shipped):
    from segtme.server.runners import make_runner

    runner = make_runner(shipped, max_batch=1, max_wait_ms=0, queue_size=64)
    srv = build_server(ServerConfig(port=0, max_batch=1, limits=ServerLimits(
        max_message_bytes=32 << 20, max_image_pixels=2048 * 2048)), runners={shipped.config.name: runner})
    yield srv
    srv.stop(0)
    runner.batcher.close()


@pytest.fixture(scope="module")
def stub(server):
    ch = grpc.insecure_channel(f"127.0.0.1:{server.port}", options=[("grpc.max_send_message_length", 32 << 20),
                                                                   ("grpc.max_receive_message_length", 32 << 20)])
    yield pb_grpc.SegTMEStub(ch)
    ch.close()


def _cli_polygons(rgb, mpp, model, region=None):
    import shapely

    from segtme.export.geojson import nuclei_to_features
    from segtme.pipeline import analyze

    t = analyze(rgb, mpp, model=model, narrative_backend="none").nuclei
    if region is not None:
        t = t.subset(shapely.intersects_xy(region, t.centroid[:, 0], t.centroid[:, 1]))
    return polygons_of(nuclei_to_features(t))


def test_analyze_image_equals_cli(stub, shipped) -> None:
    rgb, _inst, mpp = load_monuseg(1)[0]
    r = stub.AnalyzeImage(pb.AnalyzeImageRequest(image_mpp=mpp, encoding=pb.PNG, pixels=encode(rgb),
                                                 narrative_backend="none"), timeout=600)
    got = polygons_of(json.loads(r.features_geojson)["features"])
    ref = _cli_polygons(rgb, mpp, shipped)
    print(f"AnalyzeImage {len(got)} nuclei, CLI {len(ref)}; matched {match_fraction(ref, got):.4f} / "
          f"{match_fraction(got, ref):.4f}")
    assert len(ref) > 300, "the shipped model should find hundreds of nuclei in a MoNuSeg image"
    assert len(got) == len(ref) == r.report.nuclei_total
    assert match_fraction(ref, got) >= 0.995 and match_fraction(got, ref) >= 0.995


#: concave annotation over the mosaic (full-res px): covers all 2 x 2 tiles and their seams
ANNOTATION = [[60, 60], [1900, 80], [1950, 1900], [1000, 1950], [1050, 1000], [600, 1300], [80, 1900], [60, 60]]


@pytest.mark.xfail(strict=True, reason=(
    "not met yet (measured 2026-12-02: 1177 vs 1177 nuclei, 95.0 % matched both ways): the shipped "
    "UperHoVer's output depends on where a tile starts (UperNet's pyramid pooling sees the whole tile) - "
    "the CLI alone, on the same image shifted by 1 px, matches itself only 94-96 %. Needs one grid rule "
    "for client and CLI (stream tiles on the CLI's global working grid, blended by the server); see docs/server.md"))
def test_detect_tme_stream_matches_cli_on_the_region(stub, shipped) -> None:
    from shapely.geometry import Polygon

    from segtme.inference.resample import resample
    from segtme.inference.tiling import plan_stream_tiles

    ims = load_monuseg(4)
    mpp = float(np.mean([m for _, _, m in ims]))
    top = np.concatenate([ims[0][0], ims[1][0]], axis=1)
    bottom = np.concatenate([ims[2][0], ims[3][0]], axis=1)
    rgb = np.ascontiguousarray(np.concatenate([top, bottom], axis=0))
    H, W = rgb.shape[:2]
    cfg = shipped.config
    ann = Polygon(ANNOTATION)
    x0, y0, x1, y1 = (int(v) for v in ann.bounds)
    plan = plan_stream_tiles((x0, y0, x1 - x0, y1 - y0), (W, H), mpp, cfg.mpp, cfg.tile_size, cfg.tile_overlap)
    assert len(plan) >= 4  # 2 x 2 tiles of 512 working px: seams in both directions
    tiles = []
    for k, t in enumerate(plan):
        rx, ry, rw, rh = t.region
        small = resample(rgb[ry:ry + rh, rx:rx + rw], 1.0 / t.d)
        c0, c1, c2, c3 = t.core
        tiles.append(pb.Tile(index=k, x=rx, y=ry, downsample=t.d, width=small.shape[1], height=small.shape[0],
                             core=pb.Rect(x=c0, y=c1, width=c2 - c0, height=c3 - c1), encoding=pb.PNG,
                             pixels=encode(small)))
    geo = json.dumps({"type": "Polygon", "coordinates": [ANNOTATION]})
    feats, _, report, _ = run_job(stub, pb.JobConfig(image_mpp=mpp, annotation_geojson=geo, narrative_backend="none"),
                                  tiles, timeout=900)
    got = polygons_of(feats)
    ref = _cli_polygons(rgb, mpp, shipped, ann)
    a, b = match_fraction(ref, got), match_fraction(got, ref)
    print(f"DetectTME {len(got)} nuclei over {len(plan)} tiles, CLI {len(ref)} in the region; matched {a:.4f} / {b:.4f}")
    assert len(ref) > 1000
    assert report.nuclei_total == len(got)
    assert abs(len(got) - len(ref)) <= 0.01 * len(ref)
    assert a >= 0.99 and b >= 0.99
