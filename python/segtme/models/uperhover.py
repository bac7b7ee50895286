"""UperHoVer: a pyramid backbone + two independent UperNet decode heads (semantic, HV).

The SegTME-UNI2 paper's UNI2-UperHoVer is this module with the UNI2-h ViT taps; the project's
small CPU models are the same module with a timm CNN. There is one implementation.

Heads are ``transformers`` ``UperNetHead`` (PPM + FPN + classifier), not re-implemented here.
Outputs are upsampled (bilinear) to the input size: ``{"sem": (B, C, H, W) logits,
"hv": (B, 2, H, W)}`` with HV channel 0 = horizontal, 1 = vertical, no activation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import UperNetConfig
from transformers.models.upernet.modeling_upernet import UperNetHead

from .backbones import build_backbone
from .config import ModelConfig


def make_upernet_head(in_channels: list[int], hidden: int, num_labels: int, pool_scales: list[int]) -> nn.Module:
    cfg = UperNetConfig(hidden_size=hidden, pool_scales=list(pool_scales), num_labels=num_labels)
    return UperNetHead(cfg, in_channels=list(in_channels))


def backbone_from_config(cfg: ModelConfig, pretrained: bool = False) -> nn.Module:
    """The pyramid backbone ``cfg`` names (``backbones.build_backbone`` with its fields)."""
    return build_backbone(
        cfg.backbone,
        vit_taps=cfg.vit_taps,
        out_indices=cfg.out_indices,
        pyramid_channels=cfg.pyramid_channels,
        pyramid_strides=cfg.pyramid_strides,
        backbone_kwargs=cfg.backbone_kwargs,
        pretrained=pretrained,
    )


class UperHoVer(nn.Module):
    def __init__(self, cfg: ModelConfig, pretrained_backbone: bool = False):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone_from_config(cfg, pretrained_backbone)
        chans = self.backbone.channels
        self.heads = nn.ModuleDict(
            {k: make_upernet_head(chans, cfg.head_hidden, n, cfg.pool_scales) for k, n in cfg.head_channels().items()}
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        size = x.shape[-2:]
        return {
            k: F.interpolate(head(feats), size=size, mode="bilinear", align_corners=False)
            for k, head in self.heads.items()
        }
