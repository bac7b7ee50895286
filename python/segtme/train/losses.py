"""Losses of the SegTME-UNI2 paper (section 4.4) and their pluggable registry.

``L_total = L_sem + λ · L_hv``, ``L_hv = L_MSE + 2 · L_MSGE``, λ = 1 (paper eqs. 2-6), and an
optional ``+ dice_weight · L_dice`` (off by default, so the paper's loss is unchanged):

* ``L_sem``: cross-entropy over valid pixels (label != 255). **Extension for class-agnostic
  labels** (MoNuSeg, GBM: instances without classes, encoded 254 = ``FG_UNKNOWN``): at such a
  pixel the loss is ``-log Σ_{c≥1} p_c``, the negative log of the *marginal* foreground
  probability (all non-background classes' softmax mass). It teaches "nucleus vs background"
  without pushing the pixel towards any particular class, so mixing class-labelled (CoNSeP,
  PanNuke) and class-agnostic datasets never invents classes. Such pixels count in ``|Ω_v|``.
* ``L_MSE = (1/|Ω_fg|) ||(M̂ - T) ⊙ M_fg||²_F`` over both channels;
* ``L_MSGE = (1/|Ω_fg|) [||(∇x M̂0 - ∇x T0) ⊙ M_fg||² + ||(∇y M̂1 - ∇y T1) ⊙ M_fg||²]``, with
  ∇ HoVer-Net's 5x5 Sobel-like kernel ``K_x[i, j] = x_j / (x_j² + y_i² + 1e-15)``
  (``F.conv2d``, zero padding 2). Ω_fg = foreground pixels (1 ≤ label ≤ 254) of the whole batch.
* ``L_dice = 1 - (2 Σ p t + 1) / (Σ p + Σ t + 1)`` over the valid pixels of the whole batch, with
  p = 1 - softmax background probability (the marginal foreground, as above) and t = 1 at
  foreground labels: HoVer-Net's nuclear-pixel branch is trained with CE + this soft Dice
  (Graham et al. 2019, section 3.3); here it acts on the same marginal foreground the HV
  watershed thresholds, so class-agnostic datasets take part.

Losses are computed in float32 (outputs are cast), so bf16 autocast does not affect them.
A loss maps ``(outputs: dict, batch: dict) -> dict`` whose ``"total"`` is optimised; every other
entry is logged. Register a new one with ``register_loss``; the trainer picks it by name
(``[loss] name = "ce"`` for a semantic-only student such as PAGET-S).
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..data.sample import FG_UNKNOWN, IGNORE


def sobel_kernels(size: int = 5, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """HoVer-Net's Sobel-like kernels (size x size), as conv2d weights (1, 1, size, size):
    ``K_x`` responds positively to values increasing along x (columns), ``K_y`` along y (rows)."""
    if size % 2 != 1:
        raise ValueError("Sobel kernel size must be odd")
    r = torch.arange(-(size // 2), size // 2 + 1, dtype=torch.float64)
    y, x = torch.meshgrid(r, r, indexing="ij")
    denom = x * x + y * y + 1.0e-15
    kx = (x / denom).to(dtype)
    ky = (y / denom).to(dtype)
    return kx.view(1, 1, size, size).to(device), ky.view(1, 1, size, size).to(device)


def spatial_gradients(m: torch.Tensor, size: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(∇x of channel 0, ∇y of channel 1) of an HV map (B, 2, H, W), each (B, 1, H, W)."""
    kx, ky = sobel_kernels(size, m.device, m.dtype)
    gx = F.conv2d(m[:, 0:1], kx, padding=size // 2)
    gy = F.conv2d(m[:, 1:2], ky, padding=size // 2)
    return gx, gy


def semantic_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE,
                  fg_unknown: int = FG_UNKNOWN, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy (paper eq. 2) with ignore index and the marginal-foreground term for
    ``fg_unknown`` pixels (module doc). logits (B, C, H, W), target (B, H, W) int64.
    ``class_weights`` (C,): optional weight of a pixel of each known class (a rare class can be
    up-weighted); marginal-foreground pixels keep weight 1; the sum is still divided by the
    number of valid pixels, so weights of 1 give the paper's loss exactly."""
    logp = F.log_softmax(logits.float(), dim=1)
    known = (target != ignore_index) & (target != fg_unknown)
    unknown = target == fg_unknown
    t = torch.where(known, target, torch.zeros_like(target))
    nll = -logp.gather(1, t.unsqueeze(1)).squeeze(1)
    nll_fg = -torch.logsumexp(logp[:, 1:], dim=1)
    zero = torch.zeros_like(nll)
    if class_weights is not None:
        nll = nll * class_weights.to(nll.device, nll.dtype)[t]
    per_px = torch.where(known, nll, torch.where(unknown, nll_fg, zero))
    n = (known | unknown).sum()
    return per_px.sum() / n.clamp(min=1)


def hv_loss_terms(pred: torch.Tensor, target: torch.Tensor, fg: torch.Tensor, sobel_size: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_MSE, L_MSGE) of paper eqs. 3-4. pred/target (B, 2, H, W), fg (B, H, W) bool."""
    pred = pred.float()
    target = target.float()
    m = fg.unsqueeze(1).to(pred.dtype)
    n = m.sum().clamp(min=1.0)
    mse = (((pred - target) ** 2) * m).sum() / n
    gxp, gyp = spatial_gradients(pred, sobel_size)
    gxt, gyt = spatial_gradients(target, sobel_size)
    msge = ((((gxp - gxt) ** 2) + ((gyp - gyt) ** 2)) * m).sum() / n
    return mse, msge


def foreground_mask(sem: torch.Tensor) -> torch.Tensor:
    """Foreground pixels for the HV and Dice losses: 1 ≤ label ≤ 254 (classes and FG_UNKNOWN; not ignore)."""
    return (sem > 0) & (sem != IGNORE)


def foreground_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss of the marginal foreground (module doc). logits (B, C, H, W) with class 0 =
    background, target (B, H, W) int64; pixels labelled ``IGNORE`` do not count."""
    p_fg = 1.0 - torch.softmax(logits.float(), dim=1)[:, 0]
    p = p_fg * (target != IGNORE).to(p_fg.dtype)
    t = foreground_mask(target).to(p_fg.dtype)
    return 1.0 - (2.0 * (p * t).sum() + smooth) / (p.sum() + t.sum() + smooth)


class UperHoVerLoss(nn.Module):
    """``L_total = L_sem + hv_weight · (L_MSE + msge_weight · L_MSGE) + dice_weight · L_dice``
    (paper: 1.0, 2.0 and no Dice term, ``dice_weight = 0``)."""

    def __init__(self, hv_weight: float = 1.0, msge_weight: float = 2.0, sobel_size: int = 5,
                 class_weights: list[float] | None = None, dice_weight: float = 0.0):
        super().__init__()
        self.hv_weight, self.msge_weight, self.sobel_size = float(hv_weight), float(msge_weight), int(sobel_size)
        if not float(dice_weight) >= 0:
            raise ValueError(f"[loss] dice_weight = {dice_weight}: must be >= 0")
        self.dice_weight = float(dice_weight)
        if class_weights is not None and (not class_weights or min(class_weights) <= 0):
            raise ValueError("[loss] class_weights must be a non-empty list of positive numbers (one per class)")
        self.class_weights = None if class_weights is None else torch.tensor([float(w) for w in class_weights])

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        sem_t = batch["sem"]
        cw = self.class_weights
        if cw is not None and cw.numel() != outputs["sem"].shape[1]:
            raise ValueError(f"[loss] class_weights has {cw.numel()} values for {outputs['sem'].shape[1]} classes")
        l_sem = semantic_loss(outputs["sem"], sem_t, class_weights=cw)
        mse, msge = hv_loss_terms(outputs["hv"], batch["hv"], foreground_mask(sem_t), self.sobel_size)
        l_hv = mse + self.msge_weight * msge
        terms = {"total": l_sem + self.hv_weight * l_hv, "sem": l_sem, "hv": l_hv, "mse": mse, "msge": msge}
        if self.dice_weight > 0:
            terms["dice"] = foreground_dice_loss(outputs["sem"], sem_t)
            terms["total"] = terms["total"] + self.dice_weight * terms["dice"]
        return terms


class SemanticCELoss(nn.Module):
    """Semantic cross-entropy only (ignore 255; FG_UNKNOWN marginal term), for models without an
    HV head (e.g. a SegFormer student). ``class_weights``: optional positive weight per class (one
    per model output, as ``UperHoVerLoss``'s); None = the unweighted loss."""

    def __init__(self, class_weights: list[float] | None = None):
        super().__init__()
        if class_weights is not None and (isinstance(class_weights, str) or not class_weights
                                          or min(float(w) for w in class_weights) <= 0):
            raise ValueError("[loss] class_weights must be a non-empty list of positive numbers (one per class)")
        self.class_weights = None if class_weights is None else torch.tensor([float(w) for w in class_weights])

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cw = self.class_weights
        if cw is not None and cw.numel() != outputs["sem"].shape[1]:
            raise ValueError(f"[loss] class_weights has {cw.numel()} values for {outputs['sem'].shape[1]} classes")
        l_sem = semantic_loss(outputs["sem"], batch["sem"], class_weights=cw)
        return {"total": l_sem, "sem": l_sem}


_LOSSES: dict[str, Callable[..., nn.Module]] = {"uperhover": UperHoVerLoss, "ce": SemanticCELoss}


def register_loss(name: str, factory: Callable[..., nn.Module]) -> None:
    _LOSSES[name] = factory


def build_loss(name: str = "uperhover", **kwargs) -> nn.Module:
    """A registered loss by name, or ``"package.module:Factory"`` for a plugin."""
    if ":" in name:
        mod, attr = name.split(":", 1)
        return getattr(importlib.import_module(mod), attr)(**kwargs)
    try:
        return _LOSSES[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; known: {sorted(_LOSSES)} (or 'module:Factory')") from None
