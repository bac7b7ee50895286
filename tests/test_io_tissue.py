"""Tissue detection (OD / saturation + morphology, documented minimum size), region planning,
ROI and QuPath annotation parsing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import load_monuseg
from segtme.errors import InputError
from segtme.io.regions import analysis_units, parse_roi, plan_regions, read_annotations, unit_mask
from segtme.io.source import ArraySource
from segtme.io.tissue import TissueParams, detect_tissue, tissue_pixels


@pytest.fixture(scope="module")
def he():
    return load_monuseg(1)[0][0]


def test_pixel_rule():
    px = np.array([[[243, 243, 241], [250, 250, 250], [225, 170, 210], [120, 60, 140], [10, 10, 12], [200, 200, 200]]],
                  np.uint8)
    assert tissue_pixels(px).tolist() == [[False, False, True, True, False, True]]


def test_detect_tissue_area_debris_and_holes(he):
    glass = np.full((4000, 4000, 3), 243, np.uint8)
    glass[500:1500, 1000:2000] = he  # 1000² px at 0.25 µm/px = 0.0625 mm²
    glass[3000:3080, 3000:3080] = (90, 40, 110)  # 20x20 µm speck (< 0.01 mm²): debris
    glass[900:960, 1400:1460] = 243  # 15 µm hole inside tissue: filled
    m = detect_tissue(ArraySource(glass, 0.25))
    assert m.mpp == 8.0 and m.mask.shape == (125, 125)
    assert m.area_mm2() == pytest.approx(0.0625, rel=0.12)
    assert not m.mask[3000 // 32, 3000 // 32]
    assert m.mask[930 // 32, 1430 // 32]
    keep = detect_tissue(ArraySource(glass, 0.25), TissueParams(min_tissue_um2=0))
    assert keep.mask[3040 // 32, 3040 // 32]  # the minimum size is what removed it
    feats = m.to_features()
    assert len(feats) == 1 and feats[0]["properties"]["measurements"]["Area µm^2"] == pytest.approx(m.area_mm2() * 1e6, rel=1e-6)
    assert not detect_tissue(ArraySource(np.full((2000, 2000, 3), 245, np.uint8), 0.25)).mask.any()


def test_regions_are_disjoint_boxes_around_tissue(he):
    glass = np.full((6000, 6000, 3), 243, np.uint8)
    glass[200:1200, 200:1200] = he
    glass[4000:5000, 4500:5500] = he
    src = ArraySource(glass, 0.25)
    m = detect_tissue(src)
    unit = analysis_units(src.size)[0]
    boxes = plan_regions(m, unit_mask(m, unit), unit, margin_um=64)
    assert len(boxes) == 2
    (a, b) = boxes
    assert a[0] <= 200 and a[2] >= 1200 and b[0] <= 4500 and b[3] >= 5000
    assert a[2] <= b[0] or a[3] <= b[1]
    # a margin larger than the gap merges them
    assert len(plan_regions(m, unit_mask(m, unit), unit, margin_um=800)) == 1


def test_parse_roi():
    assert parse_roi("10,20,30,40") == (10, 20, 30, 40)
    for bad in ("1,2,3", "a,b,c,d", "0,0,-5,5", "1.5,2,3,4"):
        with pytest.raises(InputError, match="--roi"):
            parse_roi(bad)
    with pytest.raises(InputError, match="outside"):
        analysis_units((100, 100), roi=(200, 0, 10, 10))


def test_read_annotations(tmp_path):
    ring = [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]
    feats = [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": {"objectType": "annotation", "name": "T"}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": {"objectType": "annotation", "name": "T"}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": {"objectType": "detection"}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
         "properties": {"classification": {"name": "Stroma"}}},
    ]
    p = tmp_path / "a.geojson"
    p.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    got = read_annotations(p)
    assert [n for n, _, _ in got] == ["T", "T-2", "Stroma"] and got[0][1].area == 10000
    units = analysis_units((50, 50), annotations=got)
    assert units[0].box == (0, 0, 50, 50) and units[0].geometry.area == 2500  # clipped to the slide
    for text, msg in (("{", "not valid GeoJSON"), ('{"type": "FeatureCollection", "features": []}', "no polygon"),
                      ("[" * 100 + "]" * 100, "nested deeper"), ('{"type": "Topology"}', "expected a GeoJSON")):
        p.write_text(text)
        with pytest.raises(InputError, match=msg):
            read_annotations(p)
    with pytest.raises(InputError, match="not found"):
        read_annotations(tmp_path / "none.geojson")
