"""The one resampler / working size / padding (segtme.resample) and the one stain OD (stain)."""

from __future__ import annotations

import numpy as np
import pytest

from segtme.errors import InputError
from segtme import resample as R


def test_one_rounding_rule_round_half_up():
    # the example: a 1001 px edge at 0.25 -> 0.5 µm/px is 501 px (training said 500)
    assert R.working_size((1001, 1001), 0.25, 0.5) == (501, 501)
    assert R.working_size((1000, 3), 0.25, 0.5) == (500, 2)  # 1.5 rounds up
    assert R.working_size((1, 1), 0.25, 1.0) == (1, 1)       # at least 1
    assert R.scale(0.5, 0.5000001) == 1.0                     # within UNIT_TOL: exactly 1
    with pytest.raises(InputError):
        R.scale(float("nan"), 0.5)


def test_area_downsampling_is_the_footprint_mean():
    a = (np.arange(36, dtype=np.uint8).reshape(6, 6) * 7)
    out = R.resample(a, 0.5)
    np.testing.assert_array_equal(out, np.rint(a.reshape(3, 2, 3, 2).mean(axis=(1, 3))).astype(np.uint8))
    # s = 2/3: output pixel 0 covers input [0, 1.5): weights 2/3, 1/3
    row = np.array([[30, 90, 150]], np.uint8).repeat(3, axis=0)
    got = R.resample(row, 2 / 3, (2, 2))
    assert got[0, 0] == round(30 * 2 / 3 + 90 / 3) and got[0, 1] == round(90 / 3 + 150 * 2 / 3)


@pytest.mark.parametrize("s", [0.4912, 0.5054, 0.77, 0.35])
def test_windows_are_bit_identical_to_the_whole_image(s):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (233, 301, 3), dtype=np.uint8)
    whole = R.resample(img, s)
    H, W = whole.shape[:2]
    for reg in [(0, 0, 40, 30), (17, 9, 101, 77), (W - 13, H - 21, W, H), (3, H - 2, W, H)]:
        x0, y0, x1, y1 = reg
        np.testing.assert_array_equal(R.resample_region(img, s, reg), whole[y0:y1, x0:x1])


def test_labels_nearest_and_padding():
    lab = np.arange(1, 17).reshape(4, 4)
    np.testing.assert_array_equal(R.resample_labels(lab, 0.5), [[6, 8], [14, 16]])  # centres 1, 3
    up = R.resample_labels(lab, 2.0)
    assert up.shape == (8, 8) and up[0, 0] == 1 and up[7, 7] == 16
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    p = R.pad_to(a, (5, 6))
    np.testing.assert_array_equal(p[3, :4], a[1])  # reflect
    assert p.shape == (5, 6) and p[0, 4] == a[0, 2]
    tall = R.pad_to(a, (8, 4))                 # longer than the image can reflect: edge
    assert tall.shape == (8, 4) and (tall[5:] == tall[4]).all()
    np.testing.assert_array_equal(R.pad_to(a, (4, 5), fill=0)[3], 0)
    batch = np.zeros((2, 5, 7, 3), np.uint8)
    assert R.pad_to_multiple(batch, 4, axes=(1, 2)).shape == (2, 8, 8, 3)


def test_stain_matches_scikit_image():
    from skimage.color import hed_from_rgb, rgb2hed, rgb_from_hed

    from segtme import stain

    np.testing.assert_allclose(stain.RGB_FROM_HED, rgb_from_hed)
    np.testing.assert_allclose(stain.HED_FROM_RGB, hed_from_rgb, atol=1e-12)
    rng = np.random.default_rng(1)
    x = rng.integers(1, 256, (64, 48, 3), dtype=np.uint8)
    np.testing.assert_allclose(np.maximum(stain.hed_od(x), 0) / stain.SKIMAGE_HED_UNIT, rgb2hed(x), atol=1e-6)
    np.testing.assert_allclose(stain.haematoxylin_od(x), stain.hed_od(x)[..., 0], atol=1e-5)
    np.testing.assert_allclose(stain.eosin_od(x), stain.hed_od(x)[..., 1], atol=1e-5)
    assert stain.haematoxylin_od(x[0]).shape == (48,)
    with pytest.raises(ValueError):
        stain.haematoxylin_od(x.astype(np.float32))
