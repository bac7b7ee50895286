"""PAGET pieces of issue #18: several image folders with held-out images in a distillation config,
the evaluation helpers, the shipped student (loads with no --weights, both modes, chunked path
with the one stitcher), and the mitosis features."""

from __future__ import annotations

import hashlib

import json

import numpy as np
import pytest

from segtme.errors import InputError


def test_image_specs_keys_mpp_and_held_out(shared_data, tmp_path):
    from segtme.paget.distill import list_images, val_keys

    specs = [
        {"path": str(shared_data / "consep-train" / "images"), "glob": "train_1*.png", "default_mpp": 0.25,
         "prefix": "c_", "val": ["train_10"]},
        {"path": str(shared_data / "nucls-sample" / "images"), "glob": "test_*.png", "mpp": 0.25, "prefix": "n_"},
    ]
    items = list_images(specs)
    keys = [k for k, _, _ in items]
    assert "c_train_10" in keys and all(k.startswith(("c_", "n_")) for k in keys)
    assert val_keys(specs) == ["c_train_10"]
    with pytest.raises(InputError, match="duplicate"):
        list_images([specs[1], specs[1]])
    with pytest.raises(InputError, match="unknown key"):
        list_images([{**specs[1], "colour": 1}])
    with pytest.raises(InputError, match="val_from"):
        val_keys([{**specs[1], "val_from": "elsewhere"}])


def test_class_agreement_and_instance_classes():
    from segtme.paget.evaluate import class_agreement, instance_classes, to_consep4

    label = np.array([[1, 1, 2, 255], [4, 4, 2, 2]], np.uint8)
    pred = np.array([[1, 2, 2, 4], [4, 0, 2, 2]], np.uint8)
    ag = class_agreement(pred, label)
    assert ag[1]["dice"] == pytest.approx(2 * 1 / (2 + 1))
    assert ag[2]["dice"] == pytest.approx(2 * 3 / (3 + 4))
    assert ag[4]["dice"] == pytest.approx(2 * 1 / (2 + 1))  # the ignored pixel's 4 is not counted
    inst = np.array([[1, 1, 0, 2], [1, 0, 2, 2]])
    lab = np.array([[4, 4, 0, 8], [5, 0, 8, 255]], np.uint8)
    assert instance_classes(inst, lab).tolist() == [4, 8]
    # epithelial cell -> Epithelial, lymphocyte -> Inflammatory, fibroblast -> Spindle, mitotic -> Other
    assert to_consep4(np.array([4, 8, 5, 13, 2, 255])).tolist() == [3, 2, 4, 1, 0, 0]


def test_mitotic_count_per_mm2_feature():
    from segtme.inference.nuclei import build_nuclei_table
    from segtme.paget.features import analyze_paget_features
    from segtme.taxonomy import get_taxonomy

    tax = get_taxonomy("paget13")
    inst = np.zeros((100, 100), np.int32)
    inst[10:15, 10:15] = 1
    inst[50:55, 50:55] = 2
    mit, epi = tax.names.index("Mitotic cell"), tax.names.index("Epithelial cell")
    t = build_nuclei_table(inst, tax, class_id=np.array([mit, epi]), mpp=0.5)
    t.extra["mitosis_atypical_prob"] = np.array([0.9, 0.1])
    sem = np.full((100, 100), 1, np.uint8)  # all epithelium: 100 x 100 px at 0.5 µm/px = 2500 µm²
    f = analyze_paget_features(t, sem)
    assert f["N_Mitotic_cell"] == 1 and f["N_Mitotic_atypical"] == 1
    assert f["mitotic_count_per_mm2"] == pytest.approx(1 / 2500e-6)
    t.mpp = None
    assert analyze_paget_features(t, sem)["mitotic_count_per_mm2"] is None


