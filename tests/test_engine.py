"""Engine: MPP rescaling with exact coordinate mapping, batched forward, blended stitching."""

from __future__ import annotations

import numpy as np
import pytest

from inference_helpers import threshold_model, tiny_random_model
from segtme.errors import InputError
from segtme.inference.engine import forward_tiles, input_to_work, predict_maps, to_working, work_to_input
from segtme.resample import resample_region, working_size
from segtme.inference.tiling import tile_starts
from segtme.models import ModelConfig


def _cfg(mpp=0.5):
    return ModelConfig(name="t", mpp=mpp, tile_size=64, tile_overlap=16)


def _blob(shape, cx, cy, r):
    """Dark disk (value 40 on 230) centred at corner-coordinate (cx, cy), anti-aliased by 4x4
    supersampling so its intensity centroid is exactly (cx, cy)."""
    h, w = shape
    yy, xx = np.mgrid[0:h * 4, 0:w * 4]
    inside = ((xx + 0.5) / 4 - cx) ** 2 + ((yy + 0.5) / 4 - cy) ** 2 <= r * r
    cover = inside.reshape(h, 4, w, 4).mean(axis=(1, 3))
    img = 230 - 190 * cover
    return np.repeat(np.rint(img)[:, :, None], 3, axis=2).astype(np.uint8)


def _centroid_corner(img):
    """Darkness-weighted centroid (x, y) in corner coordinates (pixel i centre = i + 0.5)."""
    d = 230.0 - img[:, :, 0].astype(float)
    d[d < 0] = 0
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    return np.array([(d * (xx + 0.5)).sum() / d.sum(), (d * (yy + 0.5)).sum() / d.sum()])


@pytest.mark.parametrize("mpp_in", [0.2527, 0.25, 0.5, 0.314, 1.0])
def test_mpp_rescaling_maps_coordinates_back_exactly(mpp_in):
    cx, cy = 61.37, 48.81
    img = _blob((101, 127), cx, cy, r=9.0)
    work, s = to_working(img, mpp_in, _cfg(0.5))
    assert s == pytest.approx(mpp_in / 0.5)
    assert work.shape[:2] == working_size((127, 101), mpp_in, 0.5)[::-1]
    back = work_to_input(_centroid_corner(work), s)
    np.testing.assert_allclose(back, [cx, cy], atol=0.05)  # well below one input pixel
    np.testing.assert_allclose(input_to_work(back, s), _centroid_corner(work), atol=1e-9)


def test_same_mpp_is_identity_and_bad_mpp_refused():
    img = np.zeros((10, 12, 3), np.uint8)
    w, s = to_working(img, 0.5, _cfg(0.5))
    assert s == 1.0 and w is img
    for bad in (float("nan"), -1.0, 0.0):
        with pytest.raises(InputError):
            to_working(img, bad, _cfg())
    with pytest.raises(InputError):
        to_working(np.zeros((10, 12, 4), np.uint8), 0.5, _cfg())


@pytest.mark.parametrize("s_in", [0.2456, 0.8])
def test_working_region_equals_crop_of_whole(s_in):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (211, 173, 3), dtype=np.uint8)
    whole, s = to_working(img, s_in, _cfg(0.5))
    for region in [(0, 0, 30, 40), (17, 23, 61, 70), (whole.shape[1] - 25, whole.shape[0] - 9, whole.shape[1], whole.shape[0])]:
        x0, y0, x1, y1 = region
        part = resample_region(img, s, region)
        if s < 1:  # area averaging: weights from global coordinates, bit-identical
            assert np.array_equal(part, whole[y0:y1, x0:x1])
        else:  # Pillow's bilinear: fixed-point weights may round a grey level differently
            assert np.abs(part.astype(int) - whole[y0:y1, x0:x1]).max() <= 2


