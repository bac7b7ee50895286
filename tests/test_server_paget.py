"""PAGET-S / PAGET-H through the real gRPC server (loopback, inside pytest).

Models: randomly initialised MiT-B0 students (presets ``paget_s_b0`` / ``paget_h_b0``, fixed seed,
256 px tiles so the annotation needs several tiles), saved to a temporary .json + .safetensors and
loaded by path like any model — no trained PAGET weights exist. A random student still gives a
spatially varied 14-class map (tissue regions and nucleus blobs), which is all the plumbing
needs. PAGET-H's instance source is the shipped UperHoVer ``default`` (also served, so the
instance model's batcher is shared).

Image: a real 1000x1000 MoNuSeg image (0.2527 µm/px) from ../shared/data, streamed as the tiles
of the written plan (read at the plan's downsample, as QuPath does) with a concave annotation.
Checked: nuclei in full-resolution px (a tile's nuclei equal ``analyze_paget`` on that tile's pixels
mapped by ``x_full = x + x_tile * d``), none outside the annotation, no duplicates at seams;
tissue annotations classified with PAGET tissue classes, inside the annotation, one per class,
not overlapping each other; the TME report in the paget13 taxonomy with the PAGET axes.
Mitosis: the shipped PAGET-H streamed over a mosaic of real AMi-Br mitosis crops marks "Mitotic
cell" and the mitosis measurements as ``analyze_paget`` (the CLI's path) does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from shapely.geometry import Polygon, shape

from conftest import load_monuseg
from segtme.models import create_model, presets
from segtme.paget import taxonomy as pt
from segtme.server._proto.segtme.v1 import segtme_pb2 as pb
from segtme.server.limits import ServerLimits
from segtme.server.service import ServerConfig, attach_instance_sources, build_server, load_runners
from test_server_detect import ANNOTATION, _stub, annotation_geojson, make_tiles, run_job

pytestmark = pytest.mark.data

TISSUE = {pt.TAXONOMY.classes[c].name: c for c in pt.tissue_classes()}
NUCLEUS = {pt.TAXONOMY.classes[c].name: c for c in pt.nucleus_classes()}


def save_random_paget(directory: Path, preset: str, name: str, seed: int, **changes) -> Path:
    """A randomly initialised PAGET student written as <name>.json + <name>.safetensors."""
    cfg = presets()[preset].replace(name=name, weights=f"{name}.safetensors", **changes)
    torch.manual_seed(seed)
    module = create_model(cfg)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(directory / f"{name}.safetensors"))
    cfg.to_json(directory / f"{name}.json")
    return directory / f"{name}.json"


@pytest.fixture(scope="module")
def paget_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("paget_models")
    s = save_random_paget(d, "paget_s_b0", "paget_s_test", 1, tile_size=256, tile_overlap=64)
    h = save_random_paget(d, "paget_h_b0", "paget_h_test", 1, tile_size=256, tile_overlap=64)
    return s, h


@pytest.fixture(scope="module")
def image():
    rgb, _inst, mpp = load_monuseg(1)[0]
    return rgb, mpp


@pytest.fixture(scope="module")
def server(paget_models):
    s, h = paget_models
    cfg = ServerConfig(port=0, models=[str(s), str(h), "default"], device="cpu", max_batch=4, max_wait_ms=5,
                       limits=ServerLimits(max_tile_pixels=400 * 400, max_image_pixels=700 * 700), grace_s=2)
    srv = build_server(cfg)
    yield srv
    srv.stop(1)


@pytest.fixture(scope="module")
def stub(server):
    st, ch = _stub(server.port)
    yield st
    ch.close()


@pytest.fixture(scope="module")
def tiles(image, server):
    rgb, mpp = image
    cfg = server.servicer.runners["paget_s_test"].cfg
    x0, y0, x1, y1 = (int(v) for v in Polygon(ANNOTATION).bounds)
    return make_tiles(rgb, mpp, cfg.mpp, cfg.tile_size, cfg.tile_overlap, (x0, y0, x1 - x0, y1 - y0))


def detect(stub, model: str, image, tiles, per_tile: bool):
    rgb, mpp = image
    cfg = pb.JobConfig(model=model, image_mpp=mpp, annotation_geojson=annotation_geojson(), per_tile_results=per_tile,
                       job_id=f"paget-{model}", expected_tiles=len(tiles), annotation_id="ann-paget")
    return run_job(stub, cfg, tiles, timeout=180)


@pytest.fixture(scope="module")
def results(stub, image, tiles):
    """Both models, streamed once each (PAGET-S with per-tile results to know each tile's nuclei)."""
    return {"paget_s_test": detect(stub, "paget_s_test", image, tiles, True),
            "paget_h_test": detect(stub, "paget_h_test", image, tiles, False)}


def split(features):
    nuclei = [f for f in features if f["properties"]["objectType"] in ("detection", "cell")]
    tissue = [f for f in features if f["properties"]["objectType"] == "annotation"]
    assert len(nuclei) + len(tissue) == len(features)
    return nuclei, tissue


def check_nuclei(nuclei, report, image_shape) -> None:
    import shapely

    ann = Polygon(ANNOTATION)
    polys = [shape(f["geometry"]) for f in nuclei]
    assert len(polys) == report.nuclei_total > 0
    xy = np.array([[p.centroid.x, p.centroid.y] for p in polys])
    assert shapely.intersects_xy(ann, xy[:, 0], xy[:, 1]).all(), "a nucleus outside the annotation"
    H, W = image_shape
    bounds = np.array([p.bounds for p in polys])
    assert bounds[:, 0].min() >= 0 and bounds[:, 2].max() <= W and bounds[:, 3].max() <= H
    assert {f["properties"]["classification"]["name"] for f in nuclei} <= set(NUCLEUS)
    for f in nuclei:  # classification colour = the PAGET taxonomy's
        c = f["properties"]["classification"]
        assert c["color"] == list(pt.TAXONOMY.classes[NUCLEUS[c["name"]]].color)
    assert len({f["id"] for f in nuclei}) == len(nuclei)
    # no duplicates along seams: no two nuclei overlap substantially
    tree = shapely.STRtree(polys)
    for i, p in enumerate(polys):
        for j in tree.query(p, predicate="intersects"):
            if j > i:
                q = polys[j]
                assert p.intersection(q).area / p.union(q).area < 0.5, "duplicate nucleus at a seam"


def check_tissue(tissue, report_json, mpp) -> None:
    ann = Polygon(ANNOTATION)
    names = [f["properties"]["classification"]["name"] for f in tissue]
    assert tissue and len(names) == len(set(names)), "one annotation per tissue class"
    assert set(names) <= set(TISSUE)
    assert names == sorted(names, key=TISSUE.get), "taxonomy order"
    geoms = [shape(f["geometry"]) for f in tissue]
    for f, g in zip(tissue, geoms):
        p = f["properties"]
        assert p["classification"]["color"] == list(pt.TAXONOMY.classes[TISSUE[p["classification"]["name"]]].color)
        assert g.is_valid and g.area > 0 and g.geom_type in ("Polygon", "MultiPolygon")
        assert g.difference(ann).area <= 1e-6 * g.area, "tissue annotation not clipped to the annotation"
        assert p["measurements"]["Area px^2"] == pytest.approx(g.area, rel=1e-3)
        assert p["measurements"]["Area µm^2"] == pytest.approx(g.area * mpp * mpp, rel=1e-3)
    for i in range(len(geoms)):
        for j in range(i + 1, len(geoms)):
            assert geoms[i].intersection(geoms[j]).area <= 1e-6 * ann.area, "tissue classes overlap"
    assert sum(g.area for g in geoms) <= ann.area * (1 + 1e-6)
    assert report_json["tissue_annotations_total"] == len(tissue)
    raw = report_json["raw_data"]
    assert raw["tissue_area_px"] == pytest.approx(sum(g.area for g in geoms), rel=1e-3)
    fr = [raw[f"area_frac_{n.replace(' ', '_')}"] for n in TISSUE]
    assert sum(fr) == pytest.approx(1.0, abs=1e-6)
    for n, g in zip(names, geoms):
        assert raw[f"area_frac_{n.replace(' ', '_')}"] == pytest.approx(g.area / raw["tissue_area_px"], rel=1e-3)


def check_report(report) -> dict:
    from segtme.paget.features import PAGET_AXES

    rj = json.loads(report.report_json)
    assert rj["taxonomy"] == "paget13"
    assert set(PAGET_AXES) <= set(rj["interpretation"])
    assert rj["raw_data"]["N_total"] == report.nuclei_total
    assert report.annotation_id == "ann-paget"
    # the immune location is computed from the nuclei's tissue context (not undefined)
    assert "tissue_area_px" in rj["raw_data"] and rj["raw_data"]["tissue_area_px"] is not None
    assert any(k.startswith("SegTME:") for k in report.measurements)
    return rj


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("model", ["paget_s_test", "paget_h_test"])
def test_paget_detect_nuclei_and_tissue_under_annotation(results, image, model) -> None:
    feats, progress, report, order = results[model]
    rgb, mpp = image
    assert order[-1] == "report" and progress[-1].fraction == 1.0
    nuclei, tissue = split(feats)
    check_nuclei(nuclei, report, rgb.shape[:2])
    rj = check_report(report)
    check_tissue(tissue, rj, mpp)
    # wire order: nuclei, then the tissue annotations, then the final progress and the report
    last_nuclei = max(i for i, k in enumerate(order) if k == "nuclei")
    assert order[last_nuclei + 1:] == ["progress", "report"]


def test_paget_s_tile_nuclei_are_analyze_paget_in_full_res_px(results, server, tiles, image) -> None:
    """A full-size interior tile's streamed nuclei = ``analyze_paget`` on that tile's pixels,
    mapped to full-resolution px by x_full = tile.x + x_tile * d, then owned (core + annotation)."""
    import io

    import shapely
    from PIL import Image

    from segtme.paget.product import analyze_paget
    from test_server_detect import match_fraction

    rgb, mpp = image
    lm = server.servicer.runners["paget_s_test"].model
    ann = Polygon(ANNOTATION)
    checked = 0
    # every streamed nucleus belongs to the tile whose core holds its centroid (ownership rule)
    nuclei, _ = split(results["paget_s_test"][0])
    polys = [shape(f["geometry"]) for f in nuclei]
    for t in tiles:
        small = np.asarray(Image.open(io.BytesIO(t.pixels)).convert("RGB"))
        if small.shape[0] < lm.config.tile_size or small.shape[1] < lm.config.tile_size:
            continue  # edge tiles are padded by the server: not comparable with a whole-tile run
        c = t.core
        mine = [p for p in polys if c.x <= p.centroid.x < c.x + c.width and c.y <= p.centroid.y < c.y + c.height]
        ref = analyze_paget(small, mpp * t.downsample, lm, compute_features=False).nuclei
        ref = ref.translated(t.x, t.y, scale=t.downsample)
        cx, cy = ref.centroid[:, 0], ref.centroid[:, 1]
        keep = (cx >= c.x) & (cx < c.x + c.width) & (cy >= c.y) & (cy < c.y + c.height)
        keep &= shapely.intersects_xy(ann, cx, cy)
        ref_polys = [Polygon(p) for p in ref.subset(keep).polygons]
        assert len(ref_polys) > 0
        assert match_fraction(ref_polys, mine) >= 0.95 and match_fraction(mine, ref_polys) >= 0.95
        checked += 1
    assert checked >= 1, "the plan should have at least one full-size tile"


def test_paget_h_shares_the_served_instance_model(server) -> None:
    runners = server.servicer.runners
    h = runners["paget_h_test"]
    assert h.paget_mode == "panoptic" and runners["paget_s_test"].paget_mode == "semantic"
    assert h.instance_runner is runners["default"], "the served default model's batcher is shared"
    assert h.instance_runner.batcher.stats.items > 0
    m = {mi.name: mi for mi in _list_models(server)}
    assert "instances from default" in m["paget_h_test"].description
    assert {c.name for c in m["paget_s_test"].classes if c.level == "tissue"} == set(TISSUE)


def _list_models(server):
    st, ch = _stub(server.port)
    try:
        return st.ListModels(pb.ListModelsRequest()).models
    finally:
        ch.close()


def test_paget_h_instance_source_not_served_gets_its_own_batcher(paget_models) -> None:
    _, h = paget_models
    cfg = ServerConfig(models=[str(h)], device="cpu", warmup=False)
    runners, aliases = load_runners(cfg)
    try:
        r = runners["paget_h_test"]
        assert r.instance_runner is not None and r.instance_runner.cfg.name == "default"
        assert r.instance_runner.batcher is not r.batcher and len(r.batchers()) == 2
        attach_instance_sources(runners, aliases, cfg)  # idempotent
        assert len(r.batchers()) == 2
        # the classical baseline has no batched forward: it runs in the job thread
        r2 = runners["paget_h_test"]
        r2.instance_runner, r2.instance_direct = None, None
        for b in r.batchers()[1:]:
            b.close()
        attach_instance_sources(runners, aliases, ServerConfig(device="cpu", warmup=False, instance_source="classical"))
        assert r2.instance_runner is None and r2.instance_direct.config.arch == "classical"
    finally:
        for rr in runners.values():
            for b in rr.batchers():
                b.close()


def test_paget_analyze_image_returns_tissue_and_nuclei(stub, image) -> None:
    import io

    from PIL import Image

    rgb, mpp = image
    crop = np.ascontiguousarray(rgb[:600, :600])
    b = io.BytesIO()
    Image.fromarray(crop).save(b, "PNG")
    resp = stub.AnalyzeImage(pb.AnalyzeImageRequest(model="paget_s_test", image_mpp=mpp, encoding=pb.PNG,
                                                    pixels=b.getvalue()), timeout=120)
    fc = json.loads(resp.features_geojson)
    nuclei, tissue = split(fc["features"])
    assert len(nuclei) == resp.report.nuclei_total > 0
    rj = json.loads(resp.report.report_json)
    assert rj["taxonomy"] == "paget13" and rj["tissue_annotations_total"] == len(tissue) > 0
    box = Polygon([(0, 0), (600, 0), (600, 600), (0, 600)])
    area = 0.0
    for f in tissue:
        g = shape(f["geometry"])
        assert f["properties"]["classification"]["name"] in TISSUE
        assert g.difference(box).area <= 1e-6 * g.area
        area += g.area
    assert area <= box.area * (1 + 1e-6)
    assert rj["raw_data"]["tissue_area_px"] == pytest.approx(area, rel=1e-3)


# --------------------------------------------------------------------------- mitosis (PAGET-H)
@pytest.fixture(scope="module")
def mitosis_mosaic(shared_data):
    """A 4 x 4 mosaic (512² px, 0.25 µm/px) of real AMi-Br crops, each centred on a mitotic
    figure, from slides the mitosis teacher held out (its config's ``extra.held_out``)."""
    import csv

    from PIL import Image

    from segtme.models.registry import shipped_models

    root = shared_data / "mitoses-amibr"
    assert (root / "index.csv").is_file(), f"mitoses-amibr missing under {shared_data}"
    held = set(json.loads(shipped_models()["mitosis"].read_text())["extra"]["held_out"]["amibr_slides"])
    rows = sorted((r for r in csv.DictReader(open(root / "index.csv")) if r["slide"] in held), key=lambda r: r["file"])
    crops = [np.asarray(Image.open(root / r["file"]).convert("RGB")) for r in rows[:16]]
    assert len(crops) == 16
    return np.concatenate([np.concatenate(crops[i * 4:(i + 1) * 4], 1) for i in range(4)], 0), 0.25


@pytest.fixture(scope="module")
def shipped_server():
    cfg = ServerConfig(port=0, models=["paget_h", "default"], device="cpu", max_batch=4, max_wait_ms=5, grace_s=2,
                       warmup=False)
    srv = build_server(cfg)
    yield srv
    srv.stop(1)


def test_paget_h_stream_marks_mitoses_as_the_cli_does(shipped_server, mitosis_mosaic) -> None:
    """The shipped PAGET-H streamed through the server marks "Mitotic cell" and carries the
    mitosis measurements exactly as ``analyze_paget`` (the CLI's path) on the same real image:
    the same mitosis teacher (``paget.runner.resolve_mitosis``), the same nuclei, the same
    probabilities, and the report counts them."""
    from shapely import STRtree

    from segtme.paget.product import analyze_paget

    rgb, mpp = mitosis_mosaic
    r = shipped_server.servicer.runners["paget_h"]
    assert r.mitosis is not None, "PAGET-H runner without the config's mitosis teacher"
    H, W = rgb.shape[:2]
    tiles = make_tiles(rgb, mpp, r.cfg.mpp, r.cfg.tile_size, r.cfg.tile_overlap, (0, 0, W, H))
    ring = [[0, 0], [W, 0], [W, H], [0, H], [0, 0]]
    st, ch = _stub(shipped_server.port)
    try:
        jc = pb.JobConfig(model="paget_h", image_mpp=mpp, job_id="paget-mitosis", expected_tiles=len(tiles),
                          annotation_geojson=json.dumps({"type": "Polygon", "coordinates": [ring]}),
                          annotation_id="ann-paget")
        feats, _, report, _ = run_job(st, jc, tiles, timeout=300)
    finally:
        ch.close()
    nuclei, _ = split(feats)
    cli = analyze_paget(rgb, mpp, r.model).nuclei  # the CLI's path, same loaded student
    cli_mit = np.array(cli.class_names) == "Mitotic cell"
    assert cli_mit.sum() >= 4, "the CLI should mark mitotic figures on 16 mitosis crops"

    srv_polys = [shape(f["geometry"]) for f in nuclei]
    srv_mit = np.array([f["properties"]["classification"]["name"] == "Mitotic cell" for f in nuclei])
    meas = [f["properties"]["measurements"] for f in nuclei]
    assert all("Mitosis: probability" in m and "Mitosis: atypical probability" in m for m in meas)
    # pair every CLI nucleus with a streamed one (IoU >= 0.5)
    tree = STRtree(srv_polys)
    pairs = []
    for i, poly in enumerate(Polygon(p) for p in cli.polygons):
        for j in tree.query(poly, predicate="intersects"):
            q = srv_polys[j]
            iou = poly.intersection(q).area / poly.union(q).area
            if iou >= 0.5:
                pairs.append((i, int(j), iou))
                break
    # the streamed tiles cut the image differently from the CLI's grid, so a few nuclei on tile
    # seams differ: measured 106 pairs of 110 CLI / 112 streamed nuclei (0.964 / 0.946) on a 2-core
    # AMD EPYC with AVX-512 (fp32 and bf16 alike), >= 0.95 on an AVX2-only one; the mitosis
    # agreement below is the point of this test
    assert len(pairs) >= 0.95 * len(cli) and len(pairs) >= 0.93 * len(nuclei)
    ci, sj, iou = np.array(pairs).T
    ci, sj = ci.astype(int), sj.astype(int)
    assert (cli_mit[ci] == srv_mit[sj]).mean() >= 0.95
    assert srv_mit[sj][cli_mit[ci]].sum() >= 0.9 * cli_mit.sum()
    pm = np.array([meas[j]["Mitosis: probability"] for j in sj])
    pa = np.array([meas[j]["Mitosis: atypical probability"] for j in sj])
    dm = np.abs(pm - cli.extra["mitosis_prob"][ci])
    da = np.abs(pa - cli.extra["mitosis_atypical_prob"][ci])
    # the two instance maps differ a little (the server batches the instance model on padded
    # tiles, the CLI tiles it with blending): nearly the same outline -> nearly the same crop
    same = iou >= 0.95
    assert same.mean() >= 0.5
    assert (np.maximum(dm, da)[same] < 1e-3).mean() >= 0.9
    assert np.median(np.maximum(dm, da)) < 1e-3
    raw = json.loads(report.report_json)["raw_data"]
    assert raw["N_Mitotic_cell"] == int(srv_mit.sum()) > 0
    assert raw["N_Mitotic_atypical"] is not None and raw["mitotic_count_per_mm2"] > 0
