"""Table 4 token rules (+ the immune-engagement axis): both sides of every threshold."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segtme.tme import AXES, translate_tme_to_bio_tokens
from segtme.tme.thresholds import DEFAULT_THRESHOLDS as T
from segtme.tme.tokens import INDETERMINATE, RULES


def base(**kw):
    """A feature dict in every axis's middle band (MPP unknown: thresholds in reference px)."""
    f = {
        "N_total": 100, "r_Neoplastic": 0.45, "r_Inflammatory": 0.20, "r_Connective": 0.20,
        "mean_dist_Inflammatory_to_Neoplastic": 40.0, "mean_spatial_entropy": 0.55,
        "mean_area_Neoplastic": 200.0, "fraction_engaged_immune": 0.35, "mpp": None, "undefined": {},
    }
    f.update(kw)
    return f


def label(axis, **kw):
    return translate_tme_to_bio_tokens(base(**kw))["interpretation"][axis]


CASES = [
    # Composition: r_neo > 0.60 / < 0.30 (strict), dominance by r_inf > r_conn
    ("Composition", {"r_Neoplastic": 0.61}, "High tumour purity"),
    ("Composition", {"r_Neoplastic": 0.60}, "Intermediate purity"),
    ("Composition", {"r_Neoplastic": 0.30}, "Intermediate purity"),
    ("Composition", {"r_Neoplastic": 0.29, "r_Inflammatory": 0.4, "r_Connective": 0.2}, "Low purity, immune-dominant"),
    ("Composition", {"r_Neoplastic": 0.29, "r_Inflammatory": 0.2, "r_Connective": 0.4}, "Low purity, stroma-dominant"),
    ("Composition", {"r_Neoplastic": 0.29, "r_Inflammatory": 0.3, "r_Connective": 0.3}, "Low purity, stroma-dominant"),
    # Immune status: r_inf > 0.30 hot, < 0.10 cold
    ("Immune status", {"r_Inflammatory": 0.31}, "Immune Hot"),
    ("Immune status", {"r_Inflammatory": 0.30}, "Moderate"),
    ("Immune status", {"r_Inflammatory": 0.10}, "Moderate"),
    ("Immune status", {"r_Inflammatory": 0.09}, "Immune Cold"),
    # Stromal status: r_conn > 0.50 desmoplastic, < 0.05 stroma-free
    ("Stromal status", {"r_Connective": 0.51}, "Desmoplastic"),
    ("Stromal status", {"r_Connective": 0.50}, "Intermediate stroma"),
    ("Stromal status", {"r_Connective": 0.05}, "Intermediate stroma"),
    ("Stromal status", {"r_Connective": 0.04}, "Stroma-free"),
    # Spatial interaction: mean dist < 20 px contact, > 60 px excluded
    ("Spatial interaction", {"mean_dist_Inflammatory_to_Neoplastic": 19.9}, "Direct contact"),
    ("Spatial interaction", {"mean_dist_Inflammatory_to_Neoplastic": 20.0}, "Proximal"),
    ("Spatial interaction", {"mean_dist_Inflammatory_to_Neoplastic": 60.0}, "Proximal"),
    ("Spatial interaction", {"mean_dist_Inflammatory_to_Neoplastic": 60.1}, "Excluded"),
    # Architecture: H > 0.70 high mixing, < 0.40 segregated
    ("Architecture", {"mean_spatial_entropy": 0.71}, "High mixing"),
    ("Architecture", {"mean_spatial_entropy": 0.70}, "Intermediate mixing"),
    ("Architecture", {"mean_spatial_entropy": 0.40}, "Intermediate mixing"),
    ("Architecture", {"mean_spatial_entropy": 0.39}, "Segregated"),
    # Morphology: area > 300 px^2 large, < 150 px^2 small
    ("Morphology", {"mean_area_Neoplastic": 300.5}, "Large/Pleomorphic"),
    ("Morphology", {"mean_area_Neoplastic": 300.0}, "Intermediate nuclear size"),
    ("Morphology", {"mean_area_Neoplastic": 150.0}, "Intermediate nuclear size"),
    ("Morphology", {"mean_area_Neoplastic": 149.5}, "Small/Monotonous"),
    # Immune engagement (seventh axis): > 0.50 tumour-engaged, < 0.20 bystander
    ("Immune engagement", {"fraction_engaged_immune": 0.51}, "Tumour-engaged"),
    ("Immune engagement", {"fraction_engaged_immune": 0.50}, "Partially engaged"),
    ("Immune engagement", {"fraction_engaged_immune": 0.20}, "Partially engaged"),
    ("Immune engagement", {"fraction_engaged_immune": 0.19}, "Bystander"),
]