def test_forward_tiles_shapes_softmax_and_batching():
    m = tiny_random_model(0)
    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 256, (56, 56, 3), dtype=np.uint8) for _ in range(3)] + [
        rng.integers(0, 256, (30, 45, 3), dtype=np.uint8)  # odd size: padded to the multiple, cropped back
    ]
    out = forward_tiles(m, tiles)
    assert [o["prob"].shape for o in out] == [(6, 56, 56)] * 3 + [(6, 30, 45)]
    assert out[3]["hv"].shape == (2, 30, 45) and out[0]["prob"].dtype == np.float32
    np.testing.assert_allclose(out[0]["prob"].sum(0), 1.0, atol=1e-5)
    one_by_one = forward_tiles(m, tiles, batch_size=1)
    for a, b in zip(out, one_by_one):
        np.testing.assert_allclose(a["prob"], b["prob"], atol=1e-5)
        np.testing.assert_allclose(a["hv"], b["hv"], atol=1e-5)
    with pytest.raises(InputError):
        forward_tiles(m, [np.zeros((8, 8), np.uint8)])


def test_tiled_equals_whole_for_local_model(monuseg_small):
    """A model with a 5x5 receptive field: blended tiles reproduce the whole-image maps."""
    m = threshold_model(tile=64, overlap=16)
    rgb, _, mpp = monuseg_small[0]
    work, _ = to_working(rgb, mpp, m.config)
    work = work[:128, :128]  # a multiple of pad_multiple: the whole-image pass needs no padding
    whole = forward_tiles(m, [work])[0]
    tiled = predict_maps(m, work, 48, 16)
    d = np.abs(tiled.prob - whole["prob"])
    assert d.mean() < 1e-3 and d.max() < 0.1  # residue: tile-edge pixels, down-weighted by the window
    assert (tiled.prob.argmax(0) == whole["prob"].argmax(0)).mean() > 0.999


def _seam_ratio(hv, starts):
    """Mean |x-gradient| of the HV maps across the tile-start columns / median elsewhere."""
    g = np.abs(np.diff(hv, axis=2)).mean(axis=(0, 1))  # g[k]: between columns k and k+1
    seams = [s - 1 for s in starts if s > 0]
    interior = np.setdiff1d(np.arange(8, len(g) - 8), seams)
    return float(g[seams].mean() / np.median(g[interior]))


def test_blended_stitching_removes_last_writer_seams(monuseg_small):
    """The paper's last-writer HV stitching leaves jumps where a later tile starts; the smooth
    blend does not, and it is closer to the whole-image prediction of a random tiny UperHoVer."""
    m = tiny_random_model(0)
    rgb, _, mpp = monuseg_small[0]
    work, _ = to_working(rgb, mpp, m.config)
    work = work[:112, :126]
    T, O = 56, 14
    whole = forward_tiles(m, [work])[0]
    blend = predict_maps(m, work, T, O)
    last = predict_maps(m, work, T, O, stitch="last_writer")
    starts = tile_starts(work.shape[1], T, O)
    r_last, r_blend = _seam_ratio(last.hv, starts), _seam_ratio(blend.hv, starts)
    assert r_last > 2.0, r_last  # visible seams
    assert r_blend < 1.5 and r_blend < r_last / 2, (r_blend, r_last)
    # tiled + blended ~ whole image (UperNet's pyramid pooling sees only a tile, so not exact)
    err_b = np.abs(blend.hv - whole["hv"]).mean()
    err_l = np.abs(last.hv - whole["hv"]).mean()
    assert err_b < err_l
    assert np.abs(blend.prob - whole["prob"]).mean() < 5e-3
    assert (blend.prob.argmax(0) == whole["prob"].argmax(0)).mean() > 0.99
    assert np.corrcoef(blend.hv.ravel(), whole["hv"].ravel())[0, 1] > 0.9


def _bn_model():
    """A small UperHoVer (resnet10t levels 0-3, heads of width 8) with non-trivial BatchNorm
    statistics, so folding actually changes the convolutions."""
    import torch

    from segtme.models import create_model

    torch.manual_seed(0)
    cfg = ModelConfig(name="bn", backbone="resnet10t", out_indices=[0, 1, 2, 3], head_hidden=8,
                      taxonomy="consep4", mpp=0.5, tile_size=64, tile_overlap=16)
    m = create_model(cfg).eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return cfg, m


