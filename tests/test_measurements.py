"""QuPath's measurement set (names, units, values) and cells by label expansion (issue #19.1, #15.6)."""

from __future__ import annotations

import numpy as np
import pytest

from inference_helpers import threshold_model
from segtme.export.geojson import measurement_columns
from segtme.inference.cells import CellOptions, build_cells
from segtme.inference.measurements import calipers, label_stats, polygons_from_rings
from segtme.inference.nuclei import build_nuclei_table
from segtme.pipeline import segment_image
from segtme.taxonomy import get_taxonomy

# The measurement names QuPath's own cell detection writes for a brightfield H&E image with a
# calibrated pixel size, taken from QuPath's source (qupath-core-processing,
# qupath.imagej.detect.cells.WatershedCellDetection: "Nucleus: " + stain + " mean|sum|std dev|max|
# min|range", "Cell: " / "Cytoplasm: " + stain + " mean|std dev|max|min", "Nucleus/Cell area ratio";
# the shape statistics added for the "Nucleus: " and "Cell: " prefixes: Area, Perimeter,
# Circularity, Max caliper, Min caliper, Eccentricity, with the calibration's unit) and its
# documentation of cell detection (stains "Hematoxylin OD", "Eosin OD"; units "µm", "µm^2").
QUPATH_CELL_MEASUREMENTS = [
    "Nucleus: Area µm^2", "Nucleus: Perimeter µm", "Nucleus: Circularity", "Nucleus: Max caliper µm",
    "Nucleus: Min caliper µm", "Nucleus: Eccentricity",
    *(f"Nucleus: {s} OD {q}" for s in ("Hematoxylin", "Eosin") for q in ("mean", "sum", "std dev", "max", "min", "range")),
    "Cell: Area µm^2", "Cell: Perimeter µm", "Cell: Circularity", "Cell: Max caliper µm", "Cell: Min caliper µm",
    "Cell: Eccentricity",
    *(f"Cell: {s} OD {q}" for s in ("Hematoxylin", "Eosin") for q in ("mean", "std dev", "max", "min")),
    *(f"Cytoplasm: {s} OD {q}" for s in ("Hematoxylin", "Eosin") for q in ("mean", "std dev", "max", "min")),
    "Nucleus/Cell area ratio",
]
#: SegTME's additions (QuPath's shape-features plugin has Solidity; the class probability is ours)
SEGTME_EXTRA = {"Nucleus: Solidity", "Class probability"}


@pytest.fixture(scope="module")
def region(monuseg_small):
    rgb, _, mpp = monuseg_small[0]
    t = segment_image(rgb, mpp, threshold_model())
    assert len(t) > 20
    return t, rgb


def test_names_are_qupaths_cell_detection_names(region):
    t, rgb = region
    cells = build_cells(t, rgb, CellOptions())
    names = [k for k, _ in measurement_columns(t, cells)]
    assert len(names) == len(set(names))
    assert set(QUPATH_CELL_MEASUREMENTS) <= set(names), sorted(set(QUPATH_CELL_MEASUREMENTS) - set(names))
    assert set(names) - set(QUPATH_CELL_MEASUREMENTS) == SEGTME_EXTRA
    # detections: the Nucleus group only; without an MPP the units say px
    det = [k for k, _ in measurement_columns(t)]
    assert set(det) == {k for k in QUPATH_CELL_MEASUREMENTS if k.startswith("Nucleus:")} | SEGTME_EXTRA
    t_px = t.subset(np.arange(len(t)))
    t_px.mpp = None
    px = [k for k, _ in measurement_columns(t_px)]
    assert "Nucleus: Area px^2" in px and "Nucleus: Max caliper px" in px and not any("µm" in k for k in px)


