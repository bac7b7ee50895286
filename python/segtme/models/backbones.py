"""timm backbones that yield a feature pyramid (list of NCHW maps, finest first).

Two kinds, one interface (``PyramidBackbone.forward(x) -> list[Tensor]`` and ``.channels``):

* CNNs through timm ``features_only`` (any timm CNN: resnet, efficientnet, mobilenet, ...).
* ViTs through ``forward_intermediates`` at chosen blocks, each tap reshaped to the patch grid,
  projected by a 1x1 convolution and bilinearly resized to its pyramid stride (the
  SegTME-UNI2 paper, Eq. 1 and Table 2).

The UNI2-h configuration (``uni2_h_kwargs``) is defined in ``zoo`` (torch-free) with its preset.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _resolve_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Turn string names of layers (as stored in JSON configs) into timm classes."""
    out = dict(kwargs)
    if isinstance(out.get("mlp_layer"), str):
        import timm.layers as L

        out["mlp_layer"] = getattr(L, out["mlp_layer"])
    if out.get("act_layer") == "silu":
        out["act_layer"] = nn.SiLU
    return out


class PyramidBackbone(nn.Module):
    """Base: ``forward(x)`` returns a list of feature maps, finest first; ``channels`` their widths."""

    channels: list[int]
    strides: list[int]


class CNNPyramid(PyramidBackbone):
    def __init__(self, name: str, out_indices: Sequence[int] | None, pretrained: bool, **kwargs: Any):
        super().__init__()
        import timm  # lazily: building a model needs timm, importing the registry does not

        extra = {"out_indices": tuple(out_indices)} if out_indices is not None else {}
        self.body = timm.create_model(name, features_only=True, pretrained=pretrained, **extra, **kwargs)
        self.channels = list(self.body.feature_info.channels())
        self.strides = list(self.body.feature_info.reduction())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x))


class ViTTapPyramid(PyramidBackbone):
    """ViT taps -> 1x1 projections -> bilinear resize to strides (paper Eq. 1)."""

    def __init__(
        self,
        name: str,
        taps: Sequence[int],
        channels: Sequence[int],
        strides: Sequence[int],
        pretrained: bool,
        **kwargs: Any,
    ):
        super().__init__()
        if not (len(taps) == len(channels) == len(strides)):
            raise ValueError("vit_taps, pyramid_channels and pyramid_strides must have equal length")
        import timm

        self.vit = timm.create_model(name, pretrained=pretrained, **_resolve_kwargs(kwargs))
        depth = len(self.vit.blocks)
        bad = [t for t in taps if not 0 <= t < depth]
        if bad:
            raise ValueError(f"vit_taps {bad} out of range for a {depth}-block ViT")
        self.taps = list(taps)
        dim = self.vit.embed_dim
        self.proj = nn.ModuleList(nn.Conv2d(dim, c, kernel_size=1) for c in channels)
        self.channels = list(channels)
        self.strides = list(strides)
        self.patch = self.vit.patch_embed.patch_size[0]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, w = x.shape[-2:]
        if h % self.patch or w % self.patch:
            raise ValueError(f"ViT input {h}x{w} is not a multiple of the patch size {self.patch}")
        feats = self.vit.forward_intermediates(x, indices=self.taps, output_fmt="NCHW", intermediates_only=True)
        out = []
        for f, proj, s in zip(feats, self.proj, self.strides):
            f = proj(f)
            size = (max(1, round(h / s)), max(1, round(w / s)))
            out.append(F.interpolate(f, size=size, mode="bilinear", align_corners=False))
        return out


def build_backbone(
    name: str,
    *,
    vit_taps: Sequence[int] | None,
    out_indices: Sequence[int] | None,
    pyramid_channels: Sequence[int],
    pyramid_strides: Sequence[int],
    backbone_kwargs: dict[str, Any],
    pretrained: bool = False,
) -> PyramidBackbone:
    """Create a pyramid backbone. ``pretrained`` is only for callers that have timm weights
    locally (timm looks in the Hugging Face cache); the product never downloads."""
    if vit_taps is not None:
        return ViTTapPyramid(name, vit_taps, pyramid_channels, pyramid_strides, pretrained, **backbone_kwargs)
    return CNNPyramid(name, out_indices, pretrained, **backbone_kwargs)