def test_shipped_student_runs_without_weights_and_chunks_agree(shared_data):
    """paget_s / paget_h load with no --weights; the chunked path (one stitcher) finds the same
    PAGET-S nuclei as the whole-image path on a real image."""
    from segtme.data.sample import read_rgb
    from segtme.models.registry import load_model, shipped_models
    from segtme.paget.runner import analyze_paget

    for name in ("paget_s", "paget_h", "paget_s_b0", "paget_h_b0"):
        assert name in shipped_models(), f"{name} is not shipped"
    lm = load_model("paget_s", "cpu")
    assert lm.source.endswith("paget_b0.safetensors")
    assert load_model("paget_h", "cpu").config.extra["mode"] == "panoptic"
    rgb = read_rgb(shared_data / "consep-train" / "images" / "train_3.png")[:640, :640]
    whole = analyze_paget(rgb, 0.25, lm, mode="semantic")
    chunked = analyze_paget(rgb, 0.25, lm, mode="semantic", chunk_work=160)
    assert chunked.nuclei.meta["chunks"] > 1
    assert chunked.sem.shape == whole.sem.shape
    # one tile grid over the whole working image (engine.GridPredictor): a chunk's maps are the
    # whole image's maps cropped to it (up to the float16 copies of tiles shared by two chunks),
    # so the maps agree (measured 2026-12-02: 1.000; with a tile grid per chunk, before: 0.870)
    assert (chunked.sem == whole.sem).mean() > 0.999
    from segtme.eval.metrics import pair_centroids

    r, _, ut, up = pair_centroids(whole.nuclei.centroid, chunked.nuclei.centroid, 3.0)
    # the nuclei differ only where the stitcher joins chunk-edge components (measured: 181 of
    # 181 / 182 paired)
    assert len(r) >= 0.97 * max(len(whole.nuclei), len(chunked.nuclei))
    # PAGET-H: the student's and the instance source's maps both come from one grid each
    lm_h = load_model("paget_h", "cpu")
    wh, ch = (analyze_paget(rgb, 0.25, lm_h, chunk_work=cw, mitosis=None) for cw in (2048, 160))
    assert ch.nuclei.meta["chunks"] > 1 and (ch.sem == wh.sem).mean() > 0.999
    rh, rph, _, _ = pair_centroids(wh.nuclei.centroid, ch.nuclei.centroid, 3.0)
    # the default's HV edge map has a fixed scale (postprocess.edge_scale, shipped 2026-12-08), so
    # the instance source's nuclei no longer depend on the region post-processed at once; measured
    # on this crop: 266 of 268 paired (with HoVer-Net's per-region min-max normalisation: 249 of 260)
    assert len(rh) >= 0.97 * max(len(wh.nuclei), len(ch.nuclei))
    assert (wh.nuclei.class_id[rh] == ch.nuclei.class_id[rph]).mean() > 0.98
    # the stitcher leaves no seam duplicates: no two chunked nuclei of one class within 2 px of
    # each other (PAGET-S components of *different* classes can nest — e.g. a 48 px lymphocyte blob
    # inside a fibroblast ring, 250 px from any seam, measured with the v2 student — so their
    # centroids may coincide without being a duplicate)
    from scipy.spatial.distance import pdist

    cls = np.asarray(chunked.nuclei.class_id)
    for c in np.unique(cls):
        xy = chunked.nuclei.centroid[cls == c]
        assert len(xy) < 2 or pdist(xy).min() > 2.0
    # the same tissue classes, apart from small regions that flip with the window (v2: a small
    # red-blood-cell region only in the chunked map): every class with >= 2 % of the tissue area
    # in one result is present in the other
    def major(feats):
        area = {f["properties"]["classification"]["name"]: f["properties"]["measurements"]["Area px^2"] for f in feats}
        tot = sum(area.values())
        return {k for k, v in area.items() if v >= 0.02 * tot}, set(area)

    (mw, aw), (mc, ac) = major(whole.tissue_features), major(chunked.tissue_features)
    assert mw and mw <= ac and mc <= aw


def test_shipped_configs_name_their_teachers_and_unlearned_classes():
    from segtme.models.config import ModelConfig
    from segtme.models.registry import shipped_models

    cfg = ModelConfig.from_json(shipped_models()["paget_h"])
    ex = cfg.extra
    assert ex["instance_source"] == "default" and ex["mitosis"] == "mitosis"
    # the opt-in guided PAGET-H: paget_h_shared's weights, its own nuclei, the guided vote (docs/paget.md)
    g = ModelConfig.from_json(shipped_models()["paget_h_guided"])
    assert g.arch == "paget_uperhover" and g.weights == "paget_h_shared.safetensors"
    assert "instance_source" not in g.extra and g.extra["nucleus_class_vote"] == "guided"
    assert g.extra["mitosis"] == "mitosis" and g.extra["unlearned_classes"] == ex["unlearned_classes"]
    assert set(ex["unlearned_classes"]) == {"Smooth muscle", "Endothelial cell", "Plasma cell", "Myeloid cell",
                                            "Eosinophil", "Neutrophil"}
    assert "Mitotic cell" in ex["teachers"] and "Epithelial cell" in ex["teachers"]
    json.dumps(ex)


#: digest of the stage-3 default nucleus model's tensors (see the test below)
STAGE3_NUCLEUS_SHA256 = "3f09ecd902037c76b634690aa8a921dfccb5de6e48b7bf53cd1e86705e4569aa"


