"""Pipeline: nuclei from maps (coordinates back in input px), the stitcher, chunked segmentation
with halo (bounded memory, each nucleus once), sources, and analyze() wiring."""

from __future__ import annotations

import sys
import tracemalloc
import types

import numpy as np
import pytest

from conftest import load_monuseg
from inference_helpers import centroid_match, threshold_model, tiny_random_model
from segtme.errors import InputError
from segtme.inference.maps import Maps, nuclei_from_maps
from segtme.inference.options import InferenceOptions as O
from segtme.inference.stitch import Stitcher, dedupe_seams, split_owned
from segtme.pipeline import analyze, plan_chunks, segment_image, segment_source


def _nfm(prob, hv, cfg, s=1.0, off=(0.0, 0.0), input_mpp=None):
    return nuclei_from_maps(Maps(prob, hv), cfg.post, cfg.tax, work_mpp=cfg.mpp, scale=s, offset_xy=off,
                            input_mpp=input_mpp)


def test_nuclei_from_maps_maps_back_to_input_px():
    m = threshold_model()
    cfg = m.config
    H, W = 40, 50
    prob = np.zeros((6, H, W), np.float32)
    prob[0] = 1.0
    prob[:, 10:20, 5:15] = 0.0
    prob[3, 10:20, 5:15] = 0.9  # Connective
    prob[0, 10:20, 5:15] = 0.1
    hv = np.zeros((2, H, W), np.float32)
    s, off = 0.5, (100.0, 200.0)
    t = _nfm(prob, hv, cfg, s, off, input_mpp=0.25)
    assert len(t) == 1 and t.class_names == ["Connective"]
    # working px: square cols 5..14, rows 10..19 -> corner-coordinate centroid (10, 15)
    np.testing.assert_allclose(t.centroid[0], [10 / s + 100, 15 / s + 200])
    assert t.area_px[0] == pytest.approx(100 / s**2)
    assert t.class_prob[0] == pytest.approx(0.9)
    assert t.mpp == 0.25
    xs, ys = t.polygons[0][:, 0], t.polygons[0][:, 1]
    assert xs.min() >= 5 / s + 100 - 1e-6 and xs.max() <= 15 / s + 100 + 1e-6
    assert ys.min() >= 10 / s + 200 - 1e-6 and ys.max() <= 20 / s + 200 + 1e-6


def _no_duplicates(table):
    import shapely
    from shapely.geometry import Polygon

    c = table.centroid
    d = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1)) + np.eye(len(c)) * 1e9
    assert d.min() > 1.0, "two nuclei share a centroid"
    g = [Polygon(p) for p in table.polygons]
    tree = shapely.STRtree(g)
    a, b = tree.query(g, predicate="intersects")
    for i, j in zip(a, b):
        if i < j:
            inter = g[i].intersection(g[j]).area
            assert inter < 0.3 * min(g[i].area, g[j].area), f"nuclei {i} and {j} overlap"


@pytest.mark.parametrize("idx", [0, 1])
def test_chunked_equals_whole_and_no_duplicates_on_real_monuseg(idx):
    rgb, _, mpp = load_monuseg(idx + 1, crop=384)[idx]
    m = threshold_model(tile=64, overlap=16)
    whole = segment_image(rgb, mpp, m, O(chunk_size=4096, tile=256, overlap=32))
    assert whole.meta["n_chunks"] == 1 and len(whole) > 30
    # small chunks (and small tiles inside them): many nuclei straddle chunk and tile borders
    chunked = segment_image(rgb, mpp, m, O(chunk_size=48, halo=24, tile=48, overlap=16))
    assert chunked.meta["n_chunks"] == 25  # 194 working px / 48 -> 5 x 5
    # same nuclei; a few shift by < 1 px where a tile/pad edge or a resampled window's rounding
    # (Pillow's fixed-point weights: +-2 grey levels in rare pixels) flipped one boundary pixel
    a, b = centroid_match(whole.centroid, chunked.centroid, tol=1.0)
    assert len(chunked) == len(whole) and a == len(whole) and b == len(chunked)
    exact, _ = centroid_match(whole.centroid, chunked.centroid, tol=0.01)
    assert exact >= 0.9 * len(whole)
    _no_duplicates(chunked)
    assert sorted(chunked.ids.tolist()) == list(range(1, len(chunked) + 1))
    # some nuclei really were cut by chunk borders (the test is not vacuous)
    s = chunked.meta["scale"]
    cores = [c.core for c in plan_chunks(rgb.shape, mpp, m.config, O(chunk_size=48, halo=24))]
    edges = sorted({c[2] for c in cores[:-1]} - {max(c[2] for c in cores)})
    crossing = sum(
        1 for p in chunked.polygons if any(p[:, 0].min() * s < e < p[:, 0].max() * s for e in edges)
    )
    assert crossing >= 5


