"""The PAGET modules (torch): the SegFormer student (transformers, MiT encoder, 14 outputs) and
PAGET-H on the nucleus model's backbone. Their families and presets are registered torch-free in
``paget.zoo``, which imports this file when a model is built.

The SegFormer is built from a ``SegformerConfig`` locally (random init; nothing is downloaded);
ImageNet-pretrained MiT weights can be loaded by the user with ``load_mit_weights`` from a local
file. Model output contract (docs/INTERFACES.md): ``forward(x) -> {"sem": (B, 14, H, W)}`` logits
upsampled (bilinear) to the input size; no "hv" head.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.config import ModelConfig
from .heads import NUC_HEAD

#: MiT encoder variants (SegFormer paper, Table 1 / the released configs): depths, widths, heads,
#: decoder width. B5 is the paper's student; B0/B1 are the CPU-sized variants.
MIT_VARIANTS: dict[str, dict[str, Any]] = {
    "b0": {"depths": [2, 2, 2, 2], "hidden_sizes": [32, 64, 160, 256], "decoder_hidden_size": 256},
    "b1": {"depths": [2, 2, 2, 2], "hidden_sizes": [64, 128, 320, 512], "decoder_hidden_size": 256},
    "b2": {"depths": [3, 4, 6, 3], "hidden_sizes": [64, 128, 320, 512], "decoder_hidden_size": 768},
    "b3": {"depths": [3, 4, 18, 3], "hidden_sizes": [64, 128, 320, 512], "decoder_hidden_size": 768},
    "b4": {"depths": [3, 8, 27, 3], "hidden_sizes": [64, 128, 320, 512], "decoder_hidden_size": 768},
    "b5": {"depths": [3, 6, 40, 3], "hidden_sizes": [64, 128, 320, 512], "decoder_hidden_size": 768},
}

def segformer_config(variant: str, num_labels: int, **overrides: Any):
    """A transformers ``SegformerConfig`` for MiT-``variant`` with ``num_labels`` outputs."""
    from transformers import SegformerConfig

    try:
        v = MIT_VARIANTS[variant.lower()]
    except KeyError:
        raise ValueError(f"unknown MiT variant {variant!r}; known: {sorted(MIT_VARIANTS)}") from None
    kw = dict(
        num_channels=3,
        num_encoder_blocks=4,
        depths=list(v["depths"]),
        hidden_sizes=list(v["hidden_sizes"]),
        decoder_hidden_size=v["decoder_hidden_size"],
        sr_ratios=[8, 4, 2, 1],
        num_attention_heads=[1, 2, 5, 8],
        patch_sizes=[7, 3, 3, 3],
        strides=[4, 2, 2, 2],
        mlp_ratios=[4, 4, 4, 4],
        num_labels=num_labels,
        semantic_loss_ignore_index=255,
    )
    kw.update(overrides)
    return SegformerConfig(**kw)


class PagetSegFormer(nn.Module):
    """SegFormer (MiT encoder + all-MLP decoder) returning ``{"sem": logits at input size}``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        from transformers import SegformerForSemanticSegmentation

        self.cfg = cfg
        extra = dict(cfg.extra)
        variant = str(extra.get("variant", "b5"))
        overrides = dict(extra.get("segformer_overrides", {}))
        n = cfg.head_channels().get("sem", cfg.num_classes)
        self.segformer = SegformerForSemanticSegmentation(segformer_config(variant, n, **overrides))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.segformer(pixel_values=x).logits  # (B, C, H/4, W/4)
        return {"sem": F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)}


def load_mit_weights(module: PagetSegFormer, path: str) -> None:
    """Load ImageNet-pretrained MiT encoder weights (a local safetensors/torch file holding a
    ``SegformerModel`` state dict, keys ``encoder.*`` or ``segformer.encoder.*``) into the encoder
    only (strict on the encoder). Never downloads."""
    from ..models.registry import load_state_dict_strict, read_state_dict

    sd = read_state_dict(path)
    enc = {k.split("encoder.", 1)[1]: v for k, v in sd.items() if "encoder." in k}
    load_state_dict_strict(module.segformer.segformer.encoder, enc, str(path))


# --------------------------------------------------------------------------- PAGET-H on the nucleus backbone


