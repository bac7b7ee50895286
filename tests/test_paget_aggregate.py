"""PAGET aggregation: each of the five steps on hand-made teacher outputs with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segtme.paget import aggregate as ag
from segtme.paget import taxonomy as pt
from segtme.paget.teachers import (
    FunctionTeacher,
    InstanceOutput,
    StoredInstanceSource,
    StoredMapTeacher,
    StoredMitoses,
    TeacherInput,
    run_teachers,
)

H, W = 40, 60
NEG = -5.0


def image() -> np.ndarray:
    """Left 10 columns: white glass; elsewhere pink tissue."""
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:] = (200, 120, 170)
    rgb[:, :10] = (250, 250, 250)
    return rgb


def nuclei() -> np.ndarray:
    """Five 6x6 square nuclei at known places (ids 1..5), all in tissue."""
    inst = np.zeros((H, W), np.int32)
    for i, (r, c) in enumerate([(5, 15), (5, 30), (5, 45), (25, 15), (25, 30)], start=1):
        inst[r : r + 6, c : c + 6] = i
    return inst


def neg() -> np.ndarray:
    return np.full((H, W), NEG, np.float32)


def box(inst: np.ndarray, i: int) -> np.ndarray:
    return inst == i


# --------------------------------------------------------------------------- step 1
def test_step1_background_is_bright_glass_and_nuclei_are_never_background():
    rgb, inst = image(), nuclei()
    rgb[5:11, 15:21] = 255  # a (pathologically) white nucleus: still a nucleus
    bg, region, thr = ag.step1_spatial(rgb, inst, sigma_px=1.0)
    assert bg[:, :8].all()  # glass (a margin of 2 px for the blur at the edge)
    assert not bg[15:, 12:].any()
    assert not (bg & (inst > 0)).any()
    assert not (region & (inst > 0)).any()
    assert (bg | region | (inst > 0)).all()
    assert 0 < thr < 1


def test_step1_brightness_floor_keeps_pale_tissue():
    rgb = np.full((H, W, 3), 235, np.uint8)  # pale tissue ...
    rgb[:, :30] = (160, 90, 140)  # ... next to dark tissue: Otsu alone calls the pale half glass
    inst = np.zeros((H, W), np.int32)
    bg_otsu, _, _ = ag.step1_spatial(rgb, inst, 1.0)
    bg_floor, _, _ = ag.step1_spatial(rgb, inst, 1.0, background_min_gray=0.95)
    assert bg_otsu[:, 35:].all() and not bg_floor.any()


# --------------------------------------------------------------------------- step 2
def test_step2_eq1_argmax_positive_else_stroma():
    epi, sm = neg(), neg()
    epi[:, :20] = 2.0
    sm[:, :20] = 1.0  # epithelium wins
    sm[:, 20:40] = 3.0
    epi[:, 20:40] = 1.0  # smooth muscle wins
    t = ag.step2_tissue({"Epithelium": epi, "Smooth muscle": sm}, (H, W))
    assert (t[:, :20] == pt.EPITHELIUM).all()
    assert (t[:, 20:40] == pt.SMOOTH_MUSCLE).all()
    assert (t[:, 40:] == pt.STROMA).all()  # both logits <= 0
    assert (ag.step2_tissue({}, (H, W)) == pt.STROMA).all()  # no tissue teacher: stroma default


# --------------------------------------------------------------------------- step 3
def test_step3_pixel_override_follows_hierarchy():
    inst = nuclei()
    region = inst == 0
    tissue = np.full((H, W), pt.STROMA)
    leu, lym, rbc, endo = neg(), neg(), neg(), neg()
    leu[box(inst, 1)] = 2.0
    lym[box(inst, 1)] = 1.0  # nucleus 1: leukocyte then lymphocyte -> lymphocyte pixels
    lym[box(inst, 2)] = 4.0  # nucleus 2: lymphocyte fires without a leukocyte parent
    endo[box(inst, 2)] = 1.0
    rbc[30:40, 50:60] = 3.0  # red blood cells on tissue pixels (Ω')
    leu[30:40, 40:50] = 3.0  # leukocyte logits outside nuclei: ignored (nucleus-scope class)
    logits = {"Leukocyte": leu, "Lymphocyte": lym, "Red blood cell": rbc, "Endothelial cell": endo}
    s, from_t = ag.step3_pixels(inst, region, tissue, logits)
    assert (s[box(inst, 1)] == pt.LYMPHOCYTE).all()
    assert (s[box(inst, 2)] == pt.ENDOTHELIAL_CELL).all()  # strict: level 3 cannot override endothelial
    assert (s[30:40, 50:60] == pt.RED_BLOOD_CELL).all()
    assert (s[30:40, 40:50] == pt.STROMA).all()
    assert from_t[box(inst, 1)].all() and not from_t[box(inst, 5)].any()
    # non-strict: a firing subtype overrides any nucleus pixel
    s2, _ = ag.step3_pixels(inst, region, tissue, logits, strict_hierarchy=False)
    assert (s2[box(inst, 2)] == pt.LYMPHOCYTE).all()
    # partial hierarchy (levels 1-2 only): no subtypes
    s3, _ = ag.step3_pixels(inst, region, tissue, logits, max_level=2)
    assert (s3[box(inst, 1)] == pt.LEUKOCYTE).all()


def test_step3_within_level_conflict_takes_the_larger_logit():
    inst = nuclei()
    leu, eos, neu = neg(), neg(), neg()
    leu[box(inst, 1)] = 1.0
    eos[box(inst, 1)] = 2.0
    neu[box(inst, 1)] = 3.0
    s, _ = ag.step3_pixels(inst, inst == 0, np.full((H, W), pt.STROMA), {"Leukocyte": leu, "Eosinophil": eos, "Neutrophil": neu})
    assert (s[box(inst, 1)] == pt.NEUTROPHIL).all()


def test_step3_nucleus_majority_and_leukocyte_refinement():
    inst = nuclei()
    s = np.zeros((H, W), np.int64)
    n1 = np.argwhere(box(inst, 1))  # 36 pixels: 20 leukocyte, 10 lymphocyte, 6 plasma -> lymphocyte
    for k, (r, c) in enumerate(n1):
        s[r, c] = pt.LEUKOCYTE if k < 20 else (pt.LYMPHOCYTE if k < 30 else pt.PLASMA_CELL)
    s[box(inst, 2)] = pt.LEUKOCYTE  # leukocyte, no subtype -> stays leukocyte
    n3 = np.argwhere(box(inst, 3))  # 20 endothelial vs 16 leukocyte -> endothelial (majority)
    for k, (r, c) in enumerate(n3):
        s[r, c] = pt.ENDOTHELIAL_CELL if k < 20 else pt.LEUKOCYTE
    n4 = np.argwhere(box(inst, 4))  # 30 eosinophil + 6 background-labelled -> eosinophil
    for k, (r, c) in enumerate(n4):
        s[r, c] = pt.EOSINOPHIL if k < 30 else 0
    y = ag.step3_nuclei(inst, s)
    assert y[1] == pt.LYMPHOCYTE
    assert y[2] == pt.LEUKOCYTE
    assert y[3] == pt.ENDOTHELIAL_CELL
    assert y[4] == pt.EOSINOPHIL
    assert y[5] == 0  # no label at all: unclassified


def test_step3_baseline_is_refined_by_teachers():
    inst = nuclei()
    s = np.zeros((H, W), np.int64)
    from_t = np.zeros((H, W), bool)
    s[box(inst, 1)] = pt.CONNECTIVE  # HoverNet says connective ...
    r, c = np.argwhere(box(inst, 1))[0]
    s[r, c], from_t[r, c] = pt.ENDOTHELIAL_CELL, True  # ... one endothelial teacher pixel wins
    s[box(inst, 2)] = pt.CONNECTIVE
    y = ag.step3_nuclei(inst, s, from_t)
    assert y[1] == pt.ENDOTHELIAL_CELL and y[2] == pt.CONNECTIVE


# --------------------------------------------------------------------------- step 4
def test_step4_label_completion():
    inst = nuclei()
    tissue = np.full((H, W), pt.STROMA)
    tissue[:20] = pt.EPITHELIUM  # nuclei 1-3 sit in epithelium, 4-5 in stroma
    y = np.array([0, 0, pt.LYMPHOCYTE, pt.CONNECTIVE, 0, pt.CONNECTIVE])
    ctx = ag.nucleus_tissue_context(inst, tissue)
    assert list(ctx[1:]) == [pt.EPITHELIUM] * 3 + [pt.STROMA] * 2
    out = ag.step4_complete(y, ctx)
    assert out[1] == pt.EPITHELIAL_CELL  # (a) unclassified in epithelium
    assert out[2] == pt.LYMPHOCYTE  # classified: untouched
    assert out[3] == pt.FIBROBLAST  # (b) connective-only
    assert out[4] == 0  # unclassified in stroma: stays unresolved
    assert out[5] == pt.FIBROBLAST


# --------------------------------------------------------------------------- step 5
def test_step5_mitosis_discs_reclassify_overlapping_nuclei():
    inst = nuclei()  # nucleus 1 covers rows 5-10, cols 15-20
    y = np.array([0, pt.EPITHELIAL_CELL, pt.EPITHELIAL_CELL, pt.FIBROBLAST, pt.LYMPHOCYTE, 0])
    # a detection at x = 24: nucleus 1's last pixel centre is x = 20.5 (3.5 px away), nucleus 2's
    # first is x = 30.5 (6.5 px away)
    pt_xy = np.array([[24.0, 8.5]])
    assert ag.step5_mitosis(y, inst, pt_xy, radius_px=3.0)[1] == pt.EPITHELIAL_CELL
    out = ag.step5_mitosis(y, inst, pt_xy, radius_px=4.0)
    assert out[1] == pt.MITOTIC_CELL and out[2] == pt.EPITHELIAL_CELL
    # the paper's 30 px disc at (33, 38) reaches nuclei 2, 4, 5 but not 1 and 3 (30.2 px away)
    out30 = ag.step5_mitosis(y, inst, np.array([[33.0, 38.0]]), radius_px=30.0)
    assert [bool(out30[i] == pt.MITOTIC_CELL) for i in range(1, 6)] == [False, True, False, True, True]
    d = ag.mitosis_discs((H, W), np.array([[10.0, 10.0]]), 3.0)
    assert d.sum() == 32 and d[9, 9] and not d[6, 6]


# --------------------------------------------------------------------------- full pipelines
def scene():
    """Hand-made teachers for the five nuclei + tissue; returns (rgb, inst, logits, baseline, mitoses)."""
    rgb, inst = image(), nuclei()
    epi, sm, leu, lym, pls, endo, rbc, eos = (neg() for _ in range(8))
    epi[:20, 10:] = 2.0  # top half epithelium
    sm[20:, 40:] = 1.0  # bottom right smooth muscle
    rbc[32:40, 12:20] = 3.0  # red blood cells in bottom-left stroma
    leu[box(inst, 2)] = 2.0
    pls[box(inst, 2)] = 1.5  # nucleus 2: leukocyte -> plasma cell
    lym[box(inst, 4)] = 5.0  # nucleus 4: lymphocyte without leukocyte ...
    endo[box(inst, 4)] = 0.5  # ... on an endothelial nucleus: hierarchy keeps endothelial
    eos[box(inst, 5)] = 1.0  # nucleus 5: eosinophil without parent, nothing else -> unresolved
    logits = {
        "Epithelium": epi, "Smooth muscle": sm, "Red blood cell": rbc, "Leukocyte": leu,
        "Lymphocyte": lym, "Plasma cell": pls, "Endothelial cell": endo, "Eosinophil": eos,
    }
    baseline = np.array([0, 0, pt.LEUKOCYTE, pt.CONNECTIVE, 0, 0])  # HoverNet: nucleus 3 connective
    return rgb, inst, logits, baseline, np.array([[48.0, 8.0]])  # mitosis on nucleus 3


def test_hierarchical_aggregation_end_to_end():
    rgb, inst, logits, baseline, mit = scene()
    res = ag.aggregate_hierarchical(rgb, inst, logits, baseline=baseline, mitoses_xy=mit,
                                    params=ag.AggregationParams(sigma_px=1.0, mitosis_radius_px=3.0))
    y = res.nucleus_label
    assert y[1] == pt.EPITHELIAL_CELL  # unclassified in epithelium (4a)
    assert y[2] == pt.PLASMA_CELL  # leukocyte refined to plasma cell (3)
    assert y[3] == pt.MITOTIC_CELL  # connective -> fibroblast (4b), then mitosis (5)
    assert y[4] == pt.ENDOTHELIAL_CELL
    assert y[5] == 0  # unresolved
    lab = res.label
    assert (lab[:, :8] == pt.BACKGROUND).all()
    assert (lab[box(inst, 5)] == pt.IGNORE_INDEX).all()
    assert (lab[box(inst, 2)] == pt.PLASMA_CELL).all()
    assert lab[2, 30] == pt.EPITHELIUM and lab[35, 30] == pt.STROMA and lab[35, 50] == pt.SMOOTH_MUSCLE
    assert (lab[34:40, 13:20] == pt.RED_BLOOD_CELL).all()
    assert set(np.unique(lab)) <= set(range(14)) | {pt.IGNORE_INDEX}
    # unresolved -> tissue label instead of ignore
    res_t = ag.aggregate_hierarchical(rgb, inst, logits, baseline=baseline,
                                      params=ag.AggregationParams(sigma_px=1.0, unresolved="tissue"))
    assert (res_t.label[box(inst, 5)] == pt.STROMA).all()
    assert res.stats["n_nuclei"] == 5 and res.stats["unclassified_nuclei"] == 1


def test_flat_aggregation_differs_where_the_hierarchy_matters():
    rgb, inst, logits, baseline, mit = scene()
    flat = ag.aggregate_flat(rgb, inst, logits, baseline=baseline, mitoses_xy=mit,
                             params=ag.AggregationParams(sigma_px=1.0, mitosis_radius_px=3.0))
    y = flat.nucleus_label
    assert y[4] == pt.LYMPHOCYTE  # max logit 5 (lymphocyte) beats endothelial 0.5: no hierarchy
    assert y[5] == pt.EOSINOPHIL  # eosinophil fires alone: accepted without a leukocyte parent
    # nucleus 2 lies in epithelium: flat lets the epithelium logit (2) beat plasma cell (1.5), so
    # no cell type wins and the HoverNet baseline (leukocyte, unresolved) remains; the hierarchy
    # gave plasma cell
    assert y[2] == pt.LEUKOCYTE
    assert y[1] == pt.EPITHELIAL_CELL and y[3] == pt.MITOTIC_CELL  # same rules
    assert flat.method == "flat"
    # tissue is the same as the hierarchical result outside nuclei
    hier = ag.aggregate_hierarchical(rgb, inst, logits, baseline=baseline, params=ag.AggregationParams(sigma_px=1.0))
    reg = flat.region
    assert (flat.label[reg] == hier.label[reg]).all()
    with pytest.raises(ValueError):
        ag.aggregate("vote", rgb=rgb, inst=inst, logits=logits)


def test_bad_teacher_output_is_rejected():
    rgb, inst = image(), nuclei()
    with pytest.raises(ValueError, match="shape"):
        ag.aggregate_hierarchical(rgb, inst, {"Epithelium": np.zeros((3, 3))})
    with pytest.raises(ValueError, match="not a PAGET"):
        ag.aggregate_hierarchical(rgb, inst, {"Tumour": np.zeros((H, W))})


# --------------------------------------------------------------------------- plug-ins
def test_plugins_function_stored_and_instances(tmp_path):
    from PIL import Image

    rgb, inst = image(), nuclei()
    img = TeacherInput(rgb, 0.25, key="img1")
    # a function teacher (any model) giving sigmoid probabilities
    probs = np.zeros((2, H, W), np.float32) + 0.1
    probs[0, :20] = 0.9
    ft = FunctionTeacher("tissue", ("Epithelium", "Smooth muscle"), lambda im: probs, kind="prob")
    # stored maps: a .npy logits file and a PNG mask
    leu = neg()
    leu[box(inst, 2)] = 3.0
    np.save(tmp_path / "img1.cd45.npy", leu)
    Image.fromarray((box(inst, 4) * 255).astype(np.uint8)).save(tmp_path / "img1.erg.png")
    t1 = StoredMapTeacher("cd45", tmp_path, ("Leukocyte",))
    t2 = StoredMapTeacher("erg", tmp_path, ("Endothelial cell",), pattern="{key}.{name}.png", kind="mask")
    logits = run_teachers([ft, t1, t2], img)
    assert set(logits) == {"Epithelium", "Smooth muscle", "Leukocyte", "Endothelial cell"}
    assert logits["Epithelium"][0, 30] > 0 > logits["Epithelium"][30, 30]
    # stored instances with non-sequential ids and per-instance CoNSeP classes -> baseline
    Image.fromarray((inst * 7).astype(np.uint16)).save(tmp_path / "img1_inst.png")
    (tmp_path / "img1_class.json").write_text(json.dumps({"7": 3, "21": 4, "35": 2}))
    src = StoredInstanceSource(tmp_path, classes_pattern="{key}_class.json", classes_taxonomy="consep4")
    out = src.instances(img)
    seq = ag.relabel_sequential(out.inst)
    assert (seq == inst).all()
    base = out.baseline(seq)
    assert list(base) == [0, pt.EPITHELIAL_CELL, 0, pt.CONNECTIVE, 0, pt.LEUKOCYTE]
    (tmp_path / "img1.mitoses.json").write_text(json.dumps({"points": [[48, 8]]}))
    mit = StoredMitoses(tmp_path).detect(img)
    res = ag.aggregate_hierarchical(rgb, out.inst, logits, baseline=base, mitoses_xy=mit,
                                    params=ag.AggregationParams(sigma_px=1.0, mitosis_radius_px=3.0))
    # 1: CoNSeP epithelial baseline; 2: CD45 teacher, no subtype teacher -> leukocyte (unresolved);
    # 3: spindle -> connective -> fibroblast -> mitosis; 4: endothelial mask; 5: inflammatory baseline
    assert list(res.nucleus_label[1:]) == [
        pt.EPITHELIAL_CELL, pt.LEUKOCYTE, pt.MITOTIC_CELL, pt.ENDOTHELIAL_CELL, pt.LEUKOCYTE,
    ]
    assert (res.label[box(inst, 2)] == pt.IGNORE_INDEX).all()
    with pytest.raises(Exception, match="unknown class"):
        FunctionTeacher("bad", ("Macrophage",), lambda im: probs)
    assert InstanceOutput(inst).baseline(inst) is None