def test_dedupe_keeps_one_copy_from_different_chunks_only():
    m = threshold_model()
    prob = np.zeros((6, 30, 30), np.float32)
    prob[0] = 1
    prob[:, 5:15, 5:15] = 0
    prob[1, 5:15, 5:15] = 1
    t1 = _nfm(prob, np.zeros((2, 30, 30), np.float32), m.config)
    from segtme.inference.nuclei import NucleiTable

    both = NucleiTable.concat([t1, t1.translated(0.4, 0.0)], renumber=False)
    keep = dedupe_seams(both, np.array([0, 1]), np.array([False, True]))
    assert keep.tolist() == [False, True]  # the copy inside its own core wins
    keep_same_chunk = dedupe_seams(both, np.array([0, 0]), np.array([True, True]))
    assert keep_same_chunk.tolist() == [True, True]


def test_stitcher_streams_finals_and_dedupes_seams_in_input_px():
    """Two parts (cores split at x = 20 input px, scale 0.5) both report the nucleus on the seam
    (centroid x = 18.0 in the left part, 18.8 in the right one): one copy survives — the one in
    its own part's core —, part-owned nuclei stream to the sink at once, ids are 1..N."""
    m = threshold_model()
    prob = np.zeros((6, 30, 40), np.float32)
    prob[0] = 1
    for y0, x0 in ((5, 0), (5, 7), (20, 30)):  # three 4 x 4 working-px squares
        prob[:, y0 : y0 + 4, x0 : x0 + 4] = 0
        prob[1, y0 : y0 + 4, x0 : x0 + 4] = 1
    t = _nfm(prob, np.zeros((2, 30, 40), np.float32), m.config, s=0.5)  # input px = 2 x working
    assert sorted(t.centroid[:, 0].tolist()) == [4.0, 18.0, 64.0]
    got = []
    st = Stitcher(m.config.tax, 0.25, sink=got.append)
    order = np.argsort(t.centroid[:, 0])
    left, right = t.subset(order[:2]), t.subset(order[1:]).translated(0.8, 0.0)
    st.add(left, (-100, -100, 20, 100), scale=0.5)  # x = 4 is final; x = 18 is within hold (12) of 20
    assert [len(g) for g in got] == [1] and got[0].ids.tolist() == [1]
    st.add(right, (20, -100, 200, 100), scale=0.5)  # 18.8: within tol (4) outside its core; 64.8: final
    out = st.finish()
    assert len(out) == 3 and out.ids.tolist() == [1, 2, 3] and out.mpp == 0.25
    assert sum(len(g) for g in got) == 3
    assert sorted(out.centroid[:, 0].tolist()) == pytest.approx([4.0, 18.0, 64.8])


