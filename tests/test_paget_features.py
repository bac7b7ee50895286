"""13-class TME features (on top of the shared analyze_tme_from_nuclei) and the PAGET token axes."""

from __future__ import annotations

import numpy as np
import pytest

from segtme.inference.nuclei import build_nuclei_table
from segtme.paget import taxonomy as pt
from segtme.paget.features import analyze_paget_features, paget_tokens, translate_paget_tokens
from segtme.tme.features import registered_feature_groups


def scene():
    """60 x 100 px map: left half epithelium, right half stroma (a 10 px band of smooth muscle at
    the far right); 3x3 px nuclei on a grid with known classes and places."""
    sem = np.full((60, 100), pt.STROMA, np.uint8)
    sem[:, :50] = pt.EPITHELIUM
    sem[:, 90:] = pt.SMOOTH_MUSCLE
    inst = np.zeros(sem.shape, np.int32)
    classes = []
    spots = [  # (row, col, class)
        (5, 5, pt.EPITHELIAL_CELL), (5, 15, pt.EPITHELIAL_CELL), (5, 25, pt.MITOTIC_CELL),
        (20, 5, pt.LYMPHOCYTE), (20, 15, pt.LYMPHOCYTE),  # intraepithelial lymphocytes
        (20, 60, pt.LYMPHOCYTE), (20, 70, pt.PLASMA_CELL), (30, 60, pt.MYELOID_CELL),
        (30, 70, pt.EOSINOPHIL), (40, 60, pt.NEUTROPHIL), (40, 70, pt.FIBROBLAST), (50, 60, pt.ENDOTHELIAL_CELL),
    ]
    for i, (r, c, k) in enumerate(spots, start=1):
        inst[r : r + 3, c : c + 3] = i
        sem[r : r + 3, c : c + 3] = k
        classes.append(k)
    table = build_nuclei_table(inst, pt.TAXONOMY, class_id=np.array(classes), mpp=0.5)
    return table, sem


def test_paget_group_is_registered_for_paget13_only():
    assert "paget13" in registered_feature_groups("paget13")
    assert "paget13" not in registered_feature_groups("pannuke6")


def test_thirteen_class_features_have_known_values():
    table, sem = scene()
    f = analyze_paget_features(table, sem)
    # core features still there (shared implementation): epithelial + mitotic are the tumour role
    assert f["N_total"] == 12 and f["N_Neoplastic"] == 3 and f["N_Inflammatory"] == 7
    assert f["N_Leukocyte"] == 7 and f["N_Granulocyte"] == 2
    assert f["frac_Lymphocyte_of_Leukocyte"] == pytest.approx(3 / 7)
    assert f["frac_Plasma_cell_of_Leukocyte"] == pytest.approx(1 / 7)
    assert f["frac_Myeloid_cell_of_Leukocyte"] == pytest.approx(1 / 7)
    assert f["frac_Granulocyte_of_Leukocyte"] == pytest.approx(2 / 7)
    assert f["r_Mitotic_of_Epithelial"] == pytest.approx(1 / 3)
    assert f["tissue_area_px"] == 6000 and f["tissue_area_um2"] == pytest.approx(1500)
    assert f["area_frac_Epithelium"] == pytest.approx(0.5)
    assert f["area_frac_Smooth_muscle"] == pytest.approx(0.1)
    assert f["area_frac_Stroma"] == pytest.approx(0.4)
    assert f["N_Leukocyte_in_Epithelium"] == 2 and f["N_Leukocyte_in_Stroma"] == 5
    assert f["frac_Leukocyte_in_Epithelium"] == pytest.approx(2 / 7)
    assert f["frac_Lymphocyte_in_Epithelium"] == pytest.approx(2 / 3)


def test_tissue_features_are_undefined_with_a_reason_without_a_map():
    table, _ = scene()
    f = analyze_paget_features(table, None)
    assert f["area_frac_Epithelium"] is None and "semantic map" in f["undefined"]["area_frac_Epithelium"]
    assert f["frac_Lymphocyte_of_Leukocyte"] == pytest.approx(3 / 7)  # nucleus features do not need it


def test_paget_token_axes():
    table, sem = scene()
    f = analyze_paget_features(table, sem)
    t = paget_tokens(f)
    assert t["interpretation"] == {
        "Immune composition": "Granulocyte-rich",  # lym 3/7 (not > 0.6), plasma 1/7, myeloid 1/7, granulocyte 2/7
        "Tissue architecture": "Mixed tissue",  # epithelium 0.5 is not > 0.5, stroma 0.4
        "Smooth muscle": "Absent",  # 0.1 is not > 0.1
        "Immune location": "Mixed location",  # 0.1 <= 2/7 <= 0.3
    }
    assert t["generated_tokens"] == ["Granulocytic infiltrate"]
    full = translate_paget_tokens(f)
    assert "Immune composition" in full["interpretation"] and "Composition" in full["interpretation"]
    assert full["generated_tokens"][-1:] == t["generated_tokens"]
    empty = paget_tokens({"undefined": {}})
    assert empty["interpretation"]["Immune location"] == "Indeterminate" and empty["generated_tokens"] == []


def test_tme_report_of_a_paget13_table_carries_the_paget_axes_and_stays_grounded():
    """The shared report (what analyze / the server use) appends the PAGET axes for paget13
    tables only (registered token axes), and the template narrative has no unsupported claim."""
    from segtme.taxonomy import PANNUKE6
    from segtme.report import build_tme_report

    table, _ = scene()
    rep = build_tme_report(table)
    paget_axes = {"Immune composition", "Tissue architecture", "Smooth muscle", "Immune location"}
    assert paget_axes <= set(rep["interpretation"])
    assert rep["verifier"]["unsupported"] == []
    inst = np.zeros((8, 8), np.int32)
    inst[2:5, 2:5] = 1
    other = build_tme_report(build_nuclei_table(inst, PANNUKE6, class_id=np.array([1])))
    assert not paget_axes & set(other["interpretation"])