@pytest.mark.parametrize("axis,kw,expected", CASES)
def test_rule(axis, kw, expected):
    out = translate_tme_to_bio_tokens(base(**kw))
    assert out["interpretation"][axis] == expected
    for tok in RULES[(axis, expected)].tokens:  # the rule's tokens are emitted
        assert tok in out["generated_tokens"]


def test_table4_tokens_exact():
    out = translate_tme_to_bio_tokens(base(r_Neoplastic=0.7, r_Inflammatory=0.35, r_Connective=0.02,
                                           mean_dist_Inflammatory_to_Neoplastic=10.0, mean_spatial_entropy=0.9,
                                           mean_area_Neoplastic=400.0, fraction_engaged_immune=0.9))
    assert out["generated_tokens"] == [
        "Solid tumour nest", "Hypercellular", "Heavy infiltrate", "Non-desmoplastic", "Lack of fibrosis",
        "Juxtaposed cells", "Diffuse integration", "Nuclear enlargement", "Anisocytosis", "Tumour-engaged immune cells",
    ]
    assert list(out["interpretation"]) == list(AXES) and len(AXES) == 7
    assert set(out) == {"raw_data", "interpretation", "generated_tokens"}
    out2 = translate_tme_to_bio_tokens(base(r_Neoplastic=0.1, r_Inflammatory=0.05, r_Connective=0.8,
                                            mean_dist_Inflammatory_to_Neoplastic=100.0, mean_spatial_entropy=0.1,
                                            mean_area_Neoplastic=100.0, fraction_engaged_immune=0.0))
    assert out2["generated_tokens"] == [
        "Stroma-dominant", "Immune desert", "Pauci-immune", "Fibrotic barrier", "Immune exclusion",
        "Restricted to stroma", "Homogeneous", "Compartmentalized", "Small cell morphology", "Bystander immune cells",
    ]


def test_pixel_thresholds_follow_mpp():
    half = T.reference_mpp / 2  # analysis px = half a reference px: 20 ref px = 40 px, 300 ref px^2 = 1200 px^2
    assert label("Spatial interaction", mpp=half, mean_dist_Inflammatory_to_Neoplastic=39.9) == "Direct contact"
    assert label("Spatial interaction", mpp=half, mean_dist_Inflammatory_to_Neoplastic=40.1) == "Proximal"
    assert label("Spatial interaction", mpp=half, mean_dist_Inflammatory_to_Neoplastic=120.1) == "Excluded"
    assert label("Morphology", mpp=half, mean_area_Neoplastic=1201.0) == "Large/Pleomorphic"
    assert label("Morphology", mpp=half, mean_area_Neoplastic=599.0) == "Small/Monotonous"
    assert label("Morphology", mpp=half, mean_area_Neoplastic=900.0) == "Intermediate nuclear size"


def test_indeterminate_axes_with_reasons():
    f = base(r_Neoplastic=None, mean_spatial_entropy=None, undefined={
        "r_Neoplastic": "no nuclei (N_total = 0)", "mean_spatial_entropy": "fewer than 6 nuclei"})
    del f["fraction_engaged_immune"]
    out = translate_tme_to_bio_tokens(f)
    assert out["interpretation"]["Composition"] == INDETERMINATE
    assert out["interpretation"]["Architecture"] == INDETERMINATE
    assert out["interpretation"]["Immune engagement"] == INDETERMINATE
    ind = out["raw_data"]["indeterminate"]
    assert "no nuclei" in ind["Composition"] and "fewer than 6" in ind["Architecture"]
    assert "missing" in ind["Immune engagement"]
    assert out["interpretation"]["Immune status"] == "Moderate"  # others still decided
    # low purity but the dominance inputs are undefined -> indeterminate, not a guess
    g = base(r_Neoplastic=0.1, r_Connective=None, undefined={"r_Connective": "taxonomy x has no Connective class"})
    assert translate_tme_to_bio_tokens(g)["interpretation"]["Composition"] == INDETERMINATE


def test_native_types_only():
    f = base(r_Neoplastic=np.float64(0.7), N_total=np.int64(100), mean_spatial_entropy=np.float32("nan"),
             extra=np.array([1, 2]))
    out = translate_tme_to_bio_tokens(f)
    raw = out["raw_data"]
    assert type(raw["r_Neoplastic"]) is float and type(raw["N_total"]) is int and raw["extra"] == [1, 2]
    assert raw["mean_spatial_entropy"] is None and out["interpretation"]["Architecture"] == INDETERMINATE
    json.dumps(out, allow_nan=False)
