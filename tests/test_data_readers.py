"""Dataset readers, MPP rescaling, augmentations and the crop dataset."""

from __future__ import annotations

import colorsys
import json

import numpy as np
import pytest
from PIL import Image

from segtme.data.dataset import CropDataset, EpochSampler
from segtme.data.readers import (
    TCGA_UT_MPP,
    pannuke_instances,
    read_dataset,
    read_folder,
    read_pannuke_fold,
    read_pseudo,
    read_tcga_ut,
)
from segtme.data.sample import FG_UNKNOWN, IGNORE
from segtme.data.transforms import AugmentConfig, augment, crop_working, hls_to_rgb, rgb_to_hls
from segtme.errors import InputError


# ----------------------------------------------------------------------------- PanNuke
def _write_fold(tmp_path):
    n = 3
    images = np.random.default_rng(0).integers(0, 255, (n, 32, 32, 3)).astype(np.float64)  # PanNuke stores float64
    masks = np.zeros((n, 32, 32, 6), np.float64)
    masks[0, 2:6, 2:6, 0] = 7  # neoplastic nucleus, id 7
    masks[0, 10:14, 10:14, 0] = 9  # another neoplastic
    masks[0, 20:24, 20:24, 1] = 7  # inflammatory, same id in another channel
    masks[1, 5:9, 5:9, 4] = 3  # epithelial
    masks[..., 5] = (masks[..., :5].sum(-1) == 0)  # background channel
    types = np.array(["Breast", "Colon", "Lung"])
    d = tmp_path / "fold1"
    (d / "images").mkdir(parents=True)
    (d / "masks").mkdir()
    np.save(d / "images" / "images.npy", images)
    np.save(d / "masks" / "masks.npy", masks)
    np.save(d / "images" / "types.npy", types)
    return d


def test_pannuke_fold_reader(tmp_path):
    d = _write_fold(tmp_path)
    refs = read_pannuke_fold(d)
    assert len(refs) == 3 and refs[0].mpp == 0.25 and refs[0].meta["tissue"] == "Breast"
    rgb, inst, sem = refs[0].load()
    assert rgb.dtype == np.uint8 and rgb.shape == (32, 32, 3)
    assert inst.max() == 3  # ids renumbered across channels
    assert set(np.unique(sem)) == {0, 1, 2}  # neoplastic -> 1, inflammatory -> 2 (pannuke6)
    assert np.all(sem[2:6, 2:6] == 1) and np.all(sem[20:24, 20:24] == 2)
    assert read_pannuke_fold(d, classes=False)[1].load()[2][6, 6] == FG_UNKNOWN
    _, sem1 = pannuke_instances(np.load(d / "masks" / "masks.npy")[1])
    assert sem1 == {1: 5}
    assert len(read_dataset("pannuke", d)) == 3


# ----------------------------------------------------------------------------- generic folder (real data)
def test_generic_folder_with_classes_consep(shared_data):
    refs = read_folder(shared_data / "consep-train", split="train")
    assert len(refs) == 27 and all(r.has_classes and r.mpp == 0.25 for r in refs)
    rgb, inst, sem = refs[0].load()
    assert rgb.shape == (1000, 1000, 3) and inst.shape == (1000, 1000)
    cls = json.loads((shared_data / "consep-train" / "labels" / "train_1_class.json").read_text())
    i = int(next(iter(cls)))
    assert np.all(sem[inst == i] == cls[str(i)])
    assert np.all(sem[inst == 0] == 0)
    # remap (dataset class -> model class): other (1) folded into FG_UNKNOWN, others shifted
    refs2 = read_folder(shared_data / "consep-train", class_map={2: 1, 3: 2, 4: 3})
    _, _, sem2 = refs2[0].load()
    one = [int(k) for k, v in cls.items() if v == 1]
    if one:
        assert np.all(sem2[inst == one[0]] == FG_UNKNOWN)


def test_generic_folder_without_classes_needs_mpp(shared_data, tmp_path):
    refs = read_folder(shared_data / "monuseg-train", default_mpp=0.25)
    assert len(refs) == 30 and not refs[0].has_classes
    assert {r.mpp for r in refs} >= {0.25, 0.2527}
    with pytest.raises(InputError, match="MPP"):
        read_folder(shared_data / "gbm-tcga-tiles")  # no index.json, no MPP given
    gbm = read_folder(shared_data / "gbm-tcga-tiles", mpp=0.5)
    rgb, inst, sem = gbm[0].load()
    assert sem is None and inst.max() > 0


# ----------------------------------------------------------------------------- TCGA-UT / pseudo
def test_tcga_ut_layout_and_pseudo_folder(tmp_path):
    root = tmp_path / "tcga"
    for s in (0, 3):
        for ct in ("BRCA", "COAD"):
            d = root / f"scale_{s}" / ct
            d.mkdir(parents=True)
            Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(d / f"p{s}.png")
    refs = read_tcga_ut(root)
    assert len(refs) == 4
    assert {r.mpp for r in refs} == {TCGA_UT_MPP[0], TCGA_UT_MPP[3]} == {0.5, 0.8}
    assert {r.meta["cancer_type"] for r in refs} == {"BRCA", "COAD"}
    assert len(read_tcga_ut(root, scales=[0])) == 2
    # pseudo-label folder without manifest: *_sem_map.png beside the image
    d = root / "scale_0" / "BRCA"
    Image.fromarray(np.ones((16, 16), np.uint8)).save(d / "p0_sem_map.png")
    ps = read_pseudo(root, mpp=0.5)
    assert len(ps) == 1 and ps[0].has_classes and not ps[0].has_instances
    rgb, inst, sem = ps[0].load()
    assert inst is None and sem.dtype == np.uint8 and sem.max() == 1


