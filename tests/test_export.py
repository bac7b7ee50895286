"""Exports: atomic writes, QuPath GeoJSON rules, overlay PNG, CSV."""

from __future__ import annotations

import csv
import gzip
import json
import os
import uuid

import numpy as np
import pytest
from PIL import Image as PILImage

from inference_helpers import threshold_model
from segtme.export.atomic import atomic_write, atomic_write_bytes, atomic_write_text
from segtme.export.geojson import feature_collection, nuclei_to_features, read_geojson, write_geojson
from segtme.export.overlay import render_overlay, write_overlay
from segtme.export.tables import write_nuclei_csv
from segtme.pipeline import segment_image


# --------------------------------------------------------------------------- atomic
def test_atomic_write_success_and_modes(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "µm\n")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "µm\n"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    with atomic_write(tmp_path / "c.png") as tmp:  # path mode: a library writes by suffix
        assert tmp.parent == tmp_path and tmp.name.endswith(".png") and tmp != tmp_path / "c.png"
        PILImage.new("RGB", (2, 2)).save(tmp)
    assert PILImage.open(tmp_path / "c.png").size == (2, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.png"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0o600


@pytest.mark.parametrize("mode", [None, "wb", "w"])
def test_atomic_write_error_leaves_nothing_and_keeps_old_file(tmp_path, mode):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_write(target, mode) as f:
            if mode is None:
                f.write_text("partial")
            else:
                f.write(b"partial" if mode == "wb" else "partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as f:
            f.write("new")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_atomic_write_refuses_bad_mode_and_missing_dir(tmp_path):
    with pytest.raises(ValueError):
        with atomic_write(tmp_path / "x", "a"):
            pass
    with pytest.raises(FileNotFoundError):
        with atomic_write(tmp_path / "nodir" / "x", "w"):
            pass
    with pytest.raises(FileNotFoundError):  # path mode: the writer removed the temp file
        with atomic_write(tmp_path / "y") as tmp:
            tmp.unlink()
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- GeoJSON
@pytest.fixture(scope="module")
def table_and_rgb(monuseg_small):
    rgb, _, mpp = monuseg_small[0]
    rgb = rgb[:192, :192]
    t = segment_image(rgb, mpp, threshold_model())
    assert len(t) > 10
    return t, rgb


def _check_polygon(geom):
    from shapely.geometry import shape

    assert geom["type"] == "Polygon"
    ring = geom["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) >= 4
    assert shape(geom).is_valid


def test_geojson_detection_rules(table_and_rgb):
    t, rgb = table_and_rgb
    fc = feature_collection(t, "detection")
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == len(t)
    ids = set()
    colours = {c.name: list(c.color) for c in t.taxonomy.classes}
    for f, i in zip(fc["features"], range(len(t))):
        assert f["type"] == "Feature"
        assert uuid.UUID(f["id"]).version == 4
        ids.add(f["id"])
        _check_polygon(f["geometry"])
        p = f["properties"]
        assert p["objectType"] == "detection" and "nucleusGeometry" not in f
        cls = p["classification"]
        assert cls["name"] == t.class_names[i] and cls["color"] == colours[cls["name"]]
        assert all(isinstance(v, int) and 0 <= v <= 255 for v in cls["color"])
        m = p["measurements"]
        assert isinstance(m, dict) and all(isinstance(v, float) and np.isfinite(v) for v in m.values())
        assert m["Nucleus: Area µm^2"] == pytest.approx(t.area_px[i] * t.mpp**2, rel=1e-4)
        assert {"Nucleus: Perimeter µm", "Nucleus: Circularity", "Nucleus: Solidity", "Nucleus: Eccentricity",
                "Nucleus: Max caliper µm", "Nucleus: Min caliper µm", "Nucleus: Hematoxylin OD mean",
                "Nucleus: Eosin OD std dev", "Class probability"} <= set(m)
        assert not any("axis" in k for k in m)  # QuPath says caliper, not major/minor axis
        assert m["Nucleus: Min caliper µm"] <= m["Nucleus: Max caliper µm"]
        # coordinates are input (full-res) px: the polygon holds the centroid region
        xy = np.array(f["geometry"]["coordinates"][0])
        assert (xy >= -1e-6).all() and (xy[:, 0] <= rgb.shape[1] + 1e-6).all()
    assert len(ids) == len(t)
    # PanNuke colours required by the issue
    assert colours["Neoplastic"][0] > 200 and colours["Inflammatory"][2] > 200 and colours["Connective"][1] > 150


def test_geojson_cells_px_fallback_and_gzip(table_and_rgb, tmp_path):
    t, _ = table_and_rgb
    feats = nuclei_to_features(t, "cell")
    from shapely.geometry import shape

    for f in feats:
        assert f["properties"]["objectType"] == "cell"
        _check_polygon(f["nucleusGeometry"])
        cell, nuc = shape(f["geometry"]), shape(f["nucleusGeometry"])
        assert cell.buffer(0.01).contains(nuc) and cell.area > nuc.area  # coordinates rounded to 1e-3 px
    cells = [shape(f["geometry"]) for f in feats]
    overlaps = sum(cells[i].intersection(cells[j]).area > 1.0 for i in range(len(cells)) for j in range(i + 1, len(cells)))
    assert overlaps == 0  # grown cells stop where they meet
    t_px = t.subset(np.arange(len(t)))
    t_px.mpp = None
    m = nuclei_to_features(t_px, "detection")[0]["properties"]["measurements"]
    assert "Nucleus: Area px^2" in m and not any("µm" in k for k in m)
    fc = feature_collection(t, "detection", id_seed=1)
    assert fc == feature_collection(t, "detection", id_seed=1)  # reproducible ids on request
    p = write_geojson(tmp_path / "n.geojson", fc, gzip=True)
    assert p.name == "n.geojson.gz"
    assert json.loads(gzip.decompress(p.read_bytes())) == fc == read_geojson(p)
    p2 = write_geojson(tmp_path / "m.geojson", fc)
    raw = p2.read_text(encoding="utf-8")
    assert "µm^2" in raw and "NaN" not in raw
    with pytest.raises(ValueError):
        nuclei_to_features(t, "annotation")


def test_overlay_and_csv(table_and_rgb, tmp_path):
    t, rgb = table_and_rgb
    ov = render_overlay(rgb, t)
    assert ov.shape == rgb.shape and ov.dtype == np.uint8
    changed = (ov != rgb).any(-1)
    assert changed.sum() > 0
    # outline pixels carry a class colour of the taxonomy
    cols = {tuple(c.color) for c in t.taxonomy.classes}
    assert sum(tuple(v) in cols for v in ov[changed][:200]) > 0.8 * min(200, changed.sum())
    small = render_overlay(rgb, t, max_size=96)
    assert max(small.shape[:2]) == 96
    write_overlay(tmp_path / "o.png", rgb, t)
    assert np.asarray(PILImage.open(tmp_path / "o.png")).shape == rgb.shape
    write_nuclei_csv(tmp_path / "n.csv", t)
    rows = list(csv.DictReader((tmp_path / "n.csv").open(encoding="utf-8")))
    assert len(rows) == len(t) and rows[0]["Classification"] in t.taxonomy.names
    assert float(rows[0]["Nucleus: Area µm^2"]) == pytest.approx(t.area_px[0] * t.mpp**2, rel=1e-4)
    assert float(rows[0]["Centroid X µm"]) == pytest.approx(t.centroid[0, 0] * t.mpp, rel=1e-4)


def test_streamed_geojson_is_byte_identical_to_the_two_step_path(table_and_rgb, tmp_path):
    """``write_geojson`` streams Features through the temp file: the bytes equal ``dumps(fc)``;
    ``write_nuclei_geojson`` (no collection in memory, batches of Features) gives the same file
    for the same ids, with annotations first, and ``iter_features`` in small batches equals
    ``nuclei_to_features``."""
    from segtme.export.geojson import dumps, iter_features, write_nuclei_geojson

    t, _ = table_and_rgb
    assert len(t) > 3
    ann = [{"type": "Feature", "id": "a", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
            "properties": {"objectType": "annotation", "name": "µ region"}}]
    fc = feature_collection(t, "detection", id_seed=5, annotations=ann)
    p = write_geojson(tmp_path / "a.geojson", fc)
    assert p.read_bytes() == dumps(fc).encode("utf-8")
    q = write_nuclei_geojson(tmp_path / "b.geojson", t, "detection", id_seed=5, annotations=ann)
    assert q.read_bytes() == p.read_bytes()
    assert list(iter_features(t, "detection", id_seed=2, batch=2)) == nuclei_to_features(t, "detection", id_seed=2)
    cells = write_nuclei_geojson(tmp_path / "c.geojson", t, "cell", id_seed=7, gzip=True)
    assert read_geojson(cells) == feature_collection(t, "cell", id_seed=7)
    empty = {"type": "FeatureCollection", "features": []}
    assert write_geojson(tmp_path / "e.geojson", empty).read_text() == dumps(empty)


def test_overlay_downscale_in_strips_matches_whole_image_resize(table_and_rgb):
    """Large images are converted to PIL strip by strip: same pixels as one resize (PIL's
    fixed-point rounding may move a channel by 1 grey level)."""
    from segtme.export.overlay import _downscale

    _, rgb = table_and_rgb
    H, W = rgb.shape[:2]
    size = (max(1, W * 2 // 3), max(1, H * 2 // 3))
    whole = np.asarray(PILImage.fromarray(rgb).resize(size, PILImage.Resampling.BILINEAR)).astype(int)
    strips = np.asarray(_downscale(rgb, size, rows=max(8, size[1] // 5))).astype(int)
    assert strips.shape == whole.shape and np.abs(strips - whole).max() <= 1


def test_fast_oriented_rings_match_the_shapely_path():
    """The detection fast path (numpy rings, no shapely objects) writes exactly the geometry the
    shapely path (``_valid_polygons`` + ``orient``) writes: both orientations, an invalid bow-tie
    (repaired), a degenerate polygon (skipped)."""
    from segtme.export import geojson as G

    rng = np.random.default_rng(0)
    polys = []
    for k in range(200):
        n = int(rng.integers(3, 12))
        t = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = rng.uniform(2, 8, n)
        p = np.stack([10 + r * np.cos(t), 10 + r * np.sin(t)], 1)
        polys.append(p[::-1] if k % 2 else p)
    polys.append(np.array([[0, 0], [2, 2], [0, 2], [2, 0]], float))  # bow-tie
    polys.append(np.array([[0, 0], [1, 1]], float))  # degenerate
    slow = [G._geometry(g) if g is not None else None for g in G._valid_polygons(polys)]
    fast = [G._geometry_of(g) if g is not None else None for g in G._oriented_rings(polys)]
    assert fast == slow
    assert slow[-1] is None and slow[-2] is not None
    assert sum(isinstance(g, np.ndarray) for g in G._oriented_rings(polys)) >= 150  # the fast path ran


def test_vectorised_ring_coordinates_and_measurement_dicts_equal_the_per_object_path():
    """``_ring_coordinates`` (one numpy pass per batch) gives exactly the rings of the per-polygon
    path (``_oriented_rings`` + ``_geometry_of``): both orientations, a repaired bow-tie, a
    degenerate polygon; ``_measurement_dicts`` the dicts of ``_measurements_at(_prepared(...))``
    (non-finite values left out, key order kept); the CSV's number format that of ``np.char.mod``."""
    from segtme.export import geojson as G
    from segtme.export.tables import _fmt_column

    rng = np.random.default_rng(1)
    polys = []
    for k in range(300):
        n = int(rng.integers(3, 30))
        t = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = rng.uniform(2, 8, n)
        p = np.stack([1000 * k + r * np.cos(t), 10 + r * np.sin(t)], 1)
        polys.append(p[::-1] if k % 3 else p)
        if k % 50 == 0:
            polys.append(np.array([[0, 0], [2, 2], [0, 2], [2, 0]], float) + k)  # bow-tie: repaired
            polys.append(np.array([[0, 0], [1, 1]], float))  # degenerate: skipped
    old = [G._geometry_of(g) if g is not None else None for g in G._oriented_rings(polys)]
    new = [G._polygon_of(g) if g is not None else None for g in G._ring_coordinates(polys)]
    assert new == old
    assert sum(g is None for g in new) == 6
    cols = [(f"m{j}", rng.normal(size=len(polys)) * 10 ** j) for j in range(5)]
    cols[2][1][[3, 7]] = np.nan
    cols[4][1][5] = np.inf
    prep = G._prepared(cols)
    want = [G._measurements_at(prep, i) for i in range(len(polys))]
    got = G._measurement_dicts(cols, len(polys))
    assert got == want and [list(d) for d in got] == [list(d) for d in want]
    assert "m2" not in got[3] and "m4" not in got[5] and len(got[0]) == 5
    v = np.r_[cols[0][1], cols[3][1], 0.0, -0.0, 1e-7, 123456789.0, np.nan, -np.inf]
    ref = np.char.mod("%.6g", np.where(np.isfinite(v), v, 0.0)).tolist()
    ref[-2:] = ["", ""]
    assert _fmt_column(v) == ref


def test_feature_texts_are_the_encoded_features(table_and_rgb):
    """The detection text path (numpy-written rings, ``iter_feature_texts``) gives byte for byte
    the JSON of ``iter_features``' dicts: real nuclei, both orientations, sub-pixel, negative,
    -0.0-rounding, huge (encoder fallback) coordinates, a repaired bow-tie, a degenerate ring."""
    from segtme.export import geojson as G

    rng = np.random.default_rng(5)
    v = np.round(np.r_[rng.uniform(-1e6, 1e6, 3000), rng.uniform(-2, 2, 3000), np.arange(-3, 3, 0.0005), -0.0004,
                       0.0, 999999999999.5, 0.001, 1e-9], 3)
    txt = G._number_chars(v)
    assert [bytes(r[r != 0]).decode() for r in txt] == [repr(float(x)) for x in v]
    t, _ = table_and_rgb
    ids = G.object_ids(len(t), 1)
    want = [G._ENC.encode(f) for f in G.iter_features(t, ids=ids, run="r1", batch=7)]
    got = [s for b in G.iter_feature_texts(t, ids=ids, run="r1", batch=7) for s in b]
    assert got == want and len(got) == len(t)
    polys = []
    for k in range(120):
        n = int(rng.integers(3, 25))
        a = np.sort(rng.uniform(0, 2 * np.pi, n))
        p = np.stack([rng.uniform(-50, 50) + 3 * np.cos(a), rng.uniform(-50, 50) + 3 * np.sin(a)], 1)
        polys.append(p[::-1] if k % 2 else p)
    polys[5] = polys[5] * 1e13  # beyond the numpy writer: the encoder writes this batch
    polys[9] = np.array([[0, 0], [2, 2], [0, 2], [2, 0]], float)
    polys[11] = np.array([[0, 0], [1, 1]], float)
    polys[13] = np.array([[-0.0001, 0.0], [3.0, 0.0], [3.0, 4.0]])
    for sl in (slice(0, 5), slice(0, 120), slice(6, 120)):
        ps = polys[sl]
        want = [G._ENC.encode(r) if isinstance(r, list) else r for r in G._ring_coordinates(ps)]
        assert sum(isinstance(w, str) for w in want) >= len(ps) - 3
        got = G._ring_texts(ps)
        for a, b in zip(got, want):
            if isinstance(b, str) or b is None:
                assert a == b
            else:  # the repaired bow-tie: the same shapely Polygon
                assert a.equals(b)