class PagetUperHoVer(nn.Module):
    """PAGET-H on the nucleus model's backbone (issue #18 item 4: PAGET-H at the cost of about
    one more decode head instead of a second network).

    The shipped UperHoVer nucleus model (backbone + its class head, here "nuc", + its HV head
    "hv"), kept **frozen**, plus one 14-class TME UperNet head "sem" on backbone levels
    ``extra["tme_levels"]`` (default all), of width ``extra["tme_hidden"]`` (default
    ``head_hidden``). One forward pass gives the 14-class map and the nuclei (HV watershed on
    "nuc" + "hv", the one maps -> nuclei step with ``cfg.post``), so the model is its own
    PAGET-H instance source. With ``extra["freeze_shared"]`` (default true) the shared parts
    never train: no gradients, BatchNorm always in eval mode, and in training mode the forward
    pass returns "sem" only (the backbone under ``no_grad``), so the nuclei stay exactly the
    nucleus model's.

    Outputs (input size, bilinear): ``{"sem": (B, 14, H, W), "hv": (B, 2, H, W), "nuc": (B,
    heads["nuc"], H, W)}`` logits; in eval mode with ``io.sem_stride`` = k > 1 "sem" is
    ``(B, 14, H/k, W/k)`` instead (the TME head's own grid when k is the stride of its finest
    level, 4 for levels 1-3: no upsampling; the engine blends it at that stride). Weights: a nucleus model's state dict loads with
    its ``heads.sem.*`` renamed to ``heads.nuc.*`` (``[model] init_rename`` in training).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        from ..models.uperhover import backbone_from_config, make_upernet_head

        self.cfg = cfg
        extra = dict(cfg.extra)
        self.backbone = backbone_from_config(cfg)
        chans = list(self.backbone.channels)
        self.tme_levels = [int(i) for i in extra.get("tme_levels", range(len(chans)))]
        if not self.tme_levels or any(not 0 <= i < len(chans) for i in self.tme_levels):
            raise ValueError(f"tme_levels {self.tme_levels} must index the backbone's {len(chans)} levels")
        tme_hidden = int(extra.get("tme_hidden", cfg.head_hidden))
        hc = cfg.head_channels()
        self.heads = nn.ModuleDict({
            "sem": make_upernet_head([chans[i] for i in self.tme_levels], tme_hidden, hc["sem"], cfg.pool_scales),
            "hv": make_upernet_head(chans, cfg.head_hidden, hc["hv"], cfg.pool_scales),
            NUC_HEAD: make_upernet_head(chans, cfg.head_hidden, hc[NUC_HEAD], cfg.pool_scales),
        })
        self.freeze_shared = bool(extra.get("freeze_shared", True))
        if self.freeze_shared:
            for m in self.shared_modules():
                m.requires_grad_(False)

    def shared_modules(self) -> list[nn.Module]:
        """The nucleus model's parts: backbone, HV head, nucleus class head."""
        return [self.backbone, self.heads["hv"], self.heads[NUC_HEAD]]

    def train(self, mode: bool = True) -> "PagetUperHoVer":
        super().train(mode)
        if self.freeze_shared:
            for m in self.shared_modules():
                m.train(False)  # BatchNorm statistics of the nucleus model never move
        return self

    def _tme(self, feats: list[torch.Tensor], size: Any) -> torch.Tensor:
        y = self.heads["sem"]([feats[i] for i in self.tme_levels])
        if tuple(y.shape[-2:]) == tuple(size):
            return y
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        if self.training and self.freeze_shared:
            with torch.no_grad():
                feats = self.backbone(x)
            return {"sem": self._tme(feats, size)}  # the training loss sees every working px
        feats = self.backbone(x)
        st = 1 if self.training else int(self.cfg.io.sem_stride)
        if st > 1 and (size[0] % st or size[1] % st):
            raise ValueError(f"input {tuple(size)} is not a multiple of sem_stride {st} (pad to pad_multiple)")
        out = {"sem": self._tme(feats, size if st == 1 else (size[0] // st, size[1] // st))}
        for k in ("hv", NUC_HEAD):
            out[k] = F.interpolate(self.heads[k](feats), size=size, mode="bilinear", align_corners=False)
        return out
