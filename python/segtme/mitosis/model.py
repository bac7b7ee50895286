"""The mitosis classifier: a small CNN on nucleus-centred RGB crops, registered (torch-free)
as the ``mitosis_cnn`` model family with the ``mitosis`` preset in ``mitosis.zoo``.

Input: ``(B, 3, S, S)`` RGB in [0, 1] (the engine's normalisation is *not* used: the module
converts to optical density and normalises every crop on its own — per-channel mean and spread
of the crop's OD — so the absolute stain colour of a slide / centre carries no signal; this is
the guard against a "which dataset" shortcut, see docs/paget.md). ``S`` = ``cfg.tile_size``
working px at ``cfg.mpp`` µm/px (preset: 32 px at 0.5 µm/px = a 16 µm field).

Output contract: ``{"mitosis": (B,) logit (mitotic figure vs not), "atypical": (B,) logit
(atypical vs normal mitosis; meaningful only for mitotic figures)}``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.config import ModelConfig
from .heads import OUTPUTS


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class MitosisNet(nn.Module):
    """OD transform + per-crop normalisation + 4 conv blocks (widths ``extra["widths"]``) with 2x2
    max pooling after the first three + global average pooling + a linear layer to 2 logits."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        w = [int(v) for v in cfg.extra.get("widths", [16, 32, 48, 48])]
        if len(w) != 4:
            raise ValueError(f"mitosis_cnn: extra['widths'] needs 4 values, got {w}")
        self.features = nn.Sequential(
            _block(3, w[0]), nn.MaxPool2d(2),
            _block(w[0], w[1]), nn.MaxPool2d(2),
            _block(w[1], w[2]), nn.MaxPool2d(2),
            _block(w[2], w[3]),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.dropout = nn.Dropout(float(cfg.extra.get("dropout", 0.2)))
        self.head = nn.Linear(w[3], len(OUTPUTS))

    @staticmethod
    def normalise(x: torch.Tensor) -> torch.Tensor:
        """RGB [0, 1] -> per-crop standardised optical density (B, 3, S, S)."""
        od = -torch.log((x * 255.0 + 1.0) / 256.0)
        mean = od.mean(dim=(2, 3), keepdim=True)
        std = od.std(dim=(2, 3), keepdim=True)
        return (od - mean) / (std + 0.05)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.head(self.dropout(self.features(self.normalise(x))))
        return {name: z[:, i] for i, name in enumerate(OUTPUTS)}