def test_calipers_are_exact_for_convex_polygons():
    import shapely

    rng = np.random.default_rng(1)
    rings = []
    for k in range(60):
        pts = rng.normal(size=(int(rng.integers(3, 30)), 2)) * rng.uniform(1, 10, 2)
        rings.append(np.asarray(shapely.convex_hull(shapely.multipoints(pts)).exterior.coords))
    rings.append(np.array([[0, 0], [4, 0], [4, 1], [0, 1], [0, 0]], float))  # 4 x 1 rectangle
    xy = np.concatenate(rings)
    idx = np.repeat(np.arange(len(rings)), [len(r) for r in rings])
    mx, mn = calipers(xy, idx, len(rings), batch=7)
    for r, a, b in zip(rings, mx, mn):
        d = np.sqrt(((r[:, None] - r[None]) ** 2).sum(-1)).max()
        th = np.linspace(0, np.pi, 20000, endpoint=False)
        proj = r @ np.stack([np.cos(th), np.sin(th)])
        width = (proj.max(0) - proj.min(0)).min()
        assert a == pytest.approx(d, rel=1e-9)
        # the sampled minimum is above the true one by at most max-extent x angular step
        assert b <= width + 1e-9 and width - b <= d * np.pi / 20000 + 1e-9
    assert (mx[-1], mn[-1]) == (pytest.approx(np.hypot(4, 1)), pytest.approx(1.0))


def test_label_stats_match_numpy():
    rng = np.random.default_rng(2)
    lab = rng.integers(0, 6, (40, 50))
    lab[lab == 4] = 0  # label 4 absent
    lab[0, 0] = 5
    lab[lab == 5] = 0
    lab[3, 3] = 5  # one pixel: std undefined
    vals = rng.normal(size=(40, 50))
    st = label_stats(lab, 5, vals)
    for k in range(1, 6):
        v = vals[lab == k]
        if not len(v):
            assert st["count"][k - 1] == 0 and np.isnan(st["mean"][k - 1]) and np.isnan(st["max"][k - 1])
            continue
        assert st["count"][k - 1] == len(v) and st["sum"][k - 1] == pytest.approx(v.sum())
        assert st["mean"][k - 1] == pytest.approx(v.mean()) and st["max"][k - 1] == v.max() and st["min"][k - 1] == v.min()
        if len(v) > 1:
            assert st["std"][k - 1] == pytest.approx(v.std(ddof=1))
        else:
            assert np.isnan(st["std"][k - 1])


