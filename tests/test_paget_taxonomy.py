"""PAGET taxonomy: the 13 classes, the three-level hierarchy and Table 5's evaluation mappings."""

from __future__ import annotations

import numpy as np
import pytest

from segtme.paget import taxonomy as pt
from segtme.taxonomy import PAGET13, get_taxonomy


def test_thirteen_components_plus_background_with_levels():
    assert PAGET13.num_classes == 14 and PAGET13.names[0] == "Background"
    tissue = {PAGET13.names[i] for i in pt.tissue_classes()}
    nuclei = {PAGET13.names[i] for i in pt.nucleus_classes()}
    assert tissue == {"Epithelium", "Stroma", "Smooth muscle", "Red blood cell"}
    assert nuclei == {"Epithelial cell", "Fibroblast", "Endothelial cell", "Lymphocyte", "Plasma cell",
                      "Myeloid cell", "Eosinophil", "Neutrophil", "Mitotic cell"}
    assert all(PAGET13.by_name(n).parent == "Leukocyte" for n in pt.LEUKOCYTE_SUBTYPES)
    # round trip through the config dict keeps the evaluation mappings
    assert get_taxonomy(PAGET13.to_dict()).eval_mappings["paget_coarse"]["Plasma cell"] == "Leukocyte"


def test_three_level_hierarchy():
    assert [pt.level_of(n) for n in ("Epithelium", "Stroma", "Smooth muscle")] == [1, 1, 1]
    assert [pt.level_of(n) for n in ("Leukocyte", "Endothelial cell", "Red blood cell", "Epithelial cell")] == [2] * 4
    assert all(pt.level_of(n) == 3 and pt.parent_of(n) == "Leukocyte" for n in pt.LEUKOCYTE_SUBTYPES)
    assert set(pt.children_of("Leukocyte")) == set(pt.LEUKOCYTE_SUBTYPES)
    assert len(pt.FLAT_CLASSES) == 9  # the ablation's directly predicted cell types
    with pytest.raises(KeyError):
        pt.level_of("Macrophage")


def test_table5_mappings_to_coarser_label_sets():
    ids = np.arange(14)
    coarse = get_taxonomy("paget_coarse")
    m = pt.map_labels(ids, "paget_coarse")
    leu = coarse.by_name("Leukocyte").id
    assert all(m[pt.ID[n]] == leu for n in pt.LEUKOCYTE_SUBTYPES)  # lym + pls + mye + eos + neu -> leukocyte
    assert m[pt.FIBROBLAST] == m[pt.ENDOTHELIAL_CELL] == coarse.by_name("Connective tissue cell").id
    pn = get_taxonomy("pannuke6")
    p = pt.map_labels(ids, "pannuke6")
    assert all(p[pt.ID[n]] == pn.by_name("Inflammatory").id for n in pt.LEUKOCYTE_SUBTYPES)
    assert p[pt.FIBROBLAST] == pn.by_name("Connective").id and p[pt.EPITHELIAL_CELL] == pn.by_name("Neoplastic").id
    assert p[pt.STROMA] == 0  # tissue is not a PanNuke nucleus
    cs = pt.map_labels(ids, "consep4")
    assert cs[pt.ENDOTHELIAL_CELL] == get_taxonomy("consep4").by_name("Spindle-shaped").id
    # label maps keep the ignore value
    lab = np.array([[pt.LYMPHOCYTE, pt.IGNORE_INDEX]], np.uint8)
    assert pt.map_labels(lab, "nucleus1").tolist() == [[1, pt.IGNORE_INDEX]]
    # PanNuke ground truth: neoplastic and non-neoplastic epithelial both meet PAGET's epithelial cell
    gt = np.array([pn.by_name("Epithelial").id, pn.by_name("Neoplastic").id, pn.by_name("Dead").id])
    assert pt.merge_ground_truth(gt, "pannuke6").tolist() == [pn.by_name("Neoplastic").id] * 2 + [pn.by_name("Dead").id]


def test_eval_membership_is_multi_valued():
    ids = np.array([pt.LYMPHOCYTE, pt.PLASMA_CELL, pt.EPITHELIAL_CELL, pt.EPITHELIUM, pt.FIBROBLAST])
    assert pt.eval_membership(ids, "Leukocyte").tolist() == [True, True, False, False, False]
    assert pt.eval_membership(ids, "Lymphocyte").tolist() == [True, False, False, False, False]
    assert pt.eval_membership(ids, "Epithelial tissue").tolist() == [False, False, True, True, False]
    pn = get_taxonomy("pannuke6")
    g = np.array([pn.by_name(n).id for n in ("Neoplastic", "Epithelial", "Inflammatory", "Connective")])
    assert pt.eval_membership(g, "Epithelial cell", "pannuke6").tolist() == [True, True, False, False]
    assert pt.eval_membership(g, "Leukocyte", "pannuke6").tolist() == [False, False, True, False]
    assert "Mitotic cell" in pt.supported_eval_classes()
    with pytest.raises(KeyError):
        pt.eval_membership(g, "Lymphocyte", "pannuke6")  # PanNuke has no lymphocyte class ("-" in Table 5)