def test_fold_batchnorm_is_exact_and_leaves_the_model_alone():
    import torch

    from segtme.models.registry import fold_batchnorm

    _, m = _bn_model()
    n_bn = sum(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())
    keys = sorted(m.state_dict())
    folded, n = fold_batchnorm(m)
    assert n == n_bn > 0  # every BN of the backbone and both heads folded
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in folded.modules())
    assert sum(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules()) == n_bn and sorted(m.state_dict()) == keys
    x = torch.rand(2, 3, 96, 96)
    with torch.inference_mode():
        a, b = m(x), folded(x)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5 * (1 + float(a[k].abs().max()))), k


def test_forward_tiles_uses_folded_module_and_sees_weight_updates():
    """The engine runs the folded copy (same outputs as the module itself) and rebuilds it when
    the module's weights change in place (e.g. a model evaluated during training)."""
    import torch

    from segtme.models import LoadedModel

    cfg, m = _bn_model()
    lm = LoadedModel(cfg, m, torch.device("cpu"), "test", "fp32")
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)

    def direct():
        x = torch.from_numpy(tile).permute(2, 0, 1)[None].float() / 255.0
        x = (x - torch.tensor(cfg.mean).view(1, 3, 1, 1)) / torch.tensor(cfg.std).view(1, 3, 1, 1)
        with torch.inference_mode():
            return torch.softmax(m(x)["sem"], 1)[0].numpy()

    out = forward_tiles(lm, [tile])[0]["prob"]
    assert np.allclose(out, direct(), atol=1e-5)
    assert getattr(m, "_segtme_infer", None) is not None
    with torch.no_grad():  # an optimiser-like in-place update of one BN
        bn = next(x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d))
        bn.weight.mul_(3.0)
    out2 = forward_tiles(lm, [tile])[0]["prob"]
    assert not np.allclose(out2, out, atol=1e-4)
    assert np.allclose(out2, direct(), atol=1e-5)


def test_precision_resolution_and_bf16_forward_close_to_fp32(monkeypatch):
    """``auto`` is bf16 on CUDA and on CPUs with native bf16, fp32 otherwise; a bf16 forward
    gives the fp32 probabilities to within bf16 rounding."""
    import torch

    import segtme.models.registry as reg
    from segtme import runtime
    from segtme.models import LoadedModel

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert reg.resolve_precision("auto", cuda) == "bf16"
    assert reg.resolve_precision("fp32", cuda) == "fp32"
    assert reg.resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(runtime, "_NATIVE_BF16", False)
    assert reg.resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(runtime, "_NATIVE_BF16", True)
    assert reg.resolve_precision("auto", cpu) == "bf16"
    with pytest.raises(ValueError, match="precision"):
        reg.resolve_precision("fp16x", cpu)

    cfg, m = _bn_model()
    tile = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    p32 = forward_tiles(LoadedModel(cfg, m, cpu, "test", "fp32"), [tile])[0]
    p16 = forward_tiles(LoadedModel(cfg, m, cpu, "test", "bf16"), [tile])[0]
    assert p16["prob"].dtype == np.float32 and p16["prob"].shape == p32["prob"].shape
    assert not np.array_equal(p16["prob"], p32["prob"])  # bf16 arithmetic really ran
    assert np.abs(p16["prob"] - p32["prob"]).max() < 0.05
    assert np.abs(p16["hv"] - p32["hv"]).max() < 0.05 * (1 + np.abs(p32["hv"]).max())