def test_memory_is_bounded_by_chunk_not_image(monkeypatch):
    """Peak numpy memory of a chunked run does not grow with the image: a 4x larger image (same
    chunks) peaks at about the same memory, far below one set of its full-size float maps."""
    import segtme.inference.engine as engine

    rng = np.random.default_rng(0)

    def blobs(n: int) -> np.ndarray:
        rgb = np.full((n, n, 3), 225, np.uint8)
        for _ in range(300 * (n // 800) ** 2):  # dark blobs ("nuclei") all over the image
            y, x = rng.integers(8, n - 8, 2)
            rgb[y - 7 : y + 7, x - 7 : x + 7] = 60
        return rgb

    m = threshold_model(tile=64, overlap=16)
    seen = []
    real = engine.GridPredictor.predict

    def spy(self, region):
        maps = real(self, region)
        seen.append(maps.shape)
        return maps

    monkeypatch.setattr(engine.GridPredictor, "predict", spy)
    segment_image(blobs(800)[:200, :200], 0.25, m, O(chunk_size=100, halo=16))  # lazy imports happen here
    peaks, counts = {}, {}
    for n in (800, 1600):
        rgb = blobs(n)
        seen.clear()
        tracemalloc.start()
        try:
            t = segment_image(rgb, 0.25, m, O(chunk_size=100, halo=16))
            _, peaks[n] = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        counts[n] = len(t)
        assert max(max(sh) for sh in seen) <= 100 + 2 * 16 + 1
    assert counts[800] > 150 and counts[1600] > 3 * counts[800]
    def full_maps(n: int) -> int:  # prob + hv + weights at the working size (n / 2)
        return (6 + 2 + 1) * (n // 2) ** 2 * 4

    # the absolute peak holds two chunks in flight, the resampler's float32 window and the result
    # table; measured 5.2-6.2 MB here, a quarter to 27 % of one set of full-size maps (23 MB)
    assert peaks[1600] < 0.3 * full_maps(1600), peaks
    # 4x the pixels: what grows is the result table and the cached border tiles, not the maps
    assert peaks[1600] - peaks[800] < 0.25 * (full_maps(1600) - full_maps(800)), peaks


def test_segment_image_rejects_bad_input():
    m = threshold_model()
    with pytest.raises(InputError):
        segment_image(np.zeros((0, 10, 3), np.uint8), 0.5, m)
    with pytest.raises(InputError):
        segment_image(np.zeros((10, 10), np.uint8), 0.5, m)
    with pytest.raises(InputError):
        segment_image(np.zeros((10, 10, 3), np.uint8), float("nan"), m)


def test_analyze_array_needs_mpp_and_wires_report(monkeypatch, monuseg_small):
    rgb, _, mpp = monuseg_small[0]
    m = threshold_model()
    with pytest.raises(InputError, match="microns per pixel"):
        analyze(rgb, None, m)
    # wire a stand-in report module to check the call
    calls = {}
    fake = types.ModuleType("segtme.report")

    def build_tme_report(table, narrative_backend="template"):
        calls["n"], calls["backend"] = len(table), narrative_backend
        return {"raw_data": {"n": len(table)}}

    fake.build_tme_report = build_tme_report
    monkeypatch.setitem(sys.modules, "segtme.report", fake)
    res = analyze(rgb[:128, :128], mpp, m, narrative_backend="template", output_type="cell")
    assert res.report == {"raw_data": {"n": len(res.nuclei)}} and calls["backend"] == "template"
    assert res.nuclei.mpp == mpp and res.image_size == (128, 128) and res.model is m
    fc = res.feature_collection()
    assert all(f["properties"]["objectType"] == "cell" for f in fc["features"])
    with pytest.raises(InputError):
        analyze(rgb, mpp, m, output_type="polygon")


def test_random_tiny_uperhover_runs_end_to_end(monuseg_small):
    rgb, _, mpp = monuseg_small[1]
    t = segment_image(rgb[:112, :112], mpp, tiny_random_model(1), O(chunk_size=32, halo=16))
    assert t.mpp == mpp and t.meta["model"] == "uperhover_vit_tiny"
    if len(t):
        assert (t.centroid >= 0).all() and (t.centroid <= 112).all()


def test_classical_model_goes_through_predict_instances(monuseg_small):
    """Models without a tensor forward (the classical baseline) are run through their own
    ``predict_instances`` (as evaluation does), so ``analyze --model classical`` works; the table
    matches the instances it returns, in input px."""
    from segtme.models import load_model

    rgb, _, mpp = monuseg_small[0]
    m = load_model("classical", "cpu")
    inst, _, _ = m.module.predict_instances(rgb, mpp)
    t = segment_image(rgb, mpp, m)
    assert len(t) == int(inst.max()) > 5
    assert set(t.class_names) <= {c.name for c in m.config.tax.classes}
    assert t.meta["model"] == m.config.name and t.mpp == mpp
    H, W = rgb.shape[:2]
    assert (t.centroid >= 0).all() and (t.centroid[:, 0] <= W).all() and (t.centroid[:, 1] <= H).all()
    res = analyze(rgb, mpp, model=m)
    assert len(res.nuclei) == len(t)


def test_pipelined_post_processing_gives_the_same_nuclei():
    """Post-processing in the worker thread (default) and in line give identical tables."""
    rng = np.random.default_rng(3)
    rgb = np.full((500, 460, 3), 225, np.uint8)
    for _ in range(200):
        y, x = rng.integers(8, 452, 2)
        rgb[y - 6 : y + 6, x - 6 : x + 6] = 60
    m = threshold_model(tile=64, overlap=16)
    a = segment_image(rgb, 0.5, m, O(chunk_size=120, halo=16, pipelined=True))
    b = segment_image(rgb, 0.5, m, O(chunk_size=120, halo=16, pipelined=False))
    assert len(a) == len(b) > 100 and a.meta["n_chunks"] == len(plan_chunks(rgb.shape, 0.5, m.config, O(chunk_size=120, halo=16))) > 4
    assert np.array_equal(a.centroid, b.centroid) and np.array_equal(a.area_px, b.area_px)


def test_border_split_masks():
    x = np.array([50.0, 10.5, 9.0, 7.9, 100.0, 101.5, 103.0])
    y = np.full(7, 50.0)
    fin, bor, core = split_owned(x, y, (10, 0, 100, 100), tol=2.0, hold=6.0)
    assert fin.tolist() == [True, False, False, False, False, False, False]
    assert bor.tolist() == [False, True, True, False, True, True, False]  # 7.9 and 103 are > 2 px outside
    assert core.tolist() == [True, True, False, False, False, False, False]


class _ReadRegionOnly:
    """A source with nothing but the agreed ``ImageSource`` members (no ``read_working``):
    level-0 pixels of an array, as a gRPC tile stream or a custom reader would give them."""

    def __init__(self, rgb, mpp):
        self.rgb, self.mpp, self.mpp_source, self.path = rgb, mpp, "user", None
        self.size = (rgb.shape[1], rgb.shape[0])

    def read_region(self, box, mpp):
        assert mpp == self.mpp  # the pipeline reads level-0 pixels and resamples them itself
        x, y, w, h = box
        return self.rgb[y : y + h, x : x + w]

    def close(self):
        pass


@pytest.mark.parametrize("mpp", [0.25, 0.5])
def test_a_source_and_an_array_give_the_same_nuclei(mpp):
    """``segment_source`` over a read_region-only source equals ``segment_image`` on the array
    (at 40x the pipeline resamples each window itself), and the sink streams every nucleus."""
    rng = np.random.default_rng(5)
    rgb = np.full((420, 380, 3), 225, np.uint8)
    for _ in range(120):
        y, x = rng.integers(10, 370, 2)
        rgb[y - 8 : y + 8, x - 8 : x + 8] = 60
    m = threshold_model(tile=64, overlap=16)
    opt = O(chunk_size=96, halo=16)
    a = segment_image(rgb, mpp, m, opt)
    streamed = []
    b = segment_source(_ReadRegionOnly(rgb, mpp), m, opt, sink=streamed.append)
    assert len(a) == len(b) > 50 and a.meta["n_chunks"] > 2
    assert np.array_equal(a.centroid, b.centroid) and np.array_equal(a.ids, b.ids)
    assert sum(len(t) for t in streamed) == len(b)
    assert b.meta["image_size"] == [380, 420]


def test_contract_refuses_models_without_nuclei():
    """A model whose contract gives no nuclei (e.g. the mitosis crop classifier) is refused with
    one clear error before any pixel is processed."""
    from segtme.models import load_model

    m = load_model("mitosis", "cpu", allow_random=True)
    with pytest.raises(InputError, match="does not segment nuclei"):
        segment_image(np.zeros((64, 64, 3), np.uint8), 0.5, m)


def test_keep_chunk_filters_chunks_and_analyze_refuses_odd_inputs():
    """A chunk filter (tissue) leaves chunks out — their nuclei are not reported — and analyze
    says in one line what it accepts when given something else."""
    import io

    rng = np.random.default_rng(7)
    rgb = np.full((400, 400, 3), 225, np.uint8)
    for _ in range(150):
        y, x = rng.integers(10, 390, 2)
        rgb[y - 6 : y + 6, x - 6 : x + 6] = 60
    m = threshold_model(tile=64, overlap=16)
    opt = O(chunk_size=100, halo=16)
    src = _ReadRegionOnly(rgb, 0.5)
    full = segment_source(src, m, opt)
    left = segment_source(src, m, opt, keep_chunk=lambda core: core[0] < 200)  # input px
    assert 0 < len(left) < len(full) and (left.centroid[:, 0] < 200 + 3).all()
    assert left.meta["n_chunks_skipped"] == full.meta["n_chunks"] - left.meta["n_chunks"] > 0
    with pytest.raises(InputError, match="expected an image file path.*got BytesIO"):
        analyze(io.BytesIO(b"x"), 0.5, m)


def test_count_tiles_and_plan_chunks_take_the_inference_options():
    """``count_tiles`` / ``plan_chunks`` read the run's ``InferenceOptions`` (the one object from
    CLI to engine): tiles follow only its tile / overlap, chunks only its chunk_size / halo."""
    from segtme.pipeline import count_tiles, plan_chunks

    cfg = threshold_model().config
    shape = (700, 900, 3)
    o = O(tile=96, overlap=8, chunk_size=120, halo=16)
    assert count_tiles(shape, 0.25, cfg, o) == count_tiles(shape, 0.25, cfg, O(tile=96, overlap=8)) != count_tiles(shape, 0.25, cfg)
    assert plan_chunks(shape, 0.25, cfg, o) == plan_chunks(shape, 0.25, cfg, O(chunk_size=120, halo=16)) != plan_chunks(shape, 0.25, cfg)
    assert count_tiles(shape, 0.25, cfg, O()) == count_tiles(shape, 0.25, cfg)
