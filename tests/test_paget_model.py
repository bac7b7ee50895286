"""PAGET student in the registry, and the PAGET-S / PAGET-H products (QuPath annotations + nuclei)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segtme.models import WeightsError, load_model, presets
from segtme.paget import taxonomy as pt
from segtme.paget.model import MIT_VARIANTS, segformer_config
from segtme.paget.product import (
    analyze_paget,
    majority_nucleus_class,
    mask_to_geometry,
    nucleus_components,
    tissue_annotations,
)
from segtme.paget.teachers import InstanceOutput


@pytest.fixture(scope="module")
def tiny():
    return load_model("paget_s_b0", "cpu", allow_random=True)


def test_registry_presets_and_output_contract(tiny):
    ps = presets()
    for name in ("paget_s", "paget_h", "paget_s_b0", "paget_s_b1", "paget_h_b0"):
        assert ps[name].arch == "paget_segformer" and ps[name].taxonomy == "paget13"
    s, h = ps["paget_s"], ps["paget_h"]
    assert s.extra["variant"] == "b5" and s.mpp == 0.5 and s.tile_size == 384
    assert s.extra["mode"] == "semantic" and h.extra["mode"] == "panoptic" and h.extra["instance_source"] == "default"
    assert s.head_channels() == {"sem": 14}
    b5 = segformer_config("b5", 14)  # config only: the 85 M-parameter model is not built here
    assert b5.depths == [3, 6, 40, 3] and b5.hidden_sizes == [64, 128, 320, 512] and b5.decoder_hidden_size == 768
    assert set(MIT_VARIANTS) >= {"b0", "b1", "b5"}
    with torch.inference_mode():
        out = tiny.module(torch.randn(2, 3, 64, 96))
    assert set(out) == {"sem"} and out["sem"].shape == (2, 14, 64, 96)
    with pytest.raises(WeightsError):
        load_model("paget_s_b1", "cpu")  # architecture-only preset, no allow_random: a clear error, not random output
    # paget_s (the MiT-B0 student) is shipped: it loads without weights arguments
    assert load_model("paget_s", "cpu").source.endswith("paget_b0.safetensors")


def test_mask_to_geometry_is_exact_and_keeps_holes():
    m = np.zeros((40, 50), bool)
    m[5:30, 5:45] = True
    m[10:20, 10:20] = False  # hole
    m[35:38, 1:4] = True  # small separate part
    g = mask_to_geometry(m, simplify_px=0.0)
    assert g.area == pytest.approx(m.sum())
    assert g.geom_type == "MultiPolygon" and max(len(p.interiors) for p in g.geoms) == 1
    assert mask_to_geometry(m, simplify_px=0.0, min_area_px=20).geom_type == "Polygon"  # 9 px part dropped
    assert mask_to_geometry(np.zeros((4, 4), bool)) is None


def test_tissue_annotations_are_qupath_annotations_in_input_px():
    sem = np.full((40, 60), pt.STROMA, np.uint8)
    sem[:, :30] = pt.EPITHELIUM
    sem[10:14, 10:14] = pt.EPITHELIAL_CELL  # a nucleus inside epithelium belongs to the epithelium region
    sem[30:, 55:] = 0
    feats = tissue_annotations(sem, scale=2.0, offset_xy=(1000, 500), mpp_out=0.25, simplify_px=0.0)
    by = {f["properties"]["classification"]["name"]: f for f in feats}
    assert set(by) == {"Epithelium", "Stroma"}
    epi = by["Epithelium"]
    assert epi["properties"]["objectType"] == "annotation"
    assert epi["properties"]["classification"]["color"] == list(pt.TAXONOMY.by_name("Epithelium").color)
    assert epi["properties"]["measurements"]["Area px^2"] == pytest.approx(40 * 30 * 4)
    assert epi["properties"]["measurements"]["Area µm^2"] == pytest.approx(40 * 30 * 4 * 0.0625)
    xs = [x for ring in epi["geometry"]["coordinates"] for x, _ in ring]
    ys = [y for ring in epi["geometry"]["coordinates"] for _, y in ring]
    assert (min(xs), max(xs), min(ys), max(ys)) == (1000, 1060, 500, 580)
    assert by["Stroma"]["properties"]["measurements"]["Area px^2"] == pytest.approx((40 * 30 - 50) * 4)


def test_tiles_merge_into_one_annotation_per_class():
    from segtme.paget.product import merge_tissue_features

    sem = np.full((20, 20), pt.EPITHELIUM, np.uint8)
    left = tissue_annotations(sem, offset_xy=(0, 0), simplify_px=0.0)
    right = tissue_annotations(sem, offset_xy=(20, 0), simplify_px=0.0)
    merged = merge_tissue_features(left + right, clip={"type": "Polygon", "coordinates": [[[0, 0], [30, 0], [30, 20], [0, 20], [0, 0]]]}, mpp=0.5)
    assert len(merged) == 1 and merged[0]["geometry"]["type"] == "Polygon"
    assert merged[0]["properties"]["measurements"] == {"Area px^2": 600.0, "Area µm^2": 150.0}


def test_nucleus_components_and_majority_vote():
    sem = np.full((30, 30), pt.STROMA, np.uint8)
    sem[2:6, 2:6] = pt.LYMPHOCYTE
    sem[2:6, 6:10] = pt.LYMPHOCYTE  # touching, same class: one component in PAGET-S
    sem[20:25, 20:25] = pt.FIBROBLAST
    inst, cls = nucleus_components(sem, min_px=4)
    assert inst.max() == 2 and sorted(cls.tolist()) == [pt.FIBROBLAST, pt.LYMPHOCYTE]
    # PAGET-H: instances from an instance source; majority over nucleus-level classes only
    inst_h = np.zeros((30, 30), np.int32)
    inst_h[1:7, 1:6] = 1  # 30 px: 16 lymphocyte + 14 stroma -> lymphocyte (stroma does not vote)
    inst_h[2:6, 6:10] = 2
    inst_h[20:25, 20:24] = 3
    inst_h[10:13, 10:13] = 4  # only stroma pixels: no class
    sem[20:22, 20:24] = pt.PLASMA_CELL  # 8 plasma vs 12 fibroblast -> fibroblast
    cid, share = majority_nucleus_class(inst_h, sem)
    assert cid.tolist() == [pt.LYMPHOCYTE, pt.LYMPHOCYTE, pt.FIBROBLAST, 0]
    assert share[0] == pytest.approx(16 / 30) and share[2] == pytest.approx(12 / 20)


def test_analyze_paget_semantic_and_panoptic_on_real_tile(tiny, monuseg_small):
    rgb, inst_gt, mpp = monuseg_small[0]
    s_res = analyze_paget(rgb, mpp, tiny, mode="semantic", offset_xy=(100, 200))
    side = int(np.floor(256 * mpp / 0.5 + 0.5))  # working size at 0.5 µm/px
    assert s_res.sem.shape == (side, side) and s_res.scale == pytest.approx(mpp / 0.5)
    assert s_res.nuclei.taxonomy.name == "paget13" and s_res.nuclei.mpp == mpp
    if len(s_res.nuclei):
        assert set(s_res.nuclei.class_id.tolist()) <= set(pt.nucleus_classes())
        assert (s_res.nuclei.centroid[:, 0] >= 100).all() and (s_res.nuclei.centroid[:, 0] <= 100 + 256).all()
    tissue_area = sum(f["properties"]["measurements"]["Area px^2"] for f in s_res.tissue_features)
    assert tissue_area <= 256 * 256 + 1e-6
    fc = s_res.feature_collection()
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == len(s_res.tissue_features) + len(s_res.nuclei)

    from segtme.paget.product import resize_labels

    inst_work = resize_labels(inst_gt, (side, side), side / inst_gt.shape[0])

    class GroundTruthInstances:  # any object with .instances(image) is an instance source
        name = "ground truth"

        def instances(self, image):
            assert image.rgb.shape[:2] == (side, side)  # called at the student's working resolution
            return InstanceOutput(inst_work)

    h_res = analyze_paget(rgb, mpp, tiny, mode="panoptic", instance_source=GroundTruthInstances())
    assert h_res.meta["instances"] == "ground truth"
    n_inst = len(np.unique(inst_work)) - 1
    assert len(h_res.nuclei) + h_res.meta["nuclei_without_class"] == n_inst
    assert set(h_res.nuclei.class_id.tolist()) <= set(pt.nucleus_classes())
    assert h_res.features is not None and "area_frac_Epithelium" in h_res.features
    # PAGET-H with a SegTME model as the instance source (the classical baseline: no weights needed)
    c_res = analyze_paget(rgb, mpp, tiny, mode="panoptic", instance_source="classical")
    assert c_res.meta["instances"].startswith("classical")


def _former_merge_tissue_features(features, clip=None, mpp=None):
    """The former ``geometry.merge_tissue_features`` verbatim (reference for the split into
    ``clip_tissue_features`` + ``merge_tissue_geometries``)."""
    import shapely
    from shapely.geometry import mapping, shape

    from segtme.paget.geometry import _areal

    clip_g = shape(clip) if isinstance(clip, dict) else clip
    groups, props = {}, {}
    for f in features:
        name = f["properties"]["classification"]["name"]
        groups.setdefault(name, []).append(shape(f["geometry"]))
        props.setdefault(name, f["properties"])
    out = []
    for name, geoms in groups.items():
        g = shapely.union_all(geoms)
        if clip_g is not None:
            g = _areal(g.intersection(clip_g))
        if g is None or g.is_empty:
            continue
        p = dict(props[name])
        meas = {"Area px^2": round(float(g.area), 2)}
        if mpp:
            meas["Area µm^2"] = round(float(g.area) * mpp * mpp, 3)
        p["measurements"] = meas
        out.append({"type": "Feature", "id": "x", "geometry": mapping(g), "properties": p})
    return out


def _random_masks(n=150, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        m = rng.random((h, w)) < rng.uniform(0.15, 0.85)  # many corner-touching pixels (saddles)
        if m.any():
            yield m
    m = np.zeros((9, 9), bool)  # a ring closed only through a corner: one polygon + a touching hole
    m[1:8, 1] = m[1, 1:8] = m[7, 1:7] = m[1:7, 7] = True
    m[6, 7] = False
    m[7, 7] = False
    yield m


def test_traced_geometry_equals_the_former_union_of_pixel_squares():
    """mask_to_geometry traces the boundary (corner vertices only); the former GEOS union of the
    per-row pixel runs (``_union_geometry``) is the reference: same point set, same parts, valid."""
    import shapely

    from segtme.paget.geometry import _union_geometry

    for m in _random_masks():
        new, old = mask_to_geometry(m, 0.0), _union_geometry(m, 0.0)
        assert new.is_valid and new.equals(old)
        assert new.geom_type == old.geom_type and new.area == pytest.approx(old.area) == m.sum()
        assert len(getattr(new, "geoms", [new])) == len(getattr(old, "geoms", [old]))
        assert sum(len(p.interiors) for p in getattr(new, "geoms", [new])) == \
            sum(len(p.interiors) for p in getattr(old, "geoms", [old]))
        assert shapely.get_num_coordinates(new) <= shapely.get_num_coordinates(old)
        # simplified (Douglas-Peucker at 1 px, topology kept): near the exact outline
        # (not vertex-identical to the former: the former's collinear vertices change the result)
        simp = mask_to_geometry(m, 1.0)
        assert simp is None or simp.hausdorff_distance(new) <= 2.0 + 1e-9  # vertex Hausdorff
        # no collinear vertex: every vertex of every ring is a corner
        for p in getattr(new, "geoms", [new]):
            for ring in [p.exterior, *p.interiors]:
                c = np.asarray(ring.coords)[:-1]
                a, b = np.roll(c, 1, 0) - c, np.roll(c, -1, 0) - c
                assert (np.abs(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]) > 0).all()


def test_geojson_geometry_equals_the_former_nested_rounding():
    from segtme.paget.geometry import _geojson_geometry, _geojson_geometry_ref

    for m in list(_random_masks(30, seed=1)):
        g = mask_to_geometry(m, 0.0)
        for scale, off in ((1.0, (0.0, 0.0)), (2.0, (1000.5, 37.25)), (1 / 3, (0.125, 7.0))):
            assert _geojson_geometry(g, scale, off) == _geojson_geometry_ref(g, scale, off)


def test_tissue_merge_equals_the_former_merge():
    """clip per chunk (clip_tissue_features) + one union at the end (merge_tissue_geometries) =
    the former merge_tissue_features with a clip per chunk, then without (the chunked runner)."""
    from shapely.geometry import box, shape

    from segtme.paget.geometry import clip_tissue_features, merge_tissue_features, merge_tissue_geometries

    rng = np.random.default_rng(3)
    sem = rng.choice([pt.EPITHELIUM, pt.STROMA, pt.RED_BLOOD_CELL, 0], size=(60, 90), p=[0.4, 0.4, 0.1, 0.1])
    sem = np.repeat(np.repeat(sem, 2, 0), 2, 1).astype(np.uint8)  # 120 x 180 px, 2 px blocks
    chunks = [((0, 0, 100, 120), (0, 0, 90, 120)), ((80, 0, 180, 120), (90, 0, 180, 120))]  # (region, core)
    items, former = [], []
    for (x0, y0, x1, y1), core in chunks:
        feats = tissue_annotations(sem[y0:y1, x0:x1], offset_xy=(x0, y0), simplify_px=1.0, min_area_px=1.0)
        items += clip_tissue_features(feats, box(*core))
        former += _former_merge_tissue_features(feats, clip=box(*core), mpp=0.5)
        for a, b in zip(merge_tissue_features(feats, clip=box(*core), mpp=0.5),
                        _former_merge_tissue_features(feats, clip=box(*core), mpp=0.5)):
            # one geometry per class is clipped without the former's re-noding union: same point set
            assert shape(a["geometry"]).equals(shape(b["geometry"])) and a["properties"] == b["properties"]
    old = _former_merge_tissue_features(former, mpp=0.5)
    assert [f["geometry"] for f in merge_tissue_features(former, mpp=0.5)] == [f["geometry"] for f in old]
    for seams in (None, ([90.0], [])):  # GEOS union / noded coverage union along the core edge x = 90
        new = merge_tissue_geometries(items, mpp=0.5, seams=seams)
        assert len(new) == len(old) == 3
        for a, b in zip(new, old):
            assert a["properties"] == b["properties"]
            assert shape(a["geometry"]).equals(shape(b["geometry"]))


def test_union_on_seams_equals_the_geos_union():
    """Pieces of a map clipped to a 3 x 3 grid of cores, dissolved along the core edges = the GEOS
    union of the pieces (same point set, valid, normalised vertices identical here)."""
    import shapely
    from shapely.geometry import box

    from segtme.paget.geometry import _node_on_seams, union_on_seams

    rng = np.random.default_rng(5)
    m = rng.random((30, 30)) < 0.6
    m = np.repeat(np.repeat(m, 3, 0), 3, 1)  # 90 x 90 px
    whole = mask_to_geometry(m, 0.0)
    edges = [0.0, 31.0, 57.5, 90.0]  # one edge off the pixel grid: pieces get vertices there by clipping
    pieces = [whole.intersection(box(edges[j], edges[i], edges[j + 1], edges[i + 1])) for i in range(3) for j in range(3)]
    seams = (edges[1:-1], edges[1:-1])
    cov = shapely.coverage_union_all(_node_on_seams(pieces, *seams))
    assert cov.is_valid and cov.area == pytest.approx(m.sum())
    u = union_on_seams(pieces, *seams)
    assert u.equals(shapely.union_all(pieces)) and u.equals(whole)


def test_union_on_seams_of_polygons_only():
    """Pieces that are all plain Polygons (a class covering whole chunk cores) dissolve too
    (shapely's ragged arrays of Polygons have one offset level fewer than of MultiPolygons)."""
    import shapely
    from shapely.geometry import box

    from segtme.paget.geometry import union_on_seams

    pieces = [box(x0, y0, x0 + 50.5, y0 + 40.25) for x0 in (0.0, 50.5) for y0 in (0.0, 40.25)]
    u = union_on_seams(pieces, [50.5], [40.25])
    assert u.is_valid and u.area == pytest.approx(101.0 * 80.5) and u.equals(box(0, 0, 101.0, 80.5))