def test_grid_predictor_regions_equal_the_whole_image_and_run_each_tile_once():
    """Regions served by one GridPredictor are crops of the whole image's blended maps (up to the
    float16 cache), and overlapping regions never run a tile twice."""
    from segtme.inference.engine import GridPredictor, predict_maps
    from segtme.inference.tiling import chunk_grid, tile_grid

    import torch

    from segtme.models import LoadedModel

    cfg, mod = _bn_model()  # tiles 64 / overlap 16
    m = LoadedModel(cfg, mod, torch.device("cpu"), "test", "fp32")
    rgb = np.random.default_rng(2).integers(0, 255, (150, 170, 3), dtype=np.uint8)
    whole = predict_maps(m, rgb)
    chunks = chunk_grid(170, 150, 60, 12)
    regions = [c.region for c in chunks]
    gp = GridPredictor(m, 150, 170, lambda r: rgb[r[1]:r[3], r[0]:r[2]], regions)
    for r in regions:
        x0, y0, x1, y1 = r
        got = gp.predict(r)
        assert got.shape == (y1 - y0, x1 - x0)
        assert np.allclose(got.prob, whole.prob[:, y0:y1, x0:x1], atol=2e-3)
        if whole.hv is not None:
            assert np.allclose(got.hv, whole.hv[:, y0:y1, x0:x1], atol=2e-3 * (1 + np.abs(whole.hv).max()))
    assert gp.tiles_run == len(tile_grid(150, 170, 64, 16))
    assert gp._cache == {}  # every cached tile released after its last region


def test_malloc_tuning_applies_on_linux_glibc_and_can_be_turned_off():
    """``segtme.runtime`` tunes glibc malloc on Linux (large buffers kept for reuse during forward
    passes); SEGTME_MALLOC_TUNING=0 leaves malloc alone."""
    import os
    import subprocess
    import sys

    from segtme import runtime

    code = ("from segtme import runtime as r; r.keep_large_buffers(); r.release_free_memory(); "
            "print(r.MALLOC_TUNED)")
    env = {**os.environ, "SEGTME_MALLOC_TUNING": "0"}
    off = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert off.stdout.strip() == "False"
    if sys.platform.startswith("linux") and runtime._libc() is not None:
        assert runtime.MALLOC_TUNED is True
        assert runtime._mallopt(256 << 20, 512 << 20) is True


def test_trim_free_memory_only_above_the_resident_size_asked_for():
    """trim_free_memory(above_bytes) trims only while the resident set is larger (PAGET's chunk loop):
    a bound far above this process skips it, no bound / a bound below it runs malloc_trim."""
    import sys

    from segtme import runtime

    rss = runtime.resident_bytes()
    if not sys.platform.startswith("linux") or runtime._libc() is None:
        assert runtime.trim_free_memory() is False
        return
    assert rss is not None and 10 << 20 < rss < 64 << 30
    assert runtime.trim_free_memory(rss * 100) is False
    assert runtime.trim_free_memory(1 << 20) is True
    assert runtime.trim_free_memory() is True and runtime.trim_free_memory(0) is True


def test_flip_tta_is_flip_equivariant_and_off_by_default():
    """With ``tta="flip"`` the maps of a flipped tile are the flipped maps of the tile (HV x / y
    channels change sign with their flip); without it the plain forward is returned."""
    m = tiny_random_model(0)
    rng = np.random.default_rng(2)
    tile = rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)  # a multiple of pad_multiple: no padding
    a = forward_tiles(m, [tile], tta="flip")[0]
    b = forward_tiles(m, [np.ascontiguousarray(tile[:, ::-1])], tta="flip")[0]
    np.testing.assert_allclose(b["prob"], a["prob"][:, :, ::-1], atol=1e-5)
    np.testing.assert_allclose(b["hv"][0], -a["hv"][0][:, ::-1], atol=1e-5)
    np.testing.assert_allclose(b["hv"][1], a["hv"][1][:, ::-1], atol=1e-5)
    plain = forward_tiles(m, [tile])[0]
    assert not np.allclose(plain["prob"], a["prob"], atol=1e-4)  # TTA really averages
    np.testing.assert_allclose(forward_tiles(m, [tile], tta="none")[0]["prob"], plain["prob"], atol=1e-6)
    with pytest.raises(InputError, match="flip"):
        forward_tiles(m, [tile], tta="rotate")