# ----------------------------------------------------------------------------- transforms
def test_crop_working_rescales_by_mpp():
    rgb = np.zeros((100, 100, 3), np.uint8)
    rgb[:, 50:] = 255
    inst = np.zeros((100, 100), np.int32)
    inst[40:60, 40:60] = 5
    sem = (inst > 0).astype(np.uint8) * 2
    # 0.25 um/px -> 0.5 um/px: the 100 px image is 50 working px; a 64 px tile is padded
    r, i, s, valid = crop_working(rgb, inst, sem, 0.25, 0.5, 64, origin=(0, 0))
    assert valid[:50, :50].all() and not valid[50:].any() and not valid[:, 50:].any()
    assert np.all(s[~valid] == IGNORE) and np.all(i[~valid] == 0)
    assert np.array_equal(r[50:64, :50], r[48:34:-1, :50])  # image padding reflects, as inference pads
    assert (i == 5).sum() == 100  # 20x20 input px -> 10x10 working px
    assert r[10, 10, 0] == 0 and r[10, 40, 0] == 255
    # same MPP: plain crop
    r2, i2, _, _ = crop_working(rgb, inst, None, 0.5, 0.5, 32, origin=(40, 40))
    assert (i2 == 5).sum() == 400 and np.array_equal(r2, rgb[40:72, 40:72])


def test_crop_working_is_the_inference_resampling(shared_data):
    """A training crop has exactly the pixels of the whole image resampled by the product's
    resampler (segtme.resample), also at the scale-jittered MPPs, and the same rounding."""
    from PIL import Image

    from segtme.resample import resample, resample_labels, scale, working_size as ws

    rgb = np.asarray(Image.open(shared_data / "monuseg-train" / "images" / "TCGA-21-5786-01Z-00-DX1.png").convert("RGB"))
    inst = np.asarray(Image.open(shared_data / "monuseg-train" / "labels" / "TCGA-21-5786-01Z-00-DX1_inst.png")).astype(np.int32)
    for mpp_work in (0.5, 0.37, 0.66):
        s = scale(0.25, mpp_work)
        whole, whole_lab = resample(rgb, s), resample_labels(inst, s)
        r, i, _, valid = crop_working(rgb, inst, None, 0.25, mpp_work, 96, origin=(37, 61))
        assert valid.all()
        diff = np.abs(r.astype(int) - whole[61:157, 37:133])
        assert diff.max() <= 2 and (diff > 0).mean() < 0.02  # Pillow fixed-point ties (resample doc)
        assert np.array_equal(i, whole_lab[61:157, 37:133])
    assert ws((1001, 1001), 0.25, 0.5) == (501, 501)  # one rounding rule with inference


def test_hls_conversion_matches_colorsys():
    rng = np.random.default_rng(1)
    px = rng.random((50, 3))
    ours = rgb_to_hls(px)
    ref = np.array([colorsys.rgb_to_hls(*p) for p in px])
    np.testing.assert_allclose(ours, ref, atol=1e-9)
    np.testing.assert_allclose(hls_to_rgb(ours), px, atol=1e-9)


def test_augment_keeps_image_and_labels_aligned():
    rng = np.random.default_rng(3)
    inst = np.zeros((32, 32), np.int32)
    inst[3:9, 20:30] = 1
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[inst > 0] = 255
    cfg = AugmentConfig(p_colour_jitter=0, p_hls=0, p_hflip=1.0, p_vflip=1.0)
    r, (i, s) = augment(rgb, [inst, None], rng, cfg)
    assert s is None
    assert np.array_equal(r[..., 0] > 0, i > 0)
    assert i[31 - 3, 31 - 20] == 1 and i[3, 20] == 0
    # colour-only augmentations leave labels untouched and keep uint8
    cfg2 = AugmentConfig(p_colour_jitter=1.0, p_hls=1.0, p_hflip=0, p_vflip=0)
    r2, (i2,) = augment(np.full((8, 8, 3), 128, np.uint8), [inst[:8, :8]], rng, cfg2)
    assert r2.dtype == np.uint8 and np.array_equal(i2, inst[:8, :8])


def test_crop_dataset_targets_and_determinism(shared_data):
    refs = read_folder(shared_data / "consep-train", split="train")[:2]
    ds = CropDataset(refs, 0.5, 84, mean=(0.5,) * 3, std=(0.25,) * 3, num_classes=5, train=True, seed=7)
    assert len(ds) == 2 * round(500 * 500 / 84 ** 2)
    a, b = ds[(3, 1)], ds[(3, 1)]
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert a["image"].shape == (3, 84, 84) and a["hv"].shape == (2, 84, 84)
    fg = (a["sem"] > 0) & (a["sem"] != IGNORE)
    assert bool((a["hv"][:, ~fg] == 0).all()) and float(a["hv"].abs().max()) <= 1.0
    assert bool(a["has_cls"]) and bool(a["has_inst"])
    # too few classes in the model -> a clear error
    small = CropDataset(refs, 0.5, 84, mean=(0.5,) * 3, std=(0.25,) * 3, num_classes=2, train=False)
    with pytest.raises(InputError, match="class_map"):
        for k in range(len(small)):
            small[k]


def test_epoch_sampler_shards_and_resumes():
    full = EpochSampler(10, seed=1)
    full.set_epoch(2)
    order = [i for i, _ in full]
    assert sorted(order) == list(range(10))
    r0, r1 = EpochSampler(10, num_replicas=2, rank=0, seed=1), EpochSampler(10, num_replicas=2, rank=1, seed=1)
    r0.set_epoch(2), r1.set_epoch(2)
    assert sorted([i for i, _ in r0] + [i for i, _ in r1]) == list(range(10))
    full.set_epoch(2, start=4)
    assert [i for i, _ in full] == order[4:] and len(full) == 6