def test_shipped_paget_h_shared_is_the_default_model_plus_a_tme_head(shared_data, monkeypatch):
    """``paget_h_shared`` (configs/paget_h_shared.toml) loads with no --weights, carries the
    stage-3 default nucleus model (shipped as ``default`` until 2026-12-08, the model its TME head
    was trained on) unchanged in its nucleus heads, names its teachers / unlearned classes, and as
    PAGET-H gives that model's nuclei with PAGET classes from one forward pass."""
    import torch

    from segtme.data.sample import read_rgb
    from segtme.models.config import ModelConfig
    from segtme.models.registry import WEIGHTS_DIR, load_model, read_state_dict, shipped_models
    from segtme.paget.runner import analyze_paget
    from segtme.taxonomy import PAGET13

    cfg = ModelConfig.from_json(shipped_models()["paget_h_shared"])
    ex = cfg.extra
    assert ex["mode"] == "panoptic" and ex["mitosis"] == "mitosis" and "instance_source" not in ex
    assert set(ex["unlearned_classes"]) == {"Smooth muscle", "Endothelial cell", "Plasma cell", "Myeloid cell",
                                            "Eosinophil", "Neutrophil"}
    assert (cfg.tile_size, cfg.tile_overlap) == (512, 32)  # the default model's tiling: its nuclei
    monkeypatch.setenv("SEGTME_RUNTIME", "torch")  # the torch module's tensors (not its ONNX graph)
    lm = load_model("paget_h_shared", "cpu")
    own = {("heads.sem." + k[len("heads.nuc."):] if k.startswith("heads.nuc.") else k): v
           for k, v in lm.module.state_dict().items() if not k.startswith("heads.sem.")}
    # the nucleus model's 214 tensors (BatchNorm buffers included), digested in key order: the
    # value of python/segtme/models/weights/default.safetensors at commits d8fe50e..e800180 (stage 3)
    h = hashlib.sha256()
    for k in sorted(own):
        a = np.ascontiguousarray(own[k].numpy())
        h.update(k.encode()); h.update(str(a.dtype).encode()); h.update(a.tobytes())
    assert len(own) == 214 and h.hexdigest() == STAGE3_NUCLEUS_SHA256
    # ... which is no longer the shipped default (stage 5 since 2026-12-08): PAGET-H keeps the
    # nucleus model its TME head was trained on
    shipped = read_state_dict(WEIGHTS_DIR / "default.safetensors")
    assert set(shipped) == set(own) and not all(torch.equal(own[k], torch.as_tensor(shipped[k])) for k in own)
    rgb = read_rgb(shared_data / "consep-train" / "images" / "train_3.png")[:640, :640]
    res = analyze_paget(rgb, 0.25, lm, mitosis=None)
    assert res.meta["instances"] == "paget_h_shared (its own nucleus heads)"
    names = {PAGET13.names[c] for c in np.unique(res.nuclei.class_id)}
    assert len(res.nuclei) > 100 and "Epithelial cell" in names and len(names) >= 2
    assert res.tissue_features and res.features is not None


def test_tissue_pieces_of_a_core_are_the_clipped_tissue_annotations(shared_data):
    """``geometry.tissue_pieces`` (the chunked runner's tissue: the core + 16 px traced, clipped,
    no GeoJSON round trip) = ``clip_tissue_features(tissue_annotations(whole map), core)``, per
    class within 1e-3 of the area (IoU >= 0.999), on the shipped paget_h_shared's map of a PAGET
    training image (CoNSeP train_1: not held out), and the pieces are valid polygons."""
    from shapely.geometry import box

    from segtme.data.sample import read_rgb
    from segtme.inference.maps import class_map
    from segtme.models.registry import load_model
    from segtme.paget.geometry import clip_tissue_features, fill_tissue_under_nuclei, tissue_annotations, tissue_pieces
    from segtme.paget.runner import predict_working_maps

    lm = load_model("paget_h_shared", "cpu")
    maps, rgb_w, _ = predict_working_maps(lm, read_rgb(shared_data / "consep-train" / "images" / "train_1.png"), 0.25)
    sem = class_map(maps.prob, rgb_w.shape[:2], lm.config.io.sem_stride)
    filled = fill_tissue_under_nuclei(sem, lm.config.tax)
    core, off, sc = (96, 64, 420, 404), (1000.0, 2000.0), 2.0  # output px = 2 x working px + offset
    ref = clip_tissue_features(tissue_annotations(sem, scale=sc, offset_xy=off, min_area_px=100, tax=lm.config.tax,
                                                  filled=filled),
                               box(core[0] * sc + off[0], core[1] * sc + off[1], core[2] * sc + off[0], core[3] * sc + off[1]))
    got = tissue_pieces(filled, core, scale=sc, offset_xy=off, min_area_px=100, tax=lm.config.tax)
    assert len(ref) >= 2 and [n for n, _, _ in got] == [n for n, _, _ in ref]
    for (name, props, g), (_, rprops, r) in zip(got, ref):
        assert g.is_valid and props["classification"] == rprops["classification"] and props["name"] == rprops["name"]
        assert abs(g.area - r.area) <= 1e-3 * r.area, name
        assert g.intersection(r).area / g.union(r).area >= 0.999, name
