"""Tile grid, blend windows, chunk grid and the streaming tile plan (shared JSON examples)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from segtme.inference.tiling import (
    blend_ramp, blend_window, chunk_grid, owner_index, owns, plan_stream_tiles, tile_grid, tile_starts,
)

EXAMPLES = Path(__file__).with_name("data") / "tile_plan_examples.json"


@pytest.mark.parametrize("length,tile,overlap", [(1000, 256, 64), (256, 256, 64), (100, 256, 64), (257, 256, 0), (513, 128, 127)])
def test_tile_starts_cover_with_full_tiles(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    cov = np.zeros(length, int)
    for s in starts:
        cov[s : s + min(tile, length)] += 1
        assert 0 <= s and s + min(tile, length) <= length
    assert cov.min() >= 1
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_tile_grid_row_major():
    g = tile_grid(300, 500, 128, 32)
    assert g[0] == (0, 0, 128, 128) and g[-1] == (300 - 128, 500 - 128, 128, 128)
    assert g == sorted(g)


def test_blend_window_partition_of_unity_and_floor():
    T, O = 64, 16
    w = blend_ramp(T, O)
    # falling edge of one tile + rising edge of the next (step T - O) sum to 1 in the overlap
    np.testing.assert_allclose(w[T - O :] + w[:O], 1.0, atol=1e-6)
    assert w.min() > 0 and w.max() == pytest.approx(1.0)
    assert np.all(np.diff(w[:O]) > 0)
    W2 = blend_window(T, T, O)
    np.testing.assert_allclose(W2, np.outer(w, w), rtol=1e-6)
    with pytest.raises(ValueError):
        tile_starts(10, 8, 8)


def test_chunk_grid_partitions_and_halo():
    ch = chunk_grid(1000, 700, 300, 40)
    cov = np.zeros((700, 1000), int)
    for c in ch:
        x0, y0, x1, y1 = c.core
        cov[y0:y1, x0:x1] += 1
        rx0, ry0, rx1, ry1 = c.region
        assert rx0 == max(0, x0 - 40) and ry1 == min(700, y1 + 40)
    assert (cov == 1).all()


def _check_plan_invariants(bounds, size, tiles, T, O, d):
    bx, by, bw, bh = bounds
    # step 0 of the rule: the bounds are clipped to the image
    x1, y1 = min(bx + bw, size[0]), min(by + bh, size[1])
    bx, by = max(bx, 0), max(by, 0)
    bw, bh = x1 - bx, y1 - by
    cov = {}
    nx = max(t.i for t in tiles) + 1
    ny = max(t.j for t in tiles) + 1
    assert len(tiles) == nx * ny
    assert [(t.j, t.i) for t in tiles] == sorted((t.j, t.i) for t in tiles)  # row-major
    area = 0
    for t in tiles:
        x0, y0, x1, y1 = t.core
        assert bx <= x0 < x1 <= bx + bw and by <= y0 < y1 <= by + bh
        area += (x1 - x0) * (y1 - y0)
        rx, ry, rw, rh = t.region
        # region is clipped to the image and contains the core
        assert rx >= 0 and ry >= 0 and rx + rw <= size[0] and ry + rh <= size[1]
        assert rx <= x0 and ry <= y0 and rx + rw >= x1 and ry + rh >= y1
        assert rw <= math.floor(T * d + 0.5) and rh <= math.floor(T * d + 0.5)
    assert area == bw * bh  # cores partition the bounds (no overlap since edges are shared floors)


def test_shared_examples_match_python_plan():
    data = json.loads(EXAMPLES.read_text())
    assert len(data["cases"]) >= 5
    names = {c["name"] for c in data["cases"]}
    assert {"d_below_1_upsampling", "noninteger_d_monuseg", "bounds_at_image_edges", "bounds_past_image_edges"} <= names
    for case in data["cases"]:
        inp = case["input"]
        tiles = plan_stream_tiles(inp["bounds"], inp["image_size"], inp["image_mpp"], inp["model_mpp"], inp["tile"], inp["overlap"])
        assert [{"i": t.i, "j": t.j, "core": list(t.core), "region": list(t.region)} for t in tiles] == case["tiles"], case["name"]
        _check_plan_invariants(inp["bounds"], inp["image_size"], tiles, inp["tile"], inp["overlap"], case["derived"]["d"])
        for p in case["ownership"]:
            assert owner_index(tiles, p["x"], p["y"]) == p["owner"], (case["name"], p)


def test_plan_handworked_example():
    # d = 2, C = (256-64)*2 = 384, m = 64, Tf = 512
    tiles = plan_stream_tiles((1000, 2000, 1500, 900), (20000, 15000), 0.25, 0.5, 256, 64)
    assert len(tiles) == 4 * 3
    assert tiles[0].core == (1000, 2000, 1384, 2384) and tiles[0].region == (936, 1936, 512, 512)
    assert tiles[3].core == (2152, 2000, 2500, 2384)  # last column ends at the bounds
    # a point on a shared core edge belongs to exactly one tile (half-open)
    assert [owns(t.core, 1384, 2100) for t in tiles].count(True) == 1
    assert owner_index(tiles, 1384, 2100) == 1


def test_plan_clips_to_image_and_rejects_bad_input():
    tiles = plan_stream_tiles((0, 0, 100, 100), (100, 100), 0.5, 0.314, 224, 56)
    assert all(t.region[0] >= 0 and t.region[0] + t.region[2] <= 100 for t in tiles)
    for bad in [dict(image_mpp=float("nan")), dict(model_mpp=-1.0), dict(overlap=224)]:
        kw = dict(bounds=(0, 0, 10, 10), image_size=(100, 100), image_mpp=0.25, model_mpp=0.5, tile=224, overlap=56) | bad
        with pytest.raises(ValueError):
            plan_stream_tiles(**kw)


def test_plan_clips_bounds_that_extend_past_the_image():
    """Annotations may extend past the image: the cores cover only the image part, and every
    region has a positive size (a reviewer found negative widths before the bounds were clipped)."""
    tiles = plan_stream_tiles((-40, -25, 700, 650), (600, 500), 0.25, 0.5, 256, 64)
    assert tiles[0].core[:2] == (0, 0)
    assert max(t.core[2] for t in tiles) == 600 and max(t.core[3] for t in tiles) == 500
    assert all(t.region[2] > 0 and t.region[3] > 0 for t in tiles)
    with pytest.raises(ValueError, match="do not overlap"):
        plan_stream_tiles((700, 0, 50, 50), (600, 500), 0.25, 0.5, 256, 64)
