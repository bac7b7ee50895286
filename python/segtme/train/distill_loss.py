"""Knowledge-distillation loss from a frozen teacher (issue #17.3: distil ``default`` from ``accurate``).

Pure functions of tensors. Teacher and student outputs are on the SAME grid: the same crops
(after augmentation), at the same working MPP, each head ``(B, n, H, W)`` in working px at the
input size (the nucleus ``ModelContract``). Every term is computed in float32 (outputs are cast,
so bf16 autocast does not change it); the teacher's tensors are detached here, so gradients
reach only the student.

* ``kd_semantic``: Hinton et al.'s soft-target loss per pixel,
  ``T² · KL(p_t ‖ p_s) = T² · Σ_c p_t,c (log p_t,c − log p_s,c)``, ``p = softmax(logits / T)``
  over the class channel (nats; T² keeps the gradient scale independent of T); the weighted mean
  over pixels: ``Σ w · kl / Σ w``.
* ``kd_hv``: MSE to the teacher's HV maps, summed over the two channels and divided by the
  number of masked pixels (as ``L_MSE`` of ``train/losses.py``); mask = the crop weight ``w``,
  times the teacher's foreground (``1 − p_t,background > fg_threshold`` at T = 1) unless
  ``hv_mask = "all"``. HV values are unitless offsets in [−1, 1].
* ``distill_terms``: ``kd = weight_sem · kd_sem + weight_hv · kd_hv``, plus the terms for logging.

``w`` (B, H, W) or (B,) is a per-pixel / per-crop weight in [0, 1] (e.g. 0 for a labelled crop
when KD is applied to unlabelled crops only); all-zero weights give 0, not NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

HV_MASKS = ("teacher_fg", "all")


@dataclass(frozen=True)
class KDOptions:
    """The KD loss's parameters (``[teacher]`` of a training config).

    weight_sem / weight_hv: multipliers of the two terms (≥ 0); temperature: T > 0 of the soft
    targets; hv_mask: ``"teacher_fg"`` (HV distilled where the teacher sees a nucleus) or ``"all"``
    (every pixel); fg_threshold: teacher foreground probability (0..1) for ``"teacher_fg"``."""

    weight_sem: float = 1.0
    weight_hv: float = 1.0
    temperature: float = 1.0
    hv_mask: str = "teacher_fg"
    fg_threshold: float = 0.5

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"[teacher] temperature must be > 0, got {self.temperature}")
        if self.weight_sem < 0 or self.weight_hv < 0:
            raise ValueError("[teacher] weight_sem and weight_hv must be >= 0")
        if self.hv_mask not in HV_MASKS:
            raise ValueError(f"[teacher] hv_mask must be one of {HV_MASKS}, got {self.hv_mask!r}")
        if not 0.0 <= self.fg_threshold < 1.0:
            raise ValueError(f"[teacher] fg_threshold must be in [0, 1), got {self.fg_threshold}")


def _pixel_weights(w: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """(B, H, W) float32 weights from None (all 1), a per-crop (B,) or a per-pixel (B, H, W) tensor;
    ``like`` is a (B, n, H, W) output."""
    b, _, h, wd = like.shape
    if w is None:
        return torch.ones(b, h, wd, device=like.device, dtype=torch.float32)
    w = w.to(like.device, torch.float32)
    if w.dim() == 1:
        return w.view(b, 1, 1).expand(b, h, wd)
    if tuple(w.shape) != (b, h, wd):
        raise ValueError(f"KD weights of shape {tuple(w.shape)} for outputs {tuple(like.shape)}")
    return w


def _check_pair(student: torch.Tensor, teacher: torch.Tensor, what: str) -> None:
    if tuple(student.shape) != tuple(teacher.shape):
        raise ValueError(f"KD {what}: student output {tuple(student.shape)} and teacher output "
                         f"{tuple(teacher.shape)} differ (same crops, MPP and classes needed)")


def kd_semantic(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                weight: torch.Tensor | None = None) -> torch.Tensor:
    """``T² · KL(softmax(t/T) ‖ softmax(s/T))`` per pixel (nats), weighted mean over pixels.

    student_logits / teacher_logits: (B, C, H, W) semantic logits on the same grid; weight: None,
    (B,) per crop or (B, H, W) per pixel. Returns a scalar ≥ 0 (0 exactly when the logits are equal)."""
    _check_pair(student_logits, teacher_logits, "sem")
    t = float(temperature)
    logp_s = F.log_softmax(student_logits.float() / t, dim=1)
    logp_t = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
    kl = F.kl_div(logp_s, logp_t, reduction="none", log_target=True).sum(dim=1)  # (B, H, W)
    w = _pixel_weights(weight, student_logits)
    return (kl * w).sum() / w.sum().clamp(min=1e-12) * (t * t)


def teacher_foreground(teacher_logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(B, H, W) bool: the teacher's nucleus probability ``1 − softmax(logits)[:, 0]`` (T = 1,
    channel 0 = background) exceeds ``threshold``."""
    p_bg = F.softmax(teacher_logits.detach().float(), dim=1)[:, 0]
    return (1.0 - p_bg) > float(threshold)


def kd_hv(student_hv: torch.Tensor, teacher_hv: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MSE to the teacher's HV maps: ``Σ_px m · Σ_ch (ŝ − t)² / Σ_px m``.

    student_hv / teacher_hv: (B, 2, H, W) (unitless offsets); mask: None (all pixels), (B,) or
    (B, H, W) weights / bools. Returns a scalar ≥ 0; 0 when the mask is empty."""
    _check_pair(student_hv, teacher_hv, "hv")
    se = ((student_hv.float() - teacher_hv.detach().float()) ** 2).sum(dim=1)  # (B, H, W)
    m = _pixel_weights(mask, student_hv)
    return (se * m).sum() / m.sum().clamp(min=1.0)


def distill_terms(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], opts: KDOptions,
                  weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """KD terms between two output dicts (``"sem"`` (B, C, H, W) logits, optional ``"hv"``
    (B, 2, H, W)). weight: per-crop (B,) or per-pixel (B, H, W) weight, None = 1.

    Returns ``{"kd": weight_sem · kd_sem + weight_hv · kd_hv, "kd_sem", "kd_hv"}`` (scalars;
    ``kd_hv`` is 0 when either side has no HV head or ``weight_hv`` is 0)."""
    w = _pixel_weights(weight, student["sem"])
    l_sem = kd_semantic(student["sem"], teacher["sem"], opts.temperature, w)
    if opts.weight_hv > 0 and "hv" in student and "hv" in teacher:
        m = w if opts.hv_mask == "all" else w * teacher_foreground(teacher["sem"], opts.fg_threshold).float()
        l_hv = kd_hv(student["hv"], teacher["hv"], m)
    else:
        l_hv = torch.zeros((), device=l_sem.device)
    return {"kd": opts.weight_sem * l_sem + opts.weight_hv * l_hv, "kd_sem": l_sem, "kd_hv": l_hv}