def test_nucleus_od_statistics_are_the_stain_module_values(monuseg_small):
    from segtme.stain import hed_od

    rgb, inst, mpp = monuseg_small[0]
    t = build_nuclei_table(inst, get_taxonomy("pannuke6"), rgb=rgb, mpp=mpp)
    from segtme.inference.postprocess import relabel_sequential

    lab = relabel_sequential(inst.astype(np.int64))
    od = hed_od(rgb)
    for i in (0, len(t) // 2, len(t) - 1):
        h, e = od[..., 0][lab == i + 1], od[..., 1][lab == i + 1]
        assert t.hematoxylin_od[i] == pytest.approx(h.mean(), rel=1e-5)
        assert t.extra["hematoxylin_od_sum"][i] == pytest.approx(h.sum(), rel=1e-5)
        assert t.extra["hematoxylin_od_std"][i] == pytest.approx(h.std(ddof=1), rel=1e-4)
        assert t.extra["eosin_od_max"][i] == pytest.approx(e.max(), rel=1e-6)
        assert t.extra["eosin_od_range"][i] == pytest.approx(e.max() - e.min(), rel=1e-5)
        assert t.extra["min_caliper_px"][i] <= t.extra["max_caliper_px"][i]


def test_cells_partition_clip_cover_and_do_not_depend_on_windows(region):
    import shapely

    t, rgb = region
    H, W = rgb.shape[:2]
    one = build_cells(t, rgb, CellOptions(window=4096))
    many = build_cells(t, rgb, CellOptions(window=64))  # many windows with seams through cells
    assert many.meta["windows"] > 4 and one.meta["windows"] == 1
    for c in (one, many):
        g = polygons_from_rings(c.polygons)
        assert shapely.is_valid(g).all() and not shapely.is_empty(g).any()
        xy = np.concatenate(c.polygons)
        assert xy.min() >= 0 and xy[:, 0].max() <= W and xy[:, 1].max() <= H  # clipped to the image
        tree = shapely.STRtree(g)
        a, b = tree.query(g, predicate="intersects")
        sel = a < b
        assert shapely.area(shapely.intersection(g[a[sel]], g[b[sel]])).max(initial=0) < 1e-6  # no overlaps
        nuc = polygons_from_rings(t.polygons)
        assert shapely.covers(shapely.buffer(g, 1e-6), nuc).all()
        m = c.measurements
        assert (m["Cell: Area µm^2"] >= t.area_px * t.mpp**2 - 1e-6).all()
        assert ((m["Nucleus/Cell area ratio"] > 0) & (m["Nucleus/Cell area ratio"] <= 1)).all()
        assert np.nanmean(m["Cytoplasm: Hematoxylin OD mean"]) < np.nanmean(t.hematoxylin_od)  # nuclei are bluer
    for k in one.measurements:  # same cells; OD within the resampling's rounding (windows resample from other origins)
        tol = dict(rtol=5e-3, atol=1e-3) if " OD " in k else dict(rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(many.measurements[k], one.measurements[k], err_msg=k, **tol)


def test_cell_expansion_distance(region):
    """Cells grow at most by the expansion (+1 px of rasterisation); 0 µm gives the nucleus."""
    import shapely

    t, rgb = region
    nuc = polygons_from_rings(t.polygons)
    for um in (2.0, 5.0):
        c = build_cells(t, rgb, CellOptions(expansion_um=um))
        # directed distance: every cell vertex lies within the expansion of its own nucleus (+ one
        # measurement pixel, 0.5 µm, of rasterisation)
        xy, which = shapely.get_coordinates(polygons_from_rings(c.polygons), return_index=True)
        d = shapely.distance(shapely.points(xy), nuc[which]) * t.mpp  # µm
        assert d.max() <= um + 0.75, d.max()
        far = np.zeros(len(t))
        np.maximum.at(far, which, d)
        assert np.median(far) > 0.5 * um  # cells did grow
    z = build_cells(t, rgb, CellOptions(expansion_um=0.0))
    ratio = z.measurements["Nucleus/Cell area ratio"]
    # no growth: the cell is the nucleus outline (a nucleus with a hole has a little more in its cell)
    assert (ratio <= 1).all() and np.mean(np.isclose(ratio, 1.0)) >= 0.9


def test_vectorised_rasteriser_equals_skimage_polygon(monuseg_small):
    """The one-pass scanline fill gives the same labels as ``skimage.draw.polygon`` per nucleus
    (pixel centre inside), and reproduces the instance map the outlines were traced from."""
    from skimage.draw import polygon as draw_polygon

    from segtme.inference.cells import _rasterise
    from segtme.inference.postprocess import relabel_sequential

    _, inst, _ = monuseg_small[1]
    t = build_nuclei_table(inst, get_taxonomy("pannuke6"))
    lab = _rasterise(t.polygons, inst.shape)
    ref = np.zeros(inst.shape, np.int32)
    for k, p in enumerate(t.polygons):
        rr, cc = draw_polygon(p[:, 1] - 0.5, p[:, 0] - 0.5, inst.shape)
        ref[rr, cc] = k + 1
    assert (lab == ref).all()
    orig = relabel_sequential(inst.astype(np.int64)) > 0
    assert ((lab > 0) == orig).mean() > 0.999  # only holes inside nuclei differ (outlines are outer rings)
    shifted = _rasterise([p + 0.25 for p in t.polygons[:5]] + [np.array([[-5, -5], [3, -5], [3, 3]], float)], (20, 300))
    assert shifted.shape == (20, 300) and shifted.max() <= 6  # clipped to the raster, no error


def test_cells_of_a_far_slide_tile_use_a_raster_of_the_tile_only(region):
    """A tile's nuclei at slide offsets (no image, no size): the raster covers the nuclei's
    bounds, not the slide; the cells are those of the same nuclei at the origin, shifted."""
    t, _ = region
    base = t.subset(np.arange(len(t)))
    base.meta.pop("image_size", None)
    far = base.translated(60000.0, 80000.0)
    far.meta.pop("image_size", None)
    a = build_cells(base, None, CellOptions())
    b = build_cells(far, None, CellOptions())
    assert len(a) == len(b) == len(t)
    inner = [i for i, pa in enumerate(a.polygons) if pa.min() > 30]  # not clipped at the origin's edge
    assert len(inner) > 10
    for i in inner:
        assert len(b.polygons[i]) and np.abs(b.polygons[i].min(0) - (a.polygons[i].min(0) + [60000, 80000])).max() < 2.5
    np.testing.assert_allclose(b.measurements["Cell: Area µm^2"][inner], a.measurements["Cell: Area µm^2"][inner],
                               rtol=0.25)


def test_cell_statistics_combine_nucleus_and_cytoplasm_exactly():
    from segtme.inference.cells import _combine

    rng = np.random.default_rng(3)
    cells = rng.integers(0, 5, (30, 40))
    nuc = np.where(rng.random((30, 40)) < 0.4, cells, 0)
    cyto = np.where(nuc > 0, 0, cells)
    vals = rng.normal(size=(30, 40, 2))
    got = _combine(label_stats(nuc, 4, vals), label_stats(cyto, 4, vals))
    ref = label_stats(cells, 4, vals)
    for q in ("count", "mean", "sum", "std", "max", "min"):
        np.testing.assert_allclose(got[q], ref[q], rtol=1e-9, atol=1e-12, err_msg=q)


def test_vectorised_statistics_and_calipers_equal_the_former_formulas():
    """``pixel_stats`` (labelled pixels as a list, radix-sorted labels) gives bit-identical
    statistics to a full-map masked computation with a stable int64 sort, and ``calipers`` the
    bit-identical values of the former (B, K, K, 2) difference / einsum formulation."""
    import shapely

    from segtme.inference.measurements import label_order, pixel_stats

    rng = np.random.default_rng(4)
    lab = rng.integers(0, 300, (60, 70))
    vals = rng.normal(size=(60, 70, 2)).astype(np.float32)
    m = lab > 0
    li = lab[m]
    assert np.array_equal(label_order(li, 299), np.argsort(li.astype(np.int64), kind="stable"))
    st = pixel_stats(li, 299, vals[m])
    v = vals[m].astype(np.float64)
    order = np.argsort(li, kind="stable")
    ls, vs = li[order], v[order]
    starts = np.flatnonzero(np.r_[True, ls[1:] != ls[:-1]])
    assert np.array_equal(st["max"][ls[starts] - 1], np.maximum.reduceat(vs, starts, axis=0))
    assert np.array_equal(st["min"][ls[starts] - 1], np.minimum.reduceat(vs, starts, axis=0))
    for k in range(2):
        assert np.array_equal(st["sum"][:, k], np.bincount(li, v[:, k], 300)[1:])
    assert np.array_equal(label_stats(lab, 299, vals)["std"], st["std"], equal_nan=True)

    rings = []
    for k in range(300):
        pts = rng.normal(size=(int(rng.integers(3, 40)), 2)) * rng.uniform(1, 30, 2) + rng.uniform(0, 5000, 2)
        rings.append(np.asarray(shapely.convex_hull(shapely.multipoints(pts)).exterior.coords))
    xy = np.concatenate(rings)
    idx = np.repeat(np.arange(len(rings)), [len(r) for r in rings])
    mx, mn = calipers(xy, idx, len(rings), batch=64)
    for r, a, b in zip(rings, mx, mn):  # the former formulas, one polygon at a time
        P = r[None]
        d = P[:, :, None, :] - P[:, None, :, :]
        assert a == np.sqrt((d * d).sum(-1).max())
        E = np.roll(P, -1, axis=1) - P
        L = np.hypot(E[..., 0], E[..., 1])
        ok = L > 1e-12
        nrm = np.stack([-E[..., 1], E[..., 0]], -1) / np.where(ok, L, 1)[..., None]
        proj = np.einsum("bkd,bjd->bkj", nrm, P)
        assert b == np.where(ok, proj.max(axis=2) - proj.min(axis=2), np.inf).min()
