"""TME features (paper section 7) on hand-built maps with known answers, plus real CoNSeP maps."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from segtme.errors import InputError
from segtme.taxonomy import get_taxonomy
from segtme.tme import analyze_tme_from_maps, analyze_tme_from_nuclei, nuclei_table_from_maps
from segtme.tme.features import FeatureSet, TMEContext, register_feature_group, _REGISTRY
from segtme.tme.thresholds import DEFAULT_THRESHOLDS, TMEThresholds

NEO, INF, CONN, DEAD, EPI = 1, 2, 3, 4, 5


def paint(cells, shape=(400, 400)):
    """cells: (row, col, class, half) -> square of side 2*half+1 centred at (row, col)."""
    inst = np.zeros(shape, np.int32)
    cls = np.zeros(shape, np.uint8)
    for i, (r, c, k, h) in enumerate(cells, 1):
        inst[r - h : r + h + 1, c - h : c + h + 1] = i
        cls[r - h : r + h + 1, c - h : c + h + 1] = k
    return inst, cls


def strict_json(d):
    return json.dumps(d, allow_nan=False)


def test_composition_counts_fractions_areas_and_ratios():
    # 3 neoplastic 5x5 (25 px^2), 2 inflammatory 3x3 (9 px^2), 1 connective 7x7 (49), 1 dead 5x5, 1 epithelial 5x5
    cells = [(20, 20, NEO, 2), (20, 60, NEO, 2), (20, 100, NEO, 2), (100, 20, INF, 1), (100, 60, INF, 1),
             (200, 200, CONN, 3), (300, 300, DEAD, 2), (300, 100, EPI, 2)]
    f = analyze_tme_from_maps(*paint(cells))
    assert f["N_total"] == 8 and f["N_uncounted"] == 0
    assert (f["N_Neoplastic"], f["N_Inflammatory"], f["N_Connective"], f["N_Dead"], f["N_Epithelial"]) == (3, 2, 1, 1, 1)
    assert f["r_Neoplastic"] == pytest.approx(3 / 8) and f["r_Inflammatory"] == pytest.approx(2 / 8)
    assert f["mean_area_Neoplastic"] == 25.0 and f["mean_area_Inflammatory"] == 9.0 and f["mean_area_Connective"] == 49.0
    assert f["f_TS"] == pytest.approx(3 / 4)  # N_neo / (N_neo + N_conn)
    assert f["f_II"] == pytest.approx(2 / 5)  # N_inf / (N_neo + N_inf)
    assert f["mpp"] is None and "mean_area_Neoplastic_um2" not in f  # no µm without MPP
    assert all(type(v) in (int, float) for k, v in f.items() if k not in ("mpp", "undefined"))
    strict_json(f)


def test_distances_engagement_and_um_twins():
    # neoplastic at (200,200); inflammatory at distances 30 (engaged), 50 (engaged: radius inclusive), 90
    cells = [(200, 200, NEO, 2), (200, 230, INF, 1), (250, 200, INF, 1), (200, 110, INF, 1)]
    f = analyze_tme_from_maps(*paint(cells))  # MPP unknown: radius 50 px (reference resolution)
    assert f["min_dist_Inflammatory_to_Neoplastic"] == pytest.approx(30.0)
    assert f["mean_dist_Inflammatory_to_Neoplastic"] == pytest.approx((30 + 50 + 90) / 3)
    assert f["engagement_radius"] == 50.0
    assert f["count_engaged_immune"] == 2 and f["fraction_engaged_immune"] == pytest.approx(2 / 3)
    # nearest neoplastic is used: a second tumour cell close to the far immune cell
    f2 = analyze_tme_from_maps(*paint(cells + [(200, 100, NEO, 2)]))
    assert f2["min_dist_Inflammatory_to_Neoplastic"] == pytest.approx(10.0)
    assert f2["mean_dist_Inflammatory_to_Neoplastic"] == pytest.approx((30 + 50 + 10) / 3)
    # MPP known: lengths scale, engagement radius = 50 px at 0.314 µm/px = 15.7 µm
    mpp = DEFAULT_THRESHOLDS.reference_mpp / 2  # analysis px are half the reference px
    f3 = analyze_tme_from_maps(*paint(cells), mpp=mpp)
    assert f3["engagement_radius"] == pytest.approx(100.0) and f3["engagement_radius_um"] == pytest.approx(15.7)
    assert f3["count_engaged_immune"] == 3  # 90 px <= 100 px
    assert f3["mean_dist_Inflammatory_to_Neoplastic_um"] == pytest.approx(f3["mean_dist_Inflammatory_to_Neoplastic"] * mpp)
    assert f3["mean_area_Neoplastic_um2"] == pytest.approx(25.0 * mpp**2)
    strict_json(f3)


def test_spatial_entropy_known_values():
    # 6 cells: every cell's 5 nearest neighbours are all the others, whatever the geometry
    cells = [(50, 50 + 40 * i, NEO if i < 3 else INF, 2) for i in range(6)]
    f = analyze_tme_from_maps(*paint(cells))
    h = -(0.4 * math.log2(0.4) + 0.6 * math.log2(0.6))  # 2 same + 3 other of 5
    assert f["mean_spatial_entropy"] == pytest.approx(h)
    # all one class -> 0 bits (exactly, not -0.0)
    one = analyze_tme_from_maps(*paint([(50, 50 + 40 * i, CONN, 2) for i in range(7)]))
    assert one["mean_spatial_entropy"] == 0.0 and math.copysign(1, one["mean_spatial_entropy"]) == 1
    # two far-apart pure clusters of 6: each cell's 5 neighbours are its own cluster -> 0
    seg = [(40 + 10 * (i % 3), 40 + 10 * (i // 3), NEO, 1) for i in range(6)] + \
          [(300 + 10 * (i % 3), 300 + 10 * (i // 3), INF, 1) for i in range(6)]
    assert analyze_tme_from_maps(*paint(seg))["mean_spatial_entropy"] == 0.0
    # five distinct roles around each cell: 5 cells of different classes + 1 -> known value
    five = [(50, 50 + 40 * i, k, 2) for i, k in enumerate((NEO, INF, CONN, DEAD, EPI, NEO))]
    f5 = analyze_tme_from_maps(*paint(five))
    # NEO cells see {NEO, INF, CONN, DEAD, EPI} = 5 classes once: log2(5); others see NEO twice + 3 singles
    h_neo = math.log2(5)
    h_other = -(0.4 * math.log2(0.4) + 3 * 0.2 * math.log2(0.2))
    assert f5["mean_spatial_entropy"] == pytest.approx((2 * h_neo + 4 * h_other) / 6)


def test_undefined_values_are_null_with_reasons():
    f = analyze_tme_from_maps(*paint([(50, 50, INF, 2), (50, 90, CONN, 2)]))
    assert f["f_II"] == 1.0 and f["f_TS"] == 0.0  # defined: denominators are non-zero
    for k in ("min_dist_Inflammatory_to_Neoplastic", "mean_dist_Inflammatory_to_Neoplastic",
              "fraction_engaged_immune", "mean_area_Neoplastic", "mean_spatial_entropy"):
        assert f[k] is None and f["undefined"][k]
    assert "no Neoplastic nuclei" in f["undefined"]["mean_dist_Inflammatory_to_Neoplastic"]
    assert "fewer than 6" in f["undefined"]["mean_spatial_entropy"]
    assert f["count_engaged_immune"] == 0
    empty = analyze_tme_from_maps(np.zeros((32, 32), int), np.zeros((32, 32), int), mpp=0.5)
    assert empty["N_total"] == 0 and empty["r_Neoplastic"] is None and empty["f_TS"] is None
    assert empty["undefined"]["f_TS"] == "no Neoplastic or Connective nuclei"
    strict_json(empty)


def test_validation_errors():
    inst, cls = paint([(50, 50, NEO, 2)], shape=(64, 64))
    with pytest.raises(InputError, match="3-channel"):
        analyze_tme_from_maps(np.stack([inst] * 3, -1), cls)
    bad = cls.copy()
    bad[0, 0] = 6
    with pytest.raises(InputError, match="outside 0-5"):
        analyze_tme_from_maps(inst, bad)
    with pytest.raises(InputError, match="differ"):
        analyze_tme_from_maps(inst, cls[:32])
    with pytest.raises(InputError, match="non-integer"):
        analyze_tme_from_maps(inst + 0.5, cls)
    with pytest.raises(InputError, match="negative"):
        analyze_tme_from_maps(inst - 5, cls)
    with pytest.raises(InputError, match="mpp"):
        analyze_tme_from_maps(inst, cls, mpp=-1)
    with pytest.raises(InputError, match="unknown taxonomy"):
        analyze_tme_from_maps(inst, cls, taxonomy="nope")
    with pytest.raises(InputError, match="outside 0-4"):
        analyze_tme_from_maps(inst, cls + 4, taxonomy="consep4")


def test_unclassified_nucleus_is_not_counted_and_majority_class_wins():
    inst, cls = paint([(50, 50, NEO, 2), (50, 90, INF, 2)], shape=(128, 128))
    cls[inst == 2] = 0  # no class pixels -> class 0, not guessed
    cls[48, 48] = INF  # 1 of 25 pixels of nucleus 1 disagrees: majority stays NEO
    f = analyze_tme_from_maps(inst, cls)
    assert f["N_total"] == 1 and f["N_uncounted"] == 1 and f["N_Neoplastic"] == 1


def test_two_entry_points_agree_and_other_taxonomies():
    cells = [(30, 30, 3, 2), (30, 70, 2, 2), (90, 30, 4, 3), (90, 90, 1, 2), (150, 150, 3, 2), (150, 40, 2, 1)]
    inst, cls = paint(cells, shape=(200, 200))
    a = analyze_tme_from_maps(inst, cls, mpp=0.25, taxonomy="consep4")
    b = analyze_tme_from_nuclei(nuclei_table_from_maps(inst, cls, mpp=0.25, taxonomy="consep4"))
    assert a == b
    # CoNSeP: Epithelial (incl. tumour) -> Neoplastic role; no Dead / Epithelial class -> null, not 0
    assert a["N_Neoplastic"] == 2 and a["N_Inflammatory"] == 2 and a["N_Connective"] == 1 and a["N_Other"] == 1
    assert a["N_Dead"] is None and "no Dead class" in a["undefined"]["N_Dead"]
    assert get_taxonomy("consep4").substitutions()
    # class-agnostic nuclei: every TME fraction undefined, N_Other counts all
    n1 = analyze_tme_from_maps(inst, (cls > 0).astype(np.uint8), taxonomy="nucleus1")
    assert n1["N_total"] == 6 and n1["N_Other"] == 6 and n1["r_Neoplastic"] is None


def test_feature_groups_extend_without_copying():
    def lymph(ctx: TMEContext, out: FeatureSet) -> None:
        out.put("N_big_nuclei", int((ctx.area_px > 20).sum()))

    inst, cls = paint([(30, 30, NEO, 2), (30, 70, INF, 1)], shape=(100, 100))
    f = analyze_tme_from_maps(inst, cls, extra_groups=[lymph])
    assert f["N_big_nuclei"] == 1 and f["N_Neoplastic"] == 1
    register_feature_group("test_only_consep", lymph, taxonomies=["consep4"])
    try:
        assert "N_big_nuclei" not in analyze_tme_from_maps(inst, cls)  # pannuke6: not applied
        assert analyze_tme_from_maps(inst, cls, taxonomy="consep4")["N_big_nuclei"] == 1
    finally:
        _REGISTRY.pop("test_only_consep")


def test_thresholds_defined_once_with_units():
    t = TMEThresholds()
    assert t.length_um(t.contact_dist_px) == pytest.approx(6.28)
    assert t.area_um2(t.large_area_px2) == pytest.approx(300 * 0.314**2)
    assert t.length_px(20, None) == 20 and t.length_px(20, 0.628) == pytest.approx(10)
    assert t.area_px2(300, 0.157) == pytest.approx(1200)
    with pytest.raises(ValueError):
        TMEThresholds(contact_dist_px=70)
    eff = t.to_dict(0.25)["effective"]
    assert eff["engagement_radius_um"] == pytest.approx(15.7) and eff["engagement_radius_analysis_px"] == pytest.approx(62.8)


@pytest.mark.data
def test_real_consep_maps(shared_data):
    from PIL import Image

    root = shared_data / "consep-train"
    item = json.loads((root / "index.json").read_text())["items"][0]
    inst = np.asarray(Image.open(root / item["inst"]))
    cls = np.asarray(Image.open(root / item["type_map"]))
    f = analyze_tme_from_maps(inst, cls, mpp=float(item["mpp"]), taxonomy="consep4")
    counts = item["class_counts"]
    assert f["N_total"] == item["n_nuclei"]
    assert f["N_Neoplastic"] == counts.get("3", 0) and f["N_Inflammatory"] == counts.get("2", 0)
    assert f["N_Connective"] == counts.get("4", 0) and f["N_Other"] == counts.get("1", 0)
    assert 0 <= f["mean_spatial_entropy"] <= math.log2(5)
    assert f["min_dist_Inflammatory_to_Neoplastic"] <= f["mean_dist_Inflammatory_to_Neoplastic"]
    strict_json(f)
