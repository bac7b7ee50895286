"""Loss terms of the paper (section 4.4) against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segtme.data.sample import FG_UNKNOWN, IGNORE
from segtme.train.losses import (
    SemanticCELoss,
    UperHoVerLoss,
    build_loss,
    foreground_dice_loss,
    hv_loss_terms,
    semantic_loss,
    sobel_kernels,
)
from segtme.train.targets import hv_targets_dynamic


def test_sobel_kernel_is_hovernet_5x5():
    kx, ky = sobel_kernels(5)
    kx, ky = kx[0, 0].numpy(), ky[0, 0].numpy()
    # centre row of K_x: x / x^2 for x = -2..2 (y = 0)
    np.testing.assert_allclose(kx[2], [-0.5, -1.0, 0.0, 1.0, 0.5], atol=1e-7)
    # corner (y=-2, x=-2): -2 / 8
    assert kx[0, 0] == pytest.approx(-0.25)
    # (y=-1, x=2): 2 / 5
    assert kx[1, 4] == pytest.approx(0.4)
    np.testing.assert_allclose(ky, kx.T, atol=1e-7)


def test_semantic_loss_known_unknown_and_ignored_pixels():
    # 3 classes, 4 pixels in one row; logits chosen by hand
    logits = torch.tensor([[[[0.0, 0.0, 2.0, 5.0]],   # class 0
                            [[0.0, 1.0, 0.0, 5.0]],   # class 1
                            [[0.0, 0.0, 0.0, 5.0]]]])  # class 2
    target = torch.tensor([[[2, 1, FG_UNKNOWN, IGNORE]]])
    # pixel 0: uniform -> -log(1/3); target 2
    l0 = math.log(3.0)
    # pixel 1: logits (0, 1, 0), target 1 -> -log(e / (2 + e))
    l1 = -math.log(math.e / (2 + math.e))
    # pixel 2: logits (2, 0, 0), class unknown -> -log((1 + 1) / (e^2 + 2)) (marginal foreground)
    l2 = -math.log(2.0 / (math.e ** 2 + 2.0))
    # pixel 3 ignored
    want = (l0 + l1 + l2) / 3
    got = semantic_loss(logits, target)
    assert float(got) == pytest.approx(want, rel=1e-6)


def test_semantic_loss_equals_torch_ce_without_unknown():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 6, 7, generator=g)
    target = torch.randint(0, 5, (2, 6, 7), generator=g)
    target[0, 0, :3] = IGNORE
    want = torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE)
    assert float(semantic_loss(logits, target)) == pytest.approx(float(want), rel=1e-6)


def test_class_weights_scale_known_pixels_only():
    logits = torch.tensor([[[[0.0, 0.0, 2.0, 5.0]],
                            [[0.0, 1.0, 0.0, 5.0]],
                            [[0.0, 0.0, 0.0, 5.0]]]])
    target = torch.tensor([[[2, 1, FG_UNKNOWN, IGNORE]]])
    l0, l1 = math.log(3.0), -math.log(math.e / (2 + math.e))
    l2 = -math.log(2.0 / (math.e ** 2 + 2.0))
    w = torch.tensor([1.0, 3.0, 0.5])
    # class-1 pixel x3, class-2 pixel x0.5, marginal-foreground pixel x1; same denominator
    want = (0.5 * l0 + 3.0 * l1 + l2) / 3
    assert float(semantic_loss(logits, target, class_weights=w)) == pytest.approx(want, rel=1e-6)
    assert float(semantic_loss(logits, target, class_weights=torch.ones(3))) == pytest.approx(float(semantic_loss(logits, target)))
    with pytest.raises(ValueError, match="class_weights"):
        UperHoVerLoss(class_weights=[1.0, 0.0])


def test_hv_terms_on_a_ramp_by_hand():
    # 9x9, one foreground pixel at the centre; target T0 = 0.1*x, T1 = 0.1*y; prediction 0.
    ys, xs = np.mgrid[0:9, 0:9].astype(np.float32)
    target = torch.from_numpy(np.stack([0.1 * xs, 0.1 * ys]))[None]
    pred = torch.zeros_like(target)
    fg = torch.zeros(1, 9, 9, dtype=torch.bool)
    fg[0, 4, 4] = True
    mse, msge = hv_loss_terms(pred, target, fg)
    # MSE: (0.4^2 + 0.4^2) / 1
    assert float(mse) == pytest.approx(0.32, rel=1e-6)
    # ∇x of 0.1*x with K_x: 0.1 * Σ_{i,j} j^2/(i^2+j^2) = 0.1 * 12 = 1.2 (same for ∇y of T1);
    # Σ: j=±1 -> 2*(1 + 2*0.5 + 2*0.2) = 4.8; j=±2 -> 2*(1 + 2*0.8 + 2*0.5) = 7.2
    assert float(msge) == pytest.approx(1.2 ** 2 + 1.2 ** 2, rel=1e-5)


def test_total_loss_combines_terms_with_paper_weights():
    ys, xs = np.mgrid[0:9, 0:9].astype(np.float32)
    hv_t = torch.from_numpy(np.stack([0.1 * xs, 0.1 * ys]))[None]
    sem_t = torch.zeros(1, 9, 9, dtype=torch.long)
    sem_t[0, 4, 4] = 1
    logits = torch.zeros(1, 2, 9, 9)
    out = {"sem": logits, "hv": torch.zeros_like(hv_t)}
    terms = UperHoVerLoss()(out, {"sem": sem_t, "hv": hv_t})
    assert float(terms["sem"]) == pytest.approx(math.log(2.0), rel=1e-6)
    assert float(terms["hv"]) == pytest.approx(0.32 + 2 * 2.88, rel=1e-5)
    assert float(terms["total"]) == pytest.approx(math.log(2.0) + 0.32 + 2 * 2.88, rel=1e-5)
    # λ is honoured
    t2 = UperHoVerLoss(hv_weight=0.5)(out, {"sem": sem_t, "hv": hv_t})
    assert float(t2["total"]) == pytest.approx(math.log(2.0) + 0.5 * (0.32 + 5.76), rel=1e-5)


def test_hv_loss_ignores_background_and_ignored_pixels():
    target = torch.rand(1, 2, 8, 8)
    pred = torch.rand(1, 2, 8, 8)
    sem = torch.full((1, 8, 8), IGNORE)
    sem[0, :4] = 0
    out = UperHoVerLoss()({"sem": torch.zeros(1, 3, 8, 8), "hv": pred}, {"sem": sem, "hv": target})
    assert float(out["hv"]) == 0.0  # no foreground pixel


def test_perfect_prediction_of_dynamic_target_has_zero_hv_loss():
    sem = np.zeros((20, 20), np.uint8)
    sem[3:9, 4:12] = 2
    sem[12:18, 10:16] = 1
    hv = torch.from_numpy(hv_targets_dynamic(sem))[None]
    semt = torch.from_numpy(sem.astype(np.int64))[None]
    mse, msge = hv_loss_terms(hv.clone(), hv, semt > 0)
    assert float(mse) == 0.0 and float(msge) == 0.0


def test_loss_registry():
    assert isinstance(build_loss("ce"), SemanticCELoss)
    assert isinstance(build_loss("segtme.train.losses:UperHoVerLoss", hv_weight=2.0), UperHoVerLoss)
    with pytest.raises(ValueError):
        build_loss("nope")
    ce = build_loss("ce")({"sem": torch.zeros(1, 3, 2, 2)}, {"sem": torch.zeros(1, 2, 2, dtype=torch.long)})
    assert set(ce) == {"total", "sem"} and float(ce["total"]) == pytest.approx(math.log(3))


def test_foreground_dice_against_hand_computation_and_off_by_default():
    """L_dice = 1 - (2 Σ p t + 1) / (Σ p + Σ t + 1) on the marginal foreground p = 1 - p_bg, over
    non-ignored pixels; dice_weight = 0 (the default) leaves the paper's total unchanged."""
    sem_t = torch.tensor([[[0, 1, FG_UNKNOWN, IGNORE]]])  # (1, 1, 4)
    # 3 classes; background probabilities 0.5, 0.25, 0.5, 0.0 (the last pixel is ignored)
    p_bg = torch.tensor([0.5, 0.25, 0.5, 0.0])
    rest = (1 - p_bg) / 2
    logits = torch.log(torch.stack([p_bg, rest, rest]).clamp(min=1e-12))[None, :, None, :]  # (1, 3, 1, 4)
    p = torch.tensor([0.5, 0.75, 0.5])  # valid pixels' foreground probability
    t = torch.tensor([0.0, 1.0, 1.0])
    want = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    assert float(foreground_dice_loss(logits, sem_t)) == pytest.approx(float(want), rel=1e-5)
    # a confident perfect prediction has (almost) no Dice loss; an inverted one keeps only the
    # smoothing term: 1 - 1 / (1 + 2 + 1)
    big = torch.zeros(1, 3, 1, 3)
    big[0, 0, 0, 0], big[0, 1, 0, 1], big[0, 2, 0, 2] = 30.0, 30.0, 30.0
    st = torch.tensor([[[0, 1, FG_UNKNOWN]]])
    assert float(foreground_dice_loss(big, st)) < 1e-6
    inv = torch.zeros(1, 3, 1, 3)
    inv[0, 1, 0, 0], inv[0, 0, 0, 1], inv[0, 0, 0, 2] = 30.0, 30.0, 30.0
    assert float(foreground_dice_loss(inv, st)) == pytest.approx(0.75, abs=1e-6)
    hv = torch.zeros(1, 2, 1, 4)
    out, batch = {"sem": logits, "hv": hv}, {"sem": sem_t, "hv": hv}
    base = UperHoVerLoss()(out, batch)
    assert "dice" not in base
    with_dice = UperHoVerLoss(dice_weight=0.5)(out, batch)
    assert float(with_dice["dice"]) == pytest.approx(float(want), rel=1e-5)
    assert float(with_dice["total"]) == pytest.approx(float(base["total"]) + 0.5 * float(want), rel=1e-5)
    with pytest.raises(ValueError):
        UperHoVerLoss(dice_weight=-1.0)
    # the gradient reaches the logits
    lg = logits.clone().requires_grad_(True)
    foreground_dice_loss(lg, sem_t).backward()
    assert torch.isfinite(lg.grad).all() and lg.grad.abs().sum() > 0
