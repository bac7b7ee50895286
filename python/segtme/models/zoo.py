"""Built-in model families and presets (one config + builder per family, as timm does).

The UperHoVer family: a pyramid backbone + UperNet heads, outputs = its configured heads
("sem" logits over the taxonomy, "hv"), nuclei made from the maps. torch / timm / transformers
are imported when a model is built, not when the presets are listed or a contract is looked up.
"""

from __future__ import annotations

from typing import Any

from .config import ModelConfig
from .registry import ModelContract, register_family, register_preset

#: UNI2-h (MahmoodLab) timm configuration: ViT-Giant, patch 14, dim 1536, depth 24, 24 heads,
#: SwiGLU-packed MLP (ratio 2.66667*2), 8 register tokens, layer-scale 1e-5, no class-token
#: position embedding, dynamic image size. ~681 M parameters. (Exactly as its model card gives
#: it; here, not in ``backbones``, so listing presets needs no torch.)
UNI2_H_ARCH = "vit_giant_patch14_224"
UNI2_H_TAPS = [5, 11, 17, 23]


def uni2_h_kwargs() -> dict[str, Any]:
    """timm kwargs for UNI2-h (serialisable: layer classes named by string)."""
    return {
        "img_size": 224,
        "patch_size": 14,
        "depth": 24,
        "num_heads": 24,
        "init_values": 1e-5,
        "embed_dim": 1536,
        "mlp_ratio": 2.66667 * 2,
        "num_classes": 0,
        "no_embed_class": True,
        "mlp_layer": "SwiGLUPacked",
        "act_layer": "silu",
        "reg_tokens": 8,
        "dynamic_img_size": True,
    }


def _uperhover_contract(cfg: ModelConfig) -> ModelContract:
    return ModelContract(outputs=tuple(k for k in ("sem", "hv") if k in cfg.heads), instances="maps")


@register_family("uperhover", contract=_uperhover_contract)
def _build_uperhover(cfg: ModelConfig):
    from .uperhover import UperHoVer

    return UperHoVer(cfg)


#: The SegTME-UNI2 paper's model: UNI2-h ViT-G/14 taps 5/11/17/23 -> 256/512/1024/2048 ch at
#: strides 4/8/16/32, two UperNet heads (hidden 768): 6-class semantic + 2-channel HV.
#: Working resolution ~0.35 um/px (paper Fig. 2b: s = MPP_in / 0.314 rounds to ~0.35), 224 px tiles, 50 % overlap.
UNI2_UPERHOVER = register_preset(
    ModelConfig(
        name="uni2_uperhover",
        arch="uperhover",
        backbone=UNI2_H_ARCH,
        backbone_kwargs=uni2_h_kwargs(),
        vit_taps=list(UNI2_H_TAPS),
        pyramid_channels=[256, 512, 1024, 2048],
        pyramid_strides=[4, 8, 16, 32],
        head_hidden=768,
        taxonomy="pannuke6",
        mpp=0.314,
        tile_size=224,
        tile_overlap=56,
        pad_multiple=14,
        backbone_weights=None,
    )
)

#: Small CPU model: the same UperHoVer code on a timm ResNet-18 (random init unless trained).
UPERHOVER_R18 = register_preset(
    ModelConfig(
        name="uperhover_resnet18",
        arch="uperhover",
        backbone="resnet18",
        out_indices=[1, 2, 3, 4],
        head_hidden=128,
        taxonomy="pannuke6",
        mpp=0.5,
        tile_size=256,
        tile_overlap=32,
        pad_multiple=32,
    )
)

#: Tiny model for tests: ViT taps path at toy size (exercises the ViT pyramid code on CPU).
UPERHOVER_VIT_TINY = register_preset(
    ModelConfig(
        name="uperhover_vit_tiny",
        arch="uperhover",
        backbone="vit_small_patch14_dinov2",
        backbone_kwargs={
            "img_size": 112, "patch_size": 14, "depth": 4, "num_heads": 2, "embed_dim": 48,
            "num_classes": 0, "reg_tokens": 2, "no_embed_class": True, "dynamic_img_size": True,
            "init_values": 1e-5,
        },
        vit_taps=[0, 1, 2, 3],
        pyramid_channels=[16, 16, 32, 32],
        pyramid_strides=[4, 8, 16, 32],
        head_hidden=16,
        taxonomy="pannuke6",
        mpp=0.5,
        tile_size=112,
        tile_overlap=28,
        pad_multiple=14,
    )
)
