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
    # paget_s / paget_h are shipped (the MiT-B0 student): they load without weights arguments
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
